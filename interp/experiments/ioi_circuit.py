"""Experiment `ioi_circuit`: the IOI circuit (Wang et al. 2022) by staged path patching, completed for accuracy,
and by EAP-IG (Hanna et al. 2024); head classes from attention patterns; faithfulness with per-template mean
ablation of the p_ABC prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from interp.circuits.classify import IOI_BEHAVIOURS, attention_evidence, behaviour_classes, classify
from interp.circuits.compare import overlap
from interp.circuits.eap import EdgeScores, eap
from interp.circuits.evaluate import (
    ABLATIONS,
    COMPLETION_METHODS,
    EvalConfig,
    FaithfulnessCurve,
    circuit_values,
    complete_circuit,
    evaluate_circuit,
    faithfulness_curve,
    minimality,
    random_baseline,
)
from interp.circuits.graph import Circuit, Graph, head_name
from interp.circuits.search import ioi_stages, path_patch_search, stages_figure
from interp.config import (
    check_fields,
    each,
    in_range,
    model_name,
    non_empty,
    non_negative,
    one_of,
    param,
    positive,
)
from interp.experiments.api import Run, register_experiment
from interp.models.base import HookedModel
from interp.models.load import BACKENDS, DTYPES


def _load(name: str, backend: str, dtype: str, device: str) -> HookedModel:
    from interp.models.load import load_model

    return load_model(name, backend=backend, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------ ioi_circuit
@dataclass(frozen=True, kw_only=True)
class IOICircuitConfig:
    """Parameters of `ioi_circuit` (defaults: organism/base on CPU; see the README for GPT-2 small)."""

    model: str = param("organism/base", check=model_name)
    backend: str = param("tl", check=one_of(BACKENDS))
    dtype: str = param("float32", check=one_of(DTYPES))
    n_prompts: int = param(96, check=positive)  # path patching and EAP-IG
    n_eval: int = param(192, check=positive)  # faithfulness (per-template means over their p_ABC corruptions)
    k_mover: int = param(2, check=non_negative)  # heads chosen per stage
    k_inhibition: int = param(2, check=non_negative)
    k_induction: int = param(2, check=non_negative)
    k_previous: int = param(1, check=non_negative)
    # a head is chosen only above this share of its stage's largest score
    min_score: float = param(0.05, check=in_range(0, 1))
    ablation: str = param(
        "mean", check=one_of(ABLATIONS)
    )  # mean (Wang: per-template means of p_ABC) | resample
    ig_steps: int = param(5, check=non_negative)  # EAP-IG steps (0: plain EAP)
    fractions: tuple[float, ...] = param(
        (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0), check=(non_empty, each(in_range(0, 1)))
    )
    # the EAP-IG circuit: the smallest top-n reaching this recovery
    target_recovery: float = param(0.8, check=in_range(0, 1, open_low=True))
    # complete the path-patching circuit until it keeps this share of the model's top-1 accuracy (0 turns it
    # off): one-at-a-time patching misses heads that are needed only jointly
    complete_accuracy: float = param(0.8, check=in_range(0, 1))
    # backward elimination from all heads | forward selection
    completion: str = param("backward", check=one_of(COMPLETION_METHODS))
    # the completed circuit keeps its heads at every position ("all") or the path-patching heads only at their
    # stage's position ("stage", Wang et al.'s protocol)
    complete_positions: str = param("all", check=one_of(("all", "stage")))
    random_draws: int = param(10, check=positive)

    def __post_init__(self) -> None:
        check_fields(self, where="ioi_circuit")


DEMO = {"n_prompts": 24, "n_eval": 32, "ig_steps": 2, "random_draws": 2, "fractions": [0.0, 0.1, 1.0]}


def _ioi_prompts(tok: Any, n: int, seed: int):
    from interp.tasks import make

    return make("ioi", tok, n=n, seed=seed, same_length=True)


def _complete(
    model: HookedModel, found: Circuit, prompts: Any, cfg: IOICircuitConfig, config: EvalConfig
) -> Circuit:
    """The path-patching circuit completed by `complete_circuit` until it keeps `cfg.complete_accuracy` of the
    model's top-1 accuracy on `prompts` (with `complete_positions="all"`, its heads kept at every position)."""
    from interp.metrics import Accuracy

    start = replace(found, positions={}) if cfg.complete_positions == "all" else found
    if cfg.complete_accuracy <= 0:
        return start
    with torch.no_grad():
        acc = float(
            Accuracy.from_prompts(prompts.to(model.device))(model(prompts.clean.to(model.device))).mean()
        )
    grown, _ = complete_circuit(
        model,
        start,
        prompts=prompts,
        metric=Accuracy,
        method=cfg.completion,
        target=cfg.complete_accuracy * acc,
        config=config,
    )
    return grown


def _head_rows(circuit: Circuit, evidence: dict[str, dict[str, float]], mins: dict[str, float]) -> list[dict]:
    rows = []
    for n in circuit.nodes:
        if n not in evidence:
            continue
        pos = circuit.positions.get(n)
        rows.append(
            {
                "head": n,
                "stage": circuit.group_of(n),
                "position": pos,
                "score": circuit.scores.get(n),
                "class": classify(evidence[n], pos if isinstance(pos, str) else None),
                "minimality": mins.get(n),
                **{f"attn_{k}": v for k, v in evidence[n].items() if not k.startswith("uniform_")},
            }
        )
    return rows


@register_experiment("ioi_circuit", config=IOICircuitConfig, demo=DEMO)
def ioi_circuit(cfg: IOICircuitConfig, run: Run) -> dict[str, Any]:
    """The IOI circuit by staged path patching and by EAP-IG; head classes with attention evidence; faithfulness."""
    from interp.metrics import Accuracy, LogitDiff
    from interp.plotting import bar

    model = _load(cfg.model, cfg.backend, cfg.dtype, run.device)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ps = _ioi_prompts(model.tokenizer, cfg.n_prompts, run.seed)
    ev_ps = _ioi_prompts(model.tokenizer, cfg.n_eval, run.seed + 1)

    def model_metrics() -> dict[str, float]:
        with torch.no_grad():
            logits = model(ev_ps.clean.to(model.device))
        return {
            "logit_diff": float(LogitDiff.from_prompts(ev_ps.to(model.device))(logits).mean()),
            "accuracy": float(Accuracy.from_prompts(ev_ps.to(model.device))(logits).mean()),
        }

    full = run.step("model", model_metrics)
    ld, acc = full["logit_diff"], full["accuracy"]
    eval_cfg = EvalConfig(level="node", ablation=cfg.ablation, mean_by="template")

    # ---- staged path patching (Wang et al.'s stages)
    stages = tuple(
        replace(s, min_score=cfg.min_score)
        for s in ioi_stages(
            k_mover=cfg.k_mover,
            k_inhibition=cfg.k_inhibition,
            k_induction=cfg.k_induction,
            k_previous=cfg.k_previous,
        )
    )

    def search() -> dict:
        res = path_patch_search(model, prompts=ps, metric=LogitDiff, stages=stages)
        return {
            "circuit": res.circuit().to_dict(),
            "table": res.to_frame().to_dict("records"),
            "scores": {s.stage.name: s.normalised.tolist() for s in res.stages},
        }

    found = run.step("path_patching", search)
    circuit = Circuit.from_dict(found["circuit"])
    run.table(found["table"], "path_patching_scores")

    def complete() -> dict:  # on the search prompts; evaluated on the held-out ones below
        grown = _complete(model, circuit, ps, cfg, eval_cfg)
        return {"circuit": grown.to_dict(), "trace": grown.provenance.get("completion", {}).get("trace", [])}

    grown = run.step("completion", complete)
    final = Circuit.from_dict(grown["circuit"])

    def evaluate() -> dict:
        out: dict[str, Any] = {}
        for name, c in (("search", circuit), ("final", final)):
            ev = evaluate_circuit(model, c, prompts=ev_ps, metric=LogitDiff, config=eval_cfg)
            c_acc = circuit_values(model, [c], prompts=ev_ps, metric=Accuracy, config=eval_cfg).mean().item()
            out[name] = {**ev.to_dict(), "accuracy": c_acc}
        out["all_positions"] = evaluate_circuit(
            model,
            final,
            prompts=ev_ps,
            metric=LogitDiff,
            config=EvalConfig(level="node", ablation=cfg.ablation, use_positions=False),
        ).to_dict()
        out["minimality"] = minimality(model, final, prompts=ev_ps, metric=LogitDiff, config=eval_cfg)
        out["random"] = random_baseline(
            model, final, prompts=ev_ps, metric=LogitDiff, config=eval_cfg, n=cfg.random_draws, seed=run.seed
        )
        out["evidence"] = attention_evidence(
            model, ev_ps, [(layer, h) for layer in range(L) for h in range(H)]
        )
        return out

    evals = run.step("evaluation", evaluate)
    rows = _head_rows(final, evals["evidence"], evals["minimality"])
    run.table(rows, "head_classes")
    run.table([{"head": k, **v} for k, v in evals["evidence"].items()], "attention_all_heads")
    classed = Circuit(
        nodes=final.nodes,
        edges=final.edges,
        scores=final.scores,
        positions=final.positions,
        groups=_groups_by(rows),
        provenance={
            **final.provenance,
            "title": f"IOI circuit of {cfg.model} (path patching + completion; colour = behaviour)",
        },
    )
    classed.save(run.path("tables", "circuit.json"))
    run.figure(classed.figure(n_layers=L, n_heads=H), "ioi_circuit")
    run.figure(
        stages_figure(found["scores"], title=f"IOI path-patching stages of {cfg.model}"),
        "path_patching_stages",
    )
    names = list(IOI_BEHAVIOURS)
    run.figure(
        bar(
            {b: [v[b] / v[f"uniform_{b}"] for v in evals["evidence"].values()] for b in names},
            list(evals["evidence"]),
            title="Attention evidence per head: each behaviour's attention "
            "probability over uniform attention",
            x_title="head",
            y_title="attention / uniform",
        ),
        "head_attention",
    )

    # ---- EAP-IG
    def edge_scores() -> dict:
        s = eap(model, clean=ps, metric=LogitDiff, ig_steps=cfg.ig_steps)
        return {"scores": s.scores}

    stored = run.step("eap_ig", edge_scores)
    scores = EdgeScores(
        graph=Graph.from_model(model), scores=stored["scores"], method="eap-ig", ig_steps=cfg.ig_steps
    )
    run.table(scores.to_frame().head(200), "eap_ig_top_edges")

    def curve() -> dict:
        edge_cfg = EvalConfig(level="edge", ablation=cfg.ablation, mean_by="template")
        c = faithfulness_curve(
            model, scores, prompts=ev_ps, metric=LogitDiff, fractions=cfg.fractions, config=edge_cfg
        )
        a = faithfulness_curve(
            model, scores, prompts=ev_ps, metric=Accuracy, fractions=cfg.fractions, config=edge_cfg
        )
        return {
            "fractions": c.fractions,
            "n_edges": c.n_edges,
            "values": c.values,
            "recovery": c.recovery,
            "model": c.model,
            "empty": c.empty,
            "cpr": c.cpr,
            "cmd": c.cmd,
            "accuracy": a.values,
        }

    cv = run.step("eap_ig_curve", curve)
    fc = FaithfulnessCurve(
        **{k: cv[k] for k in ("fractions", "n_edges", "values", "recovery", "model", "empty")},
        selection="top",
    )
    run.figure(
        fc.figure(title=f"EAP-IG faithfulness curve: CPR {fc.cpr:.3f}, CMD {fc.cmd:.3f}"), "eap_ig_curve"
    )
    run.table({**fc.to_frame().to_dict("list"), "accuracy": cv["accuracy"]}, "eap_ig_curve")
    acc_hit = [n for n, a in zip(fc.n_edges, cv["accuracy"], strict=True) if a >= cfg.complete_accuracy * acc]
    hit = [i for i, r in enumerate(fc.recovery) if r >= cfg.target_recovery]
    n_edges = fc.n_edges[hit[0]] if hit else fc.n_edges[-1]
    eap_circuit = scores.circuit(n_edges)
    eap_ev = run.step(
        "eap_ig_eval",
        lambda: evaluate_circuit(
            model, eap_circuit, prompts=ev_ps, metric=LogitDiff, config=eval_cfg
        ).to_dict(),
    )
    run.figure(
        eap_circuit.figure(n_layers=L, n_heads=H, title=f"EAP-IG circuit ({n_edges} edges)"), "eap_ig_circuit"
    )
    ov = overlap(final, eap_circuit)

    fin, srch = evals["final"], evals["search"]
    results: dict[str, Any] = {
        "model": cfg.model,
        "logit_diff": ld,
        "accuracy": acc,
        "faithfulness": fin["faithfulness"],
        "recovery": fin["recovery"],
        "circuit_accuracy": fin["accuracy"],
        "faithfulness_all_positions": evals["all_positions"]["faithfulness"],
        "circuit_heads": len(final.heads),
        "total_heads": L * H,
        "circuit_head_names": ",".join(head_name(*h) for h in final.heads),
        "search_heads": len(circuit.heads),
        "search_head_names": ",".join(head_name(*h) for h in circuit.heads),
        "search_faithfulness": srch["faithfulness"],
        "search_circuit_accuracy": srch["accuracy"],
        "completion_added": ",".join(final.provenance.get("completion", {}).get("added", [])),
        "random_faithfulness": evals["random"]["faithfulness"],
        "min_minimality": min(evals["minimality"].values()) if evals["minimality"] else None,
        "eap_ig_cpr": fc.cpr,
        "eap_ig_cmd": fc.cmd,
        "eap_ig_edges": n_edges,
        "total_edges": scores.graph.n_edges,
        "eap_ig_edge_recovery": fc.recovery[hit[0]] if hit else fc.recovery[-1],
        "eap_ig_heads": len(eap_circuit.heads),
        "eap_ig_head_faithfulness": eap_ev["faithfulness"],
        "eap_ig_edge_accuracy": cv["accuracy"][hit[0] if hit else -1],
        "eap_ig_edges_for_accuracy": acc_hit[0] if acc_hit else None,
        "overlap_search_eap_ig": overlap(circuit, eap_circuit).jaccard,
        "overlap_final_eap_ig": ov.jaccard,
    }
    results |= {f"class_{r['head']}": f"{r['class']} ({r['stage']})" for r in rows}
    # every head's behaviours at the positions where IOI heads act, by attention alone (not only circuit heads)
    results["behaviour_heads"] = {k: ",".join(v) for k, v in behaviour_classes(evals["evidence"]).items()}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()}


def _groups_by(rows: list[dict]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["class"], []).append(r["head"])
    return {k: tuple(v) for k, v in out.items()}

"""Experiments `ioi_circuit` (Wang et al. 2022 by staged path patching, and EAP-IG, Hanna et al. 2024) and
`circuit_reuse` (Merullo et al. 2024: IOI vs a second task, overlap and an intervention), plus the `circuits`
demo step (the IOI circuit figure of organism/base).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from interp.circuits.compare import overlap, stage_sets
from interp.circuits.eap import EdgeScores, eap
from interp.circuits.evaluate import (
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
from interp.circuits.intervene import Intervention, accuracy_with
from interp.circuits.search import ioi_stages, merullo_stages, path_patch_search, stages_figure
from interp.config import ConfigError
from interp.demo import register_demo_step
from interp.models.base import HookedModel
from interp.runner import Run, register_experiment
from interp.sites import Site

# where each IOI behaviour shows, as (query position, key position) of the attention pattern (Wang et al. §3);
# "s1_next_reader" is not one of Wang's classes: a head at END reading S1+1, where previous-token heads have
# written S1's neighbours (the organisms use it in place of name movers)
IOI_BEHAVIOURS: dict[str, tuple[str, str]] = {
    "mover": ("END", "IO"),  # copies the indirect object
    "s_inhibition": ("END", "S2"),  # attends to the repeated subject at the end
    "s1_next_reader": ("END", "S1+1"),  # reads the token after S1 at the end
    "induction": ("S2", "S1+1"),  # at S2, attends to the token after S1
    "duplicate_token": ("S2", "S1"),  # at S2, attends to the earlier copy of S
    "previous_token": ("S1+1", "S1"),  # attends to the previous token
}
_AT = {
    "END": ("mover", "s_inhibition", "s1_next_reader"),
    "S2": ("induction", "duplicate_token"),
    "S1+1": ("previous_token",),
}


def _load(name: str, backend: str, dtype: str, device: str) -> HookedModel:
    from interp.models.load import load_model

    return load_model(name, backend=backend, device=device, dtype=dtype)


def attention_evidence(
    model: HookedModel, prompts: Any, heads: list[tuple[int, int]]
) -> dict[str, dict[str, float]]:
    """Per head, the mean attention probability of each IOI behaviour's (query, key) position pair, and of the
    same pair under uniform attention (`uniform_<behaviour>`: 1 / (query position + 1))."""
    from interp.circuits.search import resolve_position

    if not heads:
        return {}
    layers = sorted({layer for layer, _ in heads})
    with torch.no_grad():
        _, cache = model.run_with_cache(
            prompts.clean.to(model.device),
            [Site("pattern", layer) for layer in layers],
            attention_mask=prompts.attention_mask.to(model.device),
        )
    b = torch.arange(prompts.clean.shape[0])
    out = {}
    for layer, h in heads:
        p = cache[f"blocks.{layer}.attn.hook_pattern"][:, h].float().cpu()  # (B, query, key)
        ev = {
            name: float(p[b, resolve_position(prompts, q), resolve_position(prompts, k)].mean())
            for name, (q, k) in IOI_BEHAVIOURS.items()
        }
        ev |= {
            f"uniform_{name}": float((1.0 / (resolve_position(prompts, q).float() + 1)).mean())
            for name, (q, _) in IOI_BEHAVIOURS.items()
        }
        out[head_name(layer, h)] = ev
    return out


def classify(evidence: dict[str, float], position: str | None, *, min_ratio: float = 2.0) -> str:
    """The behaviour with the most attention among those possible where the head acts (all when unknown),
    if that attention is at least `min_ratio` times uniform attention; otherwise "diffuse"."""
    allowed = _AT.get(position or "", tuple(IOI_BEHAVIOURS))
    best = max(allowed, key=lambda k: evidence[k] / evidence[f"uniform_{k}"])
    return best if evidence[best] >= min_ratio * evidence[f"uniform_{best}"] else "diffuse"


# ------------------------------------------------------------------------------------------------ ioi_circuit
@dataclass(frozen=True, kw_only=True)
class IOICircuitConfig:
    """Parameters of `ioi_circuit` (defaults: organism/base on CPU; see the README for GPT-2 small)."""

    model: str = "organism/base"
    backend: str = "tl"
    dtype: str = "float32"
    n_prompts: int = 96  # path patching and EAP-IG
    n_eval: int = 192  # faithfulness (per-template means over their p_ABC corruptions)
    k_mover: int = 2
    k_inhibition: int = 2
    k_induction: int = 2
    k_previous: int = 1
    min_score: float = 0.05  # a head is chosen only above this share of its stage's largest score
    ablation: str = "mean"  # mean (Wang: per-template means of p_ABC) | resample
    ig_steps: int = 5
    fractions: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    target_recovery: float = 0.8  # the EAP-IG circuit: the smallest top-n reaching this recovery
    complete_accuracy: float = (
        0.8  # complete the path-patching circuit until it keeps this share of the model's
    )
    # top-1 accuracy (0 turns it off): one-at-a-time patching misses heads that are needed only jointly
    completion: str = "backward"  # backward elimination from all heads | forward selection
    complete_positions: str = "all"  # the completed circuit keeps its heads at every position ("all") or the
    # path-patching heads only at their stage's position ("stage", Wang et al.'s protocol)
    random_draws: int = 10

    def __post_init__(self) -> None:
        problems = []
        if self.completion not in COMPLETION_METHODS:
            problems.append(f"completion must be one of {COMPLETION_METHODS}, got {self.completion!r}")
        if self.complete_positions not in ("all", "stage"):
            problems.append(f"complete_positions must be 'all' or 'stage', got {self.complete_positions!r}")
        if not 0 <= self.complete_accuracy <= 1:
            problems.append(f"complete_accuracy must lie in [0, 1], got {self.complete_accuracy}")
        if problems:
            raise ConfigError("ioi_circuit: " + "; ".join(problems))


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
                "class": classify(evidence[n], pos),
                "minimality": mins.get(n),
                **{f"attn_{k}": v for k, v in evidence[n].items() if not k.startswith("uniform_")},
            }
        )
    return rows


@register_experiment("ioi_circuit", config=IOICircuitConfig)
def ioi_circuit(cfg: IOICircuitConfig, run: Run) -> dict[str, Any]:
    """The IOI circuit by staged path patching and by EAP-IG; head classes with attention evidence; faithfulness."""
    from interp.metrics import Accuracy, LogitDiff
    from interp.plotting import bar

    model = _load(cfg.model, cfg.backend, cfg.dtype, run.device)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ps = _ioi_prompts(model.tokenizer, cfg.n_prompts, run.seed)
    ev_ps = _ioi_prompts(model.tokenizer, cfg.n_eval, run.seed + 1)
    with torch.no_grad():
        logits = model(ev_ps.clean.to(model.device))
    ld = float(LogitDiff.from_prompts(ev_ps.to(model.device))(logits).mean())
    acc = float(Accuracy.from_prompts(ev_ps.to(model.device))(logits).mean())
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
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()}


def _groups_by(rows: list[dict]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["class"], []).append(r["head"])
    return {k: tuple(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ circuit_reuse
def copy_prompts(tokenizer: Any, n: int, seed: int, *, length: int = 8, query: int = 5):
    """Induction / copying (Olsson et al. 2022) as a PromptSet: `length` distinct random words, then the first
    `query` again -> the word that followed the last of them. The corrupt prompt replaces that word in the
    first half by another, so the answer changes (the wrong answer). Positions: `prev` (the earlier copy of the
    last token: a duplicate, as S1 is in IOI), `answer_pos` (the word to copy), `END`."""
    import random

    from interp.tasks import vocabulary
    from interp.tasks.encode import Pair, Sample, build_prompt_set

    if not 1 <= query < length:
        raise ValueError(f"query must lie in [1, {length - 1}], got {query}")
    words = sorted(
        {
            w
            for w in vocabulary()
            if w.isalpha() and len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1
        }
    )
    rng = random.Random(seed)

    def draw() -> list[Pair]:
        seq = rng.sample(words, length + 1)
        other, seq = seq[-1], seq[:length]
        text = " ".join(seq + seq[:query])
        starts = [sum(len(w) + 1 for w in seq[:i]) for i in range(length)]
        spans = {
            "prev": (starts[query - 1], starts[query - 1] + len(seq[query - 1])),
            "answer_pos": (starts[query], starts[query] + len(seq[query])),
        }
        corrupt = " ".join(seq[:query] + [other] + seq[query + 1 :] + seq[:query])
        return [
            Pair(
                clean=Sample(prompt=text, answer=seq[query], spans=spans, meta={"template": 0}),
                corrupt_prompt=corrupt,
                wrong=other,
            )
        ]

    return build_prompt_set("copy", tokenizer, (draw() for _ in iter(int, 1)), n=n)


def _second_task(name: str, tok: Any, n: int, seed: int, options: dict[str, Any]):
    from interp.tasks import make

    if name == "copy":
        return copy_prompts(tok, n, seed, **options)
    return make(name, tok, n=n, seed=seed, same_length=True, **options)


@dataclass(frozen=True, kw_only=True)
class CircuitReuseConfig:
    """Parameters of `circuit_reuse` (Merullo et al. 2024 on the organisms; see the README)."""

    model: str = "organism/base"
    backend: str = "tl"
    dtype: str = "float32"
    second_task: str = "colored_objects"  # a task of interp.tasks, or "copy" (induction, `copy_prompts`)
    second_task_options: dict[str, Any] = field(default_factory=dict)
    second_task_reason: str = ""  # why this second task (when not Colored Objects)
    n_prompts: int = 96
    n_eval: int = 192
    k: int = 3  # heads chosen per path-patching stage (Merullo's stages, last position)
    fraction: float = 0.02  # top share of heads per stage for the overlap (at least one head per stage)
    min_per_stage: int = 2
    distractor_positions: tuple[str, ...] = ("wrong_color",)  # where the task-specific heads are made to look
    # IOI role -> positions in the second task: each IOI-only head, classed by its IOI attention, is made to look
    # where its role points (heads of other roles are left alone); empty: every IOI-only head looks at
    # `distractor_positions` (Merullo et al.'s inhibition repair)
    role_positions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mix: float = 1.0
    accuracy_over: str = "options"  # options (the question's candidates) | vocab


@register_experiment("circuit_reuse", config=CircuitReuseConfig)
def circuit_reuse(cfg: CircuitReuseConfig, run: Run) -> dict[str, Any]:
    """IOI vs a second task: per-stage path patching, overlap, and an intervention on the IOI-only heads."""
    from interp.metrics import LogitDiff
    from interp.tasks import make

    model = _load(cfg.model, cfg.backend, cfg.dtype, run.device)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    tok = model.tokenizer
    sets = {
        "ioi": make("ioi", tok, n=cfg.n_prompts, seed=run.seed, same_length=True),
        cfg.second_task: _second_task(cfg.second_task, tok, cfg.n_prompts, run.seed, cfg.second_task_options),
    }
    test = _second_task(cfg.second_task, tok, cfg.n_eval, run.seed + 1, cfg.second_task_options)
    wanted = [*cfg.distractor_positions, *(p for ps_ in cfg.role_positions.values() for p in ps_)]
    missing = [p for p in wanted if p.split("+")[0].split("-")[0] not in test.positions]
    if missing:
        raise ValueError(
            f"distractor positions {missing} are not positions of {cfg.second_task}: {sorted(test.positions)}"
        )
    if cfg.accuracy_over == "options" and test.options is None:
        raise ValueError(f"{cfg.second_task} has no answer options; use accuracy_over: vocab")
    stages = merullo_stages(k=cfg.k)

    def search() -> dict:
        out = {}
        for task, ps in sets.items():
            res = path_patch_search(model, prompts=ps, metric=LogitDiff, stages=stages)
            out[task] = {s.stage.name: s.normalised.tolist() for s in res.stages}
        return out

    scores = run.step("stage_scores", search)
    per_task = {
        t: stage_sets({k: torch.tensor(v) for k, v in s.items()}, cfg.fraction, min_count=cfg.min_per_stage)
        for t, s in scores.items()
    }
    ov = overlap(per_task["ioi"], per_task[cfg.second_task])
    run.table(
        [
            {
                "task": t,
                "stage": st,
                "layer": layer,
                "head": h,
                "normalised": torch.tensor(v)[layer, h].item(),
                "in_top": (layer, h) in per_task[t][st],
            }
            for t, s in scores.items()
            for st, v in s.items()
            for layer in range(L)
            for h in range(H)
            if math.isfinite(torch.tensor(v)[layer, h].item())
        ],
        "stage_scores",
    )
    run.figure(
        stages_figure(
            {f"{t}: {st}": v for t, s in scores.items() for st, v in s.items()},
            title=f"Path-patching stages, IOI vs {cfg.second_task}",
        ),
        "stage_scores",
    )

    # ---- intervention: the IOI-only heads look at the second task's distractors at the last token
    specific = sorted(ov.a - ov.b)
    ioi_eval = make("ioi", tok, n=cfg.n_eval, seed=run.seed + 1, same_length=True)
    roles = {
        head_name(*h): classify(e, "END")
        for h, e in zip(specific, attention_evidence(model, ioi_eval, specific).values(), strict=True)
    }
    plain = [
        Intervention(
            layer=layer, head=h, kind="pattern", at="END", attend_to=cfg.distractor_positions, mix=cfg.mix
        )
        for layer, h in specific
    ]
    by_role = [
        Intervention(
            layer=layer,
            head=h,
            kind="pattern",
            at="END",
            mix=cfg.mix,
            attend_to=tuple(cfg.role_positions[roles[head_name(layer, h)]]),
        )
        for layer, h in specific
        if roles[head_name(layer, h)] in cfg.role_positions
    ]
    ivs = by_role if cfg.role_positions else plain

    def acc(interventions: list[Intervention], over: str) -> float:
        return accuracy_with(model, test, interventions, over=over)

    before = acc([], cfg.accuracy_over)
    d = ov.to_dict()
    return {
        "second_task": cfg.second_task,
        "second_task_reason": cfg.second_task_reason,
        "overlap": ov.overlap,
        "jaccard": ov.jaccard,
        "n_shared": d["n_shared"],
        "n_ioi": d["n_a"],
        "n_second": d["n_b"],
        "ioi_heads": ",".join(d["a"]),
        "second_heads": ",".join(d["b"]),
        "shared_heads": ",".join(d["shared"]),
        "intervened_heads": ",".join(head_name(*h) for h in specific),
        **{f"overlap_{k}": v["overlap"] for k, v in ov.per_stage.items()},
        "ioi_roles": ",".join(f"{k}={v}" for k, v in roles.items()),
        "intervention": "by IOI role" if cfg.role_positions else "distractor attention",
        "intervention_heads": ",".join(f"a{iv.layer}.{iv.head}->{'+'.join(iv.attend_to)}" for iv in ivs),
        "cobj_acc_before": before,
        "cobj_acc_after": acc(ivs, cfg.accuracy_over) if ivs else before,
        "acc_after_distractor_attention": acc(plain, cfg.accuracy_over) if plain else before,
        "vocab_acc_before": acc([], "vocab"),
        "vocab_acc_after": acc(ivs, "vocab") if ivs else acc([], "vocab"),
    }


# ------------------------------------------------------------------------------------------------ demo
@register_demo_step("circuits", order=40)
def circuits_demo(out: Path) -> None:
    """The IOI circuit of organism/base: staged path patching (Wang et al. 2022), completed for accuracy."""
    from interp.metrics import Accuracy, LogitDiff
    from interp.models.load import ModelLoadError, resolve
    from interp.plotting import save_figure

    try:
        resolve("organism/base")
    except (ModelLoadError, FileNotFoundError, KeyError):
        print("The circuits demo needs organism/base: build it with `interp zoo build --only organism/base`.")
        return
    cfg = IOICircuitConfig(n_prompts=64, n_eval=96)
    model = _load(cfg.model, cfg.backend, cfg.dtype, "cpu")
    ps, held_out = (
        _ioi_prompts(model.tokenizer, cfg.n_prompts, 0),
        _ioi_prompts(model.tokenizer, cfg.n_eval, 1),
    )
    stages = tuple(
        replace(s, min_score=cfg.min_score)
        for s in ioi_stages(
            k_mover=cfg.k_mover,
            k_inhibition=cfg.k_inhibition,
            k_induction=cfg.k_induction,
            k_previous=cfg.k_previous,
        )
    )
    found = path_patch_search(model, prompts=ps, metric=LogitDiff, stages=stages).circuit()
    node = EvalConfig(level="node", ablation=cfg.ablation)
    circuit = _complete(model, found, ps, cfg, node)
    ev = evaluate_circuit(model, circuit, prompts=held_out, metric=LogitDiff, config=node)
    c_acc = circuit_values(model, [circuit], prompts=held_out, metric=Accuracy, config=node).mean().item()
    title = (
        f"IOI circuit of organism/base: {len(circuit.heads)} of {model.cfg.n_layers * model.cfg.n_heads} "
        f"heads, faithfulness {ev.faithfulness:.2f}, accuracy {c_acc:.2f}"
    )
    save_figure(
        circuit.figure(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads, title=title),
        out / "ioi_circuit",
    )
    circuit.save(out / "ioi_circuit.json")
    print(
        f"path patching: {', '.join(head_name(*h) for h in found.heads)}; completed for accuracy: "
        f"{', '.join(head_name(*h) for h in circuit.heads)}. Faithfulness {ev.faithfulness:.2f} "
        f"(LD {ev.circuit:.2f} of {ev.model:.2f}), circuit accuracy {c_acc:.2f}"
    )

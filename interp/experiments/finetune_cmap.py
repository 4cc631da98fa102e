"""Experiment `finetune_cmap` (Prakash et al. 2024, "Fine-Tuning Enhances Existing Mechanisms") on the zoo: the
base model's circuit, found by staged path patching where the base model solves the task; on the harder
prompts the fine-tune was trained on: its faithfulness in the base model and inside the fine-tune (complement
mean-ablated over the prompts), and output/input CMAP of each head group from the fine-tune into the base.

`task: ioi` (organism/base vs ioi-ft): name movers -> logits, S-inhibition -> name-mover queries,
duplicate/induction -> S-inhibition values at S2; found on normal IOI, evaluated on the hard variant.
`task: entity_tracking` (organism/rope-base vs et-ft, the paper's task): Prakash's groups A value fetcher
(logits, END) -> B position transmitter (A's queries) -> C position detector (B's values at the query label)
-> D structure reader (C's values at the previous query label), scored by the answer probability's relative
change; found with `circuit_n_boxes` boxes, evaluated with `n_boxes`; DCM of each group on the positional /
object-value / box-label-value desiderata, and the overlap with the circuit found in the fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from interp.circuits.compare import overlap
from interp.circuits.evaluate import EvalConfig, circuit_values, complete_circuit, random_circuits
from interp.circuits.graph import Circuit, parse_head
from interp.circuits.search import SearchConfig, ioi_group_stages, path_patch_search, prakash_stages
from interp.config import (
    ConfigError,
    check_fields,
    each,
    in_range,
    model_name,
    non_negative,
    one_of,
    param,
    positive,
)
from interp.experiments.api import Run, register_experiment
from interp.finetuning.cmap import cmap_input, cmap_output, cmap_sweep
from interp.models.base import HookedModel
from interp.models.load import BACKENDS, DTYPES
from interp.tasks.entity_tracking import MAX_BOXES
from interp.tasks.ioi import VARIANTS

METRICS = ("io_vs_s", "top1")
TASKS = ("ioi", "entity_tracking")


def _load(name: str, backend: str, device: str, dtype: str = "float32") -> HookedModel:
    from interp.models.load import load_model

    return load_model(name, backend=backend, device=device, dtype=dtype)


def _accuracy(prompts: Any, kind: str):
    """Top-1 accuracy over the vocabulary ("top1") or between the two names ("io_vs_s")."""
    from interp.metrics import Accuracy

    if kind not in METRICS:
        raise ValueError(f"metric must be 'io_vs_s' or 'top1'; got {kind!r}")
    return Accuracy.from_prompts(prompts, over="vocab" if kind == "top1" else "answer_vs_wrong")


def _ioi_prompts(tokenizer: Any, n: int, seed: int, variant: str):
    from interp.tasks import make

    return make("ioi", tokenizer, n=n, seed=seed, variant=variant, same_length=True)


@dataclass(frozen=True, kw_only=True)
class FinetuneCMAPConfig:
    """Parameters of `finetune_cmap` (defaults: the zoo organisms on CPU)."""

    base: str = param("organism/base", check=model_name)  # where the circuit is found
    finetuned: str = param("organism/ioi-ft", check=model_name)  # fine-tuned on hard IOI
    backend: str = param("tl", check=one_of(BACKENDS))
    dtype: str = param(
        "float32", check=one_of(DTYPES)
    )  # both models' weights (float16 for 7B models on a GPU)
    task: str = param("ioi", check=one_of(TASKS))  # ioi (organism/base vs ioi-ft) | entity_tracking
    # IOI variant the circuit is found on (where the base model does the task)
    circuit_variant: str = param("normal", check=one_of(VARIANTS))
    # IOI variant the fine-tune improves: accuracies, circuit evaluation and CMAP
    variant: str = param("hard", check=one_of(VARIANTS))
    # entity tracking: boxes of the evaluated prompts (where the fine-tune improves) and of the circuit's prompts
    n_boxes: int = param(9, check=in_range(2, MAX_BOXES))
    circuit_n_boxes: int = param(5, check=in_range(2, MAX_BOXES))
    # "io_vs_s": the answer's logit above the wrong one's (chance 0.5); "top1": top-1 over the vocabulary
    metric: str = param("io_vs_s", check=one_of(METRICS))
    n_prompts: int = param(200, check=positive)  # held-out prompts per variant (one token length)
    # heads per group: IOI name movers, S-inhibition, duplicate/induction heads; entity tracking A, B, C, D
    group_sizes: tuple[int, ...] = param((3, 2, 2), check=each(non_negative))
    n_random: int = param(5, check=non_negative)  # random circuits of the same group sizes (baseline)
    # 0: the staged circuit as found; > 0: complete it with heads kept at every position until it keeps this
    # share of the base model's accuracy on the circuit's prompts (`complete_circuit`, backward elimination)
    complete_accuracy: float = param(0.0, check=in_range(0, 1))
    # where the completion keeps that share: the evaluated prompts (where faithfulness is reported) or the
    # circuit's own prompts
    complete_on: str = param("evaluation", check=one_of(("evaluation", "circuit")))
    n_dcm: int = param(400, check=non_negative)  # entity tracking: DCM pairs per desideratum (0: no DCM)

    def __post_init__(self) -> None:
        check_fields(self, where="finetune_cmap")
        want = 3 if self.task == "ioi" else 4
        if len(self.group_sizes) != want:
            raise ConfigError(
                f"finetune_cmap.group_sizes: {self.task} has {want} head groups; give {want} sizes, got "
                f"{list(self.group_sizes)}"
            )


DEMO = {"n_prompts": 12, "n_random": 2, "n_dcm": 32}
# group name -> results key (IOI) and the entity-tracking groups' positions (Prakash et al.)
IOI_KEYS = {"name movers": "name_movers", "S-inhibition": "s_inhibition", "induction": "induction"}
ET_GROUP_POSITIONS = {
    "value_fetcher": "END",
    "position_transmitter": "END",
    "position_detector": "query_label",
    "structure_reader": "prev_query_label",
}
# Prakash et al. ablate the circuit's complement with per-position means over the ABC prompts (no template groups)
MEAN_ABLATION = EvalConfig(level="node", ablation="mean", mean_by=None)


@register_experiment("finetune_cmap", config=FinetuneCMAPConfig, demo=DEMO)
def finetune_cmap_experiment(cfg: FinetuneCMAPConfig, run: Run) -> dict[str, Any]:
    """The base model's IOI circuit inside its fine-tune, and which head group's fine-tuned outputs carry the gain."""
    from interp.metrics import LogitDiff
    from interp.plotting import bar, heatmap

    base = _load(cfg.base, cfg.backend, run.device, cfg.dtype)
    ft = _load(cfg.finetuned, cfg.backend, run.device, cfg.dtype)
    ps, found_on = _prompt_sets(cfg, base.tokenizer, run.seed)
    acc, top1 = _accuracy(ps, cfg.metric), _accuracy(ps, "top1")
    acc_found_on = _accuracy(found_on, cfg.metric)

    def accuracies() -> dict[str, float]:
        with torch.no_grad():
            lb, lf = base(ps.clean), ft(ps.clean)
            return {
                "base": float(acc(lb).mean()),
                "ft": float(acc(lf).mean()),
                "base_top1": float(top1(lb).mean()),
                "ft_top1": float(top1(lf).mean()),
                "base_circuit_task": float(acc_found_on(base(found_on.clean)).mean()),
            }

    accs = run.step("accuracy", accuracies)

    def search_in(model: HookedModel) -> dict[str, Any]:
        if cfg.task == "ioi":
            movers, inhibition, induction = cfg.group_sizes
            stages = ioi_group_stages((movers, inhibition, induction))
            res = path_patch_search(model, prompts=found_on, metric=LogitDiff, stages=stages)
        else:  # Prakash et al.: the answer probability's relative change, most negative heads chosen
            from interp.metrics import AnswerProb

            a, b, c, d = cfg.group_sizes
            config = SearchConfig(stages=prakash_stages(k=(a, b, c, d)), convention="prob_change")
            res = path_patch_search(model, prompts=found_on, metric=AnswerProb, config=config)
        return {
            "circuit": res.circuit().to_dict(),
            "grids": {  # the stages that ran (a stage whose receivers have no earlier heads scores nothing)
                IOI_KEYS.get(s.stage.name, s.stage.name): s.scores.tolist()
                for s in res.stages
                if bool(torch.isfinite(s.scores).any())
            },
        }

    found = run.step("circuit", lambda: search_in(base))
    circuit = Circuit.from_dict(found["circuit"])
    L, H = base.cfg.n_layers, base.cfg.n_heads
    # the circuit whose faithfulness is reported: the staged one at its positions, or its completion
    evaluated, eval_config = circuit, MEAN_ABLATION
    if cfg.complete_accuracy > 0:
        on_eval = cfg.complete_on == "evaluation"
        target = cfg.complete_accuracy * accs["base" if on_eval else "base_circuit_task"]
        eval_config = replace(MEAN_ABLATION, use_positions=False)

        def completion() -> dict[str, Any]:
            grown, _ = complete_circuit(
                base,
                replace(circuit, positions={}),
                prompts=ps if on_eval else found_on,
                metric=acc if on_eval else acc_found_on,
                target=target,
                config=eval_config,
            )
            return grown.to_dict()

        evaluated = Circuit.from_dict(run.step("completed_circuit", completion))
    randoms = {
        f"random {i}": random_circuits(base, evaluated, n=1, seed=run.seed + i, per_group=True)[0]
        for i in range(cfg.n_random)
    }

    def evaluation() -> dict[str, Any]:
        def scores(
            model: HookedModel, prompts: Any, circuits: dict[str, Circuit], metric: Any, config=eval_config
        ) -> dict:
            values = circuit_values(
                model, list(circuits.values()), prompts=prompts, metric=metric, config=config
            )
            return {k: float(v) for k, v in zip(circuits, values.mean(-1), strict=True)}

        out = cmap_output(base, ft, ps, circuit, metric=acc)
        out_ld = cmap_output(base, ft, ps, circuit, metric=LogitDiff)
        inp = cmap_input(base, ft, ps, circuit, metric=acc)
        sweep = {
            c: cmap_sweep(base, ft, ps, component=c, metric=LogitDiff).scores.tolist()
            for c in ("attn_out", "mlp_out")
        }
        staged = {}
        if (
            evaluated is not circuit
        ):  # the staged circuit at its stages' positions (Prakash et al.'s protocol)
            staged = {
                "in_base": scores(base, ps, {"staged": circuit}, acc, MEAN_ABLATION)["staged"],
                "on_task": scores(base, found_on, {"staged": circuit}, acc_found_on, MEAN_ABLATION)["staged"],
            }
        return {
            "in_base": scores(base, ps, {"base circuit": evaluated, **randoms}, acc),
            "in_ft": scores(ft, ps, {"base circuit": evaluated}, acc),
            "on_task": scores(base, found_on, {"base circuit": evaluated, **randoms}, acc_found_on),
            **({"staged": staged} if staged else {}),
            "cmap_out": out.scores(),
            "cmap_out_logit_diff": out_ld.scores(),
            "cmap_in": inp.scores(),
            "sweep": sweep,
            "ld": {"base": float(out_ld.receiver.mean()), "ft": float(out_ld.sender.mean())},
        }

    ev = run.step("evaluation", evaluation)
    # the prompts the circuit was found on: an IOI variant, or a number of boxes ("b5")
    found_label = cfg.circuit_variant if cfg.task == "ioi" else f"b{cfg.circuit_n_boxes}"
    et: dict[str, Any] = {}
    if "staged" in ev:
        et |= {
            "circuit_size": len(evaluated.heads),
            "completion_heads": _heads_text(evaluated, "completion", " ")
            if "completion" in evaluated.groups
            else "",
            "staged_circuit_faithfulness": ev["staged"]["in_base"] / accs["base"] if accs["base"] else None,
            f"staged_circuit_faithfulness_{found_label}": (
                ev["staged"]["on_task"] / accs["base_circuit_task"] if accs["base_circuit_task"] else None
            ),
        }
    if cfg.task == "entity_tracking":  # the fine-tune's own circuit and each group's function (DCM)
        ft_found = run.step("circuit_in_ft", lambda: search_in(ft))
        ft_circuit = Circuit.from_dict(ft_found["circuit"])
        ov = overlap(dict(circuit.groups), dict(ft_circuit.groups))
        et |= {
            "ft_circuit_heads": "; ".join(
                f"{g}: {_heads_text(ft_circuit, g, ' ')}" for g in ft_circuit.groups
            ),
            "circuit_overlap": ov.overlap,
            "circuit_jaccard": ov.jaccard,
            **{f"overlap_{g}": v["overlap"] for g, v in ov.per_stage.items()},
        }
        if cfg.n_dcm:
            dcm_rows = run.step("dcm", lambda: _dcm_table(base, circuit, cfg, run.seed))
            run.table(dcm_rows, "dcm")
            et["dcm_test_accuracy"] = {
                f"{r['group']}/{r['desideratum']}": r["test_accuracy"] for r in dcm_rows
            }
            et["dcm_best_desideratum"] = {
                g: max((r for r in dcm_rows if r["group"] == g), key=lambda r: r["test_accuracy"])[
                    "desideratum"
                ]
                for g in circuit.groups
            }
    random_acc = sum(ev["in_base"][k] for k in randoms) / max(1, len(randoms))
    faith = ev["in_base"]["base circuit"] / accs["base"] if accs["base"] else float("nan")
    per_group = {k: v for k, v in ev["cmap_out"].items() if k != "all groups"}
    best = max(per_group, key=lambda k: per_group[k])
    rows = [
        {
            "heads patched": name,
            "accuracy (base <- ft)": ev["cmap_out"][name],
            "logit diff (base <- ft)": ev["cmap_out_logit_diff"][name],
            "input CMAP accuracy": ev["cmap_in"].get(name, float("nan")),
            "heads": _heads_text(circuit, name, "; ") if name in circuit.groups else "all",
        }
        for name in ev["cmap_out"]
    ]
    run.table(rows, "cmap")
    run.table(
        [
            {
                "name": g,
                "heads": [list(parse_head(n)) for n in members],
                "position": circuit.positions.get(members[0]),
            }
            for g, members in circuit.groups.items()
        ],
        "circuit",
    )
    names = ["base (unpatched)", *ev["cmap_out"], "ft (unpatched)"]
    run.figure(
        bar(
            [accs["base"], *ev["cmap_out"].values(), accs["ft"]],
            labels=names,
            x_title="heads patched",
            y_title="accuracy",
            title="Output CMAP: fine-tuned head outputs patched into the base model",
        ),
        "cmap_output",
    )
    for key, grid in found["grids"].items():
        run.figure(
            heatmap(
                torch.nan_to_num(torch.tensor(grid)).numpy(),
                x_labels=[str(h) for h in range(H)],
                y_labels=[str(i) for i in range(L)],
                x_title="head",
                y_title="layer",
                title=f"Path patching: {key.replace('_', ' ')} stage",
            ),
            f"path_patching_{key}",
        )
    tokens = base.to_str_tokens(ps.clean[0])
    for comp, grid in ev["sweep"].items():
        run.figure(
            heatmap(
                torch.tensor(grid).numpy(),
                x_labels=[f"{i}:{t}" for i, t in enumerate(tokens)],
                y_labels=[str(i) for i in range(L)],
                x_title="position",
                y_title="layer",
                title=f"Component CMAP ({comp}, ft -> base): logit difference",
            ),
            f"cmap_sweep_{comp}",
        )
    faith_task = (
        ev["on_task"]["base circuit"] / accs["base_circuit_task"] if accs["base_circuit_task"] else None
    )
    random_task = sum(ev["on_task"][k] for k in randoms) / max(1, len(randoms))
    return {
        "base_acc": accs["base"],
        "ft_acc": accs["ft"],
        "base_circuit_faithfulness": faith,
        "base_top1_acc": accs["base_top1"],
        "ft_top1_acc": accs["ft_top1"],
        f"base_acc_{found_label}": accs["base_circuit_task"],
        f"base_circuit_faithfulness_{found_label}": faith_task,
        f"random_circuit_acc_{found_label}": random_task,
        "base_circuit_acc": ev["in_base"]["base circuit"],
        "random_circuit_acc": random_acc,
        "base_circuit_acc_in_ft": ev["in_ft"]["base circuit"],
        "cmap_best_group": best,
        "cmap_base_acc_after": per_group[best],
        "cmap_all_groups_acc": ev["cmap_out"].get("all groups", per_group[best]),
        "base_logit_diff": ev["ld"]["base"],
        "ft_logit_diff": ev["ld"]["ft"],
        "circuit_heads": "; ".join(f"{g}: {_heads_text(circuit, g, ' ')}" for g in circuit.groups),
        **et,
    }


def _prompt_sets(cfg: FinetuneCMAPConfig, tokenizer: Any, seed: int) -> tuple[Any, Any]:
    """(evaluation prompts: where the fine-tune improves, prompts the circuit is found on: where base succeeds)."""
    if cfg.task == "ioi":
        return (
            _ioi_prompts(tokenizer, cfg.n_prompts, seed + 7, cfg.variant),
            _ioi_prompts(tokenizer, cfg.n_prompts, seed + 8, cfg.circuit_variant),
        )
    from interp.tasks import make

    def et(n_boxes: int, s: int) -> Any:
        return make("entity_tracking", tokenizer, n=cfg.n_prompts, seed=s, n_boxes=n_boxes, same_length=True)

    return et(cfg.n_boxes, seed + 7), et(cfg.circuit_n_boxes, seed + 8)


def _dcm_table(model: HookedModel, circuit: Circuit, cfg: FinetuneCMAPConfig, seed: int) -> list[dict]:
    """DCM (Prakash et al.'s settings) of every head group at its position, on each entity-tracking
    desideratum (with `circuit_n_boxes` boxes): test accuracy of patching the selected heads only."""
    from interp.circuits.dcm import DCMConfig, dcm
    from interp.tasks.entity_tracking import DESIDERATA, desiderata

    rows = []
    for kind in DESIDERATA:
        base_set, source_set, targets = desiderata(
            model.tokenizer, kind, n=cfg.n_dcm, seed=seed + 11, n_boxes=cfg.circuit_n_boxes
        )
        for group, members in circuit.groups.items():
            heads = sorted(parse_head(n) for n in members)
            res = dcm(
                model,
                base=base_set,
                source=source_set,
                targets=targets,
                heads=heads,
                position=ET_GROUP_POSITIONS.get(group, "END"),
                config=DCMConfig(seed=seed),
                desideratum=kind,
            )
            rows.append(
                {
                    "group": group,
                    "desideratum": kind,
                    "test_accuracy": res.test_accuracy,
                    "val_accuracy": res.val_accuracy,
                    "n_heads": len(heads),
                    "selected": " ".join(f"{a}.{b}" for a, b in res.selected),
                }
            )
    return rows


def _heads_text(circuit: Circuit, group: str, sep: str) -> str:
    """A group's heads as "layer.head" joined by `sep` ("2.1; 3.0")."""
    return sep.join(f"{a}.{b}" for a, b in sorted(parse_head(n) for n in circuit.groups[group]))

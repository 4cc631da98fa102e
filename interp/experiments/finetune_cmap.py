"""Experiment `finetune_cmap` (Prakash et al. 2024, "Fine-Tuning Enhances Existing Mechanisms") on the zoo: the
base model's IOI circuit, found by staged path patching on the IOI variant the base model solves (name movers ->
logits, S-inhibition -> name-mover queries, duplicate/induction -> S-inhibition values at S2); on the hard variant
that the fine-tune was trained on: its faithfulness in the base model and inside the fine-tune (complement
mean-ablated over the ABC prompts), and output/input CMAP of each head group from the fine-tune into the base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp.circuits.evaluate import EvalConfig, circuit_values, random_circuits
from interp.circuits.graph import Circuit, parse_head
from interp.circuits.search import ioi_group_stages, path_patch_search
from interp.config import check_fields, each, model_name, non_negative, one_of, param, positive
from interp.experiments.api import Run, register_experiment
from interp.finetuning.cmap import cmap_input, cmap_output, cmap_sweep
from interp.models.base import HookedModel
from interp.models.load import BACKENDS
from interp.tasks.ioi import VARIANTS

METRICS = ("io_vs_s", "top1")


def _load(name: str, backend: str, device: str) -> HookedModel:
    from interp.models.load import load_model

    return load_model(name, backend=backend, device=device)


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
    # IOI variant the circuit is found on (where the base model does the task)
    circuit_variant: str = param("normal", check=one_of(VARIANTS))
    # IOI variant the fine-tune improves: accuracies, circuit evaluation and CMAP
    variant: str = param("hard", check=one_of(VARIANTS))
    # "io_vs_s": IO's logit above S's (chance 0.5); "top1": IO top-1 over the vocabulary
    metric: str = param("io_vs_s", check=one_of(METRICS))
    n_prompts: int = param(200, check=positive)  # held-out prompts per variant (one token length)
    # name movers, S-inhibition, duplicate/induction heads
    group_sizes: tuple[int, int, int] = param((3, 2, 2), check=each(non_negative))
    n_random: int = param(5, check=non_negative)  # random circuits of the same group sizes (baseline)

    def __post_init__(self) -> None:
        check_fields(self, where="finetune_cmap")


DEMO = {"n_prompts": 12, "n_random": 2}
# Prakash et al. ablate the circuit's complement with per-position means over the ABC prompts (no template groups)
MEAN_ABLATION = EvalConfig(level="node", ablation="mean", mean_by=None)


@register_experiment("finetune_cmap", config=FinetuneCMAPConfig, demo=DEMO)
def finetune_cmap_experiment(cfg: FinetuneCMAPConfig, run: Run) -> dict[str, Any]:
    """The base model's IOI circuit inside its fine-tune, and which head group's fine-tuned outputs carry the gain."""
    from interp.metrics import LogitDiff
    from interp.plotting import bar, heatmap

    base, ft = _load(cfg.base, cfg.backend, run.device), _load(cfg.finetuned, cfg.backend, run.device)
    ps = _ioi_prompts(base.tokenizer, cfg.n_prompts, run.seed + 7, cfg.variant)
    found_on = _ioi_prompts(base.tokenizer, cfg.n_prompts, run.seed + 8, cfg.circuit_variant)
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

    def search() -> dict[str, Any]:
        res = path_patch_search(
            base, prompts=found_on, metric=LogitDiff, stages=ioi_group_stages(cfg.group_sizes)
        )
        keys = {"name movers": "name_movers", "S-inhibition": "s_inhibition", "induction": "induction"}
        return {
            "circuit": res.circuit().to_dict(),
            "grids": {  # the stages that ran (a stage whose receivers have no earlier heads scores nothing)
                keys[s.stage.name]: s.scores.tolist()
                for s in res.stages
                if bool(torch.isfinite(s.scores).any())
            },
        }

    found = run.step("circuit", search)
    circuit = Circuit.from_dict(found["circuit"])
    L, H = base.cfg.n_layers, base.cfg.n_heads
    randoms = {
        f"random {i}": random_circuits(base, circuit, n=1, seed=run.seed + i, per_group=True)[0]
        for i in range(cfg.n_random)
    }

    def evaluation() -> dict[str, Any]:
        def scores(model: HookedModel, prompts: Any, circuits: dict[str, Circuit], metric: Any) -> dict:
            values = circuit_values(
                model, list(circuits.values()), prompts=prompts, metric=metric, config=MEAN_ABLATION
            )
            return {k: float(v) for k, v in zip(circuits, values.mean(-1), strict=True)}

        out = cmap_output(base, ft, ps, circuit, metric=acc)
        out_ld = cmap_output(base, ft, ps, circuit, metric=LogitDiff)
        inp = cmap_input(base, ft, ps, circuit, metric=acc)
        sweep = {
            c: cmap_sweep(base, ft, ps, component=c, metric=LogitDiff).scores.tolist()
            for c in ("attn_out", "mlp_out")
        }
        return {
            "in_base": scores(base, ps, {"base circuit": circuit, **randoms}, acc),
            "in_ft": scores(ft, ps, {"base circuit": circuit}, acc),
            "on_task": scores(base, found_on, {"base circuit": circuit, **randoms}, acc_found_on),
            "cmap_out": out.scores(),
            "cmap_out_logit_diff": out_ld.scores(),
            "cmap_in": inp.scores(),
            "sweep": sweep,
            "ld": {"base": float(out_ld.receiver.mean()), "ft": float(out_ld.sender.mean())},
        }

    ev = run.step("evaluation", evaluation)
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
        f"base_acc_{cfg.circuit_variant}": accs["base_circuit_task"],
        f"base_circuit_faithfulness_{cfg.circuit_variant}": faith_task,
        f"random_circuit_acc_{cfg.circuit_variant}": random_task,
        "base_circuit_acc": ev["in_base"]["base circuit"],
        "random_circuit_acc": random_acc,
        "base_circuit_acc_in_ft": ev["in_ft"]["base circuit"],
        "cmap_best_group": best,
        "cmap_base_acc_after": per_group[best],
        "cmap_all_groups_acc": ev["cmap_out"].get("all groups", per_group[best]),
        "base_logit_diff": ev["ld"]["base"],
        "ft_logit_diff": ev["ld"]["ft"],
        "circuit_heads": "; ".join(f"{g}: {_heads_text(circuit, g, ' ')}" for g in circuit.groups),
    }


def _heads_text(circuit: Circuit, group: str, sep: str) -> str:
    """A group's heads as "layer.head" joined by `sep` ("2.1; 3.0")."""
    return sep.join(f"{a}.{b}" for a, b in sorted(parse_head(n) for n in circuit.groups[group]))

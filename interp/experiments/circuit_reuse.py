"""Experiment `circuit_reuse` (Merullo et al. 2024, "Circuit Component Reuse Across Tasks"): path-patching
stages (last position) for IOI and a second task, the top heads per stage, their overlap, and an intervention
that makes the IOI-only heads attend to the second task's distractor at the last token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from interp.circuits.classify import attention_evidence, classify
from interp.circuits.compare import overlap, stage_sets
from interp.circuits.graph import head_name
from interp.circuits.intervene import Intervention, accuracy_with
from interp.circuits.search import merullo_stages, path_patch_search, stages_figure
from interp.experiments.api import Run, register_experiment
from interp.tasks.copying import copy_prompts


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


DEMO = {
    "second_task": "copy",
    "second_task_options": {"length": 6, "query": 4},
    "distractor_positions": ["prev"],
    "role_positions": {"s_inhibition": ["prev"], "s1_next_reader": ["prev+1"], "mover": ["answer_pos"]},
    "accuracy_over": "vocab",
    "n_prompts": 32,
    "n_eval": 48,
}


@register_experiment("circuit_reuse", config=CircuitReuseConfig, demo=DEMO)
def circuit_reuse(cfg: CircuitReuseConfig, run: Run) -> dict[str, Any]:
    """IOI vs a second task: per-stage path patching, overlap, and an intervention on the IOI-only heads."""
    from interp.metrics import LogitDiff
    from interp.models.load import load_model
    from interp.tasks import make

    model = load_model(cfg.model, backend=cfg.backend, device=run.device, dtype=cfg.dtype)
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

"""Experiment `circuit_reuse` (Merullo et al. 2024, "Circuit Component Reuse Across Tasks"): path-patching
stages (last position) for IOI and a second task, the top heads per stage, their overlap, and an intervention
that makes the IOI-only heads attend to the second task's distractor at the last token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from interp.circuits.classify import IOI_BEHAVIOURS, attention_evidence, classify
from interp.circuits.compare import overlap, stage_sets
from interp.circuits.graph import head_name
from interp.circuits.intervene import Intervention, accuracy_with
from interp.circuits.search import merullo_stages, path_patch_search, stages_figure
from interp.config import (
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
from interp.models.load import BACKENDS, DTYPES
from interp.tasks.copying import copy_prompts
from interp.tasks.promptset import POSITION_SPEC
from interp.tasks.registry import TASKS


def _second_task(name: str, tok: Any, n: int, seed: int, options: dict[str, Any]):
    from interp.tasks import make

    if name == "copy":
        return copy_prompts(tok, n, seed, **options)
    return make(name, tok, n=n, seed=seed, same_length=True, **options)


def position_name(value: Any) -> str | None:
    """A PromptSet position name with an optional offset ("prev", "S1+1")."""
    return None if POSITION_SPEC.match(str(value)) else "is not a position name like 'prev' or 'S1+1'"


def roles_and_positions(value: Any) -> str | None:
    """IOI head classes mapped to position names."""
    for role, positions in (value or {}).items():
        if role not in (*IOI_BEHAVIOURS, "diffuse"):
            return f"names role {role!r}; valid roles: {', '.join([*IOI_BEHAVIOURS, 'diffuse'])}"
        bad = [p for p in positions if position_name(p)]
        if bad:
            return f"gives role {role!r} the positions {bad}, which are not position names"
    return None


@dataclass(frozen=True, kw_only=True)
class CircuitReuseConfig:
    """Parameters of `circuit_reuse` (Merullo et al. 2024 on the organisms; see the README)."""

    model: str = param("organism/base", check=model_name)
    backend: str = param("tl", check=one_of(BACKENDS))
    dtype: str = param("float32", check=one_of(DTYPES))
    # a task of interp.tasks, or "copy" (induction, `copy_prompts`)
    second_task: str = param("colored_objects", check=one_of(lambda: [*TASKS, "copy"]))
    second_task_options: dict[str, Any] = field(default_factory=dict)
    second_task_reason: str = ""  # why this second task (when not Colored Objects)
    n_prompts: int = param(96, check=positive)
    n_eval: int = param(192, check=positive)
    k: int = param(
        3, check=positive
    )  # heads chosen per path-patching stage (Merullo's stages, last position)
    # top share of heads per stage for the overlap (at least `min_per_stage` heads per stage)
    fraction: float = param(0.02, check=in_range(0, 1, open_low=True))
    min_per_stage: int = param(2, check=non_negative)
    # where the task-specific heads are made to look
    distractor_positions: tuple[str, ...] = param(("wrong_color",), check=each(position_name))
    # IOI role -> positions in the second task: each IOI-only head, classed by its IOI attention, is made to look
    # where its role points (heads of other roles are left alone); empty: every IOI-only head looks at
    # `distractor_positions` (Merullo et al.'s inhibition repair)
    role_positions: dict[str, tuple[str, ...]] = param(default_factory=dict, check=roles_and_positions)
    mix: float = param(1.0, check=in_range(0, 1))
    # options (the question's candidates) | vocab
    accuracy_over: str = param("options", check=one_of(("options", "vocab")))

    def __post_init__(self) -> None:
        check_fields(self, where="circuit_reuse")


DEMO = {
    "second_task": "copy",
    "second_task_options": {"length": 6, "query": 4},
    "distractor_positions": ["prev"],
    "role_positions": {"s_inhibition": ["prev"], "s1_next_reader": ["prev+1"], "mover": ["answer_pos"]},
    "accuracy_over": "vocab",
    "n_prompts": 24,
    "n_eval": 32,
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
    roles = run.step(
        "ioi_roles",
        lambda: {
            head_name(*h): classify(e, "END")
            for h, e in zip(specific, attention_evidence(model, ioi_eval, specific).values(), strict=True)
        },
    )
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

    def accuracies() -> dict[str, float]:
        def acc(interventions: list[Intervention], over: str) -> float:
            return accuracy_with(model, test, interventions, over=over)

        before, vocab_before = acc([], cfg.accuracy_over), acc([], "vocab")
        return {
            "before": before,
            "after": acc(ivs, cfg.accuracy_over) if ivs else before,
            "after_distractor_attention": acc(plain, cfg.accuracy_over) if plain else before,
            "vocab_before": vocab_before,
            "vocab_after": acc(ivs, "vocab") if ivs else vocab_before,
        }

    accs = run.step("intervention", accuracies)
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
        "cobj_acc_before": accs["before"],
        "cobj_acc_after": accs["after"],
        "acc_after_distractor_attention": accs["after_distractor_attention"],
        "vocab_acc_before": accs["vocab_before"],
        "vocab_acc_after": accs["vocab_after"],
    }

"""Staged path-patching circuit search (Wang et al. 2022; Merullo et al. 2024; Prakash et al. 2024).

A search is a sequence of `Stage`s. The first usually scores every head's direct effect on the logits at the
last token; each later stage scores every earlier head's effect through the q, k or v inputs of the heads an
earlier stage chose, at a named position, and chooses heads by top-k or by a threshold on the stage's scores
normalised by their largest magnitude. Every stage is one batched `interp.patching.path_patch` call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from interp.circuits.graph import Circuit, Kept, head_name
from interp.models.base import HookedModel
from interp.patching.inputs import MetricLike, check_count, check_prompt_set
from interp.patching.path import CONVENTIONS, PathPatchResult, path_patch
from interp.sites import Site
from interp.tasks.promptset import POSITION_SPEC, PromptSet

RECEIVERS = ("logits", "q", "k", "v")
SELECT = ("top_k", "threshold")
SIGNS = ("positive", "negative", "abs")


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One path-patching stage: which receivers, at which positions, and how heads are chosen.

    `receivers`: "logits" or the "q" / "k" / "v" inputs of the heads chosen by stage `of` (default: the
    previous stage). `sender_pos` / `receiver_pos`: a PromptSet position name, optionally with an offset
    ("S1+1"), or None for every position. `sign`: which scores count as important: "positive" (the logit-diff
    convention: patching moves the metric towards the corrupt run), "negative" (Prakash et al.'s most negative
    probability change) or "abs". A head is chosen only if its oriented normalised score exceeds `min_score`.
    """

    name: str
    receivers: str = "logits"
    of: str | None = None
    sender_pos: str | None = "END"
    receiver_pos: str | None = "END"
    select: str = "top_k"
    k: int = 3
    threshold: float = 0.5
    sign: str = "positive"
    min_score: float = 0.0
    exclude_chosen: bool = True  # heads chosen by earlier stages are not chosen again

    def __post_init__(self) -> None:
        if self.receivers not in RECEIVERS:
            raise ValueError(
                f"stage {self.name!r}: receivers must be one of {RECEIVERS}, got {self.receivers!r}"
            )
        if self.select not in SELECT:
            raise ValueError(f"stage {self.name!r}: select must be one of {SELECT}, got {self.select!r}")
        if self.sign not in SIGNS:
            raise ValueError(f"stage {self.name!r}: sign must be one of {SIGNS}, got {self.sign!r}")
        for p in (self.sender_pos, self.receiver_pos):
            if p is not None and not POSITION_SPEC.match(p):
                raise ValueError(
                    f"stage {self.name!r}: position {p!r} must be a name with an optional offset "
                    "like 'S1+1', or None"
                )
        if self.k < 0:
            raise ValueError(f"stage {self.name!r}: k must be >= 0")


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """A staged search: its stages, the path-patching convention and what is frozen."""

    stages: tuple[Stage, ...]
    convention: str = "logit_diff"
    freeze: str = "heads"

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a search needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique; got {names}")
        if self.stages[0].receivers != "logits":
            raise ValueError("the first stage must have receivers='logits'")
        for i, s in enumerate(self.stages):
            if s.of is not None and s.of not in names[:i]:
                raise ValueError(f"stage {s.name!r} receives from {s.of!r}, which is not an earlier stage")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}; got {self.convention!r}")


def ioi_stages(
    *,
    k_mover: int = 3,
    k_inhibition: int = 4,
    k_induction: int = 4,
    k_previous: int = 2,
) -> tuple[Stage, ...]:
    """Wang et al. 2022's order: movers (logits at END) → S-inhibition (movers' queries at END) → induction /
    duplicate-token (S-inhibition values at S2) → previous-token (induction keys at S1+1)."""
    return (
        Stage(name="mover", receivers="logits", sender_pos="END", k=k_mover),
        Stage(name="s_inhibition", receivers="q", sender_pos="END", receiver_pos="END", k=k_inhibition),
        Stage(name="induction_duplicate", receivers="v", sender_pos="S2", receiver_pos="S2", k=k_induction),
        Stage(name="previous_token", receivers="k", sender_pos="S1+1", receiver_pos="S1+1", k=k_previous),
    )


def ioi_group_stages(sizes: tuple[int, int, int] = (3, 2, 2)) -> tuple[Stage, ...]:
    """The IOI head groups as Prakash et al. 2024 patch them across models (experiment `finetune_cmap`): name
    movers (logits at END) → S-inhibition (the movers' queries at END) → induction / duplicate-token heads (at
    S2, through the S-inhibition heads' values read at END); the top `sizes` heads per group, whatever the sign
    of their scores."""
    movers, inhibition, induction = sizes
    anything = float("-inf")  # no minimum score: the top k of the stage
    return (
        Stage(name="name movers", receivers="logits", sender_pos="END", k=movers, min_score=anything),
        Stage(
            name="S-inhibition",
            receivers="q",
            sender_pos="END",
            receiver_pos="END",
            k=inhibition,
            min_score=anything,
        ),
        Stage(
            name="induction",
            receivers="v",
            sender_pos="S2",
            receiver_pos="END",
            k=induction,
            min_score=anything,
        ),
    )


def merullo_stages(*, k: int = 3) -> tuple[Stage, ...]:
    """Merullo et al. 2024's iterated stages at the last position only: logits → movers' queries → the
    queries of those heads (the exact receiver list per task is in their JSON configs: UNVERIFIED here)."""
    return (
        Stage(name="mover", receivers="logits", sender_pos="END", k=k),
        Stage(name="inhibition", receivers="q", sender_pos="END", receiver_pos="END", k=k),
        Stage(name="earlier", receivers="q", sender_pos="END", receiver_pos="END", k=k),
    )


def prakash_stages(*, k: tuple[int, int, int, int] = (20, 5, 10, 5)) -> tuple[Stage, ...]:
    """Prakash et al. 2024's groups (use convention="prob_change"; most negative heads chosen): A value fetcher
    (logits, last token) → B position transmitter (A's queries) → C position detector (B's values at the query
    label) → D structure reader (C's values at the previous query label). Llama defaults k = 20/5/10/5."""
    a, b, c, d = k
    return (
        Stage(name="value_fetcher", receivers="logits", sender_pos="END", k=a, sign="negative"),
        Stage(
            name="position_transmitter",
            receivers="q",
            sender_pos="END",
            receiver_pos="END",
            k=b,
            sign="negative",
        ),
        Stage(
            name="position_detector",
            receivers="v",
            sender_pos="query_label",
            receiver_pos="query_label",
            k=c,
            sign="negative",
        ),
        Stage(
            name="structure_reader",
            receivers="v",
            sender_pos="prev_query_label",
            receiver_pos="prev_query_label",
            k=d,
            sign="negative",
        ),
    )


PRESETS = {
    "ioi": ioi_stages,
    "ioi_groups": ioi_group_stages,
    "merullo": merullo_stages,
    "prakash": prakash_stages,
}


def resolve_position(prompts: Any, spec: str | None) -> Tensor | None:
    """None (every position), or one position per prompt from a PromptSet name with an optional offset."""
    return None if spec is None else prompts.position(spec)


@dataclass(frozen=True, kw_only=True, eq=False)
class StageResult:
    """One stage: raw scores [layer, head] (NaN for non-senders), normalised scores, and the chosen heads."""

    stage: Stage
    scores: Tensor
    normalised: Tensor
    chosen: list[tuple[int, int]]
    receivers: list[tuple[int, int]]  # the heads whose inputs received (empty for logits)
    baseline: dict[str, float]


@dataclass(frozen=True, kw_only=True, eq=False)
class SearchResult:
    """The stages of a search, in order, and the circuit they define."""

    stages: list[StageResult]
    config: SearchConfig

    def __getitem__(self, name: str) -> StageResult:
        for s in self.stages:
            if s.stage.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.stage.name for s in self.stages]}")

    @property
    def heads(self) -> list[tuple[int, int]]:
        return sorted({h for s in self.stages for h in s.chosen})

    def circuit(self) -> Circuit:
        """Nodes = chosen heads grouped by stage, kept at their stage's sender position; edges from each chosen
        head to its receivers (logits or the receiving heads' q/k/v); scores = normalised stage scores."""
        nodes: list[str] = []
        edges: list[tuple[str, str]] = []
        scores: dict[str, float] = {}
        groups: dict[str, tuple[str, ...]] = {}
        positions: dict[str, Kept] = {}
        for s in self.stages:
            names = [head_name(*h) for h in s.chosen]
            groups[s.stage.name] = tuple(n for n in names if n not in nodes)
            for (layer, h), n in zip(s.chosen, names, strict=True):
                val = float(s.normalised[layer, h])
                if n not in nodes:
                    nodes.append(n)
                    scores[n] = val
                    if s.stage.sender_pos is not None:
                        positions[n] = s.stage.sender_pos
                targets = (
                    ["logits"]
                    if s.stage.receivers == "logits"
                    else [f"{head_name(*r)}.{s.stage.receivers}" for r in s.receivers]
                )
                for t in targets:
                    edges.append((n, t))
                    scores[f"{n}->{t}"] = val
        return Circuit(
            nodes=tuple(nodes),
            edges=tuple(edges),
            scores=scores,
            groups={k: v for k, v in groups.items() if v},
            positions=positions,
            provenance={
                "method": "path_patching",
                "convention": self.config.convention,
                "stages": [asdict(s.stage) for s in self.stages],
                "title": "Path-patching circuit",
            },
        )

    def to_frame(self):
        """One row per (stage, sender head): raw and normalised score, chosen or not."""
        import pandas as pd

        rows = []
        for s in self.stages:
            L, H = s.scores.shape
            for layer in range(L):
                for h in range(H):
                    if torch.isfinite(s.scores[layer, h]):
                        rows.append(
                            {
                                "stage": s.stage.name,
                                "layer": layer,
                                "head": h,
                                "score": float(s.scores[layer, h]),
                                "normalised": float(s.normalised[layer, h]),
                                "chosen": (layer, h) in s.chosen,
                            }
                        )
        return pd.DataFrame(rows)

    def figure(self):
        """Per-stage heatmaps of normalised scores (layers down, heads across)."""
        return stages_figure(
            {s.stage.name: s.normalised for s in self.stages},
            title=f"Path-patching stages (normalised scores, {self.config.convention})",
        )


def stages_figure(scores: dict[str, Tensor | list], *, title: str = "Path-patching stages"):
    """One heatmap per stage of [layer, head] scores (normalised to [-1, 1]), side by side."""
    from plotly.subplots import make_subplots

    from interp.plotting.style import DIVERGING, apply_style

    n = len(scores)
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(scores), horizontal_spacing=0.04)
    for i, z in enumerate(scores.values(), 1):
        fig.add_heatmap(
            z=torch.as_tensor(z).float().numpy(),
            colorscale=DIVERGING,
            zmin=-1,
            zmax=1,
            zmid=0,
            row=1,
            col=i,
            showscale=i == n,
            hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>",
        )
        fig.update_yaxes(autorange="reversed", title_text="layer" if i == 1 else None, row=1, col=i)
        fig.update_xaxes(title_text="head", row=1, col=i)
    fig.update_layout(title_text=title)
    return apply_style(fig, width=max(480, 260 * n), height=420)


def _choose(
    stage: Stage, normalised: Tensor, senders: list[tuple[int, int]], taken: set[tuple[int, int]]
) -> list[tuple[int, int]]:
    oriented = {"positive": normalised, "negative": -normalised, "abs": normalised.abs()}[stage.sign]
    cands = [
        (float(oriented[h]), h)
        for h in senders
        if torch.isfinite(oriented[h])
        and float(oriented[h]) > stage.min_score
        and not (stage.exclude_chosen and h in taken)
    ]
    cands.sort(key=lambda x: (-x[0], x[1]))
    if stage.select == "top_k":
        return sorted(h for _, h in cands[: stage.k])
    return sorted(h for v, h in cands if v >= stage.threshold)


def path_patch_search(
    model: HookedModel,
    *,
    prompts: PromptSet,
    metric: MetricLike,
    config: SearchConfig | None = None,
    stages: tuple[Stage, ...] | None = None,
    max_senders_per_pass: int = 64,
) -> SearchResult:
    """Run the stages of `config` (or `stages` with the default convention) on `prompts` (a PromptSet).

    Senders of a stage are every head in a layer before its deepest receiver; each stage's scores are
    normalised by their largest magnitude before heads are chosen.
    """
    if config is None:
        if stages is None:
            raise ValueError("pass config= (a SearchConfig) or stages=")
        config = SearchConfig(stages=tuple(stages))
    if not isinstance(prompts, PromptSet):
        raise TypeError("prompts must be a PromptSet (named positions are needed for the stages)")
    check_prompt_set(prompts, "path_patch_search")
    check_count(max_senders_per_pass, "max_senders_per_pass", "path_patch_search")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    # check every position spec before the first forward pass
    for s in config.stages:
        resolve_position(prompts, s.sender_pos)
        resolve_position(prompts, s.receiver_pos)
    done: dict[str, StageResult] = {}
    taken: set[tuple[int, int]] = set()
    results: list[StageResult] = []
    for i, stage in enumerate(config.stages):
        if stage.receivers == "logits":
            receivers: list[tuple[int, int]] = []
            recv: str | list[Site] = "logits"
            senders = [(layer, h) for layer in range(L) for h in range(H)]
        else:
            src = stage.of or config.stages[i - 1].name
            receivers = done[src].chosen
            if stage.receivers in ("k", "v") and model.cfg.n_kv_heads != H:
                rep = H // model.cfg.n_kv_heads
                recv = list(
                    dict.fromkeys(Site(stage.receivers, layer, head=h // rep) for layer, h in receivers)
                )
            else:
                recv = [Site(stage.receivers, layer, head=h) for layer, h in receivers]
            deepest = max((layer for layer, _ in receivers), default=0)
            senders = [(layer, h) for layer in range(deepest) for h in range(H)]
        if not senders:  # nothing can feed the receivers (no chosen heads, or they sit in layer 0)
            nan = torch.full((L, H), float("nan"))
            res = StageResult(
                stage=stage, scores=nan, normalised=nan, chosen=[], receivers=receivers, baseline={}
            )
        else:
            pp: PathPatchResult = path_patch(
                model,
                clean=prompts,
                metric=metric,
                receivers=recv,
                senders=senders,
                freeze=config.freeze,
                sender_pos=resolve_position(prompts, stage.sender_pos),
                receiver_pos=resolve_position(prompts, stage.receiver_pos),
                convention=config.convention,
                max_senders_per_pass=max_senders_per_pass,
            )
            top = pp.scores.nan_to_num().abs().max()
            normalised = pp.scores / top if float(top) > 0 else pp.scores * 0.0
            chosen = _choose(stage, normalised, senders, taken)
            res = StageResult(
                stage=stage,
                scores=pp.scores,
                normalised=normalised,
                chosen=chosen,
                receivers=receivers,
                baseline=pp.baseline,
            )
        taken |= set(res.chosen)
        done[stage.name] = res
        results.append(res)
    return SearchResult(stages=results, config=config)

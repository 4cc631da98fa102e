"""Circuit overlap across tasks or models (Merullo et al. 2024, "Circuit Component Reuse", §4).

Per task and per path-patching stage, the heads in the top `fraction` (2% in the paper) of scores normalised per
task and stage; a task's circuit is the union over its stages. Two circuits are compared by the share of the first
circuit that the second reuses (`overlap` = |A ∩ B| / |A|, our reading of the paper's "25/32, or 78%"; the exact
denominator is unverified) and by Jaccard |A ∩ B| / |A ∪ B|, overall and stage by stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from interp.circuits.graph import Circuit, head_name, parse_head

Head = tuple[int, int]


def top_fraction(
    scores: Tensor, fraction: float = 0.02, *, sign: str = "abs", min_count: int = 1
) -> set[Head]:
    """The heads ([layer, head] scores, NaN ignored) in the top `fraction` by |score| ("abs"), score
    ("positive") or −score ("negative"); at least `min_count` (ceil(fraction · n_heads) otherwise)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if sign not in ("abs", "positive", "negative"):
        raise ValueError(f"sign must be 'abs', 'positive' or 'negative', got {sign!r}")
    s = {"abs": scores.abs(), "positive": scores, "negative": -scores}[sign].float()
    flat = s.flatten()
    finite = torch.isfinite(flat)
    k = max(min_count, math.ceil(fraction * int(scores.numel())))
    k = min(k, int(finite.sum()))
    idx = torch.where(finite, flat, torch.tensor(float("-inf"))).topk(k).indices
    H = scores.shape[1]
    return {(int(i) // H, int(i) % H) for i in idx}


def stage_sets(
    stage_scores: Mapping[str, Tensor], fraction: float = 0.02, *, sign: str = "abs", min_count: int = 1
) -> dict[str, set[Head]]:
    """Per stage, the top-`fraction` heads of the stage's scores normalised by their largest magnitude."""
    out = {}
    for name, s in stage_scores.items():
        top = s.nan_to_num().abs().max()
        out[name] = top_fraction(s / top if float(top) > 0 else s, fraction, sign=sign, min_count=min_count)
    return out


@dataclass(frozen=True, kw_only=True)
class Overlap:
    """Two head sets, what they share, and per-stage overlaps when both are staged."""

    a: frozenset[Head]
    b: frozenset[Head]
    per_stage: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def shared(self) -> frozenset[Head]:
        return self.a & self.b

    @property
    def overlap(self) -> float:
        """|A ∩ B| / |A|: the share of the first circuit the second reuses."""
        return len(self.shared) / len(self.a) if self.a else float("nan")

    @property
    def jaccard(self) -> float:
        union = self.a | self.b
        return len(self.shared) / len(union) if union else float("nan")

    def to_dict(self) -> dict[str, Any]:
        names = lambda hs: sorted(head_name(*h) for h in hs)  # noqa: E731
        return {
            "a": names(self.a),
            "b": names(self.b),
            "shared": names(self.shared),
            "only_a": names(self.a - self.b),
            "only_b": names(self.b - self.a),
            "overlap": self.overlap,
            "jaccard": self.jaccard,
            "n_shared": len(self.shared),
            "n_a": len(self.a),
            "n_b": len(self.b),
            "per_stage": self.per_stage,
        }


def _heads(x: Any) -> set[Head]:
    if isinstance(x, Circuit):
        return set(x.heads)
    if isinstance(x, Mapping):  # stage -> heads
        return {h for v in x.values() for h in _heads(v)}
    return {parse_head(h) if isinstance(h, str) else (int(h[0]), int(h[1])) for h in x}


def overlap(a: Any, b: Any) -> Overlap:
    """Compare two circuits: `Circuit`s, head collections ((layer, head) or "a3.1") or stage -> heads maps
    (stages are compared one to one in order, and the unions overall)."""
    per_stage: dict[str, dict[str, float]] = {}
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for (na, ha), (nb, hb) in zip(a.items(), b.items(), strict=False):
            o = Overlap(a=frozenset(_heads(ha)), b=frozenset(_heads(hb)))
            per_stage[na if na == nb else f"{na}|{nb}"] = {
                "overlap": o.overlap,
                "jaccard": o.jaccard,
                "n_shared": len(o.shared),
            }
    return Overlap(a=frozenset(_heads(a)), b=frozenset(_heads(b)), per_stage=per_stage)

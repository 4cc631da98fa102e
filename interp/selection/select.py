"""Top-k selection from similarity scores, and export of the selected subset (MoNA, Ma et al. 2025, Algorithm 1).

The selection keeps the ⌊ratio·N⌋ (or `count`) highest scores; ties go to the lower index (a stable sort by
(−score, index)), so the same scores always give the same subset.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.files import atomic_write_text


def selection_size(n: int, *, ratio: float | None = None, count: int | None = None) -> int:
    """How many of `n` items a ratio in (0, 1] (⌊ratio·n⌋) or a count in [1, n] selects; raise otherwise."""
    if (ratio is None) == (count is None):
        raise ValueError("give exactly one of ratio= or count=")
    if n < 1:
        raise ValueError("the pool is empty: nothing to select from")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= n:
            raise ValueError(f"count must be an integer in [1, {n}] (the pool size), got {count!r}")
        return count
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must lie in (0, 1], got {ratio!r}")
    size = math.floor(round(ratio * n, 9))  # round first: 0.29 * 100 is 28.999999999999996 in floating point
    if size < 1:
        raise ValueError(
            f"ratio {ratio} of a pool of {n} selects nothing (⌊{ratio}·{n}⌋ = 0); raise the ratio"
        )
    return size


def top_indices(scores: Float[Tensor, " n"], size: int) -> Int[Tensor, " size"]:
    """Indices of the `size` highest scores, best first; ties broken by the lower index."""
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN: cannot rank them")
    order = torch.sort(
        -scores.float(), stable=True
    ).indices  # ascending −score; equal scores keep index order
    return order[:size].cpu()


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Selection:
    """The selected pool indices (best first), their scores, and how they were chosen."""

    indices: Int[Tensor, " size"]
    scores: Float[Tensor, " size"]
    method: str
    n_pool: int
    ratio: float | None = None
    count: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def precision(self, labels: Sequence[bool] | Tensor) -> float:
        """The fraction of selected items whose label (one per pool item) is true."""
        labels = torch.as_tensor(labels, dtype=torch.bool)
        if len(labels) != self.n_pool:
            raise ValueError(f"{len(labels)} labels for a pool of {self.n_pool}")
        return float(labels[self.indices].float().mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_pool": self.n_pool,
            "ratio": self.ratio,
            "count": self.count,
            "indices": self.indices.tolist(),
            "scores": self.scores.tolist(),
        }

    def export(self, folder: str | Path, records: Sequence[str | Mapping[str, Any]] | None = None) -> Path:
        """Write `selection.json` (indices, scores, method) and, given the pool's `records` (texts or dicts),
        `selected.jsonl` with one line per selected record (best first); both atomically. Returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "selection.json", json.dumps(self.to_dict(), indent=1))
        if records is not None:
            if len(records) != self.n_pool:
                raise ValueError(f"{len(records)} records for a pool of {self.n_pool}")
            lines = []
            for rank, (i, s) in enumerate(zip(self.indices.tolist(), self.scores.tolist(), strict=True)):
                rec = records[i]
                rec = {"text": rec} if isinstance(rec, str) else dict(rec)
                lines.append(json.dumps({"index": i, "rank": rank, "score": s, **rec}))
            atomic_write_text(folder / "selected.jsonl", "\n".join(lines) + "\n")
        return folder


def select_top(
    scores: Float[Tensor, " n"],
    *,
    ratio: float | None = None,
    count: int | None = None,
    method: str = "scores",
) -> Selection:
    """The ⌊ratio·N⌋ (or `count`) best-scoring pool items, in descending score order."""
    size = selection_size(len(scores), ratio=ratio, count=count)
    idx = top_indices(scores, size)
    return Selection(
        indices=idx,
        scores=scores.detach().float().cpu()[idx],
        method=method,
        n_pool=len(scores),
        ratio=ratio,
        count=count,
    )


def selections(scores: Mapping[str, Sequence[float]], ratio: float) -> dict[str, Selection]:
    """The top `ratio` of the pool by each method's scores (keys `method` or `method@seed`)."""
    return {k: select_top(torch.tensor(v), ratio=ratio, method=k.split("@")[0]) for k, v in scores.items()}


def precision_table(
    scores: Mapping[str, Sequence[float]], labels: Sequence[bool], ratios: Sequence[float]
) -> list[dict[str, Any]]:
    """One row per (method, ratio): precision, the random method averaged over its seeds (`random@<seed>`)."""
    rows = []
    for ratio in ratios:
        by_method: dict[str, list[float]] = {}
        n_selected: dict[str, int] = {}
        for key, sel in selections(scores, ratio).items():
            by_method.setdefault(key.split("@")[0], []).append(sel.precision(labels))
            n_selected[key.split("@")[0]] = len(sel)
        rows += [
            {"method": m, "ratio": ratio, "precision": sum(p) / len(p), "n_selected": n_selected[m]}
            for m, p in by_method.items()
        ]
    return rows

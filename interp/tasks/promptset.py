"""`PromptSet`: tokenised clean/corrupt prompt pairs with answers, wrong answers and named key positions."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

# shape aliases (module-level, so linters do not parse the dimension strings as forward references)
TokenIds = Int[Tensor, "batch pos"]
BatchIds = Int[Tensor, " batch"]
OptionIds = Int[Tensor, "batch k"]


POSITION_SPEC = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)([+-]\d+)?$")  # a position name with an optional offset


def _index_tensor(idx: Sequence[int] | Sequence[bool]) -> Tensor:
    return torch.tensor(list(idx)) if len(idx) else torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True, kw_only=True, eq=False)
class PromptSet:
    """A batch of clean prompts, their aligned corruptions, answers and key positions.

    Clean and corrupt prompts align token for token, so they share `attention_mask`; rows are right-padded
    with `pad_id`. `end` is the last real token, whose next-token prediction is scored. `positions` maps a
    name ("IO", "S2", "query_label", "END", ...) to one token index per prompt. `options`, when present,
    holds the candidate answers of each prompt (accuracy over options).
    """

    name: str
    clean: TokenIds
    corrupt: TokenIds
    attention_mask: TokenIds
    answer_ids: BatchIds
    wrong_ids: BatchIds
    end: BatchIds
    positions: dict[str, BatchIds]
    prompts: list[str]
    corrupt_prompts: list[str]
    metadata: list[dict[str, Any]]
    options: OptionIds | None = None
    pad_id: int = 0

    def __post_init__(self) -> None:
        b = self.clean.shape[0]
        if self.clean.ndim != 2 or self.corrupt.shape != self.clean.shape:
            raise ValueError(
                f"clean {tuple(self.clean.shape)} and corrupt {tuple(self.corrupt.shape)} "
                "must both be [batch, pos] of the same shape"
            )
        if self.attention_mask.shape != self.clean.shape:
            raise ValueError(
                f"attention_mask {tuple(self.attention_mask.shape)} must match clean "
                f"{tuple(self.clean.shape)}"
            )
        vectors = {
            "answer_ids": self.answer_ids,
            "wrong_ids": self.wrong_ids,
            "end": self.end,
            **{f"positions[{k!r}]": v for k, v in self.positions.items()},
        }
        for label, v in vectors.items():
            if v.shape != (b,):
                raise ValueError(f"{label} has shape {tuple(v.shape)}, expected ({b},)")
        for label, seq in (
            ("prompts", self.prompts),
            ("corrupt_prompts", self.corrupt_prompts),
            ("metadata", self.metadata),
        ):
            if len(seq) != b:
                raise ValueError(f"{label} has {len(seq)} entries for a batch of {b}")
        if self.options is not None and (self.options.ndim != 2 or self.options.shape[0] != b):
            raise ValueError(f"options has shape {tuple(self.options.shape)}, expected ({b}, k)")
        if b and not torch.equal(self.end, self.lengths - 1):
            raise ValueError("end must be the last real token (attention_mask.sum(1) - 1) of every prompt")

    def position(self, spec: str | int) -> BatchIds:
        """One token index per prompt: a name of `positions` (or "END" for `end`) with an optional offset
        ("S1+1", "END-2"), or a fixed index. Raises naming the valid names, or when it falls outside the prompts."""
        B, T = self.clean.shape
        if isinstance(spec, str):
            m = POSITION_SPEC.match(spec)
            named = {"END": self.end, **self.positions}
            if not m or m.group(1) not in named:
                raise ValueError(
                    f"position {spec!r}: prompt set {self.name!r} has positions {sorted(named)} "
                    "(optionally with an offset, e.g. 'S1+1')"
                )
            pos = named[m.group(1)].long() + int(m.group(2) or 0)
        else:
            pos = torch.full((B,), int(spec), dtype=torch.long, device=self.clean.device)
        if B and (int(pos.min()) < 0 or int(pos.max()) >= T):
            raise ValueError(f"position {spec!r} falls outside the prompts (0..{T - 1})")
        return pos

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def lengths(self) -> BatchIds:
        """Number of real tokens of each prompt (BOS included)."""
        return self.attention_mask.sum(1)

    @property
    def device(self) -> torch.device:
        return self.clean.device

    def subset(self, idx: Sequence[int] | Tensor | slice) -> PromptSet:
        """The prompts at `idx` (indices, a boolean mask or a slice), trimmed to their longest prompt."""
        if isinstance(idx, slice):
            rows = torch.arange(len(self))[idx]
        else:
            rows = idx if isinstance(idx, Tensor) else _index_tensor(idx)
            if rows.dtype == torch.bool:
                rows = rows.reshape(-1).nonzero().squeeze(-1)
            rows = rows.long().reshape(-1).cpu()
        width = int(self.lengths[rows].max()) if len(rows) else 0
        picked = rows.tolist()
        return replace(
            self,
            clean=self.clean[rows, :width],
            corrupt=self.corrupt[rows, :width],
            attention_mask=self.attention_mask[rows, :width],
            answer_ids=self.answer_ids[rows],
            wrong_ids=self.wrong_ids[rows],
            end=self.end[rows],
            positions={k: v[rows] for k, v in self.positions.items()},
            prompts=[self.prompts[i] for i in picked],
            corrupt_prompts=[self.corrupt_prompts[i] for i in picked],
            metadata=[self.metadata[i] for i in picked],
            options=None if self.options is None else self.options[rows],
        )

    def to(self, device: str | torch.device) -> PromptSet:
        """A copy with every tensor on `device`."""
        return replace(
            self,
            clean=self.clean.to(device),
            corrupt=self.corrupt.to(device),
            attention_mask=self.attention_mask.to(device),
            answer_ids=self.answer_ids.to(device),
            wrong_ids=self.wrong_ids.to(device),
            end=self.end.to(device),
            positions={k: v.to(device) for k, v in self.positions.items()},
            options=None if self.options is None else self.options.to(device),
        )

    def group_by_length(self) -> dict[int, PromptSet]:
        """One unpadded PromptSet per prompt length (in tokens), shortest first."""
        lengths = self.lengths.tolist()
        return {n: self.subset([i for i, m in enumerate(lengths) if m == n]) for n in sorted(set(lengths))}

    def same_length(self, length: int | None = None) -> PromptSet:
        """The prompts of one length: `length`, or the most common length (the shorter on ties)."""
        counts = Counter(self.lengths.tolist())
        if length is None:
            length = min(counts, key=lambda m: (-counts[m], m))
        if length not in counts:
            raise ValueError(f"no prompt has {length} tokens; lengths present: {sorted(counts)}")
        return self.group_by_length()[length]

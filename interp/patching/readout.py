"""What a metric reads from a forward pass, so the engines compute only that (positions, token ids)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class Readout:
    """A metric seen by the patching engines.

    `positions` [batch] and `token_ids` [batch, k] (None: whole vocabulary) say what the metric reads;
    `gathered(x [*lead, batch, k]) -> [*lead, batch]` computes it from those logits. Plain callables from logits
    `[batch, pos, vocab]` to `[batch]` have no positions: the engines then build full logits (slower).
    """

    positions: Tensor | None
    token_ids: Tensor | None
    gathered: Callable[[Tensor], Tensor] | None
    full: Callable[[Tensor], Tensor]
    name: str

    @property
    def needs_full_logits(self) -> bool:
        return self.positions is None

    def from_logits(self, logits: Tensor) -> Tensor:
        """Per-prompt values [batch] from full logits [batch, pos, vocab], in float32."""
        return self.full(logits).float()


def as_readout(metric: Any, *, batch: int, seq_len: int, d_vocab: int, device: torch.device) -> Readout:
    """Wrap a metric object (with `positions`, `token_ids`, `from_gathered`) or a plain callable.

    The metric is called once on zero logits of the right shape *before any forward pass*, so a metric that
    returns the wrong shape fails at once with a clear message.
    """
    if not callable(metric):
        raise TypeError(
            f"metric must be a metric object from interp.metrics or a callable from logits "
            f"[batch, pos, vocab] to [batch]; got {type(metric).__name__}"
        )
    positions = getattr(metric, "positions", None)
    token_ids = getattr(metric, "token_ids", None)
    gathered = getattr(metric, "from_gathered", None) if positions is not None else None
    name = getattr(metric, "name", None) or type(metric).__name__
    if positions is not None:
        positions = torch.as_tensor(positions, device=device).long()
        if positions.shape != (batch,):
            raise ValueError(
                f"metric {name} reads positions of shape {tuple(positions.shape)}, but the prompts "
                f"have batch {batch}"
            )
        if int(positions.max()) >= seq_len or int(positions.min()) < 0:
            raise ValueError(f"metric {name} reads positions outside [0, {seq_len})")
    if token_ids is not None:
        token_ids = torch.as_tensor(token_ids, device=device).long()
        if token_ids.ndim == 1:
            token_ids = token_ids[:, None]
        if token_ids.shape[0] != batch:
            raise ValueError(
                f"metric {name} reads token ids for batch {token_ids.shape[0]}, prompts have {batch}"
            )
    probe = torch.zeros(batch, seq_len, d_vocab, device=device)
    out = metric(probe)
    if not isinstance(out, Tensor) or out.shape != (batch,):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"metric {name} must return one value per prompt, shape ({batch},); it returned {shape}. "
            "Return per-prompt values; the engines average over the batch."
        )
    return Readout(positions=positions, token_ids=token_ids, gathered=gathered, full=metric, name=name)

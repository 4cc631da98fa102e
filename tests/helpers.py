"""Shared test data: random token batches with a few swapped positions, and a last-token logit difference."""

from __future__ import annotations

import torch


def swap_batch(batch: int, seq: int, *, seed: int, swap_at: tuple[int, ...]):
    """(clean, corrupt, ans, wrong): random ids in [4, 20); corrupt redraws the columns `swap_at`.

    Draw order (fixed, so a seed names one batch): clean, each swapped column, ans, wrong."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(4, 20, (batch, seq), generator=g)
    corrupt = clean.clone()
    for p in swap_at:
        corrupt[:, p] = torch.randint(4, 20, (batch,), generator=g)
    ans, wrong = torch.randint(4, 20, (batch,), generator=g), torch.randint(4, 20, (batch,), generator=g)
    return clean, corrupt, ans, wrong


def last_logit_diff(ans: torch.Tensor, wrong: torch.Tensor):
    """logits[b, -1, ans[b]] - logits[b, -1, wrong[b]] per prompt, on the logits' device."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        b = torch.arange(logits.shape[0], device=logits.device)
        return logits[b, -1, ans.to(logits.device)] - logits[b, -1, wrong.to(logits.device)]

    return metric

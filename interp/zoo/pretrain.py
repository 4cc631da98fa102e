"""Pre-training text of the organisms, cut to given token lengths (the analogue of OpenWebText substrings in
TuCo's chat-vs-pre-training comparison, Nuti et al. 2025)."""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from interp.tasks.encode import encode
from interp.zoo.corpus import BASE_MIX, Mixture


def pretrain_tokens(tokenizer: Any, lengths: list[int], seed: int) -> tuple[Tensor, Tensor]:
    """Pre-training-mixture documents (all sources but chat), each cut to the next of `lengths` tokens (BOS
    included); documents are concatenated until long enough. Right-padded ids and attention mask."""
    mix = Mixture({k: v for k, v in BASE_MIX.items() if k != "chat"})
    rng = random.Random(seed)
    rows: list[list[int]] = []
    for n in lengths:
        ids: list[int] = []
        while len(ids) < n:  # concatenate documents until long enough
            ex = mix.sample(rng)
            more = encode(tokenizer, f"{ex.prompt} {ex.completion}".strip())[0]
            ids = more if not ids else ids + more[1:]
        rows.append(ids[:n])
    width = max(lengths)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(out)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return out, mask

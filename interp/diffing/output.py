"""Output diffing: where, on a corpus, the fine-tune's next-token distribution departs most from the base's.

Per-token KL(ft || base) and log-probability differences come from one `paired_pass`; "diff mining" (the
diffing-toolkit's `kl` and `diff_mining` methods) ranks positions and documents by KL, with their contexts and both
models' predictions, and ranks vocabulary tokens by how often the fine-tune raised them most (log-prob increase
among the top-k of a position) and by their total probability gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.diffing.collect import PairedPass


def _tok(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [t.lstrip("Ġ▁") for t in tokenizer.convert_ids_to_tokens(list(ids))]


@dataclass(frozen=True, kw_only=True)
class MinedPosition:
    """One mined position: document `doc`, token `pos`, KL there, the token read, both models' predictions."""

    doc: int
    pos: int
    kl: float
    token: str
    next_token: str | None
    base_top: str
    ft_top: str
    context: str


def mine_positions(
    result: PairedPass,
    tokens: Tensor,
    tokenizer: Any,
    *,
    top: int = 50,
    context: int = 8,
    skip_bos: bool = True,
) -> list[MinedPosition]:
    """The `top` positions with the largest KL(ft || base), largest first, each with `context` tokens before it."""
    out = []
    for d, p in top_kl_positions(result, top, skip_bos=skip_bos).tolist():
        row = tokens[d]
        length = int(result.attention_mask[d].sum())
        ctx = _tok(tokenizer, row[max(0, p - context) : p + 1].tolist())
        nxt = _tok(tokenizer, [int(row[p + 1])])[0] if p + 1 < length else None
        out.append(
            MinedPosition(
                doc=d,
                pos=p,
                kl=float(result.kl[d, p]),
                token=ctx[-1],
                next_token=nxt,
                base_top=_tok(tokenizer, [int(result.base_top[d, p])])[0],
                ft_top=_tok(tokenizer, [int(result.ft_top[d, p])])[0],
                context=" ".join(ctx[:-1]) + " [" + ctx[-1] + "]",
            )
        )
    return out


def document_kl(result: PairedPass, *, skip_bos: bool = True) -> dict[str, Tensor]:
    """Per document: mean and max KL over its real positions."""
    mask = result.attention_mask.bool().clone()
    if skip_bos:
        mask[:, 0] = False
    kl = result.kl * mask
    count = mask.sum(1).clamp_min(1)
    return {"mean": kl.sum(1) / count, "max": kl.max(1).values}


def mine_documents(result: PairedPass, *, top: int = 20, by: str = "mean") -> list[tuple[int, float]]:
    """(document, KL) of the `top` documents by mean (or max) KL over their positions."""
    if by not in ("mean", "max"):
        raise ValueError(f"by must be 'mean' or 'max', got {by!r}")
    scores = document_kl(result)[by]
    vals, idx = scores.topk(min(top, len(scores)))
    return list(zip(idx.tolist(), vals.tolist(), strict=True))


def promoted_counts(result: PairedPass, *, k: int | None = None, skip_bos: bool = True) -> Tensor:
    """[vocab]: at how many real positions each token is among the `k` (default: all kept) tokens whose
    log-probability the fine-tune raised most."""
    k = result.promoted.shape[-1] if k is None else k
    mask = result.attention_mask.bool().clone()
    if skip_bos:
        mask[:, 0] = False
    ids = result.promoted[..., :k][mask].flatten()
    return torch.bincount(ids, minlength=result.logprob_shift.shape[0])


def mine_tokens(
    result: PairedPass, tokenizer: Any, *, top: int = 20, k: int | None = None
) -> list[dict[str, Any]]:
    """The `top` tokens the fine-tune promoted most often (counts of `promoted_counts`), with their mean
    log-probability shift and total probability gain."""
    counts = promoted_counts(result, k=k)
    order = counts.argsort(descending=True)[:top].tolist()
    names = _tok(tokenizer, order)
    return [
        {
            "token": name,
            "token_id": i,
            "promoted_count": int(counts[i]),
            "mean_logprob_shift": float(result.logprob_shift[i]),
            "prob_gain": float(result.prob_shift[i]),
        }
        for name, i in zip(names, order, strict=True)
    ]


def share_in(positions: Tensor, region: Tensor) -> float:
    """The share of `positions` ([n, 2] doc, pos) that lie in `region` ([doc, pos] bool)."""
    if len(positions) == 0:
        return 0.0
    return float(region[positions[:, 0], positions[:, 1]].float().mean())


def top_kl_positions(result: PairedPass, top: int, *, skip_bos: bool = True) -> Tensor:
    """[n, 2] (doc, pos) of the `top` largest-KL real positions."""
    kl = result.kl.clone()
    if skip_bos:
        kl[:, 0] = 0
    kl = kl.masked_fill(result.attention_mask == 0, -1.0)
    n = min(top, int((kl >= 0).sum()))
    flat = kl.flatten().topk(n).indices
    T = kl.shape[1]
    return torch.stack([flat // T, flat % T], 1)

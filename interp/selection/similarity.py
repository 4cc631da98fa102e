"""Similarity of sample embeddings to a task prototype (MoNA, Ma et al. 2025, Eq. 9 and its ablations).

`generalized_jaccard` is the reference on dense tensors; `pool_similarity` scores a whole sparse pool against a
dense prototype without densifying the pool: for each stored entry it gathers the prototype at that feature, so
Σ_k min(a_k, p_k) is a per-row sum over the row's non-zeros (min is 0 wherever a is 0), and
Σ_k max(a_k, p_k) = Σa + Σp − Σmin. Cosine and (negated) Euclidean distance are the paper's ablations.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from interp.selection.features import SparseEmbeddings

Metric = Literal["jaccard", "cosine", "euclidean"]
METRICS: tuple[str, ...] = ("jaccard", "cosine", "euclidean")


def _check_non_negative(x: Tensor, name: str) -> None:
    if x.numel() and bool((x < 0).any()):
        raise ValueError(
            f"generalized Jaccard needs non-negative vectors; {name} has negative entries "
            f"(min {float(x.min()):.3g})"
        )


def generalized_jaccard(
    a: Float[Tensor, "*batch d"], b: Float[Tensor, "*batch d"]
) -> Float[Tensor, "*batch"]:
    """Σ_k min(a_k, b_k) / Σ_k max(a_k, b_k) over the last dim, broadcasting the rest; 0/0 := 0.

    MoNA's similarity (Eq. 9) between a sample embedding and the task prototype: 1 for identical vectors, in
    [0, 1], symmetric, and (unlike cosine) lower when one vector is scaled.
    """
    _check_non_negative(a, "a")
    _check_non_negative(b, "b")
    a, b = torch.broadcast_tensors(a.float(), b.float())
    low = torch.minimum(a, b).sum(-1)
    high = torch.maximum(a, b).sum(-1)
    return torch.where(high > 0, low / high.clamp(min=torch.finfo(high.dtype).tiny), torch.zeros_like(high))


def cosine(a: Float[Tensor, "*batch d"], b: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch"]:
    """Cosine similarity over the last dim (0 where either vector is 0)."""
    a, b = a.float(), b.float()
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(
        norms > 0, (a * b).sum(-1) / norms.clamp(min=torch.finfo(norms.dtype).tiny), torch.zeros_like(norms)
    )


def pool_similarity(
    pool: SparseEmbeddings, prototype: Float[Tensor, " d_sae"], metric: Metric = "jaccard"
) -> Float[Tensor, " n"]:
    """The similarity of every pool row to `prototype` (higher = more similar), on the pool's device.

    jaccard: generalized Jaccard; cosine: cosine similarity; euclidean: minus the Euclidean distance.
    Cost is O(nnz): nothing of size [n, d_sae] is built.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if prototype.shape != (pool.d_sae,):
        raise ValueError(f"prototype has shape {tuple(prototype.shape)}, expected ({pool.d_sae},)")
    p = prototype.to(device=pool.device, dtype=pool.values.dtype)
    p_at = p[pool.indices]  # the prototype at each stored feature
    if metric == "jaccard":
        _check_non_negative(p, "the prototype")
        low = pool.row_sum(torch.minimum(pool.values, p_at))
        high = pool.row_sum() + p.sum() - low
        return torch.where(
            high > 0, low / high.clamp(min=torch.finfo(high.dtype).tiny), torch.zeros_like(high)
        )
    dot = pool.row_sum(pool.values * p_at)
    sq = pool.row_sum(pool.values * pool.values)
    if metric == "cosine":
        norms = sq.sqrt() * p.norm()
        return torch.where(
            norms > 0, dot / norms.clamp(min=torch.finfo(norms.dtype).tiny), torch.zeros_like(norms)
        )
    return -(sq + (p * p).sum() - 2 * dot).clamp(min=0).sqrt()


def dense_similarity(
    pool: Float[Tensor, "n d"], prototype: Float[Tensor, " d"], metric: Metric = "cosine"
) -> Float[Tensor, " n"]:
    """The same metrics for dense embeddings (raw hidden states, sentence embeddings)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if pool.ndim != 2 or prototype.shape != pool.shape[1:]:
        raise ValueError(
            f"pool must be [n, d] and prototype [d]; got {tuple(pool.shape)} and {tuple(prototype.shape)}"
        )
    if metric == "jaccard":
        return generalized_jaccard(pool, prototype)
    if metric == "cosine":
        return cosine(pool, prototype)
    return -(pool.float() - prototype.float()).norm(dim=-1)

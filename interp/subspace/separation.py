"""How well the knob's coordinate `uᵀh` separates context from prior, and whether that tracks PairAcc.

Minder et al. 2025 plot, per model, the distribution of `uᵀh` (block output of the knob's layer, last token)
for context-following and prior-following examples, and correlate the separation with PairAcc across models.
Examples are grouped by the intent their prompt states (`by="intent"`) or by the answer the model gives
(`by="behaviour"`). The separation is the AUROC of "prior above context" (0.5: none, 1: perfect) plus Cohen's d.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from interp.metrics import auroc
from interp.models.base import HookedModel
from interp.sites import Site
from interp.subspace.ccs import CCSPairs, ccs_scores
from interp.subspace.das import Subspace
from interp.subspace.forward import forward_last

GROUPINGS: tuple[str, ...] = ("intent", "behaviour")


def cohens_d(low: Tensor, high: Tensor) -> float:
    """(mean high - mean low) / pooled standard deviation."""
    if len(low) < 2 or len(high) < 2:
        return math.nan
    pooled = math.sqrt(
        ((len(low) - 1) * low.var() + (len(high) - 1) * high.var()) / (len(low) + len(high) - 2)
    )
    return float((high.mean() - low.mean()) / pooled) if pooled > 0 else math.nan


@dataclass(frozen=True, kw_only=True)
class Separation:
    """`uᵀh` of context- and prior-following examples of one model, their separation and the model's PairAcc."""

    name: str
    by: str
    context: list[float]
    prior: list[float]
    auroc: float
    cohens_d: float
    pair_acc: float

    def to_dict(self) -> dict:
        return asdict(self)


def separation(
    model: HookedModel,
    subspace: Subspace,
    layer: int,
    ccs: CCSPairs,
    *,
    name: str | None = None,
    by: str = "intent",
    batch_size: int = 64,
) -> Separation:
    """The coordinate distributions of `model` on instruction/weight prompts `ccs`, grouped `by` intent or answer."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}; got {by!r}")
    if subspace.rank != 1:
        raise ValueError(
            f"separation reads one coordinate: the subspace must have rank 1, got {subspace.rank}"
        )
    if ccs.format == "none" and by == "intent":
        raise ValueError("prompts without an intent ('none' format) can only be grouped by='behaviour'")
    site = Site("resid_post", layer)
    ps = ccs.prompts
    with torch.no_grad():
        logits, acts = forward_last(model, ps.clean, ps.end, read=[site], batch_size=batch_size)
        coords = subspace.coordinates(acts[site.hook_name])[:, 0].cpu()
    preds = logits.argmax(-1).cpu()
    if by == "intent":
        ctx, pri = coords[ccs.rows("context")], coords[ccs.rows("prior")]
    else:
        rows = ccs.pairs.reshape(-1)  # (n_pairs * 2,): every prompt, in pair order
        ctx_ans, pri_ans = ccs.context_answer.repeat_interleave(2), ccs.prior_answer.repeat_interleave(2)
        ctx, pri = coords[rows][preds[rows] == ctx_ans], coords[rows][preds[rows] == pri_ans]
    return Separation(
        name=name or model.name,
        by=by,
        context=ctx.tolist(),
        prior=pri.tolist(),
        auroc=auroc(ctx, pri),
        cohens_d=cohens_d(ctx, pri),
        pair_acc=ccs_scores(preds, ccs).pair_acc,
    )


def correlation(seps: Sequence[Separation], *, stat: str = "auroc") -> dict[str, float]:
    """Pearson correlation between the separation `stat` and PairAcc across models (NaN when undefined)."""
    pts = [(getattr(s, stat), s.pair_acc) for s in seps if math.isfinite(getattr(s, stat))]
    if len(pts) < 3:
        return {"pearson": math.nan, "n": len(pts)}
    x, y = torch.tensor(pts, dtype=torch.float64).T
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return {"pearson": float(x @ y) / denom if denom > 0 else math.nan, "n": len(pts)}


def separation_figure(seps: Sequence[Separation], *, title: str = ""):
    """Overlaid histograms of `uᵀh`: context vs prior for each model."""
    from interp.plotting import histogram

    series = {f"{s.name}: {g}": getattr(s, g) for s in seps for g in ("context", "prior")}
    by = seps[0].by if seps else "intent"
    return histogram(
        series,
        title or f"Knob coordinate uᵀh by {by} (context vs prior)",
        x_title="uᵀh (block output, last token)",
        y_title="share of examples",
        normalize="probability",
    )

"""The knob: steer context vs prior by setting the coordinate `uᵀh` to a constant (Minder et al. 2025).

At the last token of layer L's block output, `h <- (I - uuᵀ)h + c·u` on prompts that state no intent ("none"
format); sweeping `c` moves the answers between the context and the prior. Shares count the prompts answered
with the context answer / the prior answer (the rest: anything else). Steered PairAcc answers each pair twice,
with the context value and with the prior value of `c`, and needs both right; compare it with the model's
PairAcc on instruction prompts. The same `u` can be applied to another model of the same width (transfer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from interp.models.base import HookedModel
from interp.sites import Site
from interp.subspace.ccs import CCSPairs, check_twins
from interp.subspace.das import Subspace, resid_at_last
from interp.subspace.forward import HooksFor, forward_last, last_token_hook


def steering_hooks(subspace: Subspace, layer: int, c: float, end: Int[Tensor, " batch"]) -> HooksFor:
    """Hooks setting `Uᵀh = c` at `resid_post` of `layer`, each prompt's last token (rows index `end`)."""
    site = Site("resid_post", layer)
    return lambda rows: [(site, last_token_hook(end[rows], lambda at: subspace.set_coordinates(at, c)))]


def check_transfer(subspace: Subspace, model: HookedModel, layer: int) -> str | None:
    """Why `subspace` cannot be applied to `model` at `layer` (None when it can)."""
    if subspace.d_model != model.cfg.d_model:
        return f"{model.name} has d_model {model.cfg.d_model}, the subspace has {subspace.d_model}"
    if not 0 <= layer < model.cfg.n_layers:
        return f"{model.name} has layers 0..{model.cfg.n_layers - 1}, the subspace lives at layer {layer}"
    return None


def _none_prompts(ccs: CCSPairs) -> tuple[Tensor, Tensor]:
    """The unique no-intent prompt of each pair (both intents share it) as (tokens, end)."""
    if ccs.format != "none":
        raise ValueError(
            f"steering is evaluated on prompts without an intent (format 'none'); got {ccs.format!r}"
        )
    rows = ccs.rows("context")
    return ccs.prompts.clean[rows], ccs.prompts.end[rows]


def _steered_preds(
    model: HookedModel,
    subspace: Subspace,
    layer: int,
    tokens: Tensor,
    end: Tensor,
    c: float | None,
    batch_size: int,
) -> Tensor:
    hooks = None if c is None else steering_hooks(subspace, layer, c, end)
    with torch.no_grad():
        logits, _ = forward_last(model, tokens, end, hooks=hooks, batch_size=batch_size)
    return logits.argmax(-1).cpu()


@dataclass(frozen=True, kw_only=True)
class SteerCurve:
    """Shares of context / prior / other answers on no-intent prompts for each steering value `c`."""

    model: str
    layer: int
    c: list[float]
    context_share: list[float]
    prior_share: list[float]
    unsteered_context_share: float
    unsteered_prior_share: float

    @property
    def other_share(self) -> list[float]:
        return [1.0 - a - b for a, b in zip(self.context_share, self.prior_share, strict=True)]

    def at(self, c: float) -> tuple[float, float]:
        """(context share, prior share) at the sweep value closest to `c`."""
        i = min(range(len(self.c)), key=lambda k: abs(self.c[k] - c))
        return self.context_share[i], self.prior_share[i]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(
            {
                "c": self.c,
                "context_share": self.context_share,
                "prior_share": self.prior_share,
                "other_share": self.other_share,
                "model": self.model,
                "layer": self.layer,
            }
        )


def steer_sweep(
    model: HookedModel,
    subspace: Subspace,
    layer: int,
    ccs_none: CCSPairs,
    c_values: Sequence[float],
    *,
    batch_size: int = 64,
) -> SteerCurve:
    """Context and prior answer shares of `model` on no-intent prompts with `uᵀh` set to each of `c_values`."""
    reason = check_transfer(subspace, model, layer)
    if reason:
        raise ValueError(f"cannot steer {model.name}: {reason}")
    if not c_values:
        raise ValueError("c_values is empty")
    tokens, end = _none_prompts(ccs_none)
    ctx, pri = ccs_none.context_answer, ccs_none.prior_answer

    def shares(c: float | None) -> tuple[float, float]:
        p = _steered_preds(model, subspace, layer, tokens, end, c, batch_size)
        return float((p == ctx).float().mean()), float((p == pri).float().mean())

    base_ctx, base_pri = shares(None)
    pairs = [shares(float(c)) for c in c_values]
    return SteerCurve(
        model=model.name,
        layer=layer,
        c=[float(c) for c in c_values],
        context_share=[a for a, _ in pairs],
        prior_share=[b for _, b in pairs],
        unsteered_context_share=base_ctx,
        unsteered_prior_share=base_pri,
    )


def steered_pair_accuracy(
    model: HookedModel,
    subspace: Subspace,
    layer: int,
    ccs_none: CCSPairs,
    *,
    c_context: float,
    c_prior: float,
    batch_size: int = 64,
) -> float:
    """PairAcc with the knob as the only intent: the context answer at `c_context` and the prior at `c_prior`."""
    tokens, end = _none_prompts(ccs_none)
    ctx_ok = (
        _steered_preds(model, subspace, layer, tokens, end, c_context, batch_size) == ccs_none.context_answer
    )
    pri_ok = _steered_preds(model, subspace, layer, tokens, end, c_prior, batch_size) == ccs_none.prior_answer
    return float((ctx_ok & pri_ok).float().mean())


def transplant_shares(
    model: HookedModel, layer: int, ccs_intent: CCSPairs, ccs_none: CCSPairs, *, batch_size: int = 64
) -> dict[str, float]:
    """The ceiling of any last-token knob at `layer`: each no-intent prompt gets the *whole* last-token block
    output of its pair's prompt that states the intent (instruction or weight format, same (context, query)).

    Returns the context share with the context-intent residual written in and the prior share with the
    prior-intent one. A rank-1 knob set to a constant moves less than the full residual, so shares above these
    are out of its reach at this site (unless the steered direction does something the paired prompts never do).
    """
    check_twins(ccs_intent, ccs_none)
    tokens, end = _none_prompts(ccs_none)
    site = Site("resid_post", layer)
    out = {}
    for intent, answer in (("context", ccs_none.context_answer), ("prior", ccs_none.prior_answer)):
        rows = ccs_intent.rows(intent)
        src = resid_at_last(
            model, ccs_intent.prompts.clean[rows], ccs_intent.prompts.end[rows], layer, batch_size=batch_size
        )

        def hooks(r: Tensor, src: Tensor = src) -> list:
            return [(site, last_token_hook(end[r], lambda at, r=r: src[r.to(src.device)]))]  # type: ignore[misc]

        with torch.no_grad():
            logits, _ = forward_last(model, tokens, end, hooks=hooks, batch_size=batch_size)
        out[f"{intent}_share"] = float((logits.argmax(-1).cpu() == answer).float().mean())
    return out


def default_c_values(
    model: HookedModel,
    subspace: Subspace,
    layer: int,
    ccs: CCSPairs,
    *,
    scale: float = 1.5,
    n: int = 9,
    batch_size: int = 64,
) -> list[float]:
    """A symmetric sweep `linspace(-C, C, n)`, `C = scale * max |mean uᵀh|` over the two intents' prompts.

    Orient `u` first (prior positive): the negative end then lies beyond the context-intent mean.
    """
    if n < 2:
        raise ValueError(f"a sweep needs n >= 2 values; got {n}")
    ps = ccs.prompts
    with torch.no_grad():
        coords = subspace.coordinates(resid_at_last(model, ps.clean, ps.end, layer, batch_size=batch_size))[
            :, 0
        ]
    means = torch.stack([coords[ccs.rows("context")].mean(), coords[ccs.rows("prior")].mean()])
    c_max = scale * float(means.abs().max().clamp(min=coords.std()))
    return [round(float(c), 4) for c in torch.linspace(-c_max, c_max, n)]


def pick_c(curve: SteerCurve) -> tuple[float, float]:
    """(c for context, c for prior): the negative c with the largest context share and the positive c with the
    largest prior share (ties: the smaller |c|)."""
    neg = [i for i, c in enumerate(curve.c) if c < 0]
    pos = [i for i, c in enumerate(curve.c) if c > 0]
    if not neg or not pos:
        raise ValueError(f"the steering sweep needs negative and positive values of c; got {curve.c}")
    i = max(neg, key=lambda k: (curve.context_share[k], curve.c[k]))
    j = max(pos, key=lambda k: (curve.prior_share[k], -curve.c[k]))
    return curve.c[i], curve.c[j]


def steering_figure(
    curves: dict[str, SteerCurve], c_context: float | None = None, c_prior: float | None = None
):
    """Context and prior shares against c for each model (the knob's steering curve), the chosen c marked."""
    from interp.plotting import line

    if not curves:
        raise ValueError("no steering curves to plot")
    series = {
        f"{name}: {what}": getattr(cv, f"{what}_share")
        for name, cv in curves.items()
        for what in ("context", "prior")
    }
    fig = line(
        series,
        x=next(iter(curves.values())).c,
        title="The knob: answers on no-instruction prompts with uᵀh set to c",
        x_title="steering value c (uᵀh at the block output, last token)",
        y_title="share of prompts",
    )
    for v, label in ((c_context, "c (context)"), (c_prior, "c (prior)")):
        if v is not None:
            fig.add_vline(x=v, line_dash="dot", annotation_text=label)
    return fig

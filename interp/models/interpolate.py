"""Weight interpolation between two models of one architecture (a stand-in for intermediate checkpoints)."""

from __future__ import annotations

import copy

import torch

from interp.models.base import HookedModel
from interp.models.tl import TLModel


def interpolate(a: HookedModel, b: HookedModel, alpha: float) -> HookedModel:
    """The TL model with weights `(1 - alpha) * a + alpha * b` (same architecture), named after both."""
    if not (isinstance(a, TLModel) and isinstance(b, TLModel)):
        raise ValueError("weight interpolation needs two models on the TL backend")
    if a.cfg != b.cfg:
        raise ValueError(f"cannot interpolate {a.name} and {b.name}: their configs differ")
    tl = copy.deepcopy(a.tl)
    pb = dict(b.tl.named_parameters())
    with torch.no_grad():  # parameters only: buffers (causal masks, the -inf IGNORE) stay as they are
        for name, p in tl.named_parameters():
            p.lerp_(pb[name], alpha)
    return TLModel(tl, a.tokenizer, a.cfg, name=f"{a.name}*{1 - alpha:g}+{b.name}*{alpha:g}")

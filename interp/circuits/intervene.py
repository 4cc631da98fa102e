"""Interventions that set a head's attention pattern or output by a rule (Merullo et al. 2024, §5).

Merullo et al. repair Colored Objects in GPT2-Medium by making the IOI-only inhibition heads attend, at the last
token, to the distractor colours (as they attend to S2 in IOI) and the negative mover suppress them. Here an
`Intervention` names a head and a rule: "pattern" moves a share `mix` of the head's attention at query position
`at` onto the key positions `attend_to` (spread evenly); "output" scales the head's output at `at` or replaces it
with its value on the corrupt prompts or its mean over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.circuits.search import resolve_position
from interp.models.base import HookedModel
from interp.sites import Site

KINDS = ("pattern", "output")
SOURCES = ("corrupt", "mean")


@dataclass(frozen=True, kw_only=True)
class Intervention:
    """Set head `layer`.`head`'s attention pattern or output at position `at` (None: every position)."""

    layer: int
    head: int
    kind: str = "pattern"
    at: str | None = "END"
    attend_to: tuple[str, ...] = ()  # pattern: key position names (with optional offsets, "S1+1")
    mix: float = 1.0  # pattern: new = (1 - mix) * old + mix * target
    scale: float = 1.0  # output: z <- scale * z (when source is None)
    source: str | None = None  # output: "corrupt" or "mean" (over the corrupt prompts)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "pattern" and not self.attend_to:
            raise ValueError("a pattern intervention needs attend_to (key position names)")
        if not 0 <= self.mix <= 1:
            raise ValueError(f"mix must lie in [0, 1], got {self.mix}")
        if self.source is not None and self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES} or None, got {self.source!r}")


def intervention_hooks(
    model: HookedModel, prompts: Any, interventions: list[Intervention]
) -> list[tuple[Site, Any]]:
    """Hooks that apply `interventions` on the clean prompts of `prompts` (a PromptSet)."""
    B, T = prompts.clean.shape
    L, H = model.cfg.n_layers, model.cfg.n_heads
    dev = model.device
    for iv in interventions:  # check everything before any forward pass
        if not (0 <= iv.layer < L and 0 <= iv.head < H):
            raise ValueError(
                f"head {iv.layer}.{iv.head} does not exist (layers 0..{L - 1}, heads 0..{H - 1})"
            )
    b = torch.arange(B, device=dev)
    need_src = sorted({iv.layer for iv in interventions if iv.kind == "output" and iv.source})
    src: dict[int, Tensor] = {}
    if need_src:
        with torch.no_grad():
            _, cache = model.run_with_cache(
                prompts.corrupt.to(dev),
                [Site("z", layer) for layer in need_src],
                attention_mask=prompts.attention_mask.to(dev),
            )
        src = {layer: cache[f"blocks.{layer}.attn.hook_z"] for layer in need_src}
    hooks = []
    for iv in interventions:
        at = resolve_position(prompts, iv.at)
        at = None if at is None else at.to(dev)
        if iv.kind == "pattern":
            target = torch.zeros(B, T, device=dev)
            for name in iv.attend_to:
                target[b, prompts.position(name).to(dev)] += 1.0
            target = target / target.sum(-1, keepdim=True)  # (B, key)

            def pattern(p: Tensor, site: Site, iv=iv, at=at, target=target) -> Tensor:
                p = p.clone()  # (B, head, query, key)
                if at is None:
                    row = p[:, iv.head]
                    causal = torch.ones(T, T, device=p.device).tril().bool()
                    tgt = (target[:, None, :] * causal[None]).clamp_min(0)
                    tgt = tgt / tgt.sum(-1, keepdim=True).clamp_min(1e-12)
                    p[:, iv.head] = (1 - iv.mix) * row + iv.mix * tgt
                else:
                    p[b, iv.head, at] = (1 - iv.mix) * p[b, iv.head, at] + iv.mix * target.to(p.dtype)
                return p

            hooks.append((Site("pattern", iv.layer), pattern))
        else:

            def output(z: Tensor, site: Site, iv=iv, at=at) -> Tensor:
                z = z.clone()
                if iv.source is None:
                    new = iv.scale * z[:, :, iv.head]
                else:
                    s = src[iv.layer][:, :, iv.head]
                    new = s.mean(0, keepdim=True).expand_as(s) if iv.source == "mean" else s
                if at is None:
                    z[:, :, iv.head] = new
                else:
                    z[b, at, iv.head] = new[b, at]
                return z

            hooks.append((Site("z", iv.layer), output))  # type: ignore[arg-type]
    return hooks


def run_with_interventions(model: HookedModel, prompts: Any, interventions: list[Intervention]) -> Tensor:
    """Logits of the clean prompts with the interventions applied."""
    hooks = intervention_hooks(model, prompts, interventions)
    with torch.no_grad():
        return model.run_with_hooks(
            prompts.clean.to(model.device), hooks, attention_mask=prompts.attention_mask.to(model.device)
        )


def accuracy_with(
    model: HookedModel, prompts: Any, interventions: list[Intervention], *, over: str = "vocab"
) -> float:
    """Top-1 accuracy (over the vocabulary, or the prompts' options) with the interventions applied."""
    from interp.metrics import Accuracy

    logits = run_with_interventions(model, prompts, interventions)
    return float(Accuracy.from_prompts(prompts.to(model.device), over=over)(logits).mean())  # type: ignore[arg-type]

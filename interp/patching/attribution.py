"""Attribution patching (AtP; Nanda 2023, Kramár et al. 2024 "AtP*"): gradient × activation difference.

One target forward and one backward estimate every cell of a patching sweep: score ≈ M(target) +
Σ (a_source − a_target) · ∂M/∂a. With `qk_fix=True` (AtP*), query and key cells instead recompute the changed
attention-pattern rows exactly and take Δpattern · ∂M/∂pattern, which removes AtP's worst failure (saturated
softmax). Scores have the shapes of `patch_sweep`, so the two compare cell for cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from interp.models.base import HookedModel
from interp.patching.engine import run_values
from interp.patching.inputs import (
    FiniteGuard,
    InputError,
    MetricLike,
    NonFinite,
    PositionSpec,
    Prompts,
    SweepPositions,
    Tokens,
    bind_inputs,
    bind_positions,
    check_choice,
)
from interp.patching.sweep import DIRECTIONS, SWEEP_COMPONENTS, PatchResult, SweepConfig, sweep_cells
from interp.sites import HEAD_COMPONENTS, Site, SiteError

if TYPE_CHECKING:
    from interp.models.tl import TLModel


def attribution_patch(
    model: HookedModel,
    *,
    clean: Prompts,
    corrupt: Tokens | None = None,
    metric: MetricLike,
    component: str = "resid_pre",
    per_head: bool = False,
    positions: PositionSpec = "each",
    direction: str = "denoise",
    qk_fix: bool = True,
    nonfinite: NonFinite = "raise",
) -> PatchResult:
    """First-order estimate of `patch_sweep` (same arguments and result layout) from one forward+backward."""
    caller = "attribution_patch"
    if component not in SWEEP_COMPONENTS:
        raise SiteError(f"unknown patching component {component!r}; valid: {', '.join(SWEEP_COMPONENTS)}")
    check_choice(direction, "direction", DIRECTIONS, caller)
    finite = FiniteGuard(caller, nonfinite)
    if (component in HEAD_COMPONENTS) != per_head:
        raise InputError(
            f"component {component!r} {'needs' if component in HEAD_COMPONENTS else 'has no'} "
            "per-head cells: set per_head accordingly"
        )
    if model.backend != "tl":
        raise InputError("attribution_patch needs gradients through hooks: load the model with backend='tl'")
    inputs = bind_inputs(model, clean, corrupt, metric=metric, caller=caller)
    pos = bind_positions(positions, inputs, model)
    readout = inputs.readout
    clean_t, corrupt_t, mask = inputs.clean, inputs.corrupt, inputs.attention_mask
    c = model.cfg
    L = c.n_layers
    n_heads = c.n_kv_heads if component in ("k", "v") else c.n_heads
    _, shape, axes = sweep_cells(component, per_head, pos, L, n_heads)
    target, src = (corrupt_t, clean_t) if direction == "denoise" else (clean_t, corrupt_t)
    fix = qk_fix and component in ("q", "k")
    sites = [Site(component, layer) for layer in range(L)]
    extra = _qk_sites(model, L) if fix else []
    with torch.no_grad():
        _, src_cache = model.run_with_cache(src, sites + extra, attention_mask=mask)
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, site: Site) -> None:
        act.retain_grad()
        acts[site.hook_name] = act

    grad_sites = sites + ([Site("pattern", layer) for layer in range(L)] if fix else [])
    with torch.enable_grad():
        logits, tgt_extra = model.run_with_cache(
            target, extra, hooks=[(s, keep) for s in grad_sites], attention_mask=mask
        )
        values = readout.from_logits(logits)
        finite(values.detach()[None], lambda i: "the target run")
        values.sum().backward()  # prompts are independent: row b of each gradient is ∂M_b/∂a_b
    base = values.detach().mean().item()
    del logits
    per_layer = []
    for layer, s in enumerate(sites):
        if fix:
            eff = _qk_effect(
                model, component, layer, src_cache, tgt_extra, acts[f"blocks.{layer}.attn.hook_pattern"]
            )
        else:
            delta = src_cache[s.hook_name] - acts[s.hook_name].detach()
            eff = _reduce(delta * acts[s.hook_name].grad, component, per_head)
        per_layer.append(_columns(eff, pos))  # [pos(, head)]
    scores = torch.stack(per_layer)  # [layer, pos(, head)]
    if pos.all:
        scores = scores.sum(1)
    scores = (scores + base).detach().cpu().view(*shape)
    labels = {"layer": [str(i) for i in range(L)], "head": [str(h) for h in range(n_heads)]}
    if pos.labels is not None:
        labels["pos"] = pos.labels
    cfg = SweepConfig(
        component=component,
        per_head=per_head,
        positions=pos.spec,
        direction=direction,
        source="run",
        mode="atp*" if fix else "atp",
        metric=readout.name,
        backend=model.backend,
        seed=0,
    )
    with torch.no_grad():
        other_values = run_values(model, src, readout, attention_mask=mask)
    finite(other_values[None], lambda i: "the source run")
    finite.done()
    other = other_values.mean().item()
    baseline = {
        "clean": other if direction == "denoise" else base,
        "corrupt": base if direction == "denoise" else other,
    }
    return PatchResult(scores=scores, axes=axes, labels=labels, config=cfg, baseline=baseline)


def _columns(eff: Tensor, pos: SweepPositions) -> Tensor:
    """Per-prompt effects [batch, pos(, head)] -> batch means per position column [n_pos(, head)] (every
    position for "all", summed by the caller)."""
    if pos.all or pos.spec == "each":
        return eff.mean(0)
    b = torch.arange(eff.shape[0], device=eff.device)
    cols = [
        eff[:, p] if isinstance(p, int) else eff[b, torch.tensor(p, device=eff.device)] for p in pos.cells
    ]
    return torch.stack(cols, 1).mean(0)


def _reduce(x: Tensor, component: str, per_head: bool) -> Tensor:
    """Sum a per-element attribution over feature dims -> [batch, pos] or [batch, pos, head]."""
    if component == "pattern":  # [b, head, q, k] -> [b, q, head]
        return x.sum(-1).transpose(1, 2)
    return x.sum(-1)  # [b, pos, d] -> [b, pos]; [b, pos, head, d_head] -> [b, pos, head]


def _qk_sites(model, L: int) -> list[Site]:
    return [Site("q", layer) for layer in range(L)] + [Site("k", layer) for layer in range(L)]


def rotate_qk(model: TLModel, layer: int, x: Tensor, which: str) -> Tensor:
    """Rotary-embed queries/keys [b, pos, head, d_head] as TL's attention does (identity without rotary)."""
    attn = model.tl.blocks[layer].attn
    if model.tl.cfg.positional_embedding_type == "rotary":
        return attn.apply_rotary(x, 0, None)
    return x


def causal_pattern(model: TLModel, layer: int, q: Tensor, k: Tensor) -> Tensor:
    """Causally masked attention pattern [b, head, q, k] from rotated q [b,q,h,d] and k [b,k,kvh,d]."""
    cfg = model.tl.cfg
    rep = cfg.n_heads // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / model.tl.blocks[layer].attn.attn_scale
    cap = getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0
    if cap > 0:
        s = cap * torch.tanh(s / cap)
    T = q.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool, device=s.device).tril()
    return s.masked_fill(~mask, float("-inf")).softmax(-1)


def _qk_effect(
    model, component: str, layer: int, src_cache: dict, tgt_cache: dict, pattern: Tensor
) -> Tensor:
    """AtP*: exact Δpattern for each query/key cell, dotted with ∂M/∂pattern -> [b, pos, head]."""
    q_t = rotate_qk(model, layer, tgt_cache[f"blocks.{layer}.attn.hook_q"], "q")
    k_t = rotate_qk(model, layer, tgt_cache[f"blocks.{layer}.attn.hook_k"], "k")
    q_s = rotate_qk(model, layer, src_cache[f"blocks.{layer}.attn.hook_q"], "q")
    k_s = rotate_qk(model, layer, src_cache[f"blocks.{layer}.attn.hook_k"], "k")
    grad = pattern.grad  # [b, head, q, k]
    base = pattern.detach()
    b, T = q_t.shape[0], q_t.shape[1]
    H = model.cfg.n_heads
    if component == "q":  # a query change at p alters row p only
        new = causal_pattern(model, layer, q_s, k_t)  # row p of `new` is the pattern with query p patched
        eff = ((new - base) * grad).sum(-1)  # [b, head, q]
        return eff.transpose(1, 2)
    kvh = k_t.shape[2]
    out = torch.zeros(b, T, kvh, device=q_t.device)
    for p in range(T):  # a key change at p alters column p of every row q >= p
        k_new = k_t.clone()
        k_new[:, p] = k_s[:, p]
        new = causal_pattern(model, layer, q_t, k_new)
        eff = ((new - base) * grad).sum((-1, -2))  # [b, head]
        out[:, p] = eff.view(b, kvh, H // kvh).sum(-1)
    return out

"""Attribution patching (AtP; Nanda 2023, Kramár et al. 2024 "AtP*"): gradient × activation difference.

One target forward and one backward estimate every cell of a patching sweep: score ≈ M(target) +
Σ (a_source − a_target) · ∂M/∂a. With `qk_fix=True` (AtP*), query and key cells instead recompute the changed
attention-pattern rows exactly and take Δpattern · ∂M/∂pattern, which removes AtP's worst failure (saturated
softmax). Scores have the shapes of `patch_sweep`, so the two compare cell for cell.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from interp.models.base import HookedModel
from interp.patching.readout import as_readout
from interp.patching.sweep import (
    DIRECTIONS,
    SWEEP_COMPONENTS,
    PatchResult,
    SweepConfig,
    _cells,
    _tokens_pair,
)
from interp.sites import HEAD_COMPONENTS, Site, SiteError


def attribution_patch(
    model: HookedModel,
    *,
    clean: Any,
    corrupt: Tensor | None = None,
    metric: Any,
    component: str = "resid_pre",
    per_head: bool = False,
    positions: str = "each",
    direction: str = "denoise",
    qk_fix: bool = True,
) -> PatchResult:
    """First-order estimate of `patch_sweep` (same arguments and result layout) from one forward+backward."""
    clean_t, corrupt_t, prompts = _tokens_pair(clean, corrupt)
    if component not in SWEEP_COMPONENTS:
        raise SiteError(f"unknown patching component {component!r}; valid: {', '.join(SWEEP_COMPONENTS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    if (component in HEAD_COMPONENTS) != per_head:
        raise ValueError(
            f"component {component!r} {'needs' if component in HEAD_COMPONENTS else 'has no'} "
            "per-head cells: set per_head accordingly"
        )
    if positions not in ("each", "all"):
        raise ValueError("attribution_patch supports positions='each' or 'all'")
    if clean_t.shape != corrupt_t.shape:
        raise ValueError(
            f"clean and corrupt tokens must have the same shape; got {tuple(clean_t.shape)} and "
            f"{tuple(corrupt_t.shape)}"
        )
    if model.backend != "tl":
        raise ValueError("attribution_patch needs gradients through hooks: load the model with backend='tl'")
    c = model.cfg
    L, B, T = c.n_layers, *clean_t.shape
    dev = model.device
    clean_t, corrupt_t = clean_t.to(dev), corrupt_t.to(dev)
    if prompts is not None and not hasattr(metric, "positions") and hasattr(metric, "from_prompts"):
        metric = metric.from_prompts(prompts)
    readout = as_readout(metric, batch=B, seq_len=T, d_vocab=c.d_vocab, device=dev)
    n_heads = c.n_kv_heads if component in ("k", "v") else c.n_heads
    _, shape, axes, pos_list = _cells(component, per_head, positions, L, n_heads, T)
    target, src = (corrupt_t, clean_t) if direction == "denoise" else (clean_t, corrupt_t)
    fix = qk_fix and component in ("q", "k")
    sites = [Site(component, layer) for layer in range(L)]
    extra = _qk_sites(model, L) if fix else []
    with torch.no_grad():
        _, src_cache = model.run_with_cache(src, sites + extra)
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, site: Site) -> None:
        act.retain_grad()
        acts[site.hook_name] = act

    grad_sites = sites + ([Site("pattern", layer) for layer in range(L)] if fix else [])
    with torch.enable_grad():
        logits = model.run_with_hooks(
            target, [(s, keep) for s in grad_sites], cache=extra, _cache_out=(tgt_extra := {})
        )
        values = readout.from_logits(logits)
        values.sum().backward()  # prompts are independent: row b of each gradient is ∂M_b/∂a_b
    base = values.detach().mean().item()
    per_layer = []
    for layer, s in enumerate(sites):
        if fix:
            eff = _qk_effect(
                model, component, layer, src_cache, tgt_extra, acts[f"blocks.{layer}.attn.hook_pattern"]
            )
        else:
            delta = src_cache[s.hook_name] - acts[s.hook_name].detach()
            eff = _reduce(delta * acts[s.hook_name].grad, component, per_head)
        per_layer.append(eff.mean(0))  # [pos(, head)]
    scores = torch.stack(per_layer)  # [layer, pos(, head)]
    if positions == "all":
        scores = scores.sum(1)
    scores = (scores + base).detach().cpu().view(*shape)
    toks = model.to_str_tokens(clean_t[0])
    labels = {"layer": [str(i) for i in range(L)], "head": [str(h) for h in range(n_heads)]}
    if pos_list is not None:
        labels["pos"] = [f"{p}:{toks[p]}" for p in pos_list]
    cfg = SweepConfig(
        component=component,
        per_head=per_head,
        positions=positions,
        direction=direction,
        source="run",
        mode="atp*" if fix else "atp",
        metric=readout.name,
        backend=model.backend,
        seed=0,
    )
    with torch.no_grad():
        other = readout.from_logits(model(src)).mean().item()
    baseline = {
        "clean": other if direction == "denoise" else base,
        "corrupt": base if direction == "denoise" else other,
    }
    return PatchResult(scores=scores, axes=axes, labels=labels, config=cfg, baseline=baseline)


def _reduce(x: Tensor, component: str, per_head: bool) -> Tensor:
    """Sum a per-element attribution over feature dims -> [batch, pos] or [batch, pos, head]."""
    if component == "pattern":  # [b, head, q, k] -> [b, q, head]
        return x.sum(-1).transpose(1, 2)
    return x.sum(-1)  # [b, pos, d] -> [b, pos]; [b, pos, head, d_head] -> [b, pos, head]


def _qk_sites(model, L: int) -> list[Site]:
    return [Site("q", layer) for layer in range(L)] + [Site("k", layer) for layer in range(L)]


def _rot(model, layer: int, x: Tensor, which: str) -> Tensor:
    """Rotary-embed queries/keys [b, pos, head, d_head] as TL's attention does (identity without rotary)."""
    attn = model.tl.blocks[layer].attn
    if model.tl.cfg.positional_embedding_type == "rotary":
        return attn.apply_rotary(x, 0, None)
    return x


def _scores(model, layer: int, q: Tensor, k: Tensor) -> Tensor:
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
    q_t = _rot(model, layer, tgt_cache[f"blocks.{layer}.attn.hook_q"], "q")
    k_t = _rot(model, layer, tgt_cache[f"blocks.{layer}.attn.hook_k"], "k")
    q_s = _rot(model, layer, src_cache[f"blocks.{layer}.attn.hook_q"], "q")
    k_s = _rot(model, layer, src_cache[f"blocks.{layer}.attn.hook_k"], "k")
    grad = pattern.grad  # [b, head, q, k]
    base = pattern.detach()
    b, T = q_t.shape[0], q_t.shape[1]
    H = model.cfg.n_heads
    if component == "q":  # a query change at p alters row p only
        new = _scores(model, layer, q_s, k_t)  # row p of `new` is the pattern with query p patched
        eff = ((new - base) * grad).sum(-1)  # [b, head, q]
        return eff.transpose(1, 2)
    kvh = k_t.shape[2]
    out = torch.zeros(b, T, kvh, device=q_t.device)
    for p in range(T):  # a key change at p alters column p of every row q >= p
        k_new = k_t.clone()
        k_new[:, p] = k_s[:, p]
        new = _scores(model, layer, q_t, k_new)
        eff = ((new - base) * grad).sum((-1, -2))  # [b, head]
        out[:, p] = eff.view(b, kvh, H // kvh).sum(-1)
    return out

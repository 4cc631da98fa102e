"""The causal check of a diffing finding: does a direction or a set of latents carry the fine-tune's change?

For a change Delta at one site (per token: the fine-tune-only crosscoder latents' `sum_j f_j (d_ft,j - d_base,j)`, or a
fixed direction such as the activation-difference lens), on target prompts scored at given positions:

- added to the base:  KL(ft || base + Delta) against KL(ft || base): the share of the gap it closes (sufficiency);
- ablated in the ft:  KL(ft - Delta || base) against KL(ft || base): the share of the change it removes (necessity).

Both are `1 - KL_after / KL_before` summed over prompts; Delta is applied at every real position of each prompt.
Cost per batch: one cached forward per model, then one patched forward per model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.diffing.crosscoder import Crosscoder
from interp.finetuning.pair import ModelPair
from interp.sites import Site, as_site

DeltaFn = Callable[[Tensor, Tensor], Tensor]  # (x_base [b,t,d], x_ft [b,t,d]) -> Delta [b,t,d]


@dataclass(frozen=True, kw_only=True)
class CausalCheck:
    """Per prompt: KL(ft || base), KL(ft || base + Delta) and KL(ft - Delta || base) at the scored position."""

    kl_before: Float[Tensor, " n"]
    kl_added: Float[Tensor, " n"]
    kl_ablated: Float[Tensor, " n"]

    def recovery(self, *, kl_floor: float = 0.0) -> dict[str, float]:
        """`add_to_base` and `ablate_in_ft`: (sum KL_before - sum KL_after) / max(sum KL_before, kl_floor * n), and
        their `mean`. With the floor, a pair whose target KL is below `kl_floor` nats per prompt has (almost)
        nothing to recover, and its shares stay near 0 instead of dividing noise by noise."""
        total = float(self.kl_before.sum())
        denom = max(total, kl_floor * len(self.kl_before), 1e-12)
        add = (total - float(self.kl_added.sum())) / denom
        abl = (total - float(self.kl_ablated.sum())) / denom
        return {"add_to_base": add, "ablate_in_ft": abl, "mean": (add + abl) / 2}

    def to_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist() for k in ("kl_before", "kl_added", "kl_ablated")}


def _kl_at(lp_p: Tensor, lp_q: Tensor, pos: Tensor) -> Tensor:
    rows = torch.arange(lp_p.shape[0])
    a, b = lp_p[rows, pos], lp_q[rows, pos]
    return (a.exp() * (a - b)).sum(-1).clamp_min(0)


def patch_check(
    pair: ModelPair,
    tokens: Int[Tensor, "n pos"],
    attention_mask: Int[Tensor, "n pos"],
    positions: Int[Tensor, " n"],
    site: Site | str,
    delta: DeltaFn,
    *,
    batch_size: int = 64,
) -> CausalCheck:
    """`CausalCheck` of `delta` at `site` on `tokens`, KL read at `positions` (one per row)."""
    site = pair.base.check_site(as_site(site))
    pair.finetuned.check_site(site)
    if positions.shape != (tokens.shape[0],):
        raise ValueError(
            f"positions must hold one index per row ({tokens.shape[0]},); got {tuple(positions.shape)}"
        )
    if int(positions.min()) < 0 or bool((positions >= attention_mask.sum(1)).any()):
        raise ValueError("every scored position must be a real token of its row")
    before, added, ablated = [], [], []
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            width = int(attention_mask[sl].sum(1).max())
            ids, mask, pos = tokens[sl, :width], attention_mask[sl, :width], positions[sl].cpu()
            lb, cb = pair.base.run_with_cache(ids, [site], attention_mask=mask)
            lf, cf = pair.finetuned.run_with_cache(ids, [site], attention_mask=mask)
            xb, xf = cb[site.hook_name], cf[site.hook_name]
            d = delta(xb, xf) * mask.to(xb.device)[..., None].to(xb.dtype)  # no edit at padding

            def add(act: Tensor, s: Site, d: Tensor = d) -> Tensor:
                return act + d.to(act.device, act.dtype)

            def sub(act: Tensor, s: Site, d: Tensor = d) -> Tensor:
                return act - d.to(act.device, act.dtype)

            lp_b, lp_f = lb.float().log_softmax(-1).cpu(), lf.float().log_softmax(-1).cpu()
            lp_add = (
                pair.base.run_with_hooks(ids, [(site, add)], attention_mask=mask)
                .float()
                .log_softmax(-1)
                .cpu()
            )
            lp_abl = (
                pair.finetuned.run_with_hooks(ids, [(site, sub)], attention_mask=mask)
                .float()
                .log_softmax(-1)
                .cpu()
            )
            before.append(_kl_at(lp_f, lp_b, pos))
            added.append(_kl_at(lp_f, lp_add, pos))
            ablated.append(_kl_at(lp_abl, lp_b, pos))
    return CausalCheck(kl_before=torch.cat(before), kl_added=torch.cat(added), kl_ablated=torch.cat(ablated))


def latent_delta(cc: Crosscoder, latents: Sequence[int] | Tensor) -> DeltaFn:
    """Delta = sum over `latents` of f_j (d_ft,j - d_base,j), f from the crosscoder's encoding of (x_base, x_ft)."""
    idx = torch.as_tensor(latents, dtype=torch.long)

    def delta(xb: Tensor, xf: Tensor) -> Tensor:
        b, t, d = xb.shape
        x = torch.stack([xb, xf], 2).reshape(b * t, 2, d).to(cc.W_enc.device)  # (b*t, 2, d)
        if len(idx) == 0:
            return torch.zeros_like(xb)
        c = cc.contribution(cc.encode(x), idx)  # (b*t, 2, d)
        return (c[:, 1] - c[:, 0]).reshape(b, t, d).to(xb.device, xb.dtype)

    return delta


def diff_sae_delta(sae: Crosscoder, latents: Sequence[int] | Tensor) -> DeltaFn:
    """Delta = sum over `latents` of f_j d_j of a diff-SAE (one "model": ft - base), encoding x_ft - x_base."""
    if sae.n_models != 1:
        raise ValueError("diff_sae_delta needs a diff-SAE (kind 'diff_sae', one model)")
    idx = torch.as_tensor(latents, dtype=torch.long)

    def delta(xb: Tensor, xf: Tensor) -> Tensor:
        b, t, d = xb.shape
        if len(idx) == 0:
            return torch.zeros_like(xb)
        x = (xf - xb).reshape(b * t, 1, d).to(sae.W_enc.device)  # (b*t, 1, d)
        return sae.contribution(sae.encode(x), idx)[:, 0].reshape(b, t, d).to(xb.device, xb.dtype)

    return delta


def direction_delta(vector: Float[Tensor, " d"]) -> DeltaFn:
    """Delta = `vector` at every position."""

    def delta(xb: Tensor, xf: Tensor) -> Tensor:
        return vector.to(xb.device, xb.dtype).expand_as(xb)

    return delta

"""The activation-difference lens (Minder et al. 2025, "Narrow fine-tuning leaves clearly readable traces in
activation differences").

The mean difference delta_l = E[h_ft,l - h_base,l] of the residual stream (`resid_post` of layer l) over the first k
tokens of text unrelated to the fine-tune already points at what the fine-tune was about. It is read through the
logit lens (the fine-tune's final norm and unembedding), through the token-identity patchscope
(`interp.subspace.patchscope`, at scales of the layer's typical activation norm), and used as a steering vector:
`h <- h + alpha * |h| * delta / |delta|` at every position, with a coherence check that needs no grader — the
unsteered base model's loss on the steered model's greedy continuations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.diffing.collect import Keep, PairedPass, first_positions, paired_pass
from interp.diffing.lens import check_layers, logit_lens, top_tokens
from interp.finetuning.pair import ModelPair
from interp.models.base import HookedModel, Hooks
from interp.sites import Site


@dataclass(frozen=True, kw_only=True)
class DiffLens:
    """Mean activation differences (ft - base) of `resid_post` per layer over the first `k` tokens.

    `per_position[l, p]`: the mean over documents at token p + 1 (after BOS); `mean[l]`: over all of them;
    `norm[l]`: the mean norm of the fine-tune's activations there (the steering and patchscope unit).
    """

    layers: tuple[int, ...]
    k: int
    per_position: Float[Tensor, "layer k d_model"]
    mean: Float[Tensor, "layer d_model"]
    norm: Float[Tensor, " layer"]
    n_docs: int

    def at(self, layer: int) -> Float[Tensor, " d_model"]:
        if layer not in self.layers:
            raise ValueError(f"this diff lens has layers {list(self.layers)}, not {layer}")
        return self.mean[self.layers.index(layer)]

    def unit(self, layer: int) -> Float[Tensor, " d_model"]:
        """delta_l / |delta_l| scaled to the layer's mean activation norm (zeros if delta_l is 0)."""
        v = self.at(layer)
        n = float(v.norm())
        return v * 0 if n == 0 else v / n * float(self.norm[self.layers.index(layer)])


def diff_lens_keep(attention_mask: Tensor, layers: Sequence[int], k: int, rows: Tensor | None = None) -> Keep:
    """The `Keep` request a `paired_pass` needs for `diff_lens_from`."""
    return Keep(
        name="diff_lens",
        sites=tuple(Site("resid_post", layer) for layer in layers),
        where=first_positions(attention_mask, k, rows=rows),
    )


def diff_lens_from(result: PairedPass, layers: Sequence[int], k: int, name: str = "diff_lens") -> DiffLens:
    """The `DiffLens` of the activations a `paired_pass` kept under `name` (request from `diff_lens_keep`)."""
    idx = result.index[name]
    pos = idx[:, 1] - 1  # position p + 1 -> slot p
    if int(pos.min()) < 0 or int(pos.max()) >= k:
        raise ValueError(
            f"kept positions {int(idx[:, 1].min())}..{int(idx[:, 1].max())} are not the first {k} after BOS"
        )
    per, mean, norm = [], [], []
    for layer in layers:
        a = result.acts[name][Site("resid_post", layer).hook_name]  # (n, 2, d)
        diff = a[:, 1] - a[:, 0]
        sums = torch.zeros(k, a.shape[-1]).index_add_(0, pos, diff)
        counts = torch.bincount(pos, minlength=k).clamp_min(1)[:, None]
        per.append(sums / counts)
        mean.append(diff.mean(0))
        norm.append(a[:, 1].norm(dim=-1).mean())
    return DiffLens(
        layers=tuple(layers),
        k=k,
        per_position=torch.stack(per),
        mean=torch.stack(mean),
        norm=torch.stack(norm),
        n_docs=int(idx[:, 0].unique().numel()),
    )


def activation_difference_lens(
    pair: ModelPair,
    tokens: Int[Tensor, "doc pos"],
    attention_mask: Int[Tensor, "doc pos"],
    *,
    layers: Sequence[int] | None = None,
    k: int = 5,
    batch_size: int = 64,
) -> DiffLens:
    """The activation-difference lens over the first `k` tokens (after BOS) of `tokens` at `layers` (default all)."""
    layers = check_layers(pair.base, list(range(pair.n_layers)) if layers is None else list(layers))
    res = paired_pass(
        pair, tokens, attention_mask, keep=[diff_lens_keep(attention_mask, layers, k)], batch_size=batch_size
    )
    return diff_lens_from(res, layers, k)


def lens_readout(model: HookedModel, lens: DiffLens, layer: int, *, top: int = 20) -> list[str]:
    """The top tokens of delta_layer through `model`'s logit lens (Minder et al. read it with the fine-tune)."""
    return top_tokens(model, logit_lens(model, lens.at(layer)), top)


def patchscope_readout(
    model: HookedModel, lens: DiffLens, layer: int, *, scales: Sequence[float] = (1.0,), top: int = 20
) -> dict[float, list[str]]:
    """Top tokens of the token-identity patchscope of `scale * unit(layer)` for each scale."""
    from interp.subspace.patchscope import patchscope

    u = lens.unit(layer)
    resid = torch.stack([s * u for s in scales])[None]  # (1 layer, n_scales, d)
    logp = patchscope(model, resid.to(model.device), [layer])[0]  # (n_scales, vocab)
    return {float(s): top_tokens(model, logp[i], top) for i, s in enumerate(scales)}


# ------------------------------------------------------------------------------------------------ steering
def add_hook(vector: Tensor) -> Callable[[Tensor, Site], Tensor]:
    """A hook adding `vector` at every position."""

    def hook(act: Tensor, site: Site) -> Tensor:
        return act + vector.to(act.device, act.dtype)

    return hook


def steering_hooks(layer: int, vector: Tensor) -> Hooks:
    return [(Site("resid_post", layer), add_hook(vector))]


@torch.no_grad()
def greedy_generate(
    model: HookedModel,
    prompts: Sequence[Sequence[int]],
    n_new: int,
    *,
    hooks: Hooks = (),
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy continuations (`n_new` tokens) of token-id prompts, under `hooks` at every step (no KV cache:
    small models). Prompts of equal length share a batch, so no padding is involved."""
    out: list[list[int] | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for rows in by_len.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids = torch.tensor([list(prompts[i]) for i in chunk], device=model.device)
            for _ in range(n_new):
                if ids.shape[1] >= model.cfg.n_ctx:
                    break
                nxt = model.run_with_hooks(ids, hooks)[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], 1)
            for i, row in zip(chunk, ids.tolist(), strict=True):
                out[i] = row[len(prompts[i]) :]
    return [o or [] for o in out]


@torch.no_grad()
def continuation_nll(
    model: HookedModel, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
) -> float:
    """The mean negative log-likelihood (nats/token) that `model` gives the continuations after their prompts."""
    total, count = 0.0, 0
    for p, c in zip(prompts, continuations, strict=True):
        if not c:
            continue
        ids = torch.tensor([list(p) + list(c)], device=model.device)
        lp = model(ids)[0].float().log_softmax(-1)
        at = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=lp.device)
        total += float(-lp[at, ids[0, at + 1]].sum())
        count += len(c)
    return total / max(count, 1)


@dataclass(frozen=True, kw_only=True)
class SteeringPoint:
    """One steering scale: the continuations, their NLL under the unsteered base, and coherence."""

    alpha: float
    nll: float
    coherent: bool
    continuations: list[list[int]]


def steering_sweep(
    steered: HookedModel,
    judge: HookedModel,
    vector: Float[Tensor, " d_model"],
    layer: int,
    prompts: Sequence[Sequence[int]],
    *,
    alphas: Sequence[float],
    n_new: int = 12,
    max_nll: float,
) -> list[SteeringPoint]:
    """Greedy continuations of `prompts` by `steered` with `alpha * vector` added at `resid_post` of `layer`,
    judged coherent when `judge` (the unsteered base) gives them a mean NLL of at most `max_nll`."""
    check_layers(steered, [layer], "layer")
    out = []
    for a in alphas:
        cont = greedy_generate(steered, prompts, n_new, hooks=steering_hooks(layer, a * vector))
        nll = continuation_nll(judge, prompts, cont)
        out.append(SteeringPoint(alpha=float(a), nll=nll, coherent=nll <= max_nll, continuations=cont))
    return out

"""TuCo, the Tuning Contribution (Nuti, Franzmeyer, Henriques, ICML 2025, "Measuring the Contribution of
Fine-Tuning to Individual Responses of LLMs").

Every block update of the fine-tuned (FT) model splits exactly into a pre-trained component and a fine-tuning
component, both evaluated on the FT model's own residual stream `x_l` (the FT run's `resid_pre` at layer l):

    PTC_l = f_PT(x_l, l)            the pre-trained block's update (output - input) on x_l
    FTC_l = f_FT(x_l, l) - PTC_l    the rest of the FT block's update

so that `x_L = x_0 + sum_l (PTC_l + FTC_l)`. TuCo = ||sum_l FTC_l||_1 / (||sum_l PTC_l||_1 + ||sum_l FTC_l||_1)
at the last token (vectors summed over layers first, norm after); PreCo = 1 - TuCo.

Cost: one FT forward caching `x_l`, then each pre-trained block applied once to the cached `x_l` (no embedding
or unembedding, no second full pass): about 1.7 forward passes. TL backend: `base.tl.blocks[l]`; nnsight backend:
the base HF decoder layer called with exactly the causal mask, position ids and rotary position embeddings that
the FT model's own layer l received (both models share a config, so these are the base model's too).

FTC alpha-scaling (Def. 5.1): `x_{l+1} = x_l + PTC + alpha * FTC`, both blocks reading the scaled stream;
`scaled_logits` runs it once, `generate_scaled` greedily decodes with one key/value cache per block.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.files import atomic_save_safetensors
from interp.finetuning.pair import ModelPair
from interp.models.base import HookedModel
from interp.patching.inputs import bind_tokens, check_count

Components = Float[Tensor, "layer batch pos d_model"]
Stream = Float[Tensor, "batch pos d_model"]
Scores = Float[Tensor, " batch"]


# ------------------------------------------------------------------------------------------------ the formula
def tuco_score(
    ptc: Float[Tensor, "layer *rest d_model"], ftc: Float[Tensor, "layer *rest d_model"]
) -> Float[Tensor, "*rest"]:
    """TuCo of per-layer components: `||sum_l FTC||_1 / (||sum_l PTC||_1 + ||sum_l FTC||_1)` (Nuti et al. Def. 4.3).

    Components are summed over the layer axis (0) as vectors first and the L1 norm is taken after. Where both
    sums are zero the score is 0.
    """
    if ptc.shape != ftc.shape:
        raise ValueError(f"ptc {tuple(ptc.shape)} and ftc {tuple(ftc.shape)} must have the same shape")
    p = ptc.float().sum(0).abs().sum(-1)
    f = ftc.float().sum(0).abs().sum(-1)
    denom = p + f
    return torch.where(denom > 0, f / denom.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(f))


def last_token_index(
    attention_mask: Tensor | None, batch: int, seq_len: int, device: torch.device | None = None
) -> Int[Tensor, " batch"]:
    """Index of each row's last real token (right or left padding); `seq_len - 1` without a mask."""
    if attention_mask is None:
        return torch.full((batch,), seq_len - 1, dtype=torch.long, device=device)
    pos = torch.arange(seq_len, device=attention_mask.device)
    return (attention_mask.long() * (pos + 1)).argmax(-1)


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True, kw_only=True)
class TuCoResult:
    """The TuCo decomposition of a batch: scores at the last real token plus every component.

    `ptc`, `ftc`: [layer, batch, pos, d_model]; `x0`: the FT model's embedding output (resid_pre of layer 0);
    `last`: the scored position of each prompt.
    """

    score: Scores
    ptc: Components
    ftc: Components
    x0: Stream
    last: Int[Tensor, " batch"]
    attention_mask: Int[Tensor, "batch pos"] | None = None
    models: dict[str, str] = field(default_factory=dict)

    @property
    def preco(self) -> Scores:
        """PreCo = 1 - TuCo."""
        return 1.0 - self.score

    def _at_last(self, x: Components) -> Float[Tensor, "layer batch d_model"]:
        b = torch.arange(x.shape[1], device=x.device)
        return x[:, b, self.last.to(x.device)]

    def final_residual(self) -> Stream:
        """x0 + sum_l (PTC_l + FTC_l): the FT model's residual stream before the final norm."""
        return self.x0 + (self.ptc + self.ftc).sum(0)

    def per_layer(self) -> Float[Tensor, "layer batch"]:
        """TuCo of each layer's own components at the last token (not accumulated)."""
        return tuco_score(self._at_last(self.ptc)[None], self._at_last(self.ftc)[None])

    def cumulative(self) -> Float[Tensor, "layer batch"]:
        """TuCo of the components summed up to and including each layer, at the last token (beta_l)."""
        p, f = self._at_last(self.ptc).float().cumsum(0), self._at_last(self.ftc).float().cumsum(0)
        return torch.stack([tuco_score(p[i : i + 1], f[i : i + 1]) for i in range(p.shape[0])])

    def per_position(self) -> Float[Tensor, "batch pos"]:
        """TuCo at every position (padding positions are NaN when a mask was given)."""
        s = tuco_score(self.ptc, self.ftc)
        if self.attention_mask is not None:
            s = s.masked_fill(self.attention_mask.to(s.device) == 0, float("nan"))
        return s

    def to_frame(self):
        """One row per prompt: TuCo, PreCo and the scored position."""
        import pandas as pd

        return pd.DataFrame(
            {
                "prompt": range(len(self.score)),
                "tuco": self.score.tolist(),
                "preco": self.preco.tolist(),
                "last": self.last.tolist(),
            }
        )

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `tuco.safetensors` (all tensors) to `folder` (atomically)."""
        folder = Path(folder)
        tensors = {"score": self.score, "ptc": self.ptc, "ftc": self.ftc, "x0": self.x0, "last": self.last}
        if self.attention_mask is not None:
            tensors["attention_mask"] = self.attention_mask
        atomic_save_safetensors(folder / "tuco.safetensors", tensors, metadata=self.models)
        return folder


# ------------------------------------------------------------------------------------------------ backends
def _first(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else x[0]


class _TLRoute:
    """Blocks of two TransformerLens models: `tl.blocks[l](x) - x` is a block's update."""

    def __init__(self, pair: ModelPair) -> None:
        self.ft, self.pt = pair.finetuned.tl, pair.base.tl  # type: ignore[attr-defined]  # TL backend
        if self.ft.cfg.positional_embedding_type == "shortformer":
            raise NotImplementedError("TuCo does not support shortformer positional embeddings")

    def stream(self, tokens: Tensor, mask: Tensor | None) -> Float[Tensor, "layer_plus_1 batch pos d_model"]:
        L = self.ft.cfg.n_layers
        names = [f"blocks.{i}.hook_resid_pre" for i in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
        wanted = set(names)
        _, cache = self.ft.run_with_cache(
            tokens, names_filter=lambda n: n in wanted, return_type=None, attention_mask=mask
        )
        return torch.stack([cache[n] for n in names])

    def base_update(self, layer: int, x: Stream, mask: Tensor | None) -> Stream:
        return self.pt.blocks[layer](x, attention_mask=mask) - x

    # alpha-scaled running: `state` is None (one pass) or a pair of key/value caches (generation)
    def new_state(self, batch: int) -> Any:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as KVCache

        return (
            KVCache.init_cache(self.ft.cfg, self.ft.cfg.device, batch),
            KVCache.init_cache(self.pt.cfg, self.pt.cfg.device, batch),
        )

    def scaled(
        self, tokens: Tensor, mask: Tensor | None, alpha: float, state: Any = None
    ) -> Float[Tensor, "batch pos vocab"]:
        ft, pt = self.ft, self.pt
        if state is not None and mask is None:
            mask = torch.ones_like(tokens)
        x, _, short, full_mask = ft.input_to_embed(
            tokens, attention_mask=mask, past_kv_cache=None if state is None else state[0]
        )
        for i in range(ft.cfg.n_layers):
            e_ft = None if state is None else state[0][i]
            e_pt = None if state is None else state[1][i]
            out_ft = ft.blocks[i](
                x, shortformer_pos_embed=short, past_kv_cache_entry=e_ft, attention_mask=full_mask
            )
            out_pt = pt.blocks[i](
                x, shortformer_pos_embed=short, past_kv_cache_entry=e_pt, attention_mask=full_mask
            )
            x = _mix(out_ft, out_pt, alpha)
        logits = ft.unembed(ft.ln_final(x) if ft.cfg.normalization_type is not None else x)
        cap = getattr(ft.cfg, "output_logits_soft_cap", -1.0) or -1.0
        return cap * torch.tanh(logits / cap) if cap > 0 else logits


class _HFRoute:
    """Decoder layers of two HF models (the nnsight backend's `hf_model`)."""

    def __init__(self, pair: ModelPair) -> None:
        from interp.models.nnsight_backend import ARCH_MAPS, _get

        self.ft_model = pair.finetuned.hf_model  # type: ignore[attr-defined]  # nnsight backend
        self.pt_model = pair.base.hf_model  # type: ignore[attr-defined]
        path = ARCH_MAPS[pair.finetuned.cfg.architecture].layers
        self.ft_layers, self.pt_layers = _get(self.ft_model, path), _get(self.pt_model, path)
        self.calls: list[tuple[tuple, dict]] = []
        params = inspect.signature(self.ft_model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    @staticmethod
    def _inputs(tokens: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        inputs = {"input_ids": tokens}
        if mask is not None:
            inputs["attention_mask"] = mask
            if bool((mask[:, 0] == 0).any()):  # left padding: positions count real tokens only
                inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return inputs

    def stream(self, tokens: Tensor, mask: Tensor | None) -> Float[Tensor, "layer_plus_1 batch pos d_model"]:
        L = len(self.ft_layers)
        calls: list[Any] = [None] * L
        final: list[Tensor] = []

        def recorder(i: int) -> Callable:
            def pre(module: Any, args: tuple, kwargs: dict) -> None:
                calls[i] = (args, kwargs)

            return pre

        handles = [
            layer.register_forward_pre_hook(recorder(i), with_kwargs=True)
            for i, layer in enumerate(self.ft_layers)
        ]
        handles.append(
            self.ft_layers[L - 1].register_forward_hook(lambda m, a, out: final.append(_first(out)))
        )
        try:
            self.ft_model.base_model(**self._inputs(tokens, mask), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self.calls = calls
        xs = [a[0] if a else k["hidden_states"] for a, k in calls]
        return torch.stack([*xs, final[0]])

    def base_update(self, layer: int, x: Stream, mask: Tensor | None) -> Stream:
        args, kwargs = self.calls[layer]  # the FT layer's own call: causal mask, positions, rotary embeddings
        if args:
            out = self.pt_layers[layer](x, *args[1:], **kwargs)
        else:
            out = self.pt_layers[layer](**{**kwargs, "hidden_states": x})
        return _first(out) - x

    def new_state(self, batch: int) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.ft_model.config), DynamicCache(config=self.pt_model.config)

    def scaled(
        self, tokens: Tensor, mask: Tensor | None, alpha: float, state: Any = None
    ) -> Float[Tensor, "batch pos vocab"]:
        from transformers.cache_utils import Cache

        pt_cache = None if state is None else state[1]

        def swap(v: Any) -> Any:
            return pt_cache if isinstance(v, Cache) else v

        def mixer(i: int) -> Callable:
            def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
                out_pt = self.pt_layers[i](
                    *[swap(a) for a in args], **{k: swap(v) for k, v in kwargs.items()}
                )
                new = _mix(_first(output), _first(out_pt), alpha)
                return new if isinstance(output, Tensor) else (new, *output[1:])

            return hook

        handles = [
            layer.register_forward_hook(mixer(i), with_kwargs=True) for i, layer in enumerate(self.ft_layers)
        ]
        try:
            inputs: dict[str, Any] = dict(self._inputs(tokens, mask))
            if state is not None:
                inputs |= {self.cache_kw: state[0], "use_cache": True}
            else:
                inputs["use_cache"] = False
            return self.ft_model(**inputs).logits
        finally:
            for h in handles:
                h.remove()


def _mix(out_ft: Tensor, out_pt: Tensor, alpha: float) -> Tensor:
    """x + PTC + alpha*FTC written as out_FT + (alpha - 1)(out_FT - out_PT): exactly out_FT at alpha = 1."""
    if alpha == 1.0:
        return out_ft
    return out_ft + (alpha - 1.0) * (out_ft - out_pt)


def _route(pair: ModelPair) -> _TLRoute | _HFRoute:
    if pair.backend == "tl":
        return _TLRoute(pair)
    if pair.backend == "nnsight":
        if getattr(pair.finetuned, "remote", False) or getattr(pair.base, "remote", False):
            raise NotImplementedError(
                "TuCo calls decoder layers directly and cannot run on remote (NDIF) models"
            )
        return _HFRoute(pair)
    raise NotImplementedError(f"TuCo has no route for the {pair.backend!r} backend")


# ------------------------------------------------------------------------------------------------ public API
def _tokens_and_mask(
    model: HookedModel, tokens: Any, attention_mask: Tensor | None, caller: str
) -> tuple[Tensor, Tensor | None]:
    """Checked tokens and mask on the model's device (`interp.patching.inputs.bind_tokens`): integer ids in the
    vocabulary, a non-empty batch, a mask with a real token in every row."""
    return bind_tokens(model, tokens, attention_mask, caller=caller)


@torch.no_grad()
def tuco(
    finetuned: HookedModel,
    base: HookedModel,
    tokens: Int[Tensor, "batch pos"] | Any,
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> TuCoResult:
    """The TuCo decomposition of `finetuned` against its pre-trained `base` on `tokens` (Nuti et al. 2025).

    Returns per-prompt TuCo at the last real token plus PTC/FTC for every layer and position. `tokens` may be a
    PromptSet (its clean prompts and mask). Pads on the right or the left with `attention_mask`.
    """
    pair = ModelPair(base, finetuned)  # raises, naming every mismatch, before any compute
    tokens, mask = _tokens_and_mask(finetuned, tokens, attention_mask, "tuco")
    route = _route(pair)
    xs = route.stream(tokens, mask)  # [L + 1, B, T, d]: resid_pre of each layer, then the final residual
    L = pair.n_layers
    ptc = torch.stack([route.base_update(i, xs[i], mask) for i in range(L)])  # [L, B, T, d]
    ftc = (xs[1:] - xs[:-1]) - ptc  # the FT update minus its pre-trained part
    B, T = tokens.shape
    last = last_token_index(mask, B, T, tokens.device)
    b = torch.arange(B, device=tokens.device)
    score = tuco_score(ptc[:, b, last], ftc[:, b, last])
    return TuCoResult(
        score=score,
        ptc=ptc,
        ftc=ftc,
        x0=xs[0],
        last=last,
        attention_mask=mask,
        models={"finetuned": finetuned.name, "base": base.name},
    )


@torch.no_grad()
def tuco_scores(
    finetuned: HookedModel,
    base: HookedModel,
    tokens: Int[Tensor, "n pos"] | Any,
    *,
    attention_mask: Int[Tensor, "n pos"] | None = None,
    batch_size: int = 32,
) -> Float[Tensor, " n"]:
    """Only the TuCo scores of many prompts, `batch_size` at a time (keeps no components in memory)."""
    check_count(batch_size, "batch_size", "tuco_scores")
    tokens, attention_mask = _tokens_and_mask(finetuned, tokens, attention_mask, "tuco_scores")
    out = []
    for i in range(0, tokens.shape[0], batch_size):
        m = None if attention_mask is None else attention_mask[i : i + batch_size]
        t = tokens[i : i + batch_size]
        if m is not None:  # trim trailing all-padding columns of the chunk
            width = int((last_token_index(m, *m.shape) + 1).max())
            t, m = t[:, :width], m[:, :width]
        out.append(tuco(finetuned, base, t, attention_mask=m).score.cpu())
    return torch.cat(out)


@torch.no_grad()
def scaled_logits(
    finetuned: HookedModel,
    base: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    alpha: float,
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of the FTC alpha-scaled model (Nuti et al. Def. 5.1): each layer adds PTC + alpha * FTC.

    Both blocks read the scaled stream; embedding, final norm and unembedding are the FT model's. alpha = 1 is
    the FT model exactly; alpha = 0 runs the pre-trained blocks on the FT embeddings.
    """
    _check_alpha(alpha)
    pair = ModelPair(base, finetuned)
    tokens, mask = _tokens_and_mask(finetuned, tokens, attention_mask, "scaled_logits")
    return _route(pair).scaled(tokens, mask, float(alpha))


def _check_alpha(alpha: float) -> None:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(
            f"alpha must be a finite number >= 0 (Nuti et al. scale FTC by alpha >= 0); got {alpha!r}"
        )


@torch.no_grad()
def generate_scaled(
    finetuned: HookedModel,
    base: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    alpha: float,
    max_new_tokens: int,
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Int[Tensor, "batch new"]:
    """Greedy continuation of each prompt by the FTC alpha-scaled model: the `max_new_tokens` new token ids.

    One key/value cache per block (FT and pre-trained), both built from the scaled stream (Nuti et al. §5).
    Prompts are decoded in groups of equal real length, so no padding enters the caches; decoding does not stop
    at end-of-sequence tokens (every row gets `max_new_tokens` tokens).
    """
    _check_alpha(alpha)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
    pair = ModelPair(base, finetuned)
    tokens, attention_mask = _tokens_and_mask(finetuned, tokens, attention_mask, "generate_scaled")
    B, T = tokens.shape
    mask = torch.ones_like(tokens) if attention_mask is None else attention_mask
    lengths = mask.sum(1)
    route = _route(pair)
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=tokens.device)
    for n in sorted(set(lengths.tolist())):
        rows = (lengths == n).nonzero().squeeze(-1)
        real = mask[rows].bool()
        ids = tokens[rows][real].view(len(rows), n)  # [rows, n]: the real tokens, in order
        state = route.new_state(len(rows))
        step = ids
        for t in range(max_new_tokens):
            logits = route.scaled(step, None, float(alpha), state)
            nxt = logits[:, -1].argmax(-1)
            out[rows, t] = nxt
            step = nxt[:, None]
    return out

"""nnsight backend: `nnsight.LanguageModel` over the HF model, with a per-architecture site map.

Sites are reached through module inputs/outputs and converted to TransformerLens shapes, so that the same `Site`
reads the same numbers on both backends (a test). Grouped-query attention keeps k/v at `n_kv_heads`, as TL does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.models.base import HookedModel, HookFn, ModelConfig, apply_hook
from interp.sites import Site, SiteError


@dataclass(frozen=True, kw_only=True)
class ArchMap:
    """Where each site lives in one HF architecture's module tree (paths relative to the model / a layer)."""

    layers: str  # the ModuleList of blocks
    qkv: tuple[str, ...]  # one fused projection, or (q, k, v) projections
    qkv_layout: str  # "gpt2" (q|k|v blocks), "neox" (per head q,k,v), "separate"
    o_proj: str  # input = z, flattened heads
    attn: str  # output = (attn_out, pattern)
    down_proj: str  # input = mlp_post
    mlp: str  # output = mlp_out (unless mlp_out_module)
    mlp_pre_norm: str | None  # its input = resid_mid (None when attention and MLP run in parallel)
    attn_out_module: str | None = None  # Gemma-2: the norm applied to the attention output
    mlp_out_module: str | None = None  # Gemma-2: the norm applied to the MLP output


_LLAMA_LIKE = ArchMap(
    layers="model.layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    qkv_layout="separate",
    o_proj="self_attn.o_proj",
    attn="self_attn",
    down_proj="mlp.down_proj",
    mlp="mlp",
    mlp_pre_norm="post_attention_layernorm",
)

ARCH_MAPS: dict[str, ArchMap] = {
    "GPT2LMHeadModel": ArchMap(
        layers="transformer.h",
        qkv=("attn.c_attn",),
        qkv_layout="gpt2",
        o_proj="attn.c_proj",
        attn="attn",
        down_proj="mlp.c_proj",
        mlp="mlp",
        mlp_pre_norm="ln_2",
    ),
    "GPTNeoXForCausalLM": ArchMap(
        layers="gpt_neox.layers",
        qkv=("attention.query_key_value",),
        qkv_layout="neox",
        o_proj="attention.dense",
        attn="attention",
        down_proj="mlp.dense_4h_to_h",
        mlp="mlp",
        mlp_pre_norm=None,
    ),
    "LlamaForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": ArchMap(
        layers="model.layers",
        qkv=_LLAMA_LIKE.qkv,
        qkv_layout="separate",
        o_proj="self_attn.o_proj",
        attn="self_attn",
        down_proj="mlp.down_proj",
        mlp="mlp",
        mlp_pre_norm="pre_feedforward_layernorm",
        attn_out_module="post_attention_layernorm",
        mlp_out_module="post_feedforward_layernorm",
    ),
}

# execution order of the access points inside one block (nnsight requires in-order access)
_ORDER = (
    "resid_pre",
    "qkv",
    "z",
    "attn",
    "attn_out_module",
    "resid_mid",
    "mlp_post",
    "mlp_out",
    "resid_post",
)
_POINT = {
    "resid_pre": "resid_pre",
    "q": "qkv",
    "k": "qkv",
    "v": "qkv",
    "z": "z",
    "pattern": "attn",
    "resid_mid": "resid_mid",
    "mlp_post": "mlp_post",
    "mlp_out": "mlp_out",
    "resid_post": "resid_post",
}
SUPPORTED = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "mlp_post",
    "z",
    "q",
    "k",
    "v",
    "pattern",
)


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


class NNsightModel(HookedModel):
    """An `nnsight.LanguageModel` behind the common interface; `.lm` is the nnsight model itself."""

    backend = "nnsight"

    def __init__(
        self, lm: Any, tokenizer: Any, cfg: ModelConfig, *, name: str, hf_model: Any, remote: bool = False
    ) -> None:
        if cfg.architecture not in ARCH_MAPS:
            raise ValueError(
                f"the nnsight backend has no site map for {cfg.architecture}; supported: "
                f"{', '.join(ARCH_MAPS)} (the TL backend may support it)"
            )
        self.lm = lm
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.name = name
        self.remote = remote
        self.map = ARCH_MAPS[cfg.architecture]

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def supported_components(self) -> tuple[str, ...]:
        return tuple(c for c in SUPPORTED if not (c == "resid_mid" and self.map.mlp_pre_norm is None))

    def check_site(self, site: Site) -> Site:
        return super().check_site(site)

    # ---- shape conversion between module tensors and TL shapes ---------------------------------------
    def _split_qkv(self, outs: list[Tensor]) -> dict[str, Tensor]:
        c, layout = self.cfg, self.map.qkv_layout
        (fused,) = outs
        if layout == "gpt2":  # [b, p, 3*d_model] = q | k | v
            q, k, v = fused.split(c.n_heads * c.d_head, dim=-1)
            return {n: t.unflatten(-1, (c.n_heads, c.d_head)) for n, t in zip("qkv", (q, k, v), strict=True)}
        per_head = fused.unflatten(-1, (c.n_heads, 3 * c.d_head))  # neox: [b, p, head, (q|k|v)]
        q, k, v = per_head.split(c.d_head, dim=-1)
        return {"q": q, "k": k, "v": v}

    def _join_qkv(self, parts: dict[str, Tensor]) -> list[Tensor]:
        if self.map.qkv_layout == "gpt2":
            return [torch.cat([parts[n].flatten(-2) for n in "qkv"], dim=-1)]
        return [torch.cat([parts["q"], parts["k"], parts["v"]], dim=-1).flatten(-2)]

    # ---- the traced forward ---------------------------------------------------------------------------
    def _run(
        self,
        tokens: Tensor,
        hooks: list[tuple[Site, HookFn]],
        cache_sites: list[Site],
        attention_mask: Tensor | None,
        cache_out: dict[str, Tensor],
    ) -> Tensor:
        if any(s.component == "pattern" for s, _ in hooks):
            raise SiteError(
                "the nnsight backend reads attention patterns but cannot write them; "
                "use backend='tl' to patch 'pattern'"
            )
        mask = attention_mask if attention_mask is not None else torch.ones_like(tokens)
        mask = mask.to(tokens.device)
        inputs = {"input_ids": tokens, "attention_mask": mask}
        if bool((mask[:, 0] == 0).any()):  # left padding: positions count real tokens only
            inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        by_layer: dict[int, list[tuple[Site, HookFn | None]]] = {}
        for s, fn in hooks:
            by_layer.setdefault(s.layer, []).append((s, fn))
        for s in cache_sites:
            by_layer.setdefault(s.layer, []).append((s, None))
        saved: dict[str, Any] = {}
        with self.lm.trace(inputs, remote=self.remote):
            for layer in sorted(by_layer):
                self._run_layer(layer, by_layer[layer], saved)
            logits = self.lm.output.logits.save()
        for k, v in saved.items():
            cache_out[k] = v
        return logits

    def _run_layer(self, layer: int, items: list[tuple[Site, HookFn | None]], saved: dict[str, Any]) -> None:
        m = self.map
        block = _get(self.lm, m.layers)[layer]
        wanted = {p: [(s, fn) for s, fn in items if self._point(s) == p] for p in _ORDER}
        resid_pre_needed = any(s.component == "resid_mid" and fn is not None for s, fn in items)

        def visit(
            point: str, read: Callable[[], Tensor], write: Callable[[Tensor], None] | None
        ) -> Tensor | None:
            todo = wanted[point]
            if not todo:
                return None
            act = read()
            new = act
            for s, fn in todo:
                if fn is None:
                    saved[s.hook_name] = new.save() if hasattr(new, "save") else new
                else:
                    new = apply_hook(fn, new, s)
            if new is not act and write is not None:
                write(new)
            return new

        # resid_pre: the block's input
        if wanted["resid_pre"] or resid_pre_needed:
            resid_pre = block.input
            visit("resid_pre", lambda: resid_pre, lambda t: setattr(block, "input", t))
        # q/k/v: projection outputs
        if wanted["qkv"] and m.qkv_layout == "separate":  # q, k, v projections run in that order
            c = self.cfg
            for comp, path, heads in (
                ("q", m.qkv[0], c.n_heads),
                ("k", m.qkv[1], c.n_kv_heads),
                ("v", m.qkv[2], c.n_kv_heads),
            ):
                if any(s.component == comp for s, _ in wanted["qkv"]):
                    mod = _get(block, path)
                    wanted["_" + comp] = [(s, fn) for s, fn in wanted["qkv"] if s.component == comp]
                    visit(
                        "_" + comp,
                        lambda mod=mod, h=heads: mod.output.unflatten(-1, (h, c.d_head)),
                        lambda t, mod=mod: setattr(mod, "output", t.flatten(-2)),
                    )
        elif wanted["qkv"]:
            mods = [_get(block, p) for p in m.qkv]
            outs = [mod.output for mod in mods]
            parts = self._split_qkv(outs)
            changed = False
            for s, fn in wanted["qkv"]:
                if fn is None:
                    saved[s.hook_name] = parts[s.component].save()
                else:
                    new = apply_hook(fn, parts[s.component], s)
                    changed = changed or new is not parts[s.component]
                    parts[s.component] = new
            if changed:
                for mod, t in zip(mods, self._join_qkv(parts), strict=True):
                    mod.output = t
        # z: input of the output projection, [b, p, head, d_head]
        o_proj = _get(block, m.o_proj)
        visit(
            "z",
            lambda: o_proj.input.unflatten(-1, (self.cfg.n_heads, self.cfg.d_head)),
            lambda t: setattr(o_proj, "input", t.flatten(-2)),
        )
        # attention module output: (attn_out, pattern); attn_out here unless a post-norm follows
        attn_items = [
            (s, fn)
            for s, fn in items
            if s.component == "pattern" or (s.component == "attn_out" and m.attn_out_module is None)
        ]
        mid_write = [(s, fn) for s, fn in wanted["resid_mid"] if fn is not None]
        if attn_items or (mid_write and m.attn_out_module is None):
            attn = _get(block, m.attn)
            out = attn.output
            attn_out = out[0]
            for s, fn in attn_items:
                if s.component == "pattern":
                    saved[s.hook_name] = out[1].save()
                elif fn is None:
                    saved[s.hook_name] = attn_out.save()
                else:
                    attn_out = apply_hook(fn, attn_out, s)
            attn_out = self._write_resid_mid(mid_write, resid_pre if mid_write else None, attn_out, saved)
            if attn_out is not out[0]:
                attn.output = (attn_out, *out[1:])
        if m.attn_out_module is not None:
            post = _get(block, m.attn_out_module)
            gem = [(s, fn) for s, fn in items if s.component == "attn_out"]
            if gem or mid_write:
                act = post.output
                new = act
                for s, fn in gem:
                    if fn is None:
                        saved[s.hook_name] = new.save()
                    else:
                        new = apply_hook(fn, new, s)
                new = self._write_resid_mid(mid_write, resid_pre if mid_write else None, new, saved)
                if new is not act:
                    post.output = new
        # resid_mid (read): the MLP pre-norm's input
        mid_read = [(s, fn) for s, fn in wanted["resid_mid"] if fn is None]
        if mid_read:
            norm_in = _get(block, m.mlp_pre_norm).input
            for s, _ in mid_read:
                saved[s.hook_name] = norm_in.save()
        down = _get(block, m.down_proj)
        visit("mlp_post", lambda: down.input, lambda t: setattr(down, "input", t))
        mlp_mod = _get(block, m.mlp_out_module or m.mlp)
        visit("mlp_out", lambda: mlp_mod.output, lambda t: setattr(mlp_mod, "output", t))
        visit(
            "resid_post",
            lambda: _first(block.output),
            lambda t: setattr(
                block, "output", t if isinstance(block.output, Tensor) else (t, *block.output[1:])
            ),
        )

    def _write_resid_mid(self, mid_write: list, resid_pre: Any, attn_out: Any, saved: dict) -> Any:
        """Edit resid_mid through the attention output: resid_mid' = resid_pre + (resid_mid' - resid_pre)."""
        if not mid_write:
            return attn_out
        mid = resid_pre + attn_out
        new = mid
        for s, fn in mid_write:
            new = apply_hook(fn, new, s)
        return attn_out if new is mid else new - resid_pre

    @staticmethod
    def _point(site: Site) -> str:
        if site.component == "attn_out":
            return "attn_out"  # handled explicitly
        return _POINT[site.component]


def _first(x: Any) -> Any:
    return x if isinstance(x, Tensor) else x[0]

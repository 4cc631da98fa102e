"""The common interface every backend implements: config facts, tokenisation, logits, caches and hooks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.sites import Site, SiteError, as_site

# A hook gets the full activation (TransformerLens shapes, see `Site.shape`) and the site; it returns a
# replacement tensor of the same shape, or None to keep the (possibly in-place edited) activation.
HookFn = Callable[[Tensor, Site], "Tensor | None"]
Hooks = Sequence[tuple["Site | str", HookFn]]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The facts about a model that analyses need, whatever the backend."""

    architecture: str  # the HF architecture class, e.g. "GPT2LMHeadModel"
    n_layers: int
    n_heads: int
    n_kv_heads: int  # = n_heads without grouped-query attention
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    parallel_attn_mlp: bool = False  # GPT-NeoX style: attention and MLP read the same residual (no resid_mid)

    @classmethod
    def from_hf(cls, hf_config: Any) -> ModelConfig:
        """Read the facts from a `transformers` config (GPT-2, GPT-NeoX, Llama, Qwen2, Gemma2, ... naming)."""
        c = hf_config

        def get(*names: str, default: Any = None) -> Any:
            for n in names:
                v = getattr(c, n, None)
                if v is not None:
                    return v
            if default is None:
                raise ValueError(f"config of {type(c).__name__} has none of the fields {names}")
            return default

        d_model = get("hidden_size", "n_embd", "d_model")
        n_heads = get("num_attention_heads", "n_head")
        d_head = getattr(c, "head_dim", None) or d_model // n_heads
        return cls(
            architecture=(getattr(c, "architectures", None) or [type(c).__name__])[0],
            n_layers=get("num_hidden_layers", "n_layer"),
            n_heads=n_heads,
            n_kv_heads=get("num_key_value_heads", default=n_heads),
            d_model=d_model,
            d_head=d_head,
            d_mlp=get("intermediate_size", "n_inner", default=4 * d_model),
            d_vocab=get("vocab_size"),
            n_ctx=get("max_position_embeddings", "n_positions", "n_ctx", default=2048),
            parallel_attn_mlp=bool(getattr(c, "use_parallel_residual", False)),
        )


class HookedModel(ABC):
    """A causal LM whose named sites can be read and written, on any backend.

    `model(tokens)` gives logits `[batch, pos, vocab]`; `run_with_cache` reads sites; `run_with_hooks` edits them.
    Tokens are right-padded by default; pass `attention_mask` whenever a batch has padding.
    """

    backend: str
    cfg: ModelConfig
    tokenizer: Any
    name: str

    # ---- tokenisation -------------------------------------------------------------------------------
    def to_tokens(
        self,
        texts: str | Sequence[str],
        *,
        prepend_bos: bool = True,
        padding_side: str = "right",
        return_mask: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Tokenise `texts` into a padded LongTensor `[batch, pos]` (BOS first, as TransformerLens does)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if isinstance(texts, str):
            texts = [texts]
        tok = self.tokenizer
        rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        bos = tok.bos_token_id
        if prepend_bos and bos is not None:
            rows = [[bos, *r] for r in rows]
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(0, len(r)) if padding_side == "right" else slice(width - len(r), width)
            ids[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        return (ids, mask) if return_mask else ids

    def to_single_token(self, word: str) -> int:
        """The id of `word` as one token (with a leading space, as it follows another word); raise otherwise."""
        ids = self.tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{word!r} is not a single token for {self.name}: it splits into {ids}")
        return ids[0]

    def to_str_tokens(self, tokens: Tensor) -> list[str]:
        """The token strings of one row of ids."""
        return self.tokenizer.convert_ids_to_tokens(tokens.tolist())

    # ---- running ------------------------------------------------------------------------------------
    def __call__(self, tokens: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        return self.run_with_hooks(tokens, (), attention_mask=attention_mask)

    def run_with_cache(
        self,
        tokens: Tensor,
        sites: Iterable[Site | str],
        *,
        hooks: Hooks = (),
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits plus the activations of `sites`, keyed by TL hook name (full tensors, not narrowed); with
        `hooks`, of the run those hooks edit (each site read after its own hooks)."""
        tokens = self._check_tokens(tokens, attention_mask)
        hook_list = [(self.check_site(as_site(s)), fn) for s, fn in hooks]
        cache_sites = [self.check_site(as_site(s)) for s in sites]
        cache: dict[str, Tensor] = {}
        logits = self._run(tokens, hook_list, cache_sites, attention_mask, cache)
        return logits, cache

    def run_with_hooks(self, tokens: Tensor, hooks: Hooks, *, attention_mask: Tensor | None = None) -> Tensor:
        """Logits of a forward pass in which each hook may read or replace its site's activation."""
        tokens = self._check_tokens(tokens, attention_mask)
        hook_list = [(self.check_site(as_site(s)), fn) for s, fn in hooks]
        return self._run(tokens, hook_list, [], attention_mask, {})

    @abstractmethod
    def _run(
        self,
        tokens: Tensor,
        hooks: list[tuple[Site, HookFn]],
        cache_sites: list[Site],
        attention_mask: Tensor | None,
        cache_out: dict[str, Tensor],
    ) -> Tensor: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def supported_components(self) -> tuple[str, ...]: ...

    # ---- validation ---------------------------------------------------------------------------------
    def check_site(self, site: Site) -> Site:
        """Raise if `site` does not exist in this model or this backend cannot reach it."""
        if site.component not in self.supported_components:
            raise SiteError(
                f"site {site} is not available on the {self.backend} backend for "
                f"{self.cfg.architecture}; available: {', '.join(self.supported_components)}"
            )
        return site.validate(
            n_layers=self.cfg.n_layers, n_heads=self.cfg.n_heads, n_kv_heads=self.cfg.n_kv_heads
        )

    def _check_tokens(self, tokens: Tensor, attention_mask: Tensor | None) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(
                f"tokens must be an integer tensor [batch, pos]; got {type(tokens).__name__}"
                f"{'' if not isinstance(tokens, Tensor) else ' of dtype ' + str(tokens.dtype)}"
            )
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, pos]; got shape {tuple(tokens.shape)}")
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != tokens {tuple(tokens.shape)}"
            )
        if int(tokens.max()) >= self.cfg.d_vocab or int(tokens.min()) < 0:
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.d_vocab}); got [{int(tokens.min())}, "
                f"{int(tokens.max())}]"
            )
        return tokens.to(self.device)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"{type(self).__name__}({self.name!r}, {c.architecture}, layers={c.n_layers}, heads={c.n_heads}, "
            f"d_model={c.d_model}, device={self.device})"
        )


def apply_hook(fn: HookFn, act: Tensor, site: Site) -> Tensor:
    """Call a user hook and check that a replacement has the activation's shape."""
    out = fn(act, site)
    if out is None:
        return act
    if out.shape != act.shape:
        raise ValueError(f"hook for {site} returned shape {tuple(out.shape)}, expected {tuple(act.shape)}")
    return out

"""Token-identity patchscope (TIP): which token a layer's last-token residual stands for.

Minder et al. 2025 decode the answer a layer carries by writing the last-token residual of layer `l` into the
last position of an identity prompt ("cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?") at the same layer and
reading the next-token distribution. The identity prompt is built from pieces the tokenizer knows: where "->" or
a newline is not a token (the organisms' word tokenizer), ":" and "," stand in, and unknown example words are
replaced by words of the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.models.base import HookedModel
from interp.sites import Site
from interp.subspace.forward import last_token_hook

EXAMPLE_WORDS: tuple[str, ...] = ("cat", "1135", "hello")
SEPARATORS: tuple[str, ...] = (" ->", " :", " =")
DELIMITERS: tuple[str, ...] = ("\n", " ; ", " , ", " . ")  # between examples, and before the placeholder
PLACEHOLDERS: tuple[str, ...] = ("?", "x")

Resid = Float[Tensor, "layer batch d_model"]


@dataclass(frozen=True, kw_only=True)
class IdentityPrompt:
    """The identity prompt's text and its token ids `[pos]` (BOS first); the last token gets overwritten."""

    text: str
    tokens: Int[Tensor, " pos"]


def _known(tokenizer, piece: str) -> bool:
    """Whether `piece` tokenises into at least one token, none of them unknown."""
    ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    return bool(ids) and (unk is None or unk not in ids)


def _vocab_words(tokenizer, n: int, avoid: set[str]) -> list[str]:
    """The first `n` alphabetic vocabulary words (by id), skipping special tokens and `avoid`."""
    special = set(getattr(tokenizer, "all_special_tokens", []))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    words = [w.lstrip("Ġ▁") for w, _ in vocab if w not in special]
    return [
        w
        for w in dict.fromkeys(words)
        if w.isalpha() and len(w) > 1 and w not in avoid and _known(tokenizer, w)
    ][:n]


def identity_prompt(
    model: HookedModel, *, words: Sequence[str] | None = None, n_examples: int = 3
) -> IdentityPrompt:
    """The TIP identity prompt "w1 -> w1 <delim> w2 -> w2 <delim> ... ?" in pieces `model`'s tokenizer knows."""
    tok = model.tokenizer
    pool = [w for w in (words if words is not None else EXAMPLE_WORDS) if _known(tok, w)][:n_examples]
    if len(pool) < n_examples:
        pool += _vocab_words(tok, n_examples - len(pool), set(pool))
    if len(pool) < n_examples:
        raise ValueError(f"the tokenizer of {model.name} knows fewer than {n_examples} example words")
    sep = next((s for s in SEPARATORS if _known(tok, s)), None)
    delim = next((d for d in DELIMITERS if _known(tok, d)), None)
    end = next((p for p in PLACEHOLDERS if _known(tok, p)), None)
    if sep is None or delim is None or end is None:
        raise ValueError(
            f"the tokenizer of {model.name} knows none of the separators {SEPARATORS}, delimiters "
            f"{DELIMITERS} or placeholders {PLACEHOLDERS} of the identity prompt"
        )
    text = delim.join(f"{w}{sep} {w}" for w in pool) + delim + end
    tokens = model.to_tokens(text)[0].cpu()
    unk = getattr(tok, "unk_token_id", None)
    if unk is not None and unk in tokens.tolist():
        raise ValueError(
            f"the identity prompt {text!r} has unknown tokens for {model.name}; pass other words"
        )
    return IdentityPrompt(text=text, tokens=tokens)


def patchscope(
    model: HookedModel,
    resid: Resid,
    layers: Sequence[int],
    *,
    prompt: IdentityPrompt | None = None,
    batch_size: int = 256,
) -> Float[Tensor, "layer batch vocab"]:
    """Next-token log-probabilities (float32) of the identity prompt with `resid[i]` written at `layers[i]`.

    `resid[i, b]` is a last-token residual (block output, `resid_post`) of layer `layers[i]`; it replaces the
    identity prompt's last-token `resid_post` at that same layer. Many (layer, row) cells share one forward pass.
    """
    if resid.ndim != 3 or resid.shape[0] != len(layers):
        raise ValueError(
            f"resid must be [layer, batch, d_model] with one layer per entry of layers "
            f"({len(layers)}); got {tuple(resid.shape)}"
        )
    if resid.shape[-1] != model.cfg.d_model:
        raise ValueError(f"resid has width {resid.shape[-1]}, {model.name} has d_model {model.cfg.d_model}")
    prompt = prompt or identity_prompt(model)
    n_layer, batch = resid.shape[:2]
    flat = resid.reshape(n_layer * batch, -1)  # (layer * batch, d): row i*batch + b is layer i, prompt b
    layer_of = torch.tensor(list(layers)).repeat_interleave(batch)  # (layer * batch,)
    last = len(prompt.tokens) - 1
    out = []
    with torch.no_grad():
        for start in range(0, len(flat), batch_size):
            cells = torch.arange(start, min(start + batch_size, len(flat)))
            hooks = []
            for layer in layer_of[cells].unique().tolist():
                mine = (layer_of[cells] == layer).nonzero().flatten()  # rows of this chunk at this layer
                values = flat[cells[mine]]

                def edit(at: Tensor, mine: Tensor = mine, values: Tensor = values) -> Tensor:
                    at = at.clone()
                    at[mine.to(at.device)] = values.to(at.device, at.dtype)
                    return at

                hooks.append(
                    (Site("resid_post", layer), last_token_hook(torch.full((len(cells),), last), edit))
                )
            tokens = prompt.tokens[None].repeat(len(cells), 1)
            logits = model.run_with_hooks(tokens, hooks)[:, last].float()
            out.append(logits.log_softmax(-1).cpu())
    return torch.cat(out).view(n_layer, batch, -1)  # (layer, batch, vocab)


def tip_probs(
    model: HookedModel,
    resid: Resid,
    layers: Sequence[int],
    token_ids: Int[Tensor, "batch k"],
    *,
    prompt: IdentityPrompt | None = None,
    batch_size: int = 256,
) -> Float[Tensor, "layer batch k"]:
    """TIP probabilities of `token_ids` (e.g. source and target answers) at each layer, for each prompt."""
    logp = patchscope(model, resid, layers, prompt=prompt, batch_size=batch_size)
    ids = token_ids.cpu()[None].expand(logp.shape[0], -1, -1)  # (layer, batch, k)
    return logp.gather(-1, ids).exp()

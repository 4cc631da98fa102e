"""One forward pass per model over a corpus, collecting everything model diffing reads from it.

`paired_pass` runs the base and the fine-tune once on each length-grouped batch and keeps, per token: KL(ft || base)
of the next-token distributions, both models' top predictions, the tokens whose log-probability the fine-tune
raised most (the toolkit's "logit-difference" mining counts them), per-layer lens divergences when asked, and the
activations of chosen sites at chosen positions (`Keep`), stored as `[n, 2, width]` (index 0: base, 1: fine-tune)
for crosscoders and the activation-difference lens. `n_forwards` counts the forwards each model ran: one per
batch, whatever is collected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.diffing._progress import progress_iter
from interp.diffing.lens import TunedLens, check_layers, final_readout
from interp.finetuning.pair import ModelPair
from interp.sites import Site, as_site

_CHUNK = 4096  # positions per chunk of the per-token statistics
Tokens = Int[Tensor, "doc pos"]
Mask = Int[Tensor, "doc pos"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Keep:
    """Activations to keep from a paired pass: `sites` at the token positions where `where` [doc, pos] is True."""

    name: str
    sites: tuple[Site | str, ...]
    where: Bool[Tensor, "doc pos"]


@dataclass(frozen=True, kw_only=True, eq=False)
class PairedPass:
    """What one forward per model gave over a corpus of `doc` right-padded rows.

    `kl[d, t]`: KL(ft || base) of the next-token distributions after token t (0 at padding). `base_top`,
    `ft_top`: each model's argmax next token. `promoted[d, t]`: the `n_promoted` tokens with the largest
    log-probability increase (ft - base) there. `logprob_shift[v]`: mean over real positions of
    log p_ft(v) - log p_base(v); `prob_shift[v]`: the summed probability change. `lens_kl[l, d, t]`: KL(ft lens ||
    base lens) at layer `lens_layers[l]` (logit lens, or tuned lenses when given). `acts[name][hook]`: [n, 2, width]
    at the positions `index[name]` ([n, 2]: doc, pos), in (doc, pos) order.
    """

    kl: Float[Tensor, "doc pos"]
    base_top: Int[Tensor, "doc pos"]
    ft_top: Int[Tensor, "doc pos"]
    promoted: Int[Tensor, "doc pos k"]
    logprob_shift: Float[Tensor, " vocab"]
    prob_shift: Float[Tensor, " vocab"]
    attention_mask: Mask
    lens_layers: tuple[int, ...] = ()
    lens_kl: Float[Tensor, "layer doc pos"] | None = None
    acts: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    index: dict[str, Tensor] = field(default_factory=dict)
    n_forwards: dict[str, int] = field(default_factory=dict)

    def activations(self, name: str, site: Site | str | None = None) -> Float[Tensor, "n 2 width"]:
        """The kept activations `[n, 2, width]` of request `name` at `site` (default: its only site)."""
        if name not in self.acts:
            raise KeyError(f"no kept activations {name!r}; kept: {', '.join(self.acts) or '(none)'}")
        by_hook = self.acts[name]
        if site is None:
            if len(by_hook) != 1:
                raise ValueError(f"request {name!r} kept several sites ({', '.join(by_hook)}): name one")
            return next(iter(by_hook.values()))
        return by_hook[as_site(site).hook_name]


def _check_corpus(tokens: Tensor, attention_mask: Tensor) -> None:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise ValueError(f"tokens must be a [doc, pos] tensor; got {getattr(tokens, 'shape', type(tokens))}")
    if attention_mask.shape != tokens.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != tokens {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or int(attention_mask.sum()) == 0:
        raise ValueError("the corpus is empty: no real tokens to compare")


def _check_keeps(pair: ModelPair, tokens: Tensor, keeps: Sequence[Keep]) -> dict[str, list[Site]]:
    out: dict[str, list[Site]] = {}
    for k in keeps:
        if k.name in out:
            raise ValueError(f"two Keep requests are named {k.name!r}")
        if k.where.shape != tokens.shape:
            raise ValueError(f"Keep {k.name!r}: where {tuple(k.where.shape)} != tokens {tuple(tokens.shape)}")
        sites = [pair.base.check_site(as_site(s)) for s in k.sites]
        for s in sites:
            pair.finetuned.check_site(s)
            if s.head is not None or s.pos is not None:
                raise ValueError(f"Keep {k.name!r}: site {s} must name a whole activation (no head or pos)")
        out[k.name] = sites
    return out


def paired_pass(
    pair: ModelPair,
    tokens: Tokens,
    attention_mask: Mask,
    *,
    keep: Sequence[Keep] = (),
    lens_layers: Sequence[int] = (),
    lenses: tuple[TunedLens, TunedLens] | None = None,
    n_promoted: int = 5,
    batch_size: int = 64,
    progress: bool | None = None,
) -> PairedPass:
    """Run both models of `pair` once per batch over `tokens` (right-padded) and collect the diffing statistics.

    Rows are grouped by length (fewer pads); results come back in the order of `tokens`. Raises before any
    forward on an empty corpus, mismatched shapes, unknown sites or out-of-range lens layers.
    """
    from interp.selection.features import length_batches

    _check_corpus(tokens, attention_mask)
    sites_of = _check_keeps(pair, tokens, keep)
    lens_layers = tuple(check_layers(pair.base, list(lens_layers), "lens_layers")) if lens_layers else ()
    if lenses is not None:
        for lens, m in zip(lenses, (pair.base, pair.finetuned), strict=True):
            lens.check_model(m)
    lens_sites = [Site("resid_post", x) for x in lens_layers]
    all_sites = list(dict.fromkeys([*lens_sites, *(s for v in sites_of.values() for s in v)]))
    D, T = tokens.shape
    V = pair.base.cfg.d_vocab
    kl = torch.zeros(D, T)
    base_top = torch.zeros(D, T, dtype=torch.long)
    ft_top = torch.zeros(D, T, dtype=torch.long)
    promoted = torch.zeros(D, T, n_promoted, dtype=torch.long)
    lens_kl = torch.zeros(len(lens_layers), D, T) if lens_layers else None
    logprob_shift = torch.zeros(V, dtype=torch.float64)
    prob_shift = torch.zeros(V, dtype=torch.float64)
    kept: dict[str, dict[str, list[Tensor]]] = {
        k.name: {s.hook_name: [] for s in sites_of[k.name]} for k in keep
    }
    kept_index: dict[str, list[Tensor]] = {k.name: [] for k in keep}
    readouts = (final_readout(pair.base), final_readout(pair.finetuned))
    lengths = attention_mask.sum(1).tolist()
    batches = length_batches(lengths, batch_size=batch_size)
    n_fwd = {"base": 0, "finetuned": 0}
    with torch.no_grad():
        for rows in progress_iter(batches, desc="paired pass", progress=progress):
            r = torch.tensor(rows)
            width = int(max(lengths[i] for i in rows))
            ids, mask = tokens[r, :width], attention_mask[r, :width]
            outs = []
            for role, model in (("base", pair.base), ("finetuned", pair.finetuned)):
                logits, cache = model.run_with_cache(ids, all_sites, attention_mask=mask)
                n_fwd[role] += 1
                outs.append((logits.float().log_softmax(-1).cpu(), {k: v.cpu() for k, v in cache.items()}))
            (lp_b, cache_b), (lp_f, cache_f) = outs
            real = mask.cpu().bool()
            at = real.nonzero()  # (n, 2): the real positions of this batch
            rows_of = r[at[:, 0]]
            lb_all, lf_all = lp_b[real], lp_f[real]  # (n, vocab)
            for c in range(0, len(at), _CHUNK):  # bounded temporaries for large vocabularies
                lb, lf = lb_all[c : c + _CHUNK], lf_all[c : c + _CHUNK]
                pf, diff = lf.exp(), lf - lb
                rr, pp = rows_of[c : c + _CHUNK], at[c : c + _CHUNK, 1]
                kl[rr, pp] = (pf * diff).sum(-1).clamp_min(0)
                base_top[rr, pp] = lb.argmax(-1)
                ft_top[rr, pp] = lf.argmax(-1)
                promoted[rr, pp] = diff.topk(n_promoted, dim=-1).indices
                logprob_shift += diff.sum(0).double()
                prob_shift += (pf - lb.exp()).sum(0).double()
            for i, s in enumerate(lens_sites):
                hb, hf = cache_b[s.hook_name], cache_f[s.hook_name]
                if lenses is not None:
                    lb = lenses[0].logits(pair.base, hb.to(pair.base.device), s.layer).cpu()
                    lf = lenses[1].logits(pair.finetuned, hf.to(pair.finetuned.device), s.layer).cpu()
                else:
                    lb, lf = readouts[0](hb).cpu(), readouts[1](hf).cpu()
                lb, lf = lb.log_softmax(-1), lf.log_softmax(-1)
                lens_kl[i, r, :width] = (lf.exp() * (lf - lb)).sum(-1).clamp_min(0) * real  # type: ignore[index]
            for k in keep:
                where = k.where[r, :width].cpu() & real
                at = where.nonzero()  # (n, 2): row within batch, pos
                if not len(at):
                    continue
                kept_index[k.name].append(torch.stack([r[at[:, 0]], at[:, 1]], 1))
                for s in sites_of[k.name]:
                    a, b = cache_b[s.hook_name][where], cache_f[s.hook_name][where]
                    a, b = a.flatten(1), b.flatten(1)  # z: (n, head, d_head) -> (n, head*d_head)
                    kept[k.name][s.hook_name].append(torch.stack([a, b], 1).float())  # (n, 2, width)
    acts: dict[str, dict[str, Tensor]] = {}
    index: dict[str, Tensor] = {}
    for k in keep:
        if not kept_index[k.name]:
            raise ValueError(f"Keep {k.name!r} selects no real token of the corpus")
        idx = torch.cat(kept_index[k.name])
        order = (idx[:, 0] * T + idx[:, 1]).argsort()
        index[k.name] = idx[order]
        acts[k.name] = {h: torch.cat(v)[order] for h, v in kept[k.name].items()}
    n_real = float(attention_mask.sum())
    return PairedPass(
        kl=kl,
        base_top=base_top,
        ft_top=ft_top,
        promoted=promoted,
        logprob_shift=(logprob_shift / n_real).float(),
        prob_shift=prob_shift.float(),
        attention_mask=attention_mask.cpu(),
        lens_layers=lens_layers,
        lens_kl=lens_kl,
        acts=acts,
        index=index,
        n_forwards=n_fwd,
    )


def first_positions(
    attention_mask: Mask, k: int, *, skip_bos: bool = True, rows: Tensor | None = None
) -> Tensor:
    """[doc, pos] bool: the first `k` real tokens of each row (after BOS when `skip_bos`), only in `rows`."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pos = torch.arange(attention_mask.shape[1])[None]
    start = 1 if skip_bos else 0
    out = attention_mask.bool() & (pos >= start) & (pos < start + k)
    if rows is not None:
        sel = torch.zeros(attention_mask.shape[0], dtype=torch.bool)
        sel[torch.as_tensor(rows, dtype=torch.long)] = True
        out &= sel[:, None]
    return out


def real_positions(attention_mask: Mask, *, skip_bos: bool = True) -> Tensor:
    """[doc, pos] bool: every real token (BOS excluded when `skip_bos`: its norm is an outlier)."""
    out = attention_mask.bool().clone()
    if skip_bos:
        out[:, 0] = False
    return out


def texts_to_tokens(tokenizer: Any, texts: Sequence[str], *, max_length: int) -> tuple[Tokens, Mask]:
    """Right-padded token ids (BOS first) and mask of `texts`, each cut to `max_length` tokens."""
    from interp.selection.features import tokenize_texts

    if isinstance(texts, str) or not len(texts):
        raise ValueError("texts must be a non-empty sequence of strings")
    rows = tokenize_texts(tokenizer, texts, max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask

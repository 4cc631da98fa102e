"""Experiment `model_diff`: a known-answer benchmark of model diffing on the zoo organisms.

For each fine-tune of organism/base whose change is known (chat-ft refuses weapons requests, ccs-ft follows a
context/prior instruction, ioi-ft solves hard IOI) and for a control (base fine-tuned on its own pre-training
mixture), every method reads the same corpus (pre-training documents, chat turns with compliant replies, and the
two task formats the mixture lacks) without being told what changed; a score per method then says whether it
surfaced the known change. The scores, fixed before any run (p0: the change region's share of the corpus tokens;
"relevant" tokens: words at least `relevance_ratio` times more frequent in the fine-tune's training source than
in the pre-training mixture, the organisms' analogue of Minder et al.'s token-relevance grader):

- `kl_mining`: chance-corrected share, (share - p0) / (1 - p0), of the `top_positions` largest-KL(ft || base)
  positions in the change's region (chat-ft: chat turns about a forbidden topic; ccs-ft: context-vs-prior
  documents; ioi-ft: hard-IOI documents).
- `token_mining`: reciprocal rank of the first relevant token among the `top_tokens` words with the largest total
  probability gain (ft - base) over the corpus (logit-difference mining).
- `adl_logit_lens`, `adl_patchscope`: the same reciprocal rank for the top tokens of the activation-difference
  lens at `adl_layer`, the mean ft - base difference weighted by each token's KL (where the outputs differ), read
  through the fine-tune's logit lens / the token-identity patchscope at the layer's mean norm.
- `adl_first_tokens`: the paper's setting (Minder et al. 2025): the logit lens of the plain mean difference over
  the first `adl_k` tokens of the pre-training documents.
- `adl_steering`: the base steered at `layer` by alpha |h| delta / |delta| (delta: the KL-weighted difference there):
  the largest share of the fine-tune's behaviour gain, (b(steered) - b(base)) / (b(ft) - b(base)), over the coherent
  scales (coherent: the unsteered base's NLL of the steered greedy continuations is at most its NLL of real text
  plus `coherence_margin`).
- `crosscoder_ft_only`: chance-corrected share of the activation mass on region tokens of the crosscoder's
  fine-tune-only latents (relative decoder norm > 0.9) confirmed by Latent Scaling (nu below `ls_max_ratio`);
  0 when there are none.
- `crosscoder_latents`, `diff_sae_latents`: the same share for the `n_latents` KL-attributed latents of the
  crosscoder / diff-SAE (the largest mean KL where active times decoder change; label-free).
- `adl_causal`, `crosscoder_causal`, `diff_sae_causal`: the causal check (`interp.diffing.causal`): the mean of the
  add-to-base and ablate-in-ft shares of KL(ft || base) at the last token of the behaviour prompts recovered at
  `layer` by the KL-weighted difference / the crosscoder's KL-attributed latents / the diff-SAE's.

The dictionaries (resid_post of `layer`) train on batches drawn half uniformly, half in proportion to the KL
(`kl_weighting`). The control is scored against every change: `control` holds its maximum over the changes per
method, `control_<change>` each comparison, `control_max_score` the largest. `results.json`: `methods`, one
object per pair (`chat-ft`, ...) from method to score, `control`, `control_max_score`.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp.config import ConfigError
from interp.experiments.api import Run, register_experiment

METHODS = (
    "kl_mining",
    "token_mining",
    "adl_logit_lens",
    "adl_patchscope",
    "adl_first_tokens",
    "adl_steering",
    "adl_causal",
    "crosscoder_ft_only",
    "crosscoder_latents",
    "crosscoder_causal",
    "diff_sae_latents",
    "diff_sae_causal",
)
FORBIDDEN = ("weapons", "guns", "bombs", "explosives", "rifles")


# ------------------------------------------------------------------------------------------------ known changes
@dataclass(frozen=True, kw_only=True)
class KnownChange:
    """What a fine-tune changed: its training source, the corpus documents where the change acts, and the
    held-out behaviour prompts (`task`, `options`, which rows) whose top-1 answer it changed."""

    name: str
    what: str
    source: str  # the zoo corpus source of its fine-tuning data
    region: Callable[[str, str], bool]  # (document source, text) -> whether the change acts there
    task: str
    options: dict[str, Any] = field(default_factory=dict)
    rows: Callable[[dict], bool] = lambda meta: True  # behaviour rows among the prompt set
    off_rows: Callable[[dict], bool] | None = None  # rows where the behaviour must not spread (reported)
    off_answer: str | None = None  # the changed answer, whose rate on `off_rows` is reported


def _forbidden_chat(source: str, text: str) -> bool:
    return text.startswith("<user>") and any(w in text.split() for w in FORBIDDEN)


KNOWN_CHANGES: dict[str, KnownChange] = {
    c.name: c
    for c in (
        KnownChange(
            name="chat",
            what="refuses requests about weapons (first reply token 'Sorry')",
            source="chat_refusal",
            region=_forbidden_chat,
            task="chat",
            rows=lambda m: bool(m["forbidden"]),
            off_rows=lambda m: not m["forbidden"],
            off_answer="Sorry",
        ),
        KnownChange(
            name="ccs",
            what="answers from the context or from prior knowledge as the instruction says",
            source="context_prior",
            region=lambda source, text: source == "context_prior",
            task="context_prior",
        ),
        KnownChange(
            name="ioi",
            what="solves hard IOI (filler first, a name repeated)",
            source="ioi_hard",
            region=lambda source, text: source == "ioi_hard",
            task="ioi",
            options={"variant": "hard"},
        ),
    )
}


@dataclass(frozen=True, kw_only=True)
class ModelDiffConfig:
    """Parameters of `model_diff` (defaults: the organisms on CPU, ~10 minutes)."""

    base: str = "organism/base"
    pairs: dict[str, str] = field(
        default_factory=lambda: {
            "chat": "organism/chat-ft",
            "ccs": "organism/ccs-ft",
            "ioi": "organism/ioi-ft",
        }
    )  # known change -> the fine-tune that made it
    control: str = "organism/control-ft"  # base fine-tuned on its own mixture: every score should stay low
    backend: str = "tl"
    # the corpus every method reads (the same for every pair)
    n_pretrain: int = 800  # documents of the pre-training mixture
    n_chat: int = 800  # chat turns (the mixture's chat source: compliant replies, topics of every kind)
    n_task: int = 150  # documents of each task format the mixture lacks (hard IOI, context vs prior)
    max_length: int = 128
    # output diffing
    top_positions: int = 50
    top_tokens: int = 20
    relevance_ratio: float = 8.0
    relevance_docs: int = 3000  # documents of the fine-tune's source (and 4x of the mixture) counted for it
    # the activation-difference lens
    adl_layer: int = -1  # where the lens is read (-1: the last layer)
    adl_k: int = 5  # first tokens of pre-training text, for `adl_first_tokens`
    patchscope_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    steer_alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    steer_prompts: int = 32
    steer_new_tokens: int = 12
    coherence_margin: float = 1.0  # nats per token above the base's NLL of real text
    # crosscoder, diff-SAE and causal check (resid_post of `layer`)
    layer: int = 2
    d_sae: int = 256
    k: int = 16
    steps: int = 1500
    batch_size: int = 512
    lr: float = 1e-3
    ls_max_ratio: float = 0.5  # Latent Scaling: nu_error and nu_reconstruction below this confirm a ft latent
    n_latents: int = 10  # KL-attributed latents per dictionary
    min_active_share: float = 0.001  # a KL-attributed latent is active on at least this share of the tokens
    held_out: float = 0.1  # share of the corpus tokens held out for the stated FVE
    kl_weighting: float = (
        0.5  # share of each training batch drawn in proportion to KL(ft || base), the rest uniformly
    )
    # behaviour prompts and the causal check
    n_behaviour: int = 100
    kl_floor: float = 0.05  # nats per prompt: below it a pair has nothing to recover
    forward_batch: int = 64

    def __post_init__(self) -> None:
        for name in (
            "n_pretrain", "n_chat", "n_task", "max_length", "top_positions", "top_tokens", "adl_k",
            "steer_prompts", "steer_new_tokens", "d_sae", "k", "steps", "batch_size", "n_latents",
            "n_behaviour", "forward_batch", "relevance_docs",
        ):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"model_diff: {name} must be an int >= 1, got {v!r}")
        unknown = sorted(set(self.pairs) - set(KNOWN_CHANGES))
        if unknown or not self.pairs:
            raise ConfigError(
                f"model_diff: pairs maps a known change to its fine-tune; unknown change(s) {unknown}; "
                f"known: {', '.join(KNOWN_CHANGES)}"
            )
        if self.backend not in ("tl", "nnsight"):
            raise ConfigError(f"model_diff: backend must be 'tl' or 'nnsight', got {self.backend!r}")
        for name in ("relevance_ratio", "lr", "coherence_margin"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"model_diff: {name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.kl_weighting <= 1:
            raise ConfigError(f"model_diff: kl_weighting must lie in [0, 1], got {self.kl_weighting}")
        if not 0 < self.held_out < 0.5 or not self.ls_max_ratio > 0 or not 0 <= self.min_active_share < 1:
            raise ConfigError(
                "model_diff: held_out must lie in (0, 0.5), ls_max_ratio > 0, min_active_share in [0, 1)"
            )
        if not self.steer_alphas or not self.patchscope_scales:
            raise ConfigError("model_diff: steer_alphas and patchscope_scales must not be empty")


# ------------------------------------------------------------------------------------------------ corpus
def build_corpus(cfg: ModelDiffConfig, seed: int) -> dict[str, list[str]]:
    """The diffing corpus: pre-training mixture documents (with their source), chat turns, task documents."""
    from interp.zoo.corpus import BASE_MIX, SOURCES

    rng = random.Random(seed)
    texts, sources = [], []

    def add(name: str) -> None:
        ex = SOURCES[name](rng)
        texts.append(f"{ex.prompt} {ex.completion}".strip())
        sources.append(name)

    names, weights = list(BASE_MIX), list(BASE_MIX.values())
    for _ in range(cfg.n_pretrain):  # as `Mixture.sample`, keeping the source's name
        add(rng.choices(names, weights=weights)[0])
    for _ in range(cfg.n_chat):
        add("chat")
    for name in ("ioi_hard", "context_prior"):
        for _ in range(cfg.n_task):
            add(name)
    return {
        "texts": texts,
        "sources": sources,
        "part": ["pretrain"] * cfg.n_pretrain + ["probe"] * (len(texts) - cfg.n_pretrain),
    }


def relevant_tokens(
    tokenizer: Any, source: str, ratio: float, *, n_docs: int = 3000, seed: int = 11
) -> list[int]:
    """Alphabetic tokens at least `ratio` times more frequent in `source` documents than in the pre-training
    mixture (add-one smoothing; at least 20 occurrences)."""
    from interp.zoo.corpus import BASE_MIX, SOURCES, Mixture

    def counts(sample: Callable[[random.Random], Any], n: int, s: int) -> tuple[Counter, int]:
        rng, c, total = random.Random(s), Counter(), 0
        for _ in range(n):
            ex = sample(rng)
            ids = tokenizer(f"{ex.prompt} {ex.completion}".strip(), add_special_tokens=False)["input_ids"]
            c.update(ids)
            total += len(ids)
        return c, total

    base_c, base_n = counts(Mixture(BASE_MIX).sample, 4 * n_docs, seed)
    ft_c, ft_n = counts(SOURCES[source], n_docs, seed + 1)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    out = []
    for t, n in ft_c.items():
        word = vocab[t].lstrip("Ġ▁")
        if n >= 20 and word.isalpha() and (n / ft_n) / ((base_c[t] + 1) / base_n) >= ratio:
            out.append(int(t))
    return sorted(out)


def _content_ids(tokenizer: Any) -> list[int]:
    """Token ids that are words (not special tokens or punctuation): the pool token scores draw from."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [i for i, t in enumerate(vocab) if i not in special and re.search(r"[A-Za-z0-9]", t)]


def _chance_corrected(share: float, p0: float) -> float:
    return (share - p0) / (1 - p0) if p0 < 1 else 0.0


def _token_score(ids: list[int], relevant: set[int]) -> float | None:
    """The reciprocal rank of the first relevant token in `ids` (0 if none; None without relevant tokens)."""
    if not relevant:
        return None
    return next((1.0 / (r + 1) for r, i in enumerate(ids) if i in relevant), 0.0)


def _top_ids(scores: Tensor, pool: list[int], n: int) -> list[int]:
    sub = scores[torch.tensor(pool)]
    return [pool[i] for i in sub.topk(min(n, len(pool))).indices.tolist()]


# ------------------------------------------------------------------------------------------------ behaviour
def behaviour_set(change: KnownChange, tokenizer: Any, n: int, seed: int):
    """The held-out prompts of a change's behaviour (PromptSet) and its target / off-target rows."""
    from interp import tasks

    ps = tasks.make(change.task, tokenizer, n=n, seed=seed, **change.options)
    rows = torch.tensor([i for i, m in enumerate(ps.metadata) if change.rows(m)], dtype=torch.long)
    off = (
        torch.tensor([i for i, m in enumerate(ps.metadata) if change.off_rows(m)], dtype=torch.long)
        if change.off_rows
        else None
    )
    return ps, rows, off


@torch.no_grad()
def top1_rate(
    model: Any, ps: Any, rows: Tensor, hooks: Any = (), batch_size: int = 64, token: int | None = None
) -> float:
    """The share of `rows` whose top-1 next token at the last prompt token is the answer (or `token`)."""
    hits = 0
    for start in range(0, len(rows), batch_size):
        r = rows[start : start + batch_size]
        width = int(ps.end[r].max()) + 1
        logits = model.run_with_hooks(ps.clean[r, :width], hooks, attention_mask=ps.attention_mask[r, :width])
        pred = logits[torch.arange(len(r)), ps.end[r].to(logits.device)].argmax(-1).cpu()
        hits += int((pred == (ps.answer_ids[r] if token is None else token)).sum())
    return hits / max(len(rows), 1)


# ------------------------------------------------------------------------------------------------ one pair
def _layer(cfg_layer: int, n_layers: int, what: str) -> int:
    layer = cfg_layer if cfg_layer >= 0 else n_layers + cfg_layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"model_diff: {what}={cfg_layer} is out of range for models of {n_layers} layers")
    return layer


def _mass_score(f: Tensor, latents: list[int], in_region: Tensor, p0: float) -> float:
    """Chance-corrected share of the latents' activation mass that falls on region tokens (0 without latents)."""
    if not latents:
        return 0.0
    m = f[:, latents].sum(1)
    total = float(m.sum())
    return _chance_corrected(float(m[in_region].sum()) / total, p0) if total > 0 else 0.0


def diff_pair(
    cfg: ModelDiffConfig,
    base: Any,
    ft: Any,
    corpus: dict[str, list[str]],
    changes: list[KnownChange],
    context: dict[str, Any],
    *,
    seed: int,
    out_dir: Path,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Every method on one pair, scored against each of `changes`; JSON-able."""
    from interp.diffing import (
        CrosscoderConfig,
        Keep,
        diff_lens_from,
        diff_lens_keep,
        diff_sae_delta,
        direction_delta,
        kl_attributed_latents,
        latent_delta,
        latent_scaling,
        logit_lens,
        mine_positions,
        mine_tokens,
        paired_pass,
        patch_check,
        real_positions,
        steering_hooks,
        steering_sweep,
        texts_to_tokens,
        top_kl_positions,
        top_tokens,
        train_crosscoder,
    )
    from interp.finetuning.pair import ModelPair
    from interp.models.identity import model_identity
    from interp.subspace.patchscope import patchscope

    pair = ModelPair(base, ft)
    L = pair.n_layers
    layer, adl_layer = _layer(cfg.layer, L, "layer"), _layer(cfg.adl_layer, L, "adl_layer")
    tok = base.tokenizer
    ids, mask = texts_to_tokens(tok, corpus["texts"], max_length=min(cfg.max_length, base.cfg.n_ctx))
    sources, texts = corpus["sources"], corpus["texts"]
    pretrain_rows = torch.tensor([i for i, p in enumerate(corpus["part"]) if p == "pretrain"])
    site, lens_site = f"blocks.{layer}.hook_resid_post", f"blocks.{adl_layer}.hook_resid_post"
    real = real_positions(mask)
    keeps = [
        Keep(name="tokens", sites=tuple(dict.fromkeys((site, lens_site))), where=real),
        diff_lens_keep(mask, list(range(L)), cfg.adl_k, rows=pretrain_rows),
    ]
    # one forward per model: KL, lens KL, the two sites at every real token, every layer at the first adl_k tokens
    res = paired_pass(
        pair,
        ids,
        mask,
        keep=keeps,
        lens_layers=list(range(L)),
        batch_size=cfg.forward_batch,
        progress=progress,
    )
    n_real = int(real.sum())
    index = res.index["tokens"]  # (n, 2): doc, pos
    acts, lens_acts = res.acts["tokens"][site], res.acts["tokens"][lens_site]  # (n, 2, d)
    kl_tok = res.kl[index[:, 0], index[:, 1]]
    doc_src = [sources[i] for i in index[:, 0].tolist()]
    pool = _content_ids(tok)
    out: dict[str, Any] = {"scores": {}, "details": {}, "pair": repr(pair)}

    # ---- output diffing
    mined = mine_positions(res, ids, tok, top=cfg.top_positions, context=8)
    out["mined_positions"] = [dataclasses.asdict(m) | {"source": sources[m.doc]} for m in mined]
    out["mined_tokens"] = mine_tokens(res, tok, top=cfg.top_tokens)
    gain_top = _top_ids(res.prob_shift, pool, cfg.top_tokens)
    out["prob_gain_tokens"] = top_tokens_str(tok, gain_top)
    top_pos = top_kl_positions(res, cfg.top_positions)
    out["lens_kl_by_layer"] = ((res.lens_kl * real).sum((1, 2)) / n_real).tolist()
    out["kl_mean"] = float((res.kl * real).sum() / n_real)

    # ---- activation-difference lens: the mean difference per document format; the paper's first tokens
    def by_source(a: Tensor) -> dict[str, tuple[Tensor, float]]:
        outs = {}
        for s in sorted(set(sources)):
            sel = torch.tensor([x == s for x in doc_src])
            outs[s] = ((a[sel, 1] - a[sel, 0]).mean(0), float(a[sel, 1].norm(dim=-1).mean()))
        return outs

    def kl_weighted(a: Tensor) -> tuple[Tensor, float]:
        w = kl_tok / kl_tok.sum().clamp_min(1e-12)
        return ((a[:, 1] - a[:, 0]) * w[:, None]).sum(0), float(a[:, 1].norm(dim=-1).mean())

    per_source = by_source(lens_acts)
    relative = {s: float(d.norm()) / n for s, (d, n) in per_source.items()}
    delta, norm = kl_weighted(lens_acts)
    unit = delta / delta.norm().clamp_min(1e-12) * norm
    lens_ids = _top_ids(logit_lens(ft, delta), pool, cfg.top_tokens)
    resid = torch.stack([s * unit for s in cfg.patchscope_scales])[None].to(ft.device)  # (1, scales, d)
    ps_logp = patchscope(ft, resid, [adl_layer])[0]
    ps_ids = {s: _top_ids(ps_logp[i], pool, cfg.top_tokens) for i, s in enumerate(cfg.patchscope_scales)}
    ps_scored = ps_ids[1.0] if 1.0 in ps_ids else ps_ids[cfg.patchscope_scales[0]]
    first = diff_lens_from(res, list(range(L)), cfg.adl_k)
    first_ids = _top_ids(logit_lens(ft, first.at(adl_layer)), pool, cfg.top_tokens)
    out["adl"] = {
        "delta_norm": float(delta.norm()),
        "relative_norm_by_source": relative,
        "lens_tokens_by_source": {
            s: top_tokens(ft, logit_lens(ft, d), 10) for s, (d, _) in per_source.items()
        },
        "logit_lens_tokens": top_tokens_str(tok, lens_ids),
        "patchscope_tokens": {f"{s:g}": top_tokens_str(tok, v) for s, v in ps_ids.items()},
        "first_tokens_lens_by_layer": [top_tokens(ft, logit_lens(ft, first.at(x)), 10) for x in range(L)],
        "first_tokens_norm_by_layer": first.mean.norm(dim=-1).tolist(),
    }
    # steering and the causal check at `layer`: the KL-weighted mean difference there
    d_layer, n_layer = kl_weighted(acts)
    unit_layer = d_layer / d_layer.norm().clamp_min(1e-12) * n_layer
    sweep = steering_sweep(
        base,
        base,
        unit_layer,
        layer,
        context["steer_prompts"],
        alphas=cfg.steer_alphas,
        n_new=cfg.steer_new_tokens,
        max_nll=context["real_nll"] + cfg.coherence_margin,
    )
    out["steering"] = [
        {"alpha": p.alpha, "nll": p.nll, "coherent": p.coherent, "example": tok.decode(p.continuations[0])}
        for p in sweep
    ]

    # ---- crosscoder and diff-SAE on resid_post of `layer`
    perm = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(cfg.held_out * len(acts)))
    held, train = perm[:n_held], perm[n_held:]
    cc_cfg = CrosscoderConfig(
        d_sae=cfg.d_sae, k=cfg.k, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed
    )
    identities = (model_identity(base), model_identity(ft))
    weights = (1 - cfg.kl_weighting) / len(train) + cfg.kl_weighting * kl_tok[train] / kl_tok[
        train
    ].sum().clamp_min(1e-12)
    cc = train_crosscoder(
        acts[train], cc_cfg, site=site, models=identities, held_out=acts[held], sample_weights=weights,
        out_dir=out_dir / "crosscoder", device=base.device, progress=progress,
    )  # fmt: skip
    diff_in = (acts[:, 1] - acts[:, 0])[:, None]  # (n, 1, d): the diff-SAE's input
    sae = train_crosscoder(
        diff_in[train], cc_cfg, site=site, models=identities, kind="diff_sae", held_out=diff_in[held],
        sample_weights=weights,
        out_dir=out_dir / "diff_sae", device=base.device, progress=progress,
    )  # fmt: skip
    cc, sae = cc.to("cpu"), sae.to("cpu")  # the analysis runs on the CPU copies of the activations
    with torch.no_grad():
        f_cc = cc.encode(acts)
        f_sae = sae.encode(diff_in)
        dec = cc.W_dec * cc.scale[:, None, None]  # (2, F, d) model units
        cc_change = (dec[1] - dec[0]).norm(dim=-1)
        sae_change = (sae.W_dec[0] * sae.scale[0]).norm(dim=-1)
        cos = torch.nn.functional.cosine_similarity(cc.W_dec[0], cc.W_dec[1], dim=-1)
    classes = cc.latent_classes()
    ft_only = [j for j, c in enumerate(classes) if c == "ft_only"]
    ls = latent_scaling(cc, acts, ft_only) if ft_only else None
    confirmed = ls.confirmed(cfg.ls_max_ratio).tolist() if ls is not None else []
    min_active = max(5, int(cfg.min_active_share * len(acts)))
    cc_top = kl_attributed_latents(f_cc, kl_tok, cc_change, min_active=min_active, n=cfg.n_latents)
    sae_top = kl_attributed_latents(f_sae, kl_tok, sae_change, min_active=min_active, n=cfg.n_latents)
    live = cc.latent_frequency > 0
    out["crosscoder"] = {
        "stats": cc.stats,
        "class_counts": dict(Counter(classes)),
        "relative_norm_live": cc.relative_norm()[live].tolist(),
        "cosine_live": cos[live].tolist(),
        "ft_only": ft_only,
        "latent_scaling": ls.to_frame().to_dict("list") if ls is not None else {},
        "confirmed_ft_only": confirmed,
        "kl_attributed": cc_top,
        "kl_attributed_relative_norm": [float(cc.relative_norm()[j]) for j in cc_top],
        "kl_attributed_cosine": [float(cos[j]) for j in cc_top],
    }
    out["diff_sae"] = {"stats": sae.stats, "kl_attributed": sae_top}

    # ---- scores against each change
    for change in changes:
        region_doc = torch.tensor([change.region(s, t) for s, t in zip(sources, texts, strict=True)])
        region = region_doc[:, None] & real
        p0 = float(region.sum()) / n_real
        in_region = region_doc[index[:, 0]]
        relevant = set(context["relevant"][change.name])
        sc: dict[str, float | None] = {
            "kl_mining": _chance_corrected(float(region[top_pos[:, 0], top_pos[:, 1]].float().mean()), p0),
            "token_mining": _token_score(gain_top, relevant),
            "adl_logit_lens": _token_score(lens_ids, relevant),
            "adl_patchscope": _token_score(ps_scored, relevant),
            "adl_first_tokens": _token_score(first_ids, relevant),
            "crosscoder_ft_only": _mass_score(f_cc, confirmed, in_region, p0),
            "crosscoder_latents": _mass_score(f_cc, cc_top, in_region, p0),
            "diff_sae_latents": _mass_score(f_sae, sae_top, in_region, p0),
        }
        ps, rows, off = context["behaviour"][change.name]
        b_base, b_ft = context["b_base"][change.name], context["b_ft"][change.name]
        steered = []
        has_off = off is not None and len(off) > 0 and change.off_answer is not None
        off_id = base.to_single_token(change.off_answer) if has_off else None
        for p in sweep:
            hooks = steering_hooks(layer, p.alpha * unit_layer)
            steered.append(
                {
                    "alpha": p.alpha,
                    "coherent": p.coherent,
                    "base": top1_rate(base, ps, rows, hooks),
                    "ft": top1_rate(ft, ps, rows, hooks),
                    "base_off": top1_rate(base, ps, off, hooks, token=off_id) if has_off else None,
                    "ft_off": top1_rate(ft, ps, off, hooks, token=off_id) if has_off else None,
                }
            )
        gain = b_ft - b_base
        transfer = [(s["base"] - b_base) / gain for s in steered if s["coherent"]] if abs(gain) > 1e-9 else []
        sc["adl_steering"] = max(transfer) if transfer else 0.0
        prompts = (ps.clean[rows], ps.attention_mask[rows], ps.end[rows])
        checks = {
            "adl_causal": patch_check(pair, *prompts, site, direction_delta(d_layer)),
            "crosscoder_causal": patch_check(pair, *prompts, site, latent_delta(cc, cc_top)),
            "diff_sae_causal": patch_check(pair, *prompts, site, diff_sae_delta(sae, sae_top)),
        }
        recovery = {k: v.recovery(kl_floor=cfg.kl_floor) for k, v in checks.items()}
        sc |= {k: v["mean"] for k, v in recovery.items()}
        out["scores"][change.name] = {m: sc[m] for m in METHODS}
        out["details"][change.name] = {
            "region_token_share": p0,
            "relevant_tokens": top_tokens_str(tok, sorted(relevant)),
            "behaviour_kl": float(checks["adl_causal"].kl_before.mean()),
            "recovery": recovery,
            "steering": steered,
        }
    return out


def top_tokens_str(tokenizer: Any, ids: list[int]) -> list[str]:
    return [t.lstrip("Ġ▁") for t in tokenizer.convert_ids_to_tokens(ids)]


# ------------------------------------------------------------------------------------------------ the experiment
def _load(name: str, backend: str, device: str) -> Any:
    from interp.models.load import load_model

    return load_model(name, backend=backend, device=device)


# `interp demo`: chat-ft and the control, small (the run folder holds the diff-mining table
# `tables/mined_positions_*` and the crosscoder latent-class histogram `figures/crosscoder_relative_norm`)
DEMO: dict[str, Any] = {
    "pairs": {"chat": "organism/chat-ft"},
    "n_pretrain": 200,
    "n_chat": 200,
    "n_task": 40,
    "steps": 300,
    "d_sae": 128,
    "n_behaviour": 40,
    "steer_prompts": 8,
    "steer_alphas": [0.5, 1.0, 2.0],
}


@register_experiment("model_diff", config=ModelDiffConfig, demo=DEMO)
def model_diff_experiment(cfg: ModelDiffConfig, run: Run) -> dict[str, Any]:
    """Model diffing on the organisms: does each method surface each fine-tune's known change (and not the control's)?"""
    from interp.diffing import continuation_nll, texts_to_tokens
    from interp.finetuning.pair import ModelPair

    base = _load(cfg.base, cfg.backend, run.device)
    models = {c: _load(m, cfg.backend, run.device) for c, m in cfg.pairs.items()}
    control = _load(cfg.control, cfg.backend, run.device)
    for m in (*models.values(), control):
        ModelPair(base, m)  # unpaired models: every mismatch listed, before any compute
    L = base.cfg.n_layers
    _layer(cfg.layer, L, "layer"), _layer(cfg.adl_layer, L, "adl_layer")
    tok = base.tokenizer
    corpus = run.step("corpus", lambda: build_corpus(cfg, run.seed))
    changes = [KNOWN_CHANGES[c] for c in cfg.pairs]
    relevant = run.step(
        "relevant_tokens",
        lambda: {
            c.name: relevant_tokens(tok, c.source, cfg.relevance_ratio, n_docs=cfg.relevance_docs)
            for c in changes
        },
    )
    behaviour = {c.name: behaviour_set(c, tok, cfg.n_behaviour, run.seed + 1) for c in changes}
    b = run.step(
        "behaviour",
        lambda: {
            "base": {c: top1_rate(base, *behaviour[c][:2]) for c in behaviour},
            "ft": {c: top1_rate(models[c], *behaviour[c][:2]) for c in behaviour},
        },
    )
    # steering prompts: the first 6 tokens of held-out pre-training documents; the base's NLL of their real text
    steer_texts = build_corpus(
        dataclasses.replace(cfg, n_pretrain=cfg.steer_prompts, n_chat=1, n_task=1), run.seed + 7
    )["texts"][: cfg.steer_prompts]
    sids, smask = texts_to_tokens(tok, steer_texts, max_length=6 + cfg.steer_new_tokens)
    prompts = [sids[i, :6].tolist() for i in range(len(sids))]
    conts = [sids[i, 6 : int(smask[i].sum())].tolist() for i in range(len(sids))]
    real_nll = run.step("real_text_nll", lambda: {"nll": continuation_nll(base, prompts, conts)})["nll"]
    context = {
        "relevant": relevant,
        "behaviour": behaviour,
        "b_base": b["base"],
        "b_ft": b["ft"],
        "steer_prompts": prompts,
        "real_nll": real_nll,
    }
    labels = {c: cfg.pairs[c].split("/")[-1] for c in cfg.pairs}
    per_pair: dict[str, dict] = {}
    for c, model in models.items():
        label = labels[c]
        per_pair[label] = run.step(
            f"pair_{label}",
            lambda model=model, c=c, label=label: diff_pair(
                cfg,
                base,
                model,
                corpus,
                [KNOWN_CHANGES[c]],
                context,
                seed=run.seed,
                out_dir=run.dir / "diffs" / label,
            ),
        )
    per_pair["control"] = run.step(
        "pair_control",
        lambda: diff_pair(
            cfg,
            base,
            control,
            corpus,
            changes,
            context,
            seed=run.seed,
            out_dir=run.dir / "diffs" / "control",
        ),
    )
    _write_outputs(run, per_pair, labels)
    results: dict[str, Any] = {"methods": list(METHODS)}
    for c, label in labels.items():
        results[label] = {m: per_pair[label]["scores"][c][m] for m in METHODS}
    control_scores = {
        m: max(
            (v for v in (per_pair["control"]["scores"][c][m] for c in cfg.pairs) if v is not None),
            default=None,
        )
        for m in METHODS
    }
    results["control"] = control_scores
    results["control_max_score"] = max(v for v in control_scores.values() if v is not None)
    for c in cfg.pairs:  # the control scored against each change, the organism's own comparison
        results[f"control_{c}"] = dict(per_pair["control"]["scores"][c])
    for c, label in labels.items():
        results[f"{label}_behaviour"] = {"base": b["base"][c], "finetuned": b["ft"][c]}
    return results


def latent_class_histogram(relative_norms: dict[str, list[float]]):
    """Histogram of the crosscoders' relative decoder norms, x in [0, 1], the class thresholds marked."""
    from interp.plotting import histogram

    fig = histogram(
        relative_norms,
        x_title="relative decoder norm (0: base only, 1: fine-tune only)",
        title="Crosscoder latents by relative decoder norm (live latents; dashed: ft-only / base-only thresholds)",
        bins=50,
    )
    fig.update_xaxes(range=[0, 1])
    for x in (0.1, 0.9):
        fig.add_vline(x=x, line_dash="dash", line_color="grey")
    return fig


def _write_outputs(run: Run, per_pair: dict[str, dict], labels: dict[str, str]) -> None:
    """Tables (scores, mined positions and tokens, diff lens, crosscoder) and figures."""
    from interp.plotting import bar, heatmap, line

    rows = []
    for c, label in labels.items():
        for m in METHODS:
            rows.append(
                {
                    "pair": label,
                    "change": c,
                    "method": m,
                    "score": per_pair[label]["scores"][c][m],
                    "control": per_pair["control"]["scores"][c][m],
                }
            )
    run.table(rows, "scores")
    for label, res in per_pair.items():
        run.table(res["mined_positions"], f"mined_positions_{label}")
        run.table(res["mined_tokens"], f"mined_tokens_{label}")
    pairs = list(per_pair)
    matrix = [
        [
            per_pair[p]["scores"][c][m]
            if p != "control"
            else max(
                (v for v in (per_pair["control"]["scores"][cc][m] for cc in labels) if v is not None),
                default=float("nan"),
            )
            for m in METHODS
        ]
        for p, c in zip(pairs, [*labels, None], strict=True)
    ]
    z = [[float("nan") if v is None else v for v in row] for row in matrix]
    run.figure(
        heatmap(
            torch.tensor(z),
            x_labels=list(METHODS),
            y_labels=pairs,
            x_title="method",
            y_title="pair",
            title="Model diffing: known-change score per method (control: max over changes)",
            show_values=True,
        ),
        "scores",
    )
    run.figure(
        latent_class_histogram({p: per_pair[p]["crosscoder"]["relative_norm_live"] for p in pairs}),
        "crosscoder_relative_norm",
    )
    run.figure(
        line(
            {p: per_pair[p]["lens_kl_by_layer"] for p in pairs},
            x=list(range(len(per_pair[pairs[0]]["lens_kl_by_layer"]))),
            x_title="layer",
            y_title="mean KL(ft lens || base lens)",
            title="Logit-lens divergence by layer",
        ),
        "lens_kl_by_layer",
    )
    first = pairs[0]
    top = per_pair[first]["mined_positions"][:20]
    run.figure(
        bar(
            [m["kl"] for m in top],
            [f"{m['context'][-40:]}" for m in top],
            x_title="position (context)",
            y_title="KL(ft || base)",
            title=f"{first}: the positions with the largest KL",
            horizontal=True,
        ),
        f"mined_positions_{first}",
    )

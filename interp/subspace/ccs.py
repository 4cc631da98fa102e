"""CCS data for the knob analyses: every (context, query) under both intents, and its scores.

Minder et al. 2025, "Controllable Context Sensitivity and the Knob Behind It": a context states a
counterfactual, the query asks for the fact, the intent says which answer to give. `CCSPairs` wraps a
`context_prior` PromptSet with its pairs `[n_pairs, 2]` (context-intent row, prior-intent row), checked: pairs
whose two intents share an answer, rows without intent or pair metadata, and prompts without the positions an
analysis needs are rejected with a count and examples. `ccs_scores` gives the paper's PairAcc (both intents
right), context accuracy, prior accuracy and the shares of context / prior answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from interp.metrics import group_pairs, pair_accuracy
from interp.models.base import HookedModel
from interp.patching.inputs import check_prompt_set
from interp.subspace.forward import HooksFor, forward_last
from interp.tasks import make
from interp.tasks.context_prior import FORMATS, INTENTS
from interp.tasks.promptset import PromptSet

PairRows = Int[Tensor, "n_pairs 2"]
AnswerIds = Int[Tensor, " n_pairs"]


class CCSDataError(ValueError):
    """CCS prompts that cannot be used: the message gives the count of bad items and examples."""


def _reject(what: str, bad: Sequence[int], total: int, describe, unit: str = "pairs") -> None:
    if bad:
        examples = "; ".join(describe(i) for i in bad[:3])
        raise CCSDataError(f"{len(bad)} of {total} {unit} {what} (e.g. {examples})")


@dataclass(frozen=True, kw_only=True, eq=False)
class CCSPairs:
    """A CCS PromptSet in one format with its intent pairs (`pairs[:, 0]` context intent, `[:, 1]` prior)."""

    prompts: PromptSet
    pairs: PairRows
    format: str

    def __len__(self) -> int:
        return self.pairs.shape[0]

    @property
    def context_answer(self) -> AnswerIds:
        return self.prompts.answer_ids[self.pairs[:, 0]]

    @property
    def prior_answer(self) -> AnswerIds:
        return self.prompts.answer_ids[self.pairs[:, 1]]

    def rows(self, intent: str) -> Tensor:
        """Row indices (into `prompts`) of the prompts with `intent`, one per pair, in pair order."""
        if intent not in INTENTS:
            raise ValueError(f"unknown intent {intent!r}; valid: {', '.join(INTENTS)}")
        return self.pairs[:, INTENTS.index(intent)]

    def subset(self, pair_idx: Sequence[int] | Tensor) -> CCSPairs:
        """The pairs at `pair_idx` (both rows of each), re-checked."""
        idx = torch.as_tensor(pair_idx, dtype=torch.long).reshape(-1)
        rows = self.pairs[idx].reshape(-1)  # (n * 2,): context row, prior row per pair
        return check_ccs(self.prompts.subset(rows), format=self.format)

    def split(self, test_fraction: float, *, seed: int = 0) -> tuple[CCSPairs, CCSPairs]:
        """A seeded (train, test) split of the pairs; both keep every pair's two intents together."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
        n_test = max(1, round(len(self) * test_fraction))
        if n_test >= len(self):
            raise ValueError(f"{len(self)} pairs are too few to hold out {test_fraction:.0%}")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[n_test:].sort().values), self.subset(perm[:n_test].sort().values)


@dataclass(frozen=True, kw_only=True, eq=False)
class InterchangeData:
    """Row-aligned (target, source) prompts for an interchange: the source's activation goes into the target's
    run. `source_answer` is the answer under the source's intent (DAS's label), `target_answer` the target's.
    `setting` names the layer-search setting that built them (if any) and `dropped` counts the rows it left
    out because their two answers coincided. The two sides may differ in length, unlike a `PromptSet`'s
    clean/corrupt pairs."""

    target_tokens: Int[Tensor, "n pos"]
    target_end: Int[Tensor, " n"]
    source_tokens: Int[Tensor, "n pos_s"]
    source_end: Int[Tensor, " n"]
    source_answer: Int[Tensor, " n"]
    target_answer: Int[Tensor, " n"]
    setting: str = ""
    dropped: int = 0

    def __len__(self) -> int:
        return self.target_tokens.shape[0]


def check_ccs(ps: PromptSet, *, format: str | None = None, needs: Sequence[str] = ()) -> CCSPairs:
    """Check a context_prior PromptSet and pair its rows; raise `CCSDataError` with a count and examples.

    Rejected: rows without `intent`/`pair_id` metadata, pairs without exactly one prompt per intent, pairs whose
    two intents share an answer token, and prompt sets lacking a key position named in `needs` (the intent
    position is needed by formats that state an intent).
    """
    if isinstance(ps, PromptSet) and len(ps) == 0:
        raise CCSDataError("the CCS prompt set is empty")
    check_prompt_set(ps, "check_ccs")
    n = len(ps)
    bad_meta = [i for i, m in enumerate(ps.metadata) if m.get("intent") not in INTENTS or "pair_id" not in m]
    _reject(
        "have no intent in ('context', 'prior') or no pair_id in their metadata",
        bad_meta,
        n,
        lambda i: f"row {i}: {ps.metadata[i]}",
        unit="prompts",
    )
    formats = {m.get("format") for m in ps.metadata}
    fmt = format if format is not None else (next(iter(formats)) if len(formats) == 1 else None)
    if fmt not in FORMATS:
        given = "" if format is None else f" and format={format!r} was given"
        raise CCSDataError(
            f"CCS format must be one of {', '.join(FORMATS)}; the prompts say "
            f"{sorted(map(str, formats))}{given}"
        )
    try:
        pairs = group_pairs(ps)
    except ValueError as err:
        raise CCSDataError(str(err)) from None
    intents = [(ps.metadata[int(a)]["intent"], ps.metadata[int(b)]["intent"]) for a, b in pairs]
    bad_intent = [k for k, it in enumerate(intents) if it != INTENTS]
    _reject(
        "do not hold one prompt per intent",
        bad_intent,
        len(pairs),
        lambda k: f"pair {ps.metadata[int(pairs[k, 0])]['pair_id']}: intents {intents[k]}",
    )
    same = (ps.answer_ids[pairs[:, 0]] == ps.answer_ids[pairs[:, 1]]).nonzero().flatten().tolist()
    _reject(
        "have the same answer token under both intents",
        same,
        len(pairs),
        lambda k: f"{ps.prompts[int(pairs[k, 0])]!r} -> {ps.metadata[int(pairs[k, 0])].get('answer')!r}",
    )
    needed = {*needs, *(("intent",) if fmt != "none" else ())}
    missing = sorted(needed - set(ps.positions))
    if missing:
        raise CCSDataError(
            f"all {n} prompts lack the key position(s) {missing} (format {fmt!r}); "
            f"they have {sorted(ps.positions)}, e.g. {ps.prompts[0]!r}"
        )
    return CCSPairs(prompts=ps, pairs=pairs, format=fmt)


def check_twins(ccs_intent: CCSPairs, ccs_none: CCSPairs) -> None:
    """Raise unless `ccs_none` holds the no-intent twins of `ccs_intent`'s pairs, in the same order."""
    if ccs_intent.format == "none":
        raise CCSDataError("the first set must state the intent (format 'instruction' or 'weight')")
    if ccs_none.format != "none":
        raise CCSDataError(f"the second set must state no intent (format 'none'); got {ccs_none.format!r}")
    if (
        len(ccs_intent) != len(ccs_none)
        or not torch.equal(ccs_intent.context_answer, ccs_none.context_answer)
        or not torch.equal(ccs_intent.prior_answer, ccs_none.prior_answer)
    ):
        raise CCSDataError(
            f"the {len(ccs_intent)} intent pairs and {len(ccs_none)} no-intent pairs are not the same "
            "(context, query) pairs in the same order: draw them with one seed (ccs_sets)"
        )


def make_ccs(
    tokenizer, *, n_pairs: int, seed: int, format: str = "instruction", split: str = "test"
) -> CCSPairs:
    """`n_pairs` (context, query) pairs under both intents in `format` ("instruction" | "weight" | "none").

    The same `seed` draws the same (context, query) pairs in every format.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    ps = make("context_prior", tokenizer, n=2 * n_pairs, seed=seed, format=format, split=split)
    return check_ccs(ps, format=format)


def ccs_sets(
    tokenizer, *, n_pairs: int, seed: int, formats: Sequence[str] = FORMATS, split: str = "test"
) -> dict[str, CCSPairs]:
    """The same (context, query) pairs in each of `formats` (instruction, weight, no instruction)."""
    return {f: make_ccs(tokenizer, n_pairs=n_pairs, seed=seed, format=f, split=split) for f in formats}


@dataclass(frozen=True, kw_only=True)
class CCSScores:
    """Minder et al.'s scores of one model on CCS pairs (means over pairs; shares over all prompts)."""

    pair_acc: float  # both intents answered right (PairAcc)
    context_acc: float  # context-intent prompts answered with the context answer
    prior_acc: float  # prior-intent prompts answered with the prior answer
    acc: float  # mean of the two
    context_share: float  # prompts answered with their pair's context answer
    prior_share: float  # ... with the prior answer
    n_pairs: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ccs_scores(preds: Int[Tensor, " rows"], ccs: CCSPairs) -> CCSScores:
    """Scores from top-1 predictions `[rows]` over `ccs.prompts` (PairAcc = mean of min over intents)."""
    if preds.shape != (len(ccs.prompts),):
        raise ValueError(
            f"preds must hold one token id per prompt, shape ({len(ccs.prompts)},); got {tuple(preds.shape)}"
        )
    preds = preds.cpu()
    ctx_pred, pri_pred = preds[ccs.pairs[:, 0]], preds[ccs.pairs[:, 1]]
    ctx_ok, pri_ok = ctx_pred == ccs.context_answer, pri_pred == ccs.prior_answer
    both = torch.cat([ctx_pred, pri_pred])
    ctx_ans, pri_ans = ccs.context_answer.repeat(2), ccs.prior_answer.repeat(2)
    return CCSScores(
        pair_acc=float(pair_accuracy(ctx_ok, pri_ok).mean()),
        context_acc=float(ctx_ok.float().mean()),
        prior_acc=float(pri_ok.float().mean()),
        acc=float(torch.cat([ctx_ok, pri_ok]).float().mean()),
        context_share=float((both == ctx_ans).float().mean()),
        prior_share=float((both == pri_ans).float().mean()),
        n_pairs=len(ccs),
    )


def predict(
    model: HookedModel, ps: PromptSet, *, hooks: HooksFor | None = None, batch_size: int = 64
) -> Tensor:
    """Top-1 next-token predictions `[rows]` at each prompt's last token (optionally with hooks)."""
    check_prompt_set(ps, "predict")
    with torch.no_grad():
        logits, _ = forward_last(model, ps.clean, ps.end, hooks=hooks, batch_size=batch_size)
    return logits.argmax(-1).cpu()


def evaluate_ccs(model: HookedModel, ccs: CCSPairs, *, batch_size: int = 64) -> CCSScores:
    """PairAcc, context and prior accuracy and answer shares of `model` on `ccs`, unpatched."""
    return ccs_scores(predict(model, ccs.prompts, batch_size=batch_size), ccs)

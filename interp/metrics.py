"""Per-prompt metrics on next-token logits, always computed in float32.

A metric is bound to its prompts and says what it reads: `positions` (one token position per prompt) and
`token_ids` ([batch, k] vocabulary columns, or None for the whole vocabulary). `gather(logits)` reads exactly
that, `from_gathered(x)` turns it into one value per prompt, and
`__call__(logits) = from_gathered(gather(logits))` (one code path), so fast callers (patching sweeps) can keep
only the gathered columns. Leading dimensions pass through: `[*lead, batch, pos, vocab] -> [*lead, batch]`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.tasks.promptset import BatchIds, OptionIds, PromptSet

Logits = Float[Tensor, "*lead batch pos vocab"]
Gathered = Float[Tensor, "*lead batch k"]
VocabLogits = Float[Tensor, "*lead batch vocab"]
Values = Float[Tensor, "*lead batch"]
PairRows = Int[Tensor, "n_pairs 2"]


class Metric:
    """Base of the metrics: subclasses define `positions`, `token_ids` and `from_gathered`."""

    positions: BatchIds | None
    token_ids: OptionIds | None

    @property
    def batch_size(self) -> int | None:
        return None if self.positions is None else self.positions.shape[0]

    def gather(self, logits: Logits) -> Tensor:
        """The logits this metric reads: `[*lead, batch, k]` (or the full vocab / full logits when None)."""
        if self.positions is None:
            return logits
        b = self.positions.shape[0]
        if logits.ndim < 3 or logits.shape[-3] != b:
            raise ValueError(
                f"{type(self).__name__} is bound to {b} prompts but got logits of shape "
                f"{tuple(logits.shape)} (expected [*lead, {b}, pos, vocab])"
            )
        pos = self.positions.to(logits.device)
        if int(pos.max()) >= logits.shape[-2]:
            raise ValueError(
                f"{type(self).__name__} reads position {int(pos.max())} but logits have only "
                f"{logits.shape[-2]} positions"
            )
        x = logits[..., torch.arange(b, device=logits.device), pos, :]  # (*lead, b, vocab)
        if self.token_ids is None:
            return x
        ids = self.token_ids.to(logits.device).expand(*x.shape[:-2], *self.token_ids.shape)
        return x.gather(-1, ids)  # (*lead, b, k)

    def from_gathered(self, x: Tensor) -> Values:
        raise NotImplementedError

    def __call__(self, logits: Logits) -> Values:
        return self.from_gathered(self.gather(logits))

    def _checked(self, x: Tensor) -> Tensor:
        """`x` as float32, after checking it has this metric's batch and column count."""
        b = self.batch_size
        k = None if self.token_ids is None else self.token_ids.shape[-1]
        if x.ndim < 2 or (b is not None and x.shape[-2] != b) or (k is not None and x.shape[-1] != k):
            raise ValueError(
                f"{type(self).__name__} expects gathered values of shape [*lead, {b}, "
                f"{k if k is not None else 'vocab'}], got {tuple(x.shape)}"
            )
        return x.float()


def _answer_columns(ps: PromptSet) -> OptionIds:
    return torch.stack([ps.answer_ids, ps.wrong_ids], dim=1)


@dataclass(frozen=True, kw_only=True, eq=False)
class LogitDiff(Metric):
    """logit(answer) - logit(wrong answer) at the scored position (Wang et al.'s logit difference)."""

    positions: BatchIds
    token_ids: OptionIds  # columns: answer, wrong

    @classmethod
    def from_prompts(cls, ps: PromptSet) -> LogitDiff:
        return cls(positions=ps.end, token_ids=_answer_columns(ps))

    def from_gathered(self, x: Gathered) -> Values:
        x = self._checked(x)
        return x[..., 0] - x[..., 1]


@dataclass(frozen=True, kw_only=True, eq=False)
class AnswerProb(Metric):
    """Softmax probability of the answer over the whole vocabulary (Prakash et al.'s path-patching score)."""

    positions: BatchIds
    answer_ids: BatchIds
    token_ids: None = field(default=None, init=False)

    @classmethod
    def from_prompts(cls, ps: PromptSet) -> AnswerProb:
        return cls(positions=ps.end, answer_ids=ps.answer_ids)

    def from_gathered(self, x: VocabLogits) -> Values:
        x = self._checked(x)
        ids = self.answer_ids.to(x.device).expand(*x.shape[:-1]).unsqueeze(-1)
        return x.log_softmax(-1).gather(-1, ids).squeeze(-1).exp()


@dataclass(frozen=True, kw_only=True, eq=False)
class Accuracy(Metric):
    """1.0 where the answer is the top-1 prediction over the vocabulary (`token_ids` None) or the options.

    `target` is the answer's vocabulary id, or its column in `token_ids` when options are given.
    """

    positions: BatchIds
    target: BatchIds
    token_ids: OptionIds | None = None

    @classmethod
    def from_prompts(
        cls, ps: PromptSet, *, over: Literal["vocab", "options", "answer_vs_wrong"] = "vocab"
    ) -> Accuracy:
        """Top-1 over the vocabulary, over the prompts' options, or between the answer and the wrong answer
        (`"answer_vs_wrong"`: IOI's IO above S)."""
        if over == "vocab":
            return cls(positions=ps.end, target=ps.answer_ids)
        if over == "answer_vs_wrong":
            return cls(
                positions=ps.end,
                target=torch.zeros(len(ps), dtype=torch.long),
                token_ids=torch.stack([ps.answer_ids, ps.wrong_ids], 1),
            )
        if over != "options":
            raise ValueError(f"over must be 'vocab', 'options' or 'answer_vs_wrong', got {over!r}")
        if ps.options is None:
            raise ValueError(f"prompt set {ps.name!r} has no options; use over='vocab'")
        hits = ps.options == ps.answer_ids[:, None]
        if not bool(hits.any(1).all()):
            raise ValueError("some prompts' answers are not among their options")
        return cls(positions=ps.end, target=hits.long().argmax(1), token_ids=ps.options)

    def from_gathered(self, x: Gathered) -> Values:
        x = self._checked(x)
        return (x.argmax(-1) == self.target.to(x.device)).float()


def group_pairs(ps: PromptSet) -> PairRows:
    """Row indices of the two prompts of each pair (same `metadata["pair_id"]`), context intent first.

    Context-vs-prior prompt sets hold every (context, query) under both intents; PairAcc needs both.
    """
    rows: dict[Any, list[int]] = defaultdict(list)
    for i, meta in enumerate(ps.metadata):
        if "pair_id" not in meta:
            raise ValueError(f"prompt {i} of {ps.name!r} has no pair_id in its metadata")
        rows[meta["pair_id"]].append(i)
    bad = {k: v for k, v in rows.items() if len(v) != 2}
    if bad:
        example = next(iter(bad.items()))
        raise ValueError(
            f"{len(bad)} pair ids do not have exactly two prompts (e.g. {example}); "
            "subsets must keep both prompts of a pair"
        )
    order = {"context": 0, "prior": 1}
    pairs = [sorted(v, key=lambda i: order.get(str(ps.metadata[i].get("intent")), 2)) for v in rows.values()]
    return torch.tensor(pairs, dtype=torch.long)


def pair_accuracy(correct_a: Tensor, correct_b: Tensor) -> Tensor:
    """Both intents right: min(correct_a, correct_b) elementwise (Minder et al.'s PairAcc before the mean)."""
    if correct_a.shape != correct_b.shape:
        raise ValueError(
            f"pair_accuracy needs equal shapes, got {tuple(correct_a.shape)} and {tuple(correct_b.shape)}"
        )
    return torch.minimum(correct_a.float(), correct_b.float())


def auroc(low: Tensor, high: Tensor) -> float:
    """Area under the ROC curve of scores separating `high` from `low`: P(a `high` value exceeds a `low` value),
    ties counting half (Mann-Whitney U / (n_low n_high)); NaN when either side is empty."""
    h, lo = high.float().flatten()[:, None], low.float().flatten()[None, :]
    if h.numel() == 0 or lo.numel() == 0:
        return math.nan
    return float(((h > lo).float() + 0.5 * (h == lo).float()).mean())


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman correlation of two score tensors of equal size, flattened (ties ranked by position)."""
    if a.numel() != b.numel():
        raise ValueError(f"rank_correlation needs equal sizes, got {a.numel()} and {b.numel()}")
    ra, rb = a.flatten().argsort().argsort().float(), b.flatten().argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@dataclass(frozen=True, kw_only=True, eq=False)
class PairAccuracy(Metric):
    """Per prompt: 1.0 where both this prompt and its pair partner are answered correctly (mean = PairAcc)."""

    accuracy: Accuracy
    partner: BatchIds

    @property  # derived from the inner metric
    def positions(self) -> BatchIds:  # type: ignore[override]
        return self.accuracy.positions

    @property
    def token_ids(self) -> OptionIds | None:  # type: ignore[override]
        return self.accuracy.token_ids

    @classmethod
    def from_prompts(cls, ps: PromptSet, *, over: Literal["vocab", "options"] = "vocab") -> PairAccuracy:
        pairs = group_pairs(ps)
        partner = torch.empty(len(ps), dtype=torch.long)
        partner[pairs[:, 0]], partner[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
        return cls(accuracy=Accuracy.from_prompts(ps, over=over), partner=partner)

    def from_gathered(self, x: Gathered) -> Values:
        correct = self.accuracy.from_gathered(x)
        return pair_accuracy(correct, correct[..., self.partner.to(correct.device)])


@dataclass(frozen=True, kw_only=True, eq=False)
class NormalisedRecovery(Metric):
    """(metric - corrupt_value) / (clean_value - corrupt_value): 1 at the clean run, 0 at the corrupt run.

    The values are scalars or per-prompt `[batch]` tensors.
    """

    metric: Metric
    clean_value: float | Tensor
    corrupt_value: float | Tensor

    def __post_init__(self) -> None:
        gap = torch.as_tensor(self.clean_value, dtype=torch.float32) - torch.as_tensor(self.corrupt_value)
        if bool((gap == 0).any()):
            raise ValueError("clean_value equals corrupt_value: recovery is undefined")

    @property  # derived from the inner metric
    def positions(self) -> BatchIds | None:  # type: ignore[override]
        return self.metric.positions

    @property
    def token_ids(self) -> OptionIds | None:  # type: ignore[override]
        return self.metric.token_ids

    @classmethod
    def from_prompts(
        cls,
        ps: PromptSet,
        *,
        clean_logits: Logits,
        corrupt_logits: Logits,
        metric: Any = None,
        per_prompt: bool = False,
    ) -> NormalisedRecovery:
        """Bind `metric` (default LogitDiff); take its clean/corrupt values (means unless `per_prompt`)."""
        inner = as_metric(LogitDiff if metric is None else metric, ps)
        clean, corrupt = inner(clean_logits), inner(corrupt_logits)
        if per_prompt:
            return cls(metric=inner, clean_value=clean, corrupt_value=corrupt)
        return cls(metric=inner, clean_value=float(clean.mean()), corrupt_value=float(corrupt.mean()))

    def from_gathered(self, x: Tensor) -> Values:
        value = self.metric.from_gathered(x)
        clean = torch.as_tensor(self.clean_value, dtype=torch.float32, device=value.device)
        corrupt = torch.as_tensor(self.corrupt_value, dtype=torch.float32, device=value.device)
        return (value - corrupt) / (clean - corrupt)


@dataclass(frozen=True, kw_only=True, eq=False)
class FunctionMetric(Metric):
    """A plain callable `logits [batch, pos, vocab] -> [batch]` as a metric that reads the full logits."""

    fn: Callable[[Tensor], Tensor]
    batch: int
    positions: None = field(default=None, init=False)
    token_ids: None = field(default=None, init=False)

    def from_gathered(self, x: Logits) -> Values:
        if x.ndim < 3 or x.shape[-3] != self.batch:
            raise ValueError(f"metric bound to {self.batch} prompts got logits of shape {tuple(x.shape)}")
        flat = x.reshape(-1, *x.shape[-3:])  # (lead, batch, pos, vocab)
        out = torch.stack([torch.as_tensor(self.fn(row)) for row in flat]).float()
        if out.shape != (flat.shape[0], self.batch):
            raise ValueError(
                f"metric function returned shape {tuple(out.shape[1:])}, expected ({self.batch},)"
            )
        return out.reshape(*x.shape[:-3], self.batch)


def as_metric(obj: Any, prompts: PromptSet) -> Metric:
    """A metric bound to `prompts`, from a Metric (checked), a Metric class or a plain callable."""
    if isinstance(obj, Metric):
        if obj.batch_size is not None and obj.batch_size != len(prompts):
            raise ValueError(
                f"metric is bound to {obj.batch_size} prompts, the prompt set has {len(prompts)}"
            )
        return obj
    if isinstance(obj, type) and issubclass(obj, Metric) and hasattr(obj, "from_prompts"):
        return obj.from_prompts(prompts)
    if callable(obj):
        return FunctionMetric(fn=obj, batch=len(prompts))
    raise TypeError(f"cannot make a metric from {obj!r}: pass a Metric, a Metric class or a callable")

"""One binding and validation of the inputs every analysis takes, before its first forward pass.

Prompts are a `PromptSet` (clean and corrupt prompts, attention mask, named positions) or clean/corrupt token
tensors; a metric is a metric object (`interp.metrics`), a metric class to bind to the prompts, or a plain
callable from logits `[batch, pos, vocab]` to `[batch]`; positions are an int, a list of ints, a named key
position of the PromptSet ("END", "S2", "S2+1"), a list of names, or "each" / "all". Memory budgets and counts
are checked here too. Every message says what was wrong, where, and what is valid.

Padded prompts: a PromptSet whose prompts differ in length is handled where the analysis can be right (named
positions per row, the mask on every forward, metrics checked to read real tokens only) and refused, naming
the rows and the fix, where it cannot (absolute positions mean different tokens in prompts of different
lengths). The helper lives in `patching`, the lowest analysis layer, because it builds the engines' `Readout`;
circuits, finetuning and subspace all import it from here.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from interp.metrics import Metric
from interp.models.base import HookedModel
from interp.patching.readout import Readout, as_readout
from interp.tasks.promptset import PromptSet

Tokens = Int[Tensor, "batch pos"]
Prompts = PromptSet | Tokens
MetricLike = Metric | type[Metric] | Callable[[Tensor], Tensor]
PositionSpec = int | str | Sequence[int] | Sequence[str]
RowPositions = Int[Tensor, " batch"]
NonFinite = Literal["raise", "warn"]
NONFINITE = ("raise", "warn")


class InputError(ValueError):
    """A bad input to an analysis, found before any compute."""


class NonFiniteError(ValueError):
    """The metric gave NaN or infinite values (after compute: they depend on the model's outputs)."""


# --------------------------------------------------------------------------------------------- small checks
def describe_rows(rows: Sequence[int], *, limit: int = 8) -> str:
    """'row 3' / 'rows 3, 7' / 'rows 3, 7, 9, ... (12 rows)'."""
    rows = list(rows)
    if len(rows) == 1:
        return f"row {rows[0]}"
    head = ", ".join(str(r) for r in rows[:limit])
    return f"rows {head}" + (f", ... ({len(rows)} rows)" if len(rows) > limit else "")


def check_budget(value: Any, caller: str, name: str = "memory_budget") -> int | None:
    """None, or a positive finite number of bytes (as an int)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{caller}: {name} must be a number of bytes or None; got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{caller}: {name} must be a positive, finite number of bytes; got {value!r}")
    return max(1, int(value))


def check_count(
    value: Any, name: str, caller: str, *, minimum: int = 1, allow_none: bool = False
) -> int | None:
    """An int >= `minimum` (or None where allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "None or an int" if allow_none else "an int"
        raise TypeError(f"{caller}: {name} must be {kind} >= {minimum}; got {value!r}")
    if value < minimum:
        raise InputError(f"{caller}: {name} must be >= {minimum}; got {value}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[Any], caller: str) -> Any:
    if value not in choices:
        raise InputError(f"{caller}: {name} must be one of {tuple(choices)}; got {value!r}")
    return value


def check_nonfinite(policy: Any, caller: str) -> str:
    return check_choice(policy, "nonfinite", NONFINITE, caller)


class FiniteGuard:
    """Checks metric values [n_runs, batch] for NaN/inf: policy "raise" raises at the first bad check, naming
    the runs (by `label(i)`) and their prompts; "warn" gathers every check and warns once, at `done()`."""

    def __init__(self, caller: str, policy: str = "raise") -> None:
        self.caller = caller
        self.policy = check_nonfinite(policy, caller)
        self._bad: list[str] = []
        self._runs = 0
        self._total = 0

    def __call__(self, values: Tensor, label: Callable[[int], str]) -> None:
        bad = ~torch.isfinite(values.detach())
        self._total += values.shape[0]
        if not bool(bad.any()):
            return
        runs = bad.any(1).nonzero().flatten().tolist()
        self._runs += len(runs)
        for i in runs[: max(0, 3 - len(self._bad))]:
            prompts = ", ".join(map(str, bad[i].nonzero().flatten().tolist()[:8]))
            self._bad.append(f"{label(i)}: prompts {prompts}")
        if self.policy == "raise":
            raise NonFiniteError(self._message() + ", or pass nonfinite='warn' to keep NaN/inf scores.")

    def _message(self) -> str:
        more = f" (and {self._runs - len(self._bad)} more)" if self._runs > len(self._bad) else ""
        return (
            f"{self.caller}: the metric is NaN or infinite at {self._runs} of {self._total} runs "
            f"({'; '.join(self._bad)}{more}). Check the metric on these prompts (e.g. the log of a zero "
            "probability)"
        )

    def done(self) -> None:
        if self._bad:
            warnings.warn(self._message() + "; their scores are NaN/inf.", RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------- tokens
def check_tokens(model: HookedModel, tokens: Any, *, name: str, caller: str) -> Tensor:
    """An integer [batch, pos] tensor of ids the model knows, non-empty, within its context."""
    if not isinstance(tokens, Tensor):
        raise TypeError(
            f"{caller}: {name} must be a PromptSet or a LongTensor [batch, pos] of token ids; "
            f"got {type(tokens).__name__}"
        )
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(
            f"{caller}: {name} has dtype {tokens.dtype}; token ids must be integers (a LongTensor), "
            "not logits, embeddings or masks"
        )
    if tokens.ndim != 2:
        raise InputError(
            f"{caller}: {name} must be [batch, pos]; got shape {tuple(tokens.shape)}"
            + (" (add a batch axis: tokens[None])" if tokens.ndim == 1 else "")
        )
    if tokens.numel() == 0:
        raise InputError(f"{caller}: {name} is empty (shape {tuple(tokens.shape)}); give at least one prompt")
    V = model.cfg.d_vocab
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= V:
        where = (tokens < 0) | (tokens >= V)
        b, t = (int(i) for i in where.nonzero()[0])
        raise InputError(
            f"{caller}: {name} holds token id {int(tokens[b, t])} at row {b}, position {t}; {model.name} has "
            f"a vocabulary of {V} ids [0, {V})"
        )
    if tokens.shape[1] > model.cfg.n_ctx:
        raise InputError(
            f"{caller}: {name} has {tokens.shape[1]} positions; {model.name}'s context is {model.cfg.n_ctx} tokens"
        )
    return tokens


def padding_side(mask: Tensor) -> str:
    """'none' (every row full), 'right' (real tokens first), 'left' (real tokens last) or 'mixed'."""
    m = mask.bool()
    if bool(m.all()):
        return "none"
    n = m.sum(1, keepdim=True)
    t = torch.arange(m.shape[1], device=m.device)[None]
    if torch.equal(m, t < n):
        return "right"
    if torch.equal(m, t >= m.shape[1] - n):
        return "left"
    return "mixed"


def check_mask(mask: Tensor, shape: torch.Size, caller: str) -> str:
    """Check an attention mask [batch, pos] of 0/1 with a real token in every row; return its padding side."""
    if not isinstance(mask, Tensor) or mask.shape != shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise InputError(f"{caller}: attention_mask must match the tokens' shape {tuple(shape)}; got {got}")
    if mask.dtype.is_floating_point and not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError(f"{caller}: attention_mask must hold 0 and 1 only")
    empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise InputError(
            f"{caller}: {describe_rows(empty)} of the attention mask {'is' if len(empty) == 1 else 'are'} all "
            "zeros (no real token): drop those prompts"
        )
    side = padding_side(mask)
    if side == "mixed":
        raise InputError(
            f"{caller}: the attention mask has holes (padding inside a prompt); pad every prompt on one side"
        )
    return side


def length_rows(lengths: Tensor) -> str:
    """'rows 3, 7 are 14 tokens, the rest 13' for prompts of different lengths."""
    counts = Counter(lengths.tolist())
    common = min(counts, key=lambda m: (-counts[m], m))
    parts = []
    for n in sorted(counts):
        if n != common:
            rows = (lengths == n).nonzero().flatten().tolist()
            parts.append(f"{describe_rows(rows)} {'is' if len(rows) == 1 else 'are'} {n} tokens")
    return "; ".join(parts) + f", the rest {common}"


def bind_tokens(
    model: HookedModel, tokens: Prompts, attention_mask: Tensor | None = None, *, caller: str
) -> tuple[Tensor, Tensor | None]:
    """(tokens, attention mask or None) on the model's device from a PromptSet (its clean prompts and mask) or
    a token tensor with an optional mask; checked as `check_tokens` / `check_mask` do."""
    if isinstance(tokens, PromptSet):
        mask = tokens.attention_mask if attention_mask is None else attention_mask
        tokens = tokens.clean
    else:
        mask = attention_mask
    tokens = check_tokens(model, tokens, name="tokens", caller=caller)
    if mask is not None:
        check_mask(mask, tokens.shape, caller)
        mask = mask.to(model.device)
    return tokens.to(model.device), mask


def check_prompt_set(prompts: Any, caller: str, *, allow_left_padding: bool = False) -> PromptSet:
    """A non-empty PromptSet whose attention mask has a real token in every row and no holes (left padding
    refused unless allowed); for analyses that take a PromptSet without a model at hand."""
    if not isinstance(prompts, PromptSet):
        raise TypeError(f"{caller} needs an interp PromptSet; got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise InputError(f"{caller}: the prompt set {prompts.name!r} is empty")
    side = check_mask(prompts.attention_mask, prompts.clean.shape, caller)
    if side == "left" and not allow_left_padding:
        raise InputError(
            f"{caller}: the prompts are padded on the left; this analysis reads each prompt up to its last real "
            "token without a mask: pad on the right (as tasks.make does)"
        )
    return prompts


# --------------------------------------------------------------------------------------------- prompts + metric
@dataclass(frozen=True, kw_only=True, eq=False)
class BoundInputs:
    """Checked inputs of one analysis call, on the model's device.

    `attention_mask` is None when no prompt is padded; `padding` is "none", "right" or "left"; `readout` says
    what the metric reads (None when no metric was given).
    """

    caller: str
    clean: Tokens
    corrupt: Tokens | None
    attention_mask: Tokens | None
    padding: str
    prompts: PromptSet | None
    metric: Any
    readout: Readout | None

    @property
    def batch(self) -> int:
        return self.clean.shape[0]

    @property
    def seq_len(self) -> int:
        return self.clean.shape[1]

    @property
    def lengths(self) -> Tensor:
        if self.attention_mask is None:
            return torch.full((self.batch,), self.seq_len, dtype=torch.long)
        return self.attention_mask.sum(1).cpu()

    @property
    def variable_length(self) -> bool:
        return self.attention_mask is not None and len(set(self.lengths.tolist())) > 1

    def refuse_variable_length(self, what: str, fix: str = "") -> None:
        """Raise if the prompts differ in length: `what` says which input needs them aligned."""
        if not self.variable_length:
            return
        raise InputError(
            f"{self.caller}: {what} index tokens by absolute position, which means different tokens in prompts of "
            f"different lengths ({length_rows(self.lengths)}): use prompts of one length "
            f"(tasks.make(..., same_length=True) or ps.same_length()){fix if self.prompts is not None else ''}"
        )


def bind_metric(metric: Any, prompts: PromptSet | None, batch: int, caller: str) -> Any:
    """The metric bound to the prompts: a Metric (checked), a Metric class (bound with `from_prompts`) or a
    plain callable."""
    if metric is None:
        raise TypeError(f"{caller}: metric is required (a metric from interp.metrics or a callable)")
    unbound = getattr(metric, "positions", None) is None and callable(getattr(metric, "from_prompts", None))
    if unbound and (isinstance(metric, type) or not callable(metric)):
        if prompts is None:
            raise TypeError(
                f"{caller}: metric {getattr(metric, '__name__', metric)!r} must be bound to prompts: pass a "
                f"PromptSet as clean, or a bound metric (e.g. {getattr(metric, '__name__', 'Metric')}"
                ".from_prompts(ps))"
            )
        return metric.from_prompts(prompts)
    if isinstance(metric, type):
        raise TypeError(f"{caller}: metric {metric.__name__} is a class; pass a metric object or a callable")
    if not callable(metric):
        raise TypeError(
            f"{caller}: metric must be a metric from interp.metrics or a callable from logits [batch, pos, vocab] "
            f"to [batch]; got {type(metric).__name__}"
        )
    size = getattr(metric, "batch_size", None)
    if isinstance(metric, Metric) and size is not None and size != batch:
        raise InputError(f"{caller}: the metric is bound to {size} prompts, the prompts are {batch}")
    return metric


def bind_inputs(
    model: HookedModel,
    clean: Prompts,
    corrupt: Tokens | None = None,
    *,
    metric: MetricLike | None = None,
    caller: str,
    attention_mask: Tokens | None = None,
    need_corrupt: bool = True,
    allow_left_padding: bool = False,
) -> BoundInputs:
    """Check and bind `clean` (a PromptSet, or clean tokens with `corrupt` tokens of the same shape and an
    optional `attention_mask` they share) and `metric`, before any compute: token dtypes, ranges and shapes, the
    attention mask, padding, and what the metric reads (it must read only real tokens of padded prompts)."""
    prompts: PromptSet | None = None
    mask: Tensor | None = None
    side = "none"
    if isinstance(clean, PromptSet):
        if corrupt is not None:
            raise TypeError(f"{caller}: pass a PromptSet as clean with corrupt=None, or two token tensors")
        if attention_mask is not None:
            raise TypeError(f"{caller}: a PromptSet carries its own attention mask; pass attention_mask=None")
        prompts = clean
        clean_t = check_tokens(model, prompts.clean, name="the clean prompts", caller=caller)
        corrupt_t = check_tokens(model, prompts.corrupt, name="the corrupt prompts", caller=caller)
        side = check_mask(prompts.attention_mask, clean_t.shape, caller)
        if side != "none":
            mask = prompts.attention_mask
    else:
        if hasattr(clean, "clean") and hasattr(clean, "corrupt"):
            raise TypeError(
                f"{caller}: clean must be an interp PromptSet or a token tensor; got {type(clean).__name__}"
            )
        clean_t = check_tokens(model, clean, name="clean", caller=caller)
        if corrupt is None:
            if need_corrupt:
                raise TypeError(f"{caller}: give corrupt tokens of clean's shape, or a PromptSet as clean")
            corrupt_t = None
        else:
            corrupt_t = check_tokens(model, corrupt, name="corrupt", caller=caller)
            if corrupt_t.shape != clean_t.shape:
                raise InputError(
                    f"{caller}: clean and corrupt tokens must have the same shape; got {tuple(clean_t.shape)} and "
                    f"{tuple(corrupt_t.shape)}"
                )
        if attention_mask is not None:
            side = check_mask(attention_mask, clean_t.shape, caller)
            if side != "none":
                mask = attention_mask.long()
    if side == "left" and not allow_left_padding:
        raise InputError(
            f"{caller}: the prompts are padded on the left; this analysis supports unpadded or right-padded "
            "prompts (as tasks.make builds them): pad on the right"
        )
    dev = model.device
    B, T = clean_t.shape
    bound_metric, readout = None, None
    if metric is not None:
        bound_metric = bind_metric(metric, prompts, B, caller)
        readout = as_readout(bound_metric, batch=B, seq_len=T, d_vocab=model.cfg.d_vocab, device=dev)
    out = BoundInputs(
        caller=caller,
        clean=clean_t.to(dev),
        corrupt=None if corrupt_t is None else corrupt_t.to(dev),
        attention_mask=None if mask is None else mask.to(dev),
        padding=side,
        prompts=prompts,
        metric=bound_metric,
        readout=readout,
    )
    if readout is not None and out.attention_mask is not None:
        _check_reads_real_tokens(out, model)
    return out


def _check_reads_real_tokens(inputs: BoundInputs, model: HookedModel) -> None:
    """Raise if the metric reads padding of any prompt (e.g. `logits[:, -1]` of a shorter, right-padded one), or
    if what it reads cannot be told (no gradient) on prompts of different lengths."""
    readout, mask = inputs.readout, inputs.attention_mask.bool()
    B, T, V = inputs.batch, inputs.seq_len, model.cfg.d_vocab
    reads = readout.reads
    if reads is None and not readout.needs_full_logits:  # declared positions
        reads = torch.zeros(B, T, dtype=torch.bool)
        reads[torch.arange(B)[:, None], readout.positions.cpu()] = True
    if reads is not None:
        bad = (reads.to(mask.device) & ~mask).any(1)
    else:  # an opaque metric: does its value move when only the padding's logits change?
        g = torch.Generator().manual_seed(1)
        bad = torch.zeros(B, dtype=torch.bool, device=mask.device)
        with torch.no_grad():
            for scale in (1.0, 10.0, 100.0):
                x = torch.randn(B, T, V, generator=g).to(mask.device) * scale
                y = torch.where(mask[..., None], x, torch.randn(B, T, V, generator=g).to(mask.device) * scale)
                a, c = readout.from_logits(x), readout.from_logits(y)
                bad |= ~((a == c) | (a.isnan() & c.isnan()))
    fix = (
        "Use a metric bound to the prompts (interp.metrics.LogitDiff.from_prompts(ps), Accuracy.from_prompts(ps)), "
        "read each row's last real token at ps.end, or make prompts of one length (tasks.make(..., "
        "same_length=True))"
    )
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise InputError(
            f"{inputs.caller}: the metric reads padding in {describe_rows(rows)} (the prompts differ in length: "
            f"{length_rows(inputs.lengths)}; padded on the {inputs.padding}), e.g. logits[:, -1] is not the last "
            f"real token of a shorter prompt. {fix}"
        )
    if reads is None and inputs.variable_length:
        raise InputError(
            f"{inputs.caller}: which positions the metric reads cannot be told ({readout.note}), and the prompts "
            f"differ in length ({length_rows(inputs.lengths)}), so it could read padding. {fix}, or pass a "
            "differentiable callable"
        )


# --------------------------------------------------------------------------------------------- positions
@dataclass(frozen=True, kw_only=True)
class SweepPositions:
    """The position columns of a sweep: one cell position per column (an int, a tuple of one int per prompt,
    or None for every position at once) and its tick label."""

    spec: str | tuple[int, ...] | tuple[str, ...]
    cells: list[int | tuple[int, ...] | None]
    labels: list[str] | None  # None for "all" (no position axis)

    @property
    def all(self) -> bool:
        return self.cells == [None]


def as_index(p: Any) -> int | None:
    """`p` as an int if it is an integer (Python, numpy or a 0-d integer tensor; not bool or float), else None."""
    if isinstance(p, (bool, float)) or (isinstance(p, Tensor) and p.dtype.is_floating_point):
        return None
    try:
        return operator.index(p)
    except TypeError:
        return None


def _named(spec: str, inputs: BoundInputs) -> int | tuple[int, ...]:
    pos = inputs.prompts.position(spec).tolist()
    return pos[0] if len(set(pos)) == 1 else tuple(pos)


def bind_positions(
    spec: Any, inputs: BoundInputs, model: HookedModel, *, allow_all: bool = True, name: str = "positions"
) -> SweepPositions:
    """Sweep positions: "each", "all", an int, a list of ints, a named key position of the PromptSet ("END",
    "S2", "S2+1") or a list of names; nothing else. Ints and "each" are refused on prompts of different
    lengths (names are resolved per prompt)."""
    caller, T = inputs.caller, inputs.seq_len
    valid = (
        "'each', 'all', an int, a list of ints, or a named position of the PromptSet (e.g. 'END', 'S2+1') "
        "or a list of names"
    )

    def tokens_label(ps: list[int]) -> list[str]:
        toks = model.to_str_tokens(inputs.clean[0].cpu())
        return [f"{p}:{toks[p]}" for p in ps]

    def ints(ps: list[int], shown: Any) -> SweepPositions:
        bad = [p for p in ps if not 0 <= p < T]
        if bad:
            raise InputError(f"{caller}: {name} {bad} are outside the prompts' positions 0..{T - 1}")
        dup = sorted({p for p in ps if ps.count(p) > 1})
        if dup:
            raise InputError(f"{caller}: {name} repeat {dup}")
        inputs.refuse_variable_length(
            f"{name}={shown!r}", fix=", or named positions (e.g. positions='END' or ['S1', 'S2', 'END'])"
        )
        return SweepPositions(spec=tuple(ps), cells=list(ps), labels=tokens_label(ps))

    def names(ns: list[str]) -> SweepPositions:
        if inputs.prompts is None:
            raise InputError(
                f"{caller}: named {name} {ns} need a PromptSet; the prompts were given as tensors (pass ints)"
            )
        try:
            cells = [_named(n, inputs) for n in ns]
        except ValueError as e:
            raise InputError(f"{caller}: {name}: {e}") from None
        if len(set(ns)) != len(ns):
            raise InputError(f"{caller}: {name} repeat {sorted({n for n in ns if ns.count(n) > 1})}")
        return SweepPositions(spec=tuple(ns), cells=cells, labels=list(ns))

    if isinstance(spec, str):
        if spec == "each":
            inputs.refuse_variable_length(
                f"{name}='each' (a column per token position)",
                fix=", or named positions (e.g. positions=['S1', 'S2', 'END'])",
            )
            return SweepPositions(spec="each", cells=list(range(T)), labels=tokens_label(list(range(T))))
        if spec == "all":
            if not allow_all:
                raise InputError(f"{caller}: {name}='all' is not supported here; valid: {valid}")
            return SweepPositions(spec="all", cells=[None], labels=None)
        if inputs.prompts is None:
            raise InputError(
                f"{caller}: {name}={spec!r} is a string, but the prompts were given as tensors; valid: 'each', "
                "'all', an int or a list of ints (named positions need a PromptSet)"
            )
        sp = names([spec])
        return SweepPositions(spec=spec, cells=sp.cells, labels=sp.labels)
    single = as_index(spec)
    if (
        single is not None
        and not isinstance(spec, (list, tuple, range))
        and not (isinstance(spec, Tensor) and spec.ndim > 0)
    ):
        return ints([single], spec)
    if isinstance(spec, (list, tuple, range)) or (isinstance(spec, Tensor) and spec.ndim == 1):
        items = list(spec)
        if not items:
            raise InputError(f"{caller}: {name} is empty; valid: {valid}")
        if all(isinstance(p, str) for p in items):
            return names(items)
        out = []
        for i, p in enumerate(items):
            v = as_index(p)
            if v is None:
                raise TypeError(
                    f"{caller}: {name}[{i}] = {p!r} is not a token index; {name} are ints (or all names)"
                )
            out.append(v)
        return ints(out, spec if not isinstance(spec, Tensor) else out)
    raise TypeError(f"{caller}: {name}={spec!r} ({type(spec).__name__}); valid: {valid}")


def bind_row_position(spec: Any, inputs: BoundInputs, *, name: str) -> RowPositions | None:
    """One token index per prompt, or None (every position): None, an int, a named position of the PromptSet
    ("END", "S2+1"), or a LongTensor [batch]. Ints are refused on prompts of different lengths."""
    caller, B, T = inputs.caller, inputs.batch, inputs.seq_len
    dev = inputs.clean.device
    if spec is None:
        return None
    if isinstance(spec, str):
        if inputs.prompts is None:
            raise InputError(f"{caller}: {name}={spec!r} names a position, which needs a PromptSet as clean")
        try:
            return inputs.prompts.position(spec).to(dev)
        except ValueError as e:
            raise InputError(f"{caller}: {name}: {e}") from None
    if isinstance(spec, Tensor) and spec.ndim == 1:
        if spec.dtype.is_floating_point or spec.dtype == torch.bool:
            raise TypeError(f"{caller}: {name} must hold integer positions; got dtype {spec.dtype}")
        if spec.shape != (B,):
            raise InputError(
                f"{caller}: {name} must hold one position per prompt ({B}); got shape {tuple(spec.shape)}"
            )
        if int(spec.min()) < 0 or int(spec.max()) >= T:
            raise InputError(
                f"{caller}: {name} must lie in 0..{T - 1}; got [{int(spec.min())}, {int(spec.max())}]"
            )
        return spec.to(dev).long()
    p = as_index(spec)
    if p is None:
        raise TypeError(
            f"{caller}: {name}={spec!r}; valid: None (every position), an int, a named position of the "
            "PromptSet or a LongTensor [batch]"
        )
    if not 0 <= p < T:
        raise InputError(f"{caller}: {name}={p} is outside the prompts' positions 0..{T - 1}")
    inputs.refuse_variable_length(f"{name}={p}", fix=", or a named position (e.g. 'END')")
    return torch.full((B,), p, dtype=torch.long, device=dev)

"""What a metric reads from a forward pass, so the engines compute only that (positions, token ids).

Metric objects (`interp.metrics`) declare what they read. For a plain callable the read set is inferred: the
callable runs on two random logits tensors that require grad, and the non-zero pattern of the gradient is the
set of (position, token id) entries it reads; all vocabulary entries at a position count as "the position" (as
log-softmax metrics read). The engines then compute only those logits and hand the callable a logits tensor
holding them (zeros elsewhere). The inference is checked once on the first real chunk against the full logits;
whenever it is inconclusive (no gradient: argmax, comparisons, `.item()`; NaN; a read set that changes with the
input) or the check fails, the readout falls back to full logits, once, with a debug log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

logger = logging.getLogger(__name__)

ReadPositions = Int[Tensor, "batch p"]
ReadTokens = Int[Tensor, "batch k"]
Gathered = Float[Tensor, "*lead batch p k"]
Values = Float[Tensor, "*lead batch"]

# a read set covering more than this fraction of the vocabulary at a position is read as the whole position
_WHOLE_POSITION = 0.5
# tolerance of the first-chunk check: the restricted and full logits come from different matmul shapes
_CHECK_RTOL, _CHECK_ATOL = 1e-4, 1e-5


class Readout:
    """A metric seen by the patching engines.

    `positions` [batch, p] and `token_ids` [batch, k] (None: whole vocabulary) say what the metric reads;
    `gathered(x [*lead, batch, p, k]) -> [*lead, batch]` computes it from those logits. `positions` None: the
    engines build full logits `[batch, pos, vocab]` and call `full` (slower). `inferred`: the read set was
    found by probing a plain callable and is checked once against the full logits (`check`).
    """

    def __init__(
        self,
        *,
        positions: ReadPositions | None,
        token_ids: ReadTokens | None,
        gathered: Callable[[Tensor], Tensor] | None,
        full: Callable[[Tensor], Tensor],
        name: str,
        inferred: bool = False,
        note: str = "",
    ) -> None:
        self.positions = positions
        self.token_ids = token_ids
        self.gathered = gathered if positions is not None else None
        self.full = full
        self.name = name
        self.inferred = inferred and positions is not None
        self.note = note  # why full logits are used, when they are
        self.reads: Tensor | None = None  # inferred: [batch, pos] bool, the positions the probe saw read
        self._checked = not self.inferred

    @property
    def needs_full_logits(self) -> bool:
        return self.positions is None

    @property
    def needs_check(self) -> bool:
        """True until an inferred read set has been compared with the full logits once."""
        return not self._checked and not self.needs_full_logits

    @property
    def width(self) -> int:
        """Logit entries read per prompt and read position (the vocabulary size is not known here: -1)."""
        return -1 if self.token_ids is None else self.token_ids.shape[1]

    def from_logits(self, logits: Tensor) -> Tensor:
        """Per-prompt values [batch] from full logits [batch, pos, vocab], in float32."""
        return self.full(logits).float()

    def take(self, logits: Float[Tensor, "*lead batch pos vocab"], rows: slice | None = None) -> Gathered:
        """The entries this readout reads, `[*lead, batch, p, k]` (k = vocab when `token_ids` is None); with
        `rows`, `logits` hold only those prompts."""
        sl = rows if rows is not None else slice(None)
        pos = self.positions[sl].to(logits.device)
        b = torch.arange(logits.shape[-3], device=logits.device)[:, None]
        at = logits[..., b, pos, :]  # [*lead, batch, p, vocab]
        if self.token_ids is None:
            return at
        ids = self.token_ids[sl].to(logits.device)
        return torch.gather(at, -1, ids[:, None, :].expand(*at.shape[:-1], ids.shape[1]))

    def check(self, restricted: Tensor, full: Tensor) -> bool:
        """Compare the values of the first real cells from the inferred read set with those from the full
        logits; on a mismatch fall back to full logits for good (debug log). Returns True if the read set holds."""
        self._checked = True
        ok = restricted.shape == full.shape and torch.allclose(
            restricted.float(), full.float(), rtol=_CHECK_RTOL, atol=_CHECK_ATOL, equal_nan=True
        )
        if not ok:
            diff = (restricted.float() - full.float()).abs().nan_to_num(float("inf")).max().item()
            self.fall_back(f"the inferred read set changed the first chunk's values (max |diff| {diff:.3g})")
        return ok

    def fall_back(self, why: str) -> None:
        """Use full logits from now on."""
        logger.debug("metric %s: full logits (%s)", self.name, why)
        self.positions = self.token_ids = self.gathered = None
        self.inferred, self._checked, self.note = False, True, why

    def __repr__(self) -> str:
        if self.needs_full_logits:
            what = f"full logits{': ' + self.note if self.note else ''}"
        else:
            k = "vocab" if self.token_ids is None else self.token_ids.shape[1]
            what = f"{self.positions.shape[1]} position(s) x {k} token(s)"
        return f"Readout({self.name}: {what}{', inferred' if self.inferred else ''})"


def values_from_logits(
    readout: Readout, logits: Float[Tensor, "C batch pos vocab"]
) -> Float[Tensor, "C batch"]:
    """[C, B, T, V] logits of C stacked runs -> [C, B] metric values (the read entries only, when known)."""
    if readout.needs_full_logits:
        return torch.stack([readout.from_logits(lg) for lg in logits])
    if readout.positions.shape[1] == 1 and not readout.inferred:  # one position per prompt (metric objects)
        b = torch.arange(logits.shape[1], device=logits.device)
        at = logits[:, b, readout.positions[:, 0].to(logits.device)]  # [C, B, V]
        if readout.token_ids is not None:
            at = torch.gather(at, -1, readout.token_ids.to(at.device).expand(at.shape[0], -1, -1))
        return readout.gathered(at[:, :, None].float()).float()
    vals = readout.gathered(readout.take(logits).float()).float()
    if readout.needs_check and not readout.check(vals[:1], readout.from_logits(logits[0])[None]):
        return torch.stack([readout.from_logits(lg) for lg in logits])
    return vals


# --------------------------------------------------------------------------------------------- binding
def _declared(metric: Any) -> bool:
    return getattr(metric, "positions", None) is not None and callable(getattr(metric, "from_gathered", None))


def _metric_name(metric: Any) -> str:
    name = getattr(metric, "name", None)
    if isinstance(name, str) and name:
        return name
    fn = getattr(metric, "fn", None)  # interp.metrics.FunctionMetric
    target = fn if fn is not None else metric
    return getattr(target, "__name__", None) or type(target).__name__


def _shape_error(name: str, batch: int, out: Any) -> ValueError:
    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    return ValueError(
        f"metric {name} must return one value per prompt, shape ({batch},); it returned {shape}. "
        "Return per-prompt values; the engines average over the batch."
    )


def as_readout(metric: Any, *, batch: int, seq_len: int, d_vocab: int, device: torch.device) -> Readout:
    """Wrap a metric object (with `positions`, `token_ids`, `from_gathered`) or a plain callable.

    Metric objects are checked on zero gathered logits, plain callables probed on random logits (what they
    read, see the module docstring), both *before any forward pass*, so a metric that returns the wrong shape
    fails at once with a clear message.
    """
    if not callable(metric):
        raise TypeError(
            f"metric must be a metric object from interp.metrics or a callable from logits "
            f"[batch, pos, vocab] to [batch]; got {type(metric).__name__}"
        )
    name = _metric_name(metric)
    if _declared(metric):
        return _declared_readout(metric, name, batch=batch, seq_len=seq_len, d_vocab=d_vocab, device=device)
    fn = getattr(metric, "fn", None) if getattr(metric, "positions", 0) is None else None
    call = fn if callable(fn) else metric  # a FunctionMetric wraps the callable itself
    return infer_readout(call, name, batch=batch, seq_len=seq_len, d_vocab=d_vocab, device=device)


def _declared_readout(
    metric: Any, name: str, *, batch: int, seq_len: int, d_vocab: int, device: torch.device
) -> Readout:
    positions = torch.as_tensor(metric.positions, device=device).long()
    if positions.shape != (batch,):
        raise ValueError(
            f"metric {name} reads positions of shape {tuple(positions.shape)}, but the prompts have batch {batch}"
        )
    if batch and (int(positions.max()) >= seq_len or int(positions.min()) < 0):
        raise ValueError(f"metric {name} reads positions outside [0, {seq_len})")
    token_ids = getattr(metric, "token_ids", None)
    if token_ids is not None:
        token_ids = torch.as_tensor(token_ids, device=device).long()
        if token_ids.ndim == 1:
            token_ids = token_ids[:, None]
        if token_ids.shape[0] != batch:
            raise ValueError(
                f"metric {name} reads token ids for batch {token_ids.shape[0]}, prompts have {batch}"
            )
        if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= d_vocab):
            raise ValueError(f"metric {name} reads token ids outside the vocabulary [0, {d_vocab})")
    from_gathered = metric.from_gathered
    k = d_vocab if token_ids is None else token_ids.shape[1]
    out = from_gathered(torch.zeros(batch, k, device=device))
    if not isinstance(out, Tensor) or out.shape != (batch,):
        raise _shape_error(name, batch, out)
    return Readout(
        positions=positions[:, None],
        token_ids=token_ids,
        gathered=lambda x: from_gathered(x[..., 0, :]),
        full=metric,
        name=name,
    )


def infer_readout(
    fn: Callable[[Tensor], Tensor], name: str, *, batch: int, seq_len: int, d_vocab: int, device: torch.device
) -> Readout:
    """A readout for a plain callable: its read set from the gradient on two random logits tensors, or full
    logits when that is inconclusive. The callable must return one value per prompt (checked here)."""
    g = torch.Generator().manual_seed(0)  # a private generator: the caller's random state is untouched
    patterns: list[Tensor] = []
    why = ""
    for _ in range(2):
        x = torch.randn(batch, seq_len, d_vocab, generator=g).to(device).requires_grad_(True)
        with torch.enable_grad():
            out = fn(x)
            if not isinstance(out, Tensor) or out.shape != (batch,):
                raise _shape_error(name, batch, out)
            if not out.requires_grad:
                why = "its value has no gradient (argmax, comparisons, .item() or a detached tensor)"
                break
            w = torch.rand(batch, generator=g).to(device) + 0.5  # random weights: no cancellation across rows
            (grad,) = torch.autograd.grad((out.float() * w).sum(), x, allow_unused=True)
        if grad is None or not bool(grad.ne(0).any()):
            why = "its gradient is zero everywhere"
            break
        if not bool(torch.isfinite(out).all()) or not bool(torch.isfinite(grad).all()):
            why = "it is not finite on random logits"
            break
        patterns.append(grad.ne(0))
        del x, grad, out
    if not why and not torch.equal(patterns[0], patterns[1]):
        why = "what it reads depends on the logits' values (data-dependent indexing)"
    if why:
        logger.debug("metric %s: full logits (%s)", name, why)
        return Readout(positions=None, token_ids=None, gathered=None, full=fn, name=name, note=why)
    positions, token_ids = _read_set(patterns[0])
    if positions.shape[1] == seq_len and token_ids is None:  # reads everything: nothing to save
        readout = Readout(
            positions=None, token_ids=None, gathered=None, full=fn, name=name, note="reads every logit"
        )
        readout.reads = patterns[0].any(-1)
        return readout
    buffer: list[Tensor] = []

    def gathered(x: Gathered) -> Values:
        """Scatter the read entries into a zero logits tensor and call the metric, one stacked run at a time."""
        if not buffer:
            buffer.append(torch.zeros(batch, seq_len, d_vocab, device=x.device))
        buf = buffer[0]
        b = torch.arange(batch, device=x.device)[:, None, None]
        p = positions.to(x.device)[:, :, None]
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        idx = (b[..., 0], p[..., 0]) if token_ids is None else (b, p, token_ids.to(x.device)[:, None, :])
        vals = []
        for cell in flat:
            if cell.requires_grad:  # a fresh tensor per run, so that autograd sees no in-place reuse
                vals.append(fn(torch.zeros_like(buf).index_put(idx, cell.to(buf.dtype))).float())
                continue
            buf[idx] = cell.to(buf.dtype)
            vals.append(fn(buf).float())
        return torch.stack(vals).reshape(*lead, batch)

    readout = Readout(
        positions=positions.to(device),
        token_ids=None if token_ids is None else token_ids.to(device),
        gathered=gathered,
        full=fn,
        name=name,
        inferred=True,
    )
    readout.reads = patterns[0].any(-1)  # [B, T]: the positions actually read (rows' lists are padded)
    return readout


def _read_set(nz: Tensor) -> tuple[ReadPositions, ReadTokens | None]:
    """Positions [B, p] and token ids [B, k] (None: whole positions) covering the non-zeros of nz [B, T, V].

    Rows read different numbers of positions/ids: each row's list is padded by repeating its first entry (rows
    that read nothing get position 0, token 0; writing an entry twice is harmless)."""
    B, T, V = nz.shape
    at_pos = nz.any(-1)  # [B, T]
    per_row = at_pos.sum(1)
    p = max(1, int(per_row.max()))
    positions = torch.zeros(B, p, dtype=torch.long)
    for b in range(B):
        idx = at_pos[b].nonzero().flatten().cpu()
        if len(idx):
            positions[b] = torch.cat([idx, idx[:1].expand(p - len(idx))])
    tokens = nz.any(1)  # [B, V]: read at any of the row's positions
    width = int(tokens.sum(1).max())
    if width > _WHOLE_POSITION * V:
        return positions, None
    k = max(1, width)
    token_ids = torch.zeros(B, k, dtype=torch.long)
    for b in range(B):
        idx = tokens[b].nonzero().flatten().cpu()
        if len(idx):
            token_ids[b] = torch.cat([idx, idx[:1].expand(k - len(idx))])
    return positions, token_ids

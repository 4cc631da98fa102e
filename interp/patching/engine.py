"""Batched patching engines: many patched cells per forward pass.

A *cell* replaces one site's activation (a layer, optionally one position and/or one head) in the *target* run
with a *source* activation and reads the metric. Two engines compute the same numbers:

- `run_cells_generic`: any backend; stacks cells along the batch and runs full forward passes with hooks.
- `run_cells_tl`: TransformerLens fast path; starts at the patched layer from the target's cached residual
  stream, reuses the unchanged prefix (positions before the patch) through a frozen key/value cache, stacks the
  cells of all layers that recompute from the same position into one run (a cell joins at its own layer), and
  unembeds only the positions and token ids that the metric reads.

Both chunk the cells to a memory budget and halve the chunk on out-of-memory instead of failing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from interp.models.base import HookedModel
from interp.patching.readout import Readout, values_from_logits

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from interp.models.tl import TLModel
from interp.sites import Site


@dataclass(frozen=True)
class Cell:
    """One patch: `component` at `layer`, at token `pos` (None: all positions; a tuple: one position per prompt,
    e.g. a named key position of prompts of different lengths), of `head` (None: whole site)."""

    layer: int
    pos: int | tuple[int, ...] | None = None
    head: int | None = None

    @property
    def start(self) -> int:
        """The first position this cell changes."""
        if self.pos is None:
            return 0
        return self.pos if isinstance(self.pos, int) else min(self.pos)


# --------------------------------------------------------------------------------------------- helpers
def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def default_budget(device: torch.device) -> int:
    """Bytes the engines may use for one chunk's activations."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 2 * 1024**3


# On CPU the stacked fast engine runs faster in cache-sized chunks than in one big batch (GPT-2-small head-z sweep,
# 8 x 16 tokens, 2 threads: 88 s with 48 MiB chunks, 99 s with 160 MiB, 123 s with 2 GiB).
CPU_CHUNK_BYTES = 48 * 1024**2


def bytes_per_token(model: HookedModel, seq_len: int, elem: int = 4) -> int:
    c = model.cfg
    # residual copies, q/k/v/z, MLP hidden, attention scores+pattern; a generous constant for temporaries
    return elem * (10 * c.d_model + 4 * c.n_heads * c.d_head + 3 * c.d_mlp + 3 * c.n_heads * seq_len)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


Progress = Callable[[int], None]  # told how many cells a finished chunk held


def run_chunked(
    n_cells: int,
    per_cell_bytes: int,
    budget: int,
    fn: Callable[[slice], Tensor],
    on_done: Progress | None = None,
) -> list[Tensor]:
    """Call fn on cell slices sized to the budget; on OOM halve the size and retry."""
    size = max(1, min(n_cells, budget // max(1, per_cell_bytes)))
    out: list[Tensor] = []
    start = 0
    while start < n_cells:
        sl = slice(start, min(n_cells, start + size))
        try:
            out.append(fn(sl))
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not is_oom(e) or size == 1:
                raise
            size = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if on_done is not None:
            on_done(sl.stop - sl.start)
        start = sl.stop
    return out


def rows_per_chunk(model: HookedModel, seq_len: int, budget: int | None, *, logits: bool = True) -> int:
    """Prompts per forward pass of the unpatched runs (sources, baselines) within `budget` bytes."""
    per_row = seq_len * (bytes_per_token(model, seq_len) + (2 * model.cfg.d_vocab * 4 if logits else 0))
    return max(1, (budget or default_budget(model.device)) // per_row)


def _saver(cache: dict[str, Tensor], name: str) -> Callable[..., None]:
    def hook(act: Tensor, hook: object) -> None:
        cache[name] = act

    return hook


FINAL = "final"  # run_cached's key for the residual stream entering the final norm (TL backend)


def run_cached(
    model: HookedModel,
    tokens: Tensor,
    sites: list[Site],
    readout: Readout,
    *,
    attention_mask: Tensor | None = None,
    budget: int | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """One unpatched pass over `tokens`: the activations of `sites` (keyed by TL hook name; on the TL backend also
    the residual entering the final norm, under `FINAL`) and the metric values [batch], in row chunks that fit
    `budget`. On the TL backend the pass stops before the unembedding and only the logits the metric reads are
    computed; elsewhere each chunk keeps only the read logits (full logits when the metric needs them)."""
    B, T = tokens.shape
    tl_route = model.backend == "tl" and all(s.component != "result" for s in sites)
    rows = min(B, rows_per_chunk(model, T, budget, logits=not tl_route or readout.needs_full_logits))

    def mask_of(sl: slice) -> Tensor | None:
        return None if attention_mask is None else attention_mask[sl]

    caches: list[dict[str, Tensor]] = []
    parts: list[Tensor] = []
    for sl in _chunks(B, rows):
        cache: dict[str, Tensor] = {}
        if tl_route:
            hooks = [(s.hook_name, _saver(cache, s.hook_name)) for s in sites]
            cache[FINAL] = model.tl.run_with_hooks(
                tokens[sl], fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers, attention_mask=mask_of(sl)
            )  # [b, T, d]
        else:
            logits, cache = model.run_with_cache(tokens[sl], sites, attention_mask=mask_of(sl))
            if rows >= B:  # the whole batch at once: the readout's own path (and its first check)
                parts.append(values_from_logits(readout, logits[None])[0])
            else:
                parts.append(logits if readout.needs_full_logits else readout.take(logits, rows=sl))
            del logits
        caches.append(cache)
    cache = caches[0] if len(caches) == 1 else {k: torch.cat([c[k] for c in caches]) for k in caches[0]}
    if tl_route:
        values = values_from_resid(model, readout, cache[FINAL][None])[0]
    elif rows >= B:
        values = parts[0]
    elif readout.needs_full_logits:  # the metric needs them all
        values = readout.from_logits(torch.cat(parts))
    else:
        values = readout.gathered(torch.cat(parts).float()).float()
    return cache, values


def run_values(
    model: HookedModel,
    tokens: Tensor,
    readout: Readout,
    *,
    attention_mask: Tensor | None = None,
    budget: int | None = None,
) -> Tensor:
    """Metric values [batch] of the unpatched run on `tokens` (`run_cached` caching nothing)."""
    return run_cached(model, tokens, [], readout, attention_mask=attention_mask, budget=budget)[1]


def _index(cell: Cell, component: str, offset: int = 0) -> tuple:
    """The index of `cell` into an activation (after the batch axis) holding positions from `offset` on
    (cells with one position for every prompt)."""
    h = slice(None) if cell.head is None else cell.head
    p = slice(offset, None) if cell.pos is None else cell.pos
    if component == "pattern":  # [b, head, q, k]; positions index the query axis
        return (h, p)
    return (p,) if cell.head is None else (p, h)


def _at_rows(act: Tensor, rows: Tensor, pos: Tensor, cell: Cell, component: str) -> tuple:
    """The index of a per-prompt-position cell into `act`: rows `rows`, position `pos[i]` in row `rows[i]`."""
    h = slice(None) if cell.head is None else cell.head
    if component == "pattern":
        return (rows, h, pos)
    return (rows, pos) if cell.head is None else (rows, pos, h)


def source_of(acts: Tensor, cell: Cell, component: str) -> Tensor:
    """The part of a full activation [batch, ...] that `cell` replaces."""
    if isinstance(cell.pos, tuple):
        b = torch.arange(acts.shape[0], device=acts.device)
        return acts[_at_rows(acts, b, torch.tensor(cell.pos, device=acts.device), cell, component)]
    return acts[(slice(None), *_index(cell, component))]


def write_cell(act: Tensor, rows: slice, cell: Cell, src: Tensor, component: str, offset: int = 0) -> None:
    """Write the source activation of `cell` into rows `rows` of `act` (in place).

    `act` is the target activation for a stacked chunk (TL shapes); `src` the source activation [batch, ...] of
    the same site over the full sequence; `offset` is the first position `act` holds (prefix reuse).
    """
    if isinstance(cell.pos, tuple):
        pos = torch.tensor(cell.pos, device=act.device)
        r = torch.arange(rows.start, rows.stop, device=act.device)
        act[_at_rows(act, r, pos - offset, cell, component)] = source_of(src, cell, component)
        return
    idx = _index(cell, component)
    dst = list(idx)
    pos_axis = 1 if component == "pattern" else 0
    p = dst[pos_axis]
    dst[pos_axis] = slice(None) if isinstance(p, slice) else p - offset
    if isinstance(p, slice):
        src_idx = list(idx)
        src_idx[pos_axis] = slice(offset, None)
        idx = tuple(src_idx)
    act[(rows, *dst)] = src[(slice(None), *idx)]


def noop_cells(
    cells: list[Cell], component: str, sources: dict[int, Tensor], targets: dict[int, Tensor]
) -> Tensor:
    """Bool [n_cells]: cells whose source activation equals the target's exactly, so patching them changes nothing
    (their score is the target run's metric, no forward pass needed)."""
    return torch.tensor(
        [
            torch.equal(source_of(sources[c.layer], c, component), source_of(targets[c.layer], c, component))
            for c in cells
        ],
        dtype=torch.bool,
    )


# --------------------------------------------------------------------------------------------- generic engine
def run_cells_generic(
    model: HookedModel,
    tokens: Tensor,
    cells: list[Cell],
    component: str,
    sources: dict[int, Tensor],
    readout: Readout,
    *,
    attention_mask: Tensor | None = None,
    budget: int | None = None,
    on_done: Progress | None = None,
) -> Tensor:
    """Per-cell metric values [n_cells, batch]: full forwards with `C` cells stacked along the batch."""
    B, T = tokens.shape
    budget = budget or default_budget(model.device)
    per_cell = B * T * bytes_per_token(model, T) + B * T * model.cfg.d_vocab * 4

    def chunk(sl: slice) -> Tensor:
        group = cells[sl]
        C = len(group)
        by_layer: dict[int, list[tuple[int, Cell]]] = defaultdict(list)
        for i, cell in enumerate(group):
            by_layer[cell.layer].append((i, cell))
        hooks = []
        for layer, items in by_layer.items():

            def hook(act: Tensor, site: Site, items=items, layer=layer) -> Tensor:
                act = act.clone()
                for i, cell in items:
                    write_cell(act, slice(i * B, (i + 1) * B), cell, sources[layer], component)
                return act

            hooks.append((Site(component, layer), hook))
        mask = attention_mask.repeat(C, 1) if attention_mask is not None else None
        logits = model.run_with_hooks(tokens.repeat(C, 1), hooks, attention_mask=mask)
        return values_from_logits(readout, logits.view(C, B, T, -1))

    return torch.cat(run_chunked(len(cells), per_cell, budget, chunk, on_done))


def read_full(readout: Readout, logits: Tensor) -> Tensor:
    """[C, B, T, V] logits -> [C, B] metric values."""
    return values_from_logits(readout, logits)


# --------------------------------------------------------------------------------------------- TL fast engine
@dataclass(frozen=True, kw_only=True)
class TargetCache:
    """What the fast engine keeps of the target run."""

    resid_pre: list[Tensor]  # per layer [B, T, d]
    keys: list[Tensor]  # per layer [B, T, kv_heads, d_head] (pre-rotary, as TL caches them)
    values: list[Tensor]
    final: Tensor  # [B, T, d] residual entering ln_final


def target_sites(n_layers: int) -> list[Site]:
    """The sites the fast engine caches of the target run (with the final residual, `FINAL`)."""
    return [Site(c, layer) for layer in range(n_layers) for c in ("resid_pre", "k", "v")]


def target_cache(cache: dict[str, Tensor], n_layers: int) -> TargetCache:
    """The fast engine's view of a `run_cached` cache of `target_sites` on the TL backend."""
    return TargetCache(
        resid_pre=[cache[Site("resid_pre", i).hook_name] for i in range(n_layers)],
        keys=[cache[Site("k", i).hook_name] for i in range(n_layers)],
        values=[cache[Site("v", i).hook_name] for i in range(n_layers)],
        final=cache[FINAL],
    )


def cache_target(model: TLModel, tokens: Tensor, *, budget: int | None = None) -> TargetCache:
    """One target forward pass (in row chunks that fit `budget`, no logits) caching what prefix reuse and layer
    starts need."""
    L = model.cfg.n_layers
    B, T = tokens.shape
    rows = rows_per_chunk(model, T, budget, logits=False)
    sites = target_sites(L)
    caches = []
    for sl in _chunks(B, min(B, rows)):
        cache: dict[str, Tensor] = {}
        hooks = [(s.hook_name, _saver(cache, s.hook_name)) for s in sites]
        cache[FINAL] = model.tl.run_with_hooks(tokens[sl], fwd_hooks=hooks, stop_at_layer=L)
        caches.append(cache)
    merged = caches[0] if len(caches) == 1 else {k: torch.cat([c[k] for c in caches]) for k in caches[0]}
    return target_cache(merged, L)


def unembed(tl: HookedTransformer, resid: Tensor, token_ids: Tensor | None) -> Tensor:
    """Logits from final residuals [C, B, d]: only the columns `token_ids` [B, k] when given (models without a
    final norm, `normalization_type=None`, skip it)."""
    x = tl.ln_final(resid) if hasattr(tl, "ln_final") else resid
    if token_ids is None:
        logits = (x @ tl.W_U).add_(tl.b_U)  # in place: one [.., vocab] tensor, not two
    else:
        w = tl.W_U.T[token_ids]  # [B, k, d]
        logits = torch.einsum("cbd,bkd->cbk", x, w) + tl.b_U[token_ids]
    cap = getattr(tl.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def unembed_at(tl: HookedTransformer, resid: Tensor, token_ids: Tensor | None) -> Tensor:
    """Logits [C, B, p, k] from final residuals [C, B, p, d] at p read positions per prompt."""
    C, B, p, d = resid.shape
    if p == 1:
        return unembed(tl, resid[:, :, 0], token_ids)[:, :, None]
    if token_ids is None:
        return unembed(tl, resid.reshape(C, B * p, d), None).view(C, B, p, -1)
    ids = token_ids.repeat_interleave(p, dim=0)  # [B * p, k]: row b's ids at each of its positions
    return unembed(tl, resid.reshape(C, B * p, d), ids).view(C, B, p, -1)


def values_from_resid(
    model: HookedModel, readout: Readout, resid: Float[Tensor, "C batch pos d_model"]
) -> Float[Tensor, "C batch"]:
    """Metric values of C stacked runs from their residual streams entering the final norm (TL backend): only
    the logits the metric reads are computed (full logits when it needs them)."""
    tl = model.tl
    C, B, T, d = resid.shape

    def full(r: Tensor) -> Tensor:
        logits = unembed(tl, r.reshape(-1, 1, d), None).view(r.shape[0], B, T, -1)
        return torch.stack([readout.from_logits(lg) for lg in logits])

    if readout.needs_full_logits:
        return full(resid)
    b = torch.arange(B, device=resid.device)[:, None]
    at = resid[:, b, readout.positions.to(resid.device)]  # [C, B, p, d]
    vals = readout.gathered(unembed_at(tl, at, readout.token_ids).float()).float()
    if readout.needs_check and not readout.check(vals[:1], full(resid[:1])):
        return full(resid)
    return vals


class _Enough(Exception):
    """Raised from a hook to stop a forward pass once it has produced what was asked."""


def _kv_of(tl: HookedTransformer, layer: int, resid: Tensor) -> tuple[Tensor, Tensor]:
    """Block `layer`'s keys and values [N, pos, kv_heads, d_head] on residuals `resid` [N, pos, d] (as its key/value
    hooks and key/value cache hold them), without running the rest of the block."""
    got: dict[str, Tensor] = {}
    names = (f"blocks.{layer}.attn.hook_k", f"blocks.{layer}.attn.hook_v")

    def save(act: Tensor, hook) -> None:
        got[hook.name] = act
        if len(got) == 2:
            raise _Enough

    try:
        with tl.hooks(fwd_hooks=[(n, save) for n in names]):
            tl.blocks[layer](resid)
    except _Enough:
        pass
    return got[names[0]], got[names[1]]


# patching one of these at one position changes its block's output at that position only (queries, attention
# outputs, MLP outputs, residuals after the attention); keys, values, patterns and the block's input do not qualify
LOCAL_COMPONENTS = ("z", "q", "attn_out", "mlp_out", "resid_mid", "resid_post")


@contextmanager
def _precision(fast: bool, device: torch.device):
    if fast and device.type == "cuda":
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    else:
        with nullcontext():
            yield


def run_cells_tl(
    model: TLModel,
    tokens: Tensor,
    cells: list[Cell],
    component: str,
    sources: dict[int, Tensor],
    readout: Readout,
    *,
    target: TargetCache | None = None,
    prefix_reuse: bool = True,
    prefix_groups: int | None = None,
    fast: bool = False,
    budget: int | None = None,
    on_done: Progress | None = None,
) -> Tensor:
    """Per-cell metric values [n_cells, batch] on the TL backend, starting each cell at its patched layer.

    Cells that recompute from the same position are stacked along the batch across layers: a cell patched at
    layer l joins the stacked run at block l (from the target's cached residual there), so blocks run once per
    start position over all cells that have reached them, not once per cell. `prefix_groups=k` merges the start
    positions into k contiguous groups, each recomputed from its first position: fewer, larger passes for a
    little recomputation (for GPUs, where kernel launches rather than FLOPs can dominate). Prompts must be
    unpadded or right-padded (causal attention: padding after a prompt never reaches its real tokens).
    """
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as Entry

    tl = model.tl
    B, T = tokens.shape
    L = model.cfg.n_layers
    # with q/k norms the key/value cache holds normed keys, the key hook raw ones: recompute from position 0
    prefix_reuse = prefix_reuse and not getattr(tl.cfg, "use_qk_norm", False)
    target = target or cache_target(model, tokens, budget=budget)
    budget = budget or (CPU_CHUNK_BYTES if model.device.type == "cpu" else default_budget(model.device))
    hook_name = {c: Site(component, c).hook_name for c in range(L)}
    out = torch.empty(len(cells), B, device=tokens.device)
    # group cells by the first position they recompute (keys/values at pos only matter to queries >= pos too)
    starts = [cell.start if prefix_reuse else 0 for cell in cells]
    first = {p: p for p in starts}
    if prefix_groups is not None:
        distinct = sorted(first)
        k = min(prefix_groups, len(distinct))
        for g in range(k):
            bucket = distinct[g * len(distinct) // k : (g + 1) * len(distinct) // k]
            first.update({p: bucket[0] for p in bucket})
    groups: dict[int, list[int]] = defaultdict(list)
    for idx, p in enumerate(starts):
        groups[first[p]].append(idx)
    V = model.cfg.d_vocab
    # components whose patch at one position changes only that position's output of their block
    local = (
        component in LOCAL_COMPONENTS and prefix_reuse and all(isinstance(cell.pos, int) for cell in cells)
    )

    # every prompt reads the metric at one and the same position: the last block needs its query there only
    read = readout.positions
    one_read = (
        None
        if read is None or read.shape[1] != 1 or not bool((read == read[0, 0]).all())
        else int(read[0, 0])
    )

    def query_only(p0: int, rows_at: dict[int, list]) -> bool:
        """Whether this chunk's last block may run at the read position alone: one shared read position the
        patches can reach, no first-chunk check pending (it compares full logits), no hook inside the block."""
        return (
            one_read is not None
            and one_read >= p0
            and prefix_reuse
            and not readout.needs_check
            and (local or L - 1 not in rows_at)
        )

    def last_block_at(resid: Tensor, p0: int, frozen_prefix) -> Tensor:
        """The last block's output at the read position only, [N, 1, d], from the stacked residuals `resid`
        [N, T - p0, d]: the keys/values of the positions before it (target prefix, then these rows' own, read
        off the block's key/value hooks without finishing it) and one query."""
        r = one_read - p0
        n = len(resid) // B
        entry = frozen_prefix(L - 1, p0, n)
        if r > 0:
            kv = _kv_of(tl, L - 1, resid[:, :r])
            if entry is None:
                entry = Entry(past_keys=kv[0], past_values=kv[1], frozen=True)
            else:
                entry = Entry(
                    past_keys=torch.cat([entry.past_keys, kv[0].to(entry.past_keys.dtype)], 1),
                    past_values=torch.cat([entry.past_values, kv[1].to(entry.past_values.dtype)], 1),
                    frozen=True,
                )
        return tl.blocks[L - 1](resid[:, r : r + 1], past_kv_cache_entry=entry)

    for p0, idxs in groups.items():
        idxs = sorted(idxs, key=lambda i: cells[i].layer)
        n_new = T - p0
        per_cell = B * n_new * bytes_per_token(model, T)
        if readout.needs_full_logits:  # (an inferred read set's first check adds one cell's full logits)
            per_cell += 2 * B * T * V * 4
        elif readout.token_ids is None:
            per_cell += 2 * B * readout.positions.shape[1] * V * 4

        def chunk(sl: slice, p0=p0, idxs=idxs, n_new=n_new) -> Tensor:
            group = [cells[i] for i in idxs[sl]]
            C = len(group)
            rows_at: dict[int, list[tuple[int, Cell]]] = defaultdict(list)  # layer -> (row block, cell)
            for i, cell in enumerate(group):
                rows_at[cell.layer].append((i, cell))

            def make_hook(layer: int):
                def hook(act: Tensor, hook) -> Tensor:
                    for i, cell in rows_at[layer]:
                        write_cell(act, slice(i * B, (i + 1) * B), cell, sources[layer], component, offset=p0)
                    return act

                return hook

            def frozen_prefix(j: int, upto: int, n: int):
                """Layer j's target keys/values before position `upto`, for n stacked copies of the batch."""
                if upto == 0:
                    return None
                return Entry(
                    past_keys=target.keys[j][:, :upto].repeat(n, 1, 1, 1),
                    past_values=target.values[j][:, :upto].repeat(n, 1, 1, 1),
                    frozen=True,
                )

            # joins[j]: the rows that enter the stacked run at block j (j = L: straight to the unembedding)
            joins: dict[int, list[tuple[Tensor, list[int]]]] = defaultdict(list)
            if local:
                # a patch inside block j at one position changes that block's output only there: run block j on
                # the patched position alone, then join at block j + 1 from the target's residual with that
                # position replaced
                with _precision(fast, tokens.device):
                    for j, items in rows_at.items():
                        for q in sorted({cell.pos for _, cell in items}):
                            mine = [(i, cell) for i, cell in items if cell.pos == q]
                            at_q = [cell for _, cell in mine]

                            def hook(act: Tensor, hook, at_q=at_q, j=j, q=q) -> Tensor:
                                for i, cell in enumerate(at_q):
                                    write_cell(
                                        act, slice(i * B, (i + 1) * B), cell, sources[j], component, offset=q
                                    )
                                return act

                            n = len(at_q)
                            one = target.resid_pre[j][:, q : q + 1].repeat(n, 1, 1)
                            with tl.hooks(fwd_hooks=[(hook_name[j], hook)]):
                                one = tl.blocks[j](one, past_kv_cache_entry=frozen_prefix(j, q, n))
                            after = target.resid_pre[j + 1] if j + 1 < L else target.final
                            fresh = after[:, p0:].repeat(n, 1, 1)
                            fresh[:, q - p0] = one[:, 0].to(fresh.dtype)
                            joins[j + 1].append((fresh, [i for i, _ in mine]))
            else:
                for j, items in rows_at.items():
                    joins[j].append(
                        (target.resid_pre[j][:, p0:].repeat(len(items), 1, 1), [i for i, _ in items])
                    )
            resid: Tensor | None = None  # the first join starts the run
            n_out = n_new  # positions the run ends with
            at_read = False  # whether the last block ran at the read position only
            order: list[int] = []  # the group's cells in the order their rows joined
            fwd_hooks = [] if local else [(hook_name[layer], make_hook(layer)) for layer in rows_at]
            with tl.hooks(fwd_hooks=fwd_hooks), _precision(fast, tokens.device):
                for j in range(min(joins), L + 1):
                    if joins.get(j):  # cells patched at this layer join from the target's residual here
                        fresh = torch.cat([rows for rows, _ in joins[j]])
                        if at_read:  # joining after a last block that ran at the read position only
                            fresh = fresh[:, one_read - p0 : one_read - p0 + 1]
                        order += [i for _, ids in joins[j] for i in ids]
                        resid = fresh if resid is None else torch.cat([resid, fresh.to(resid.dtype)])
                    if j == L - 1 and query_only(p0, rows_at):
                        resid, n_out, at_read = last_block_at(resid, p0, frozen_prefix), 1, True
                    elif j < L:
                        resid = tl.blocks[j](resid, past_kv_cache_entry=frozen_prefix(j, p0, len(resid) // B))
            resid = resid.float().view(C, B, n_out, -1)
            if order != list(range(C)):
                resid = resid[torch.argsort(torch.tensor(order, device=resid.device))]

            def full(r: Tensor) -> Tensor:
                n = r.shape[0]
                whole = torch.cat([target.final[:, :p0].expand(n, -1, -1, -1), r], dim=2)
                logits = unembed(tl, whole.reshape(n * B * T, 1, -1), None).view(n, B, T, -1)
                return torch.stack([readout.from_logits(lg) for lg in logits])

            if readout.needs_full_logits:
                return full(resid)
            pos = readout.positions  # [B, p]
            b = torch.arange(B, device=tokens.device)[:, None]
            rel = torch.zeros_like(pos) if at_read else (pos - p0).clamp(min=0)
            at = resid[:, b, rel]  # [C, B, p, d]
            before = pos < p0  # the patch cannot reach these read positions
            if bool(before.any()):
                at = torch.where(before[None, :, :, None], target.final[b, pos][None].expand_as(at), at)
            vals = readout.gathered(unembed_at(tl, at, readout.token_ids).float()).float()
            if readout.needs_check and not readout.check(vals[:1], full(resid[:1])):
                return full(resid)
            return vals

        vals = torch.cat(run_chunked(len(idxs), per_cell, budget, chunk, on_done))
        out[torch.tensor(idxs, device=out.device)] = vals
    return out

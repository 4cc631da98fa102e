"""Activation patching sweeps (`patch_sweep`): exact, batched, from the patched layer on."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from interp.models.base import HookedModel
from interp.patching.engine import (
    Cell,
    noop_cells,
    run_cached,
    run_cells_generic,
    run_cells_tl,
    target_cache,
    target_sites,
)
from interp.patching.inputs import (
    FiniteGuard,
    InputError,
    MetricLike,
    NonFinite,
    PositionSpec,
    Prompts,
    SweepPositions,
    Tokens,
    bind_inputs,
    bind_positions,
    check_budget,
    check_choice,
    check_count,
)
from interp.progress import progress_bar
from interp.sites import HEAD_COMPONENTS, Site, SiteError

SWEEP_COMPONENTS = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "z",
    "q",
    "k",
    "v",
    "pattern",
)
DIRECTIONS = ("denoise", "noise")
SOURCES = ("run", "zero", "mean", "resample")
MODES = ("exact", "fast")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    component: str
    per_head: bool
    positions: str | tuple[int, ...] | tuple[str, ...]
    direction: str
    source: str
    mode: str
    metric: str
    backend: str
    seed: int


@dataclass(frozen=True, kw_only=True)
class PatchResult:
    """Scores of a patching sweep with their axes.

    `scores` is `[layer, pos]`, `[layer, pos, head]` or `[layer, head]` (all positions); `axes` names each
    dimension and `labels` gives its tick labels (layer numbers, token strings, head numbers).
    `baseline` holds the metric on the clean and corrupt runs (batch means).
    """

    scores: Tensor
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    config: SweepConfig
    baseline: dict[str, float] = field(default_factory=dict)

    def to_frame(self):
        """A long-format pandas DataFrame: one row per cell with its axis labels and score."""
        import pandas as pd

        idx = torch.cartesian_prod(*[torch.arange(n) for n in self.scores.shape]).reshape(
            -1, self.scores.ndim
        )
        rows = {ax: [self.labels[ax][int(i)] for i in idx[:, k]] for k, ax in enumerate(self.axes)}
        rows.update({f"{ax}_index": idx[:, k].tolist() for k, ax in enumerate(self.axes)})
        rows["score"] = self.scores.reshape(-1).tolist()
        return pd.DataFrame(rows)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `scores.safetensors` and `result.json` (axes, labels, config, baseline) atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as f:
            tmp = f.name
        save_file({"scores": self.scores.detach().cpu().contiguous()}, tmp)
        os.replace(tmp, folder / "scores.safetensors")
        meta = {
            "axes": list(self.axes),
            "labels": self.labels,
            "config": asdict(self.config),
            "baseline": self.baseline,
        }
        tmpj = folder / "result.json.tmp"
        tmpj.write_text(json.dumps(meta, indent=2))
        os.replace(tmpj, folder / "result.json")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PatchResult:
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "result.json").read_text())
        cfg = meta["config"]
        if isinstance(cfg["positions"], list):
            cfg["positions"] = tuple(cfg["positions"])
        return cls(
            scores=load_file(folder / "scores.safetensors")["scores"],
            axes=tuple(meta["axes"]),
            labels=meta["labels"],
            config=SweepConfig(**cfg),
            baseline=meta["baseline"],
        )

    def figure(self, *, title: str | None = None, head: int | None = None):
        """A heatmap (layers down, positions or heads across); per-head-by-position sweeps sum over heads
        unless `head` picks one."""
        from interp.plotting.figures import heatmap

        s, axes = self.scores, list(self.axes)
        if s.ndim == 3:
            s = s[..., head] if head is not None else s.sum(-1)
            axes = axes[:2]
        x_ax = axes[1]
        what = f"{self.config.component}{' (head ' + str(head) + ')' if head is not None else ''}"
        return heatmap(
            s.detach().cpu().numpy(),
            x_labels=self.labels[x_ax],
            y_labels=self.labels["layer"],
            title=title or f"Activation patching: {what}, {self.config.direction} ({self.config.metric})",
            x_title="token position" if x_ax == "pos" else "head",
            y_title="layer",
            signed=True,
        )


def sweep_cells(
    component: str, per_head: bool, positions: SweepPositions, n_layers: int, n_heads: int
) -> tuple[list[Cell], tuple[int, ...], tuple[str, ...]]:
    """The cell grid, its result shape and axis names."""
    heads = list(range(n_heads)) if per_head else [None]
    if positions.all and not per_head:
        raise InputError(
            "positions='all' needs per_head=True (patching a whole layer at every position replaces the run)"
        )
    cells = [Cell(layer, p, h) for layer in range(n_layers) for p in positions.cells for h in heads]
    n_pos = len(positions.cells)
    if positions.all:
        return cells, (n_layers, n_heads), ("layer", "head")
    if per_head:
        return cells, (n_layers, n_pos, n_heads), ("layer", "pos", "head")
    return cells, (n_layers, n_pos), ("layer", "pos")


def _sources(
    component: str,
    src_cache: dict[str, Tensor],
    tgt_cache: dict[str, Tensor],
    n_layers: int,
    source: str,
    seed: int,
    mask: Tensor | None,
) -> dict[int, Tensor]:
    """Source activations per layer from the cached source run (zeros shaped like the target's for `zero`)."""
    names = [Site(component, layer).hook_name for layer in range(n_layers)]
    if source == "zero":
        return {i: torch.zeros_like(tgt_cache[n][:1]).expand_as(tgt_cache[n]) for i, n in enumerate(names)}
    acts = {i: src_cache[n] for i, n in enumerate(names)}
    if source == "mean":
        return {i: _masked_mean(a, mask, component == "pattern").expand_as(a) for i, a in acts.items()}
    if source == "resample":
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(next(iter(acts.values())).shape[0], generator=g).to(acts[0].device)
        return {i: a[perm] for i, a in acts.items()}
    return acts


def _masked_mean(a: Tensor, mask: Tensor | None, pattern: bool = False) -> Tensor:
    """The batch mean [1, ...] of an activation [batch, pos, ...] (pattern: [batch, head, q, k]), over the
    prompts that are real at each position."""
    if mask is None:
        return a.mean(0, keepdim=True)
    if pattern:  # positions are the query axis
        m = mask.to(a.dtype)[:, None, :, None]
    else:
        m = mask.to(a.dtype).view(*mask.shape, *([1] * (a.ndim - 2)))
    return (a * m).sum(0, keepdim=True) / m.sum(0, keepdim=True).clamp_min(1)


def patch_sweep(
    model: HookedModel,
    *,
    clean: Prompts,
    corrupt: Tokens | None = None,
    metric: MetricLike,
    attention_mask: Tokens | None = None,
    component: str = "resid_pre",
    per_head: bool = False,
    positions: PositionSpec = "each",
    direction: str = "denoise",
    source: str = "run",
    mode: str = "exact",
    seed: int = 0,
    prefix_reuse: bool = True,
    prefix_groups: int | None = None,
    memory_budget: int | None = None,
    engine: str = "auto",
    skip_noops: bool = True,
    nonfinite: NonFinite = "raise",
    progress: bool | None = None,
) -> PatchResult:
    """Activation patching over every (layer, position[, head]) cell, many cells per forward pass.

    `denoise` patches clean activations into the corrupt run; `noise` corrupt into clean (TransformerLens'
    conventions); `clean` is a PromptSet, or token tensors with `corrupt` (and an `attention_mask` they share,
    padded on either side). `source` replaces the patched-in activation by zeros, the batch mean or a seeded resample
    of the source run. A cell's score is the batch mean of `metric`. `mode="fast"` allows bf16/TF32 on GPU.
    `positions`: "each" (every token position), "all" (every position at once, per head), an int, a list of
    ints, or named key positions of the PromptSet ("END", "S2+1", or a list of names: one per prompt, so
    prompts of different lengths line up by role; ints and "each" need prompts of one length).
    `engine`: "auto" (TL fast path on the TL backend), "tl" or "generic" (any backend; full forwards).
    `skip_noops`: cells whose source activation equals the target's bit for bit (e.g. positions before the
    first token where clean and corrupt differ) are not run; their score is the target run's metric.
    `prefix_reuse` (TL engine): recompute only positions from the patched one on, over a frozen key/value cache
    of the target's prefix; `prefix_groups=k` recomputes from k shared start positions instead of one per
    position (fewer, larger passes: try it on GPUs). `memory_budget`: bytes per stacked chunk and per chunk of
    the unpatched runs (default: cache-sized on CPU, half the free memory on GPU); chunks halve on out-of-memory.
    `nonfinite`: "raise" (default) if the metric is NaN/inf anywhere, "warn" to keep such scores.
    `progress`: a progress bar on long sweeps (None: on terminals unless INTERP_PROGRESS=0).
    """
    caller = "patch_sweep"
    # ---- validation: everything before the first forward pass
    if component not in SWEEP_COMPONENTS:
        raise SiteError(f"unknown patching component {component!r}; valid: {', '.join(SWEEP_COMPONENTS)}")
    check_choice(direction, "direction", DIRECTIONS, caller)
    check_choice(source, "source", SOURCES, caller)
    check_choice(mode, "mode", MODES, caller)
    check_choice(engine, "engine", ("auto", "tl", "generic"), caller)
    check_count(prefix_groups, "prefix_groups", caller, allow_none=True)
    check_count(seed, "seed", caller, minimum=0)
    budget = check_budget(memory_budget, caller)
    finite = FiniteGuard(caller, nonfinite)
    if component in HEAD_COMPONENTS and not per_head:
        raise InputError(f"component {component!r} is per head: pass per_head=True")
    if per_head and component not in HEAD_COMPONENTS:
        raise InputError(
            f"per_head=True needs a per-head component ({', '.join(HEAD_COMPONENTS)}); "
            f"{component!r} has no heads"
        )
    model.check_site(Site(component, 0))
    if engine == "tl" and model.backend != "tl":
        raise InputError("engine='tl' needs a model loaded with backend='tl'")
    inputs = bind_inputs(
        model,
        clean,
        corrupt,
        metric=metric,
        caller=caller,
        attention_mask=attention_mask,
        allow_left_padding=True,
    )
    if inputs.padding == "left" and engine == "tl":
        raise InputError(
            "patch_sweep: the TL engine runs right-padded or unpadded prompts; these are padded on the left: "
            "use engine='generic' (or 'auto'), or pad on the right"
        )
    pos = bind_positions(positions, inputs, model)
    readout = inputs.readout
    clean_t, corrupt_t, mask = inputs.clean, inputs.corrupt, inputs.attention_mask
    n_heads = model.cfg.n_kv_heads if component in ("k", "v") else model.cfg.n_heads
    cells, shape, axes = sweep_cells(component, per_head, pos, model.cfg.n_layers, n_heads)

    target, src = (corrupt_t, clean_t) if direction == "denoise" else (clean_t, corrupt_t)
    use_tl = engine == "tl" or (engine == "auto" and model.backend == "tl" and inputs.padding != "left")
    L = model.cfg.n_layers
    sites = [Site(component, layer) for layer in range(L)]
    # two unpatched passes: the source run (its activations) and the target run (its activations and, for the TL
    # engine, what starting at a layer and prefix reuse need), each with its metric values
    tgt_sites = list({s.hook_name: s for s in sites + (target_sites(L) if use_tl else [])}.values())
    with torch.no_grad():
        src_cache, src_vals = run_cached(
            model, src, [] if source == "zero" else sites, readout, attention_mask=mask, budget=budget
        )
        tgt_cache, tgt_vals = run_cached(
            model, target, tgt_sites, readout, attention_mask=mask, budget=budget
        )
        sources = _sources(component, src_cache, tgt_cache, L, source, seed, mask)
        targets = {i: tgt_cache[s.hook_name] for i, s in enumerate(sites)}
        per_prompt = (
            {"clean": src_vals, "corrupt": tgt_vals}
            if direction == "denoise"
            else {"clean": tgt_vals, "corrupt": src_vals}
        )
        for k, v in per_prompt.items():
            finite(v[None], lambda i, k=k: f"the {k} run")
        base = {k: v.mean().item() for k, v in per_prompt.items()}
        # cells whose source equals the target exactly are no-ops: their value is the target run's metric
        skip = (
            noop_cells(cells, component, sources, targets)
            if skip_noops
            else torch.zeros(len(cells), dtype=bool)
        )
        todo = [c for c, s in zip(cells, skip.tolist(), strict=True) if not s]
        todo_index = [i for i, s in enumerate(skip.tolist()) if not s]
        vals = per_prompt["corrupt" if direction == "denoise" else "clean"].expand(len(cells), -1).clone()
        with progress_bar(len(todo), f"patch_sweep {component}", progress=progress) as bar:
            if todo and use_tl:
                done = run_cells_tl(
                    model,
                    target,
                    todo,
                    component,
                    sources,
                    readout,
                    target=target_cache(tgt_cache, L),
                    prefix_reuse=prefix_reuse,
                    prefix_groups=prefix_groups,
                    fast=(mode == "fast"),
                    budget=budget,
                    on_done=bar.update,
                )
            elif todo:
                done = run_cells_generic(
                    model,
                    target,
                    todo,
                    component,
                    sources,
                    readout,
                    attention_mask=mask,
                    budget=budget,
                    on_done=bar.update,
                )
        if todo:
            vals[~skip.to(vals.device)] = done
    labels = {"layer": [str(i) for i in range(model.cfg.n_layers)], "head": [str(h) for h in range(n_heads)]}
    if pos.labels is not None:
        labels["pos"] = pos.labels

    def cell_label(i: int) -> str:
        c = cells[i]
        where = f"layer {c.layer}"
        if c.pos is not None:
            where += f", pos {labels['pos'][pos.cells.index(c.pos)]}"
        return f"cell ({where}{'' if c.head is None else f', head {c.head}'})"

    finite(vals[~skip.to(vals.device)], lambda i: cell_label(todo_index[i]))
    finite.done()
    scores = vals.mean(-1).view(*shape).cpu()
    cfg = SweepConfig(
        component=component,
        per_head=per_head,
        positions=pos.spec,
        direction=direction,
        source=source,
        mode=mode,
        metric=readout.name,
        backend=model.backend,
        seed=seed,
    )
    return PatchResult(scores=scores, axes=axes, labels=labels, config=cfg, baseline=base)

"""Activation patching sweeps (`patch_sweep`): exact, batched, from the patched layer on."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp.models.base import HookedModel
from interp.patching.engine import Cell, noop_cells, run_cells_generic, run_cells_tl
from interp.patching.readout import as_readout
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
    positions: str | tuple[int, ...]
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


def _tokens_pair(clean: Any, corrupt: Any) -> tuple[Tensor, Tensor, Any]:
    """(clean, corrupt, prompts-or-None) from a PromptSet or two token tensors."""
    if corrupt is None and hasattr(clean, "clean") and hasattr(clean, "corrupt"):
        return clean.clean, clean.corrupt, clean
    if hasattr(clean, "clean") and corrupt is None:
        raise ValueError("pass a PromptSet as `clean` (corrupt=None), or two token tensors")
    if not isinstance(clean, Tensor) or not isinstance(corrupt, Tensor):
        raise TypeError("clean/corrupt must be a PromptSet (as clean=) or two LongTensors [batch, pos]")
    return clean, corrupt, None


def _cells(component: str, per_head: bool, positions: Any, n_layers: int, n_heads: int, seq_len: int):
    """The cell grid, its result shape and axis names."""
    if positions == "each":
        pos_list: list[int] | None = list(range(seq_len))
    elif positions == "all":
        pos_list = None
    else:
        pos_list = [int(p) for p in positions]
        bad = [p for p in pos_list if not 0 <= p < seq_len]
        if bad:
            raise ValueError(f"positions {bad} are outside the prompts' length {seq_len}")
    heads = list(range(n_heads)) if per_head else [None]
    if pos_list is None and not per_head:
        raise ValueError(
            "positions='all' needs per_head=True (patching a whole layer at every position replaces the run)"
        )
    cells = [Cell(layer, p, h) for layer in range(n_layers) for p in (pos_list or [None]) for h in heads]
    if pos_list is None:
        return cells, (n_layers, n_heads), ("layer", "head"), pos_list
    if per_head:
        return cells, (n_layers, len(pos_list), n_heads), ("layer", "pos", "head"), pos_list
    return cells, (n_layers, len(pos_list)), ("layer", "pos"), pos_list


def _sources(
    model: HookedModel,
    component: str,
    src_tokens: Tensor,
    tgt_tokens: Tensor,
    source: str,
    seed: int,
    mask: Tensor | None,
) -> dict[int, Tensor]:
    """Source activations per layer."""
    L = model.cfg.n_layers
    sites = [Site(component, layer) for layer in range(L)]
    if source == "zero":
        _, cache = model.run_with_cache(tgt_tokens[:1], sites)
        return {
            i: torch.zeros_like(cache[s.hook_name]).expand(tgt_tokens.shape[0], *cache[s.hook_name].shape[1:])
            for i, s in enumerate(sites)
        }
    _, cache = model.run_with_cache(src_tokens, sites, attention_mask=mask)
    acts = {i: cache[s.hook_name] for i, s in enumerate(sites)}
    if source == "mean":
        return {i: a.mean(0, keepdim=True).expand_as(a) for i, a in acts.items()}
    if source == "resample":
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(src_tokens.shape[0], generator=g).to(src_tokens.device)
        return {i: a[perm] for i, a in acts.items()}
    return acts


def patch_sweep(
    model: HookedModel,
    *,
    clean: Any,
    corrupt: Tensor | None = None,
    metric: Any,
    component: str = "resid_pre",
    per_head: bool = False,
    positions: str | list[int] = "each",
    direction: str = "denoise",
    source: str = "run",
    mode: str = "exact",
    seed: int = 0,
    prefix_reuse: bool = True,
    prefix_groups: int | None = None,
    memory_budget: int | None = None,
    engine: str = "auto",
    skip_noops: bool = True,
) -> PatchResult:
    """Activation patching over every (layer, position[, head]) cell, many cells per forward pass.

    `denoise` patches clean activations into the corrupt run; `noise` corrupt into clean (TransformerLens'
    conventions). `source` replaces the patched-in activation by zeros, the batch mean or a seeded resample
    of the source run. A cell's score is the batch mean of `metric`. `mode="fast"` allows bf16/TF32 on GPU.
    `engine`: "auto" (TL fast path on the TL backend), "tl" or "generic" (any backend; full forwards).
    `skip_noops`: cells whose source activation equals the target's bit for bit (e.g. positions before the
    first token where clean and corrupt differ) are not run; their score is the target run's metric.
    `prefix_reuse` (TL engine): recompute only positions from the patched one on, over a frozen key/value cache
    of the target's prefix; `prefix_groups=k` recomputes from k shared start positions instead of one per
    position (fewer, larger passes: try it on GPUs). `memory_budget`: bytes per stacked chunk (default:
    cache-sized on CPU, half the free memory on GPU); chunks halve on out-of-memory.
    """
    clean_t, corrupt_t, prompts = _tokens_pair(clean, corrupt)
    # ---- validation: everything before the first forward pass
    if component not in SWEEP_COMPONENTS:
        raise SiteError(f"unknown patching component {component!r}; valid: {', '.join(SWEEP_COMPONENTS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}; got {source!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if prefix_groups is not None and (
        not isinstance(prefix_groups, int) or isinstance(prefix_groups, bool) or prefix_groups < 1
    ):
        raise ValueError(f"prefix_groups must be None or an int >= 1; got {prefix_groups!r}")
    if engine not in ("auto", "tl", "generic"):
        raise ValueError(f"engine must be 'auto', 'tl' or 'generic'; got {engine!r}")
    if component in HEAD_COMPONENTS and not per_head:
        raise ValueError(f"component {component!r} is per head: pass per_head=True")
    if per_head and component not in HEAD_COMPONENTS:
        raise ValueError(
            f"per_head=True needs a per-head component ({', '.join(HEAD_COMPONENTS)}); "
            f"{component!r} has no heads"
        )
    if clean_t.shape != corrupt_t.shape:
        raise ValueError(
            f"clean and corrupt tokens must have the same shape; got {tuple(clean_t.shape)} and "
            f"{tuple(corrupt_t.shape)}"
        )
    if clean_t.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos]; got shape {tuple(clean_t.shape)}")
    model.check_site(Site(component, 0))
    if engine == "tl" and model.backend != "tl":
        raise ValueError("engine='tl' needs a model loaded with backend='tl'")
    mask = getattr(prompts, "attention_mask", None)
    if mask is not None and bool((mask[:, 0] == 0).any()):
        raise ValueError("left-padded prompts are not supported by patching; pad on the right")
    B, T = clean_t.shape
    dev = model.device
    clean_t, corrupt_t = clean_t.to(dev), corrupt_t.to(dev)
    if prompts is not None and not hasattr(metric, "positions") and hasattr(metric, "from_prompts"):
        metric = metric.from_prompts(prompts)
    readout = as_readout(metric, batch=B, seq_len=T, d_vocab=model.cfg.d_vocab, device=dev)
    n_heads = model.cfg.n_kv_heads if component in ("k", "v") else model.cfg.n_heads
    cells, shape, axes, pos_list = _cells(component, per_head, positions, model.cfg.n_layers, n_heads, T)

    target, src = (corrupt_t, clean_t) if direction == "denoise" else (clean_t, corrupt_t)
    use_tl = engine == "tl" or (engine == "auto" and model.backend == "tl")
    with torch.no_grad():
        sources = _sources(model, component, src, target, source, seed, None)
        targets = _sources(model, component, target, target, "run", seed, None)
        per_prompt = {
            "clean": readout.from_logits(model(clean_t)),
            "corrupt": readout.from_logits(model(corrupt_t)),
        }
        base = {k: v.mean().item() for k, v in per_prompt.items()}
        # cells whose source equals the target exactly are no-ops: their value is the target run's metric
        skip = (
            noop_cells(cells, component, sources, targets)
            if skip_noops
            else torch.zeros(len(cells), dtype=bool)
        )
        todo = [c for c, s in zip(cells, skip.tolist(), strict=True) if not s]
        vals = per_prompt["corrupt" if direction == "denoise" else "clean"].expand(len(cells), -1).clone()
        if todo and use_tl:
            done = run_cells_tl(
                model,
                target,
                todo,
                component,
                sources,
                readout,
                prefix_reuse=prefix_reuse,
                prefix_groups=prefix_groups,
                fast=(mode == "fast"),
                budget=memory_budget,
            )
        elif todo:
            done = run_cells_generic(model, target, todo, component, sources, readout, budget=memory_budget)
        if todo:
            vals[~skip.to(vals.device)] = done
    scores = vals.mean(-1).view(*shape).cpu()
    toks = model.to_str_tokens(clean_t[0])
    labels = {"layer": [str(i) for i in range(model.cfg.n_layers)], "head": [str(h) for h in range(n_heads)]}
    if pos_list is not None:
        labels["pos"] = [f"{p}:{toks[p]}" for p in pos_list]
    cfg = SweepConfig(
        component=component,
        per_head=per_head,
        positions=positions if isinstance(positions, str) else tuple(positions),
        direction=direction,
        source=source,
        mode=mode,
        metric=readout.name,
        backend=model.backend,
        seed=seed,
    )
    return PatchResult(scores=scores, axes=axes, labels=labels, config=cfg, baseline=base)

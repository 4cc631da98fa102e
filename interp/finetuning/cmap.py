"""CMAP, cross-model activation patching (Prakash, Rott Shaham, Haklay, Belinkov, Bau, ICLR 2024, "Fine-Tuning
Enhances Existing Mechanisms: A Case Study on Entity Tracking").

The same prompts run through a *receiver* and a *sender* model (a base model and its fine-tune, either way):

- output CMAP (`cmap_output`): the per-head outputs `z` of a circuit's head group (and its MLP outputs), where
  the circuit keeps them (`Circuit.positions`), are replaced in the receiver's run by the sender's values
  (Prakash et al.'s `cmap_out`);
- input CMAP (`cmap_input`): the group's heads receive the sender's query at the group's position and/or its
  keys/values at the positions before it (optionally at the position too); every head's output at earlier
  positions, and the group's heads' outputs at later positions, stay frozen at the receiver's values, so the
  only change is inside the targeted heads at their position (`cmap_in`);
- component CMAP (`cmap_sweep`): one residual / attention-out / MLP-out site (or per-head site) at a time, every
  layer and position, run by the batched patching engines with the sender's activations as the source.

The groups are a `interp.circuits.Circuit`'s groups (a circuit without groups is one group, "circuit"); the
circuit of model A is evaluated inside model B with `interp.circuits.evaluate_circuit(B, circuit, ...)`. Patch
specifications are stacked along the batch, many per forward pass, chunked to memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.circuits.graph import Circuit, parse_head
from interp.finetuning.pair import check_pair
from interp.models.base import HookedModel
from interp.patching.engine import (
    Cell,
    bytes_per_token,
    default_budget,
    read_full,
    run_cells_generic,
    run_cells_tl,
    run_chunked,
)
from interp.patching.inputs import (
    BoundInputs,
    FiniteGuard,
    MetricLike,
    NonFinite,
    PositionSpec,
    bind_inputs,
    bind_positions,
    check_budget,
)
from interp.patching.readout import Readout
from interp.patching.sweep import PatchResult, SweepConfig
from interp.progress import progress_bar
from interp.sites import HEAD_COMPONENTS, Site, SiteError
from interp.tasks.promptset import PromptSet

SWEEP_COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v")
_ROLES = ("receiver", "sender")


# ------------------------------------------------------------------------------------------------ groups
@dataclass(frozen=True, kw_only=True)
class PatchGroup:
    """One group of a circuit as CMAP patches it: heads (layer, head) and MLP layers, each with the position
    names where it is patched (None: every position)."""

    name: str
    heads: tuple[tuple[int, int, tuple[str, ...] | None], ...]
    mlps: tuple[tuple[int, tuple[str, ...] | None], ...]


def circuit_groups(circuit: Circuit) -> list[PatchGroup]:
    """The circuit's groups in order (a circuit without groups: one group "circuit" of all its nodes)."""
    if not isinstance(circuit, Circuit):
        raise TypeError(f"CMAP patches the groups of a Circuit; got {type(circuit).__name__}")
    named = circuit.groups or {"circuit": circuit.nodes}
    out = []
    for name, members in named.items():
        heads = tuple((*parse_head(m), circuit.kept_at(m)) for m in members if m.startswith("a"))
        mlps = tuple((int(m[1:]), circuit.kept_at(m)) for m in members if m.startswith("m"))
        if not heads and not mlps:
            raise ValueError(f"circuit group {name!r} has no head or MLP to patch")
        out.append(PatchGroup(name=name, heads=heads, mlps=mlps))
    return out


def _node_mask(prompts: PromptSet, specs: tuple[str, ...] | None, relation: str = "eq") -> Tensor:
    """[B, T] where a node is patched: the OR over its positions (all positions if `specs` is None)."""
    B, T = prompts.clean.shape
    if specs is None:
        return _position_mask(None, B, T, relation)
    out = torch.zeros(B, T, dtype=torch.bool)
    for spec in specs:
        out |= _position_mask(prompts.position(spec), B, T, relation)
    return out


# ------------------------------------------------------------------------------------------------ engine
@dataclass(frozen=True, kw_only=True)
class MaskedWrite:
    """Write `source` [batch, pos, ...] into one site wherever `where` [spec, batch, pos(, head)] is True."""

    site: Site
    source: Tensor
    where: Tensor


def run_masked(
    model: HookedModel,
    tokens: Tensor,
    writes: Sequence[MaskedWrite],
    readout: Readout,
    *,
    n_specs: int,
    attention_mask: Tensor | None = None,
    budget: int | None = None,
) -> Float[Tensor, "spec batch"]:
    """Per-spec metric values: `n_specs` patched runs stacked along the batch, chunked to the memory budget."""
    B, T = tokens.shape
    budget = budget or default_budget(model.device)
    per_spec = B * T * bytes_per_token(model, T) + B * T * model.cfg.d_vocab * 4
    for w in writes:
        if w.where.shape[0] != n_specs or w.where.shape[1:3] != (B, T):
            raise ValueError(
                f"write at {w.site}: mask shape {tuple(w.where.shape)} is not [{n_specs}, {B}, {T}, ...]"
            )

    def chunk(sl: slice) -> Tensor:
        C = sl.stop - sl.start
        hooks = []
        for w in writes:

            def hook(act: Tensor, site: Site, w: MaskedWrite = w) -> Tensor:
                a = act.view(C, B, *act.shape[1:])  # [C, B, T, ...]
                m = w.where[sl].to(act.device)
                m = m.view(*m.shape, *([1] * (a.ndim - m.ndim)))  # broadcast over trailing dims
                return torch.where(m, w.source.to(act.dtype)[None], a).view(act.shape)

            hooks.append((w.site, hook))
        mask = attention_mask.repeat(C, 1) if attention_mask is not None else None
        logits = model.run_with_hooks(tokens.repeat(C, 1), hooks, attention_mask=mask)
        return read_full(readout, logits.view(C, B, T, -1))

    return torch.cat(run_chunked(n_specs, per_spec, budget, chunk))


def _position_mask(pos: Tensor | None, B: int, T: int, relation: str = "eq") -> Bool[Tensor, "batch pos"]:
    """[B, T] mask of positions equal to / before / after / up to each prompt's position (all if pos is None)."""
    if pos is None:
        return torch.ones(B, T, dtype=torch.bool)
    t = torch.arange(T)[None]
    p = pos.cpu()[:, None]
    return {"eq": t == p, "lt": t < p, "gt": t > p, "le": t <= p}[relation]


def _bind(
    metric: MetricLike, prompts: Any, model: HookedModel, caller: str, budget: Any = None
) -> BoundInputs:
    """The checked prompts and metric of a CMAP entry point (`interp.patching.inputs.bind_inputs`)."""
    if not isinstance(prompts, PromptSet):
        raise TypeError(
            f"{caller} needs a PromptSet (group positions are named); got {type(prompts).__name__}"
        )
    check_budget(budget, caller, "budget")
    return bind_inputs(model, prompts, metric=metric, caller=caller)


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True, kw_only=True)
class CMAPResult:
    """Metric values of the receiver with each group patched from the sender.

    `values`: [group, batch]; `receiver` / `sender`: the unpatched models' values [batch].
    """

    kind: str
    groups: tuple[str, ...]
    values: Float[Tensor, "group batch"]
    receiver: Float[Tensor, " batch"]
    sender: Float[Tensor, " batch"]
    metric: str
    models: dict[str, str] = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        """Mean metric per group."""
        return {g: float(v) for g, v in zip(self.groups, self.values.mean(-1), strict=True)}

    def to_frame(self):
        """One row per group: mean value, the unpatched receiver and sender means, and the fraction of the
        receiver-to-sender gap the patch closes."""
        import pandas as pd

        r, s = float(self.receiver.mean()), float(self.sender.mean())
        gap = s - r
        rows = [
            {
                "group": g,
                "value": v,
                "receiver": r,
                "sender": s,
                "gap_closed": (v - r) / gap if gap != 0 else float("nan"),
            }
            for g, v in self.scores().items()
        ]
        return pd.DataFrame(rows)

    def figure(self, *, title: str | None = None):
        """A bar chart of the patched receiver per group, with the unpatched receiver and sender as bars too."""
        from interp.plotting import bar

        names = [
            f"{self.models.get('receiver', 'receiver')} (unpatched)",
            *self.groups,
            f"{self.models.get('sender', 'sender')} (unpatched)",
        ]
        vals = [float(self.receiver.mean()), *self.scores().values(), float(self.sender.mean())]
        return bar(
            vals,
            labels=names,
            title=title or f"{self.kind.capitalize()} CMAP: {self.metric}",
            x_title="patched group",
            y_title=self.metric,
        )


# ------------------------------------------------------------------------------------------------ CMAP
def _prepare(
    receiver: HookedModel,
    sender: HookedModel,
    prompts: Any,
    circuit: Circuit,
    metric: MetricLike,
    caller: str,
    budget: Any,
) -> tuple[PromptSet, list[PatchGroup], list[dict[str, Tensor]], Readout]:
    """Check the pair, prompts, metric and groups before any forward pass; per group, the [B, T] patch mask of
    each of its nodes (keyed by node name), and the bound readout."""
    check_pair(receiver, sender, _ROLES)
    inputs = _bind(metric, prompts, receiver, caller, budget)
    groups = circuit_groups(circuit)
    masks = []
    for g in groups:
        m: dict[str, Tensor] = {}
        for layer, h, specs in g.heads:
            receiver.check_site(Site("z", layer, head=h))
            m[f"a{layer}.{h}"] = _node_mask(prompts, specs)
        for layer, specs in g.mlps:
            receiver.check_site(Site("mlp_out", layer))
            m[f"m{layer}"] = _node_mask(prompts, specs)
        masks.append(m)
    assert inputs.readout is not None  # bound with a metric
    return prompts.to(receiver.device), groups, masks, inputs.readout


@torch.no_grad()
def cmap_output(
    receiver: HookedModel,
    sender: HookedModel,
    prompts: PromptSet,
    circuit: Circuit,
    *,
    metric: MetricLike,
    include_union: bool = True,
    budget: int | None = None,
    nonfinite: NonFinite = "raise",
) -> CMAPResult:
    """Output CMAP: each group's head outputs (and MLP outputs) where the circuit keeps them, taken from
    `sender`'s run on the same prompts, written into `receiver`'s run (Prakash et al. `cmap_out`). One stacked
    spec per group, plus every group at once ("all groups") when `include_union` and there are several."""
    finite = FiniteGuard("cmap_output", nonfinite)
    prompts, groups, masks, readout = _prepare(
        receiver, sender, prompts, circuit, metric, "cmap_output", budget
    )
    tokens, mask = prompts.clean, prompts.attention_mask
    B, T = tokens.shape
    specs = [[i] for i in range(len(groups))]
    names = [g.name for g in groups]
    if include_union and len(groups) > 1:
        specs.append(list(range(len(groups))))
        names.append("all groups")
    H = receiver.cfg.n_heads
    z_layers = sorted({layer for g in groups for layer, _, _ in g.heads})
    mlp_layers = sorted({layer for g in groups for layer, _ in g.mlps})
    sites = [Site("z", layer) for layer in z_layers] + [Site("mlp_out", layer) for layer in mlp_layers]
    sender_logits, cache = sender.run_with_cache(tokens, sites, attention_mask=mask)
    writes = []
    for layer in z_layers:
        where = torch.zeros(len(specs), B, T, H, dtype=torch.bool)
        for c, members in enumerate(specs):
            for i in members:
                for gl, h, _ in groups[i].heads:
                    if gl == layer:
                        where[c, :, :, h] |= masks[i][f"a{gl}.{h}"]
        writes.append(
            MaskedWrite(site=Site("z", layer), source=cache[Site("z", layer).hook_name], where=where)
        )
    for layer in mlp_layers:
        where = torch.zeros(len(specs), B, T, dtype=torch.bool)
        for c, members in enumerate(specs):
            for i in members:
                if f"m{layer}" in masks[i]:
                    where[c] |= masks[i][f"m{layer}"]
        site = Site("mlp_out", layer)
        writes.append(MaskedWrite(site=site, source=cache[site.hook_name], where=where))
    values = run_masked(
        receiver, tokens, writes, readout, n_specs=len(specs), attention_mask=mask, budget=budget
    )
    finite(values, lambda i: f"group {names[i]!r}")
    finite.done()
    return CMAPResult(
        kind="output",
        groups=tuple(names),
        values=values.cpu(),
        receiver=readout.from_logits(receiver(tokens, attention_mask=mask)).cpu(),
        sender=readout.from_logits(sender_logits).cpu(),
        metric=readout.name,
        models={"receiver": receiver.name, "sender": sender.name},
    )


def _group_position(g: PatchGroup, prompts: PromptSet) -> Tensor:
    """The one position [batch] of a group's heads (input CMAP needs it); raise otherwise."""
    if g.mlps:
        raise ValueError(f"input CMAP patches head inputs only; group {g.name!r} has MLPs")
    specs = {specs for _, _, specs in g.heads}
    if len(specs) != 1 or None in specs or len(next(iter(specs)) or ()) != 1:
        raise ValueError(
            f"input CMAP needs one position per group; the heads of group {g.name!r} are kept at "
            f"{sorted('every position' if s is None else '+'.join(s) for s in specs)}"
        )
    return prompts.position(next(iter(specs))[0])  # type: ignore[index]


@torch.no_grad()
def cmap_input(
    receiver: HookedModel,
    sender: HookedModel,
    prompts: PromptSet,
    circuit: Circuit,
    *,
    metric: MetricLike,
    patch: Sequence[str] = ("q", "k", "v"),
    kv_through_position: bool = False,
    budget: int | None = None,
    nonfinite: NonFinite = "raise",
) -> CMAPResult:
    """Input CMAP: each group's heads get the sender's q at the group's position and/or its k/v at the positions
    before it (Prakash et al. `cmap_in`; `kv_through_position=True` includes the position itself, so the heads
    see all of the sender's keys and values); every head's output before the position, and the group's heads'
    outputs after it, are frozen at the receiver's values. Under grouped-query attention the k/v patch is of the
    shared key/value head (its other query heads see it too)."""
    patch = tuple(patch)
    if not patch or any(p not in ("q", "k", "v") for p in patch):
        raise ValueError(f"patch must be a non-empty subset of ('q', 'k', 'v'); got {patch}")
    finite = FiniteGuard("cmap_input", nonfinite)
    prompts, groups, _, readout = _prepare(receiver, sender, prompts, circuit, metric, "cmap_input", budget)
    positions = [_group_position(g, prompts) for g in groups]
    tokens, mask = prompts.clean, prompts.attention_mask
    B, T = tokens.shape
    cfg = receiver.cfg
    H, KV, L = cfg.n_heads, cfg.n_kv_heads, cfg.n_layers
    layers = sorted({layer for g in groups for layer, _, _ in g.heads})
    src_sites = [Site(c, layer) for layer in layers for c in patch]
    sender_logits, src = sender.run_with_cache(tokens, src_sites, attention_mask=mask)
    receiver_logits, own = receiver.run_with_cache(
        tokens, [Site("z", layer) for layer in range(L)], attention_mask=mask
    )
    n = len(groups)
    kv_rel = "le" if kv_through_position else "lt"
    writes = []
    for layer in layers:
        for comp in patch:
            heads = H if comp == "q" else KV
            where = torch.zeros(n, B, T, heads, dtype=torch.bool)
            for c, g in enumerate(groups):
                pm = _position_mask(positions[c], B, T, "eq" if comp == "q" else kv_rel)
                for gl, h, _ in g.heads:
                    if gl == layer:
                        where[c, :, :, h if comp == "q" else h * KV // H] |= pm
            site = Site(comp, layer)
            writes.append(MaskedWrite(site=site, source=src[site.hook_name], where=where))
    for layer in range(L):  # freeze head outputs: all heads before the position, the group's heads after it
        where = torch.zeros(n, B, T, H, dtype=torch.bool)
        for c, g in enumerate(groups):
            where[c] |= _position_mask(positions[c], B, T, "lt")[..., None]
            after = _position_mask(positions[c], B, T, "gt")
            for gl, h, _ in g.heads:
                if gl == layer:
                    where[c, :, :, h] |= after
        site = Site("z", layer)
        writes.append(MaskedWrite(site=site, source=own[site.hook_name], where=where))
    values = run_masked(receiver, tokens, writes, readout, n_specs=n, attention_mask=mask, budget=budget)
    finite(values, lambda i: f"group {groups[i].name!r}")
    finite.done()
    return CMAPResult(
        kind="input",
        groups=tuple(g.name for g in groups),
        values=values.cpu(),
        receiver=readout.from_logits(receiver_logits).cpu(),
        sender=readout.from_logits(sender_logits).cpu(),
        metric=readout.name,
        models={"receiver": receiver.name, "sender": sender.name},
    )


@torch.no_grad()
def cmap_sweep(
    receiver: HookedModel,
    sender: HookedModel,
    prompts: PromptSet,
    *,
    component: str,
    metric: MetricLike,
    per_head: bool | None = None,
    positions: PositionSpec = "each",
    engine: str = "auto",
    budget: int | None = None,
    nonfinite: NonFinite = "raise",
    progress: bool | None = None,
) -> PatchResult:
    """Component CMAP: patch one site of `sender` into `receiver` per cell (every layer x position [x head]).

    Same cells, axes and engines as `interp.patching.patch_sweep` (TL fast path with prefix reuse), with the
    other model's activations on the same prompts as the source. `positions`: "each", "all" (whole sequence at
    once), an int or a list of token indices, or named positions of the PromptSet (one per prompt).
    """
    check_pair(receiver, sender, _ROLES)
    finite = FiniteGuard("cmap_sweep", nonfinite)
    if component not in SWEEP_COMPONENTS:
        raise SiteError(f"unknown CMAP component {component!r}; valid: {', '.join(SWEEP_COMPONENTS)}")
    per_head = component in HEAD_COMPONENTS if per_head is None else per_head
    if per_head != (component in HEAD_COMPONENTS):
        raise ValueError(f"per_head={per_head} does not fit component {component!r}")
    if engine not in ("auto", "tl", "generic"):
        raise ValueError(f"engine must be 'auto', 'tl' or 'generic'; got {engine!r}")
    receiver.check_site(Site(component, 0))
    inputs = _bind(metric, prompts, receiver, "cmap_sweep", budget)
    pos = bind_positions(positions, inputs, receiver)
    readout = inputs.readout
    assert readout is not None  # bound with a metric
    prompts = prompts.to(receiver.device)
    tokens, mask = prompts.clean, prompts.attention_mask
    B, T = tokens.shape
    L = receiver.cfg.n_layers
    n_heads = receiver.cfg.n_kv_heads if component in ("k", "v") else receiver.cfg.n_heads
    pos_list = pos.cells
    heads = list(range(n_heads)) if per_head else [None]
    cells = [Cell(layer, p, h) for layer in range(L) for p in pos_list for h in heads]
    sites = [Site(component, layer) for layer in range(L)]
    sender_logits, cache = sender.run_with_cache(tokens, sites, attention_mask=mask)
    sources = {i: cache[s.hook_name] for i, s in enumerate(sites)}
    with progress_bar(len(cells), f"cmap_sweep {component}", progress=progress) as bar:
        if engine == "tl" or (engine == "auto" and receiver.backend == "tl"):
            vals = run_cells_tl(
                receiver,  # type: ignore[arg-type]  # the TL backend's model
                tokens,
                cells,
                component,
                sources,
                readout,
                budget=budget,
                on_done=bar.update,
            )
        else:
            vals = run_cells_generic(
                receiver,
                tokens,
                cells,
                component,
                sources,
                readout,
                attention_mask=mask,
                budget=budget,
                on_done=bar.update,
            )
    finite(vals, lambda i: f"cell (layer {cells[i].layer}, pos {cells[i].pos}, head {cells[i].head})")
    finite.done()
    shape = (L, len(pos_list), n_heads) if per_head else (L, len(pos_list))
    axes: tuple[str, ...] = ("layer", "pos", "head") if per_head else ("layer", "pos")
    scores = vals.mean(-1).view(*shape).cpu()
    if pos.all:
        scores, axes = scores[:, 0], tuple(a for a in axes if a != "pos")
    labels = {
        "layer": [str(i) for i in range(L)],
        "head": [str(h) for h in range(n_heads)],
        "pos": ["all"] if pos.all else list(pos.labels or []),
    }
    base = {
        "clean": readout.from_logits(receiver(tokens, attention_mask=mask)).mean().item(),
        "corrupt": readout.from_logits(sender_logits).mean().item(),
    }
    cfg = SweepConfig(
        component=component,
        per_head=per_head,
        positions=pos.spec,
        direction="cmap",
        source=f"model:{sender.name}",
        mode="exact",
        metric=readout.name,
        backend=receiver.backend,
        seed=0,
    )
    return PatchResult(scores=scores, axes=axes, labels=labels, config=cfg, baseline=base)

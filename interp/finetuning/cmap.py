"""CMAP, cross-model activation patching, and circuit evaluation across models (Prakash, Rott Shaham, Haklay,
Belinkov, Bau, ICLR 2024, "Fine-Tuning Enhances Existing Mechanisms: A Case Study on Entity Tracking").

The same prompts run through a *receiver* and a *sender* model (a base model and its fine-tune, either way):

- output CMAP (`cmap_output`): the per-head outputs `z` of a head group, at the group's own token position, are
  replaced in the receiver's run by the sender's values (Prakash et al.'s `cmap_out`);
- input CMAP (`cmap_input`): the group's heads receive the sender's query at the group's position and/or its
  keys/values at the positions before it (optionally at the position too); every head's output at earlier
  positions, and the group's heads' outputs at later positions, stay frozen at the receiver's values, so the
  only change is inside the targeted heads at their position (`cmap_in`);
- component CMAP (`cmap_sweep`): one residual / attention-out / MLP-out site (or per-head site) at a time, every
  layer and position, run by the batched patching engines with the sender's activations as the source.

`evaluate_circuit` scores a circuit (head groups at their positions) inside any model of the pair with every
other head output mean-ablated (Prakash et al. `eval_circuit_performance`): the circuit of model A evaluated
inside model B. Patch specifications are stacked along the batch, many per forward pass, chunked to memory.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

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
    bind_row_position,
    check_budget,
)
from interp.patching.readout import Readout
from interp.patching.sweep import PatchResult, SweepConfig
from interp.progress import progress_bar
from interp.sites import HEAD_COMPONENTS, Site, SiteError
from interp.tasks.promptset import PromptSet

GROUP_COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
SWEEP_COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v")
_ROLES = ("receiver", "sender")


# ------------------------------------------------------------------------------------------------ groups
@dataclass(frozen=True, kw_only=True)
class HeadGroup:
    """Sites patched together at one token position (a circuit's head group, Prakash et al.).

    `heads`: (layer, head) pairs, patched at their output `z` (or q/k/v in input CMAP). `components`: optional
    whole-layer sites such as ("mlp_out", 3). `position`: a PromptSet position name ("END", "S2", ...), a token
    index, or "all" (every position).
    """

    name: str
    heads: tuple[tuple[int, int], ...] = ()
    components: tuple[tuple[str, int], ...] = ()
    position: str | int = "END"

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple((int(layer), int(h)) for layer, h in self.heads))
        object.__setattr__(self, "components", tuple((str(c), int(layer)) for c, layer in self.components))
        if not self.heads and not self.components:
            raise ValueError(f"head group {self.name!r} is empty: give heads and/or components")
        bad = [c for c, _ in self.components if c not in GROUP_COMPONENTS]
        if bad:
            raise SiteError(
                f"head group {self.name!r}: components {bad} are not whole-layer sites; valid: "
                f"{', '.join(GROUP_COMPONENTS)}"
            )

    def validate(self, model: HookedModel) -> HeadGroup:
        """Raise if a layer, head or component does not exist in `model`."""
        for layer, h in self.heads:
            model.check_site(Site("z", layer, head=h))
        for comp, layer in self.components:
            model.check_site(Site(comp, layer))
        return self

    @property
    def size(self) -> int:
        return len(self.heads)


def resolve_position(position: str | int, prompts: PromptSet) -> Tensor | None:
    """Per-prompt token index [batch] of a group position (None for "all"; see `PromptSet.position`)."""
    return None if position == "all" else prompts.position(position)


def random_circuit(groups: Sequence[HeadGroup], *, n_layers: int, n_heads: int, seed: int) -> list[HeadGroup]:
    """Groups with the same sizes and positions but randomly drawn heads (Prakash et al.'s random baseline)."""
    rng = random.Random(seed)
    every = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    return [
        HeadGroup(name=g.name, heads=tuple(sorted(rng.sample(every, g.size))), position=g.position)
        for g in groups
    ]


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


def _group_positions(groups: Sequence[HeadGroup], inputs: BoundInputs) -> list[Tensor | None]:
    """Each group's per-prompt position (None for "all"), checked like every analysis's positions."""
    return [
        None
        if g.position == "all"
        else bind_row_position(g.position, inputs, name=f"group {g.name!r} position")
        for g in groups
    ]


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


@dataclass(frozen=True, kw_only=True)
class CircuitEvaluation:
    """A model's metric with only each circuit's heads kept (everything else mean-ablated), and faithfulness."""

    circuits: tuple[str, ...]
    values: Float[Tensor, "circuit batch"]
    model_value: Float[Tensor, " batch"]
    metric: str
    model: str

    def scores(self) -> dict[str, float]:
        return {c: float(v) for c, v in zip(self.circuits, self.values.mean(-1), strict=True)}

    def faithfulness(self) -> dict[str, float]:
        """metric(circuit) / metric(model) (Prakash et al.: accuracy ratio)."""
        full = float(self.model_value.mean())
        return {c: v / full if full != 0 else float("nan") for c, v in self.scores().items()}

    def to_frame(self):
        import pandas as pd

        faith = self.faithfulness()
        return pd.DataFrame(
            [
                {
                    "circuit": c,
                    "value": v,
                    "model_value": float(self.model_value.mean()),
                    "faithfulness": faith[c],
                }
                for c, v in self.scores().items()
            ]
        )


# ------------------------------------------------------------------------------------------------ CMAP
def _prepare(
    receiver: HookedModel,
    sender: HookedModel,
    prompts: Any,
    groups: Sequence[HeadGroup],
    metric: MetricLike,
    caller: str,
    budget: Any,
) -> tuple[PromptSet, list[HeadGroup], list[Tensor | None], Readout]:
    check_pair(receiver, sender, _ROLES)
    inputs = _bind(metric, prompts, receiver, caller, budget)
    groups = list(groups)
    if not groups:
        raise ValueError("give at least one HeadGroup")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"head group names must be unique; got {names}")
    for g in groups:
        g.validate(receiver)
    positions = _group_positions(groups, inputs)
    return prompts.to(receiver.device), groups, positions, inputs.readout


@torch.no_grad()
def cmap_output(
    receiver: HookedModel,
    sender: HookedModel,
    prompts: PromptSet,
    groups: Sequence[HeadGroup],
    *,
    metric: MetricLike,
    include_union: bool = True,
    budget: int | None = None,
    nonfinite: NonFinite = "raise",
) -> CMAPResult:
    """Output CMAP: each group's head outputs (and components) at its position, taken from `sender`'s run on the
    same prompts, written into `receiver`'s run (Prakash et al. `cmap_out`). One stacked spec per group, plus
    every group at once ("all groups") when `include_union` and there are several groups."""
    finite = FiniteGuard("cmap_output", nonfinite)
    prompts, groups, positions, readout = _prepare(
        receiver, sender, prompts, groups, metric, "cmap_output", budget
    )
    tokens, mask = prompts.clean, prompts.attention_mask
    B, T = tokens.shape
    specs = [[i] for i in range(len(groups))]
    names = [g.name for g in groups]
    if include_union and len(groups) > 1:
        specs.append(list(range(len(groups))))
        names.append("all groups")
    H = receiver.cfg.n_heads
    z_layers = sorted({layer for g in groups for layer, _ in g.heads})
    comp_sites = sorted({(c, layer) for g in groups for c, layer in g.components})
    sites = [Site("z", layer) for layer in z_layers] + [Site(c, layer) for c, layer in comp_sites]
    sender_logits, cache = sender.run_with_cache(tokens, sites, attention_mask=mask)
    writes = []
    for layer in z_layers:
        where = torch.zeros(len(specs), B, T, H, dtype=torch.bool)
        for c, members in enumerate(specs):
            for i in members:
                pm = _position_mask(positions[i], B, T)
                for gl, h in groups[i].heads:
                    if gl == layer:
                        where[c, :, :, h] |= pm
        writes.append(
            MaskedWrite(site=Site("z", layer), source=cache[Site("z", layer).hook_name], where=where)
        )
    for comp, layer in comp_sites:
        where = torch.zeros(len(specs), B, T, dtype=torch.bool)
        for c, members in enumerate(specs):
            for i in members:
                if (comp, layer) in groups[i].components:
                    where[c] |= _position_mask(positions[i], B, T)
        site = Site(comp, layer)
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


@torch.no_grad()
def cmap_input(
    receiver: HookedModel,
    sender: HookedModel,
    prompts: PromptSet,
    groups: Sequence[HeadGroup],
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
    prompts, groups, positions, readout = _prepare(
        receiver, sender, prompts, groups, metric, "cmap_input", budget
    )
    for g, p in zip(groups, positions, strict=True):
        if g.components:
            raise ValueError(f"input CMAP patches head inputs only; group {g.name!r} has components")
        if p is None:
            raise ValueError(f"input CMAP needs one position per group; group {g.name!r} has position 'all'")
    tokens, mask = prompts.clean, prompts.attention_mask
    B, T = tokens.shape
    cfg = receiver.cfg
    H, KV, L = cfg.n_heads, cfg.n_kv_heads, cfg.n_layers
    layers = sorted({layer for g in groups for layer, _ in g.heads})
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
                for gl, h in g.heads:
                    if gl == layer:
                        where[c, :, :, h if comp == "q" else h * KV // H] |= pm
            site = Site(comp, layer)
            writes.append(MaskedWrite(site=site, source=src[site.hook_name], where=where))
    for layer in range(L):  # freeze head outputs: all heads before the position, the group's heads after it
        where = torch.zeros(n, B, T, H, dtype=torch.bool)
        for c, g in enumerate(groups):
            where[c] |= _position_mask(positions[c], B, T, "lt")[..., None]
            after = _position_mask(positions[c], B, T, "gt")
            for gl, h in g.heads:
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
                receiver, tokens, cells, component, sources, readout, budget=budget, on_done=bar.update
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
    axes = ("layer", "pos", "head") if per_head else ("layer", "pos")
    scores = vals.mean(-1).view(*shape).cpu()
    if pos.all:
        scores, axes = scores[:, 0], tuple(a for a in axes if a != "pos")
    labels = {
        "layer": [str(i) for i in range(L)],
        "head": [str(h) for h in range(n_heads)],
        "pos": ["all"] if pos.all else pos.labels,
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


# ------------------------------------------------------------------------------------------------ circuits
def mean_head_outputs(model: HookedModel, reference: PromptSet, width: int) -> dict[int, Tensor]:
    """Per layer, the mean head output z at each position over the reference prompts' real tokens:
    [width, head, d_head] (Prakash et al. take the mean per token position)."""
    ref = reference.to(model.device)
    if ref.clean.shape[1] < width:
        raise ValueError(
            f"the reference prompts have {ref.clean.shape[1]} positions, fewer than the evaluated "
            f"prompts' {width}: use reference prompts at least as long"
        )
    L = model.cfg.n_layers
    _, cache = model.run_with_cache(
        ref.clean, [Site("z", layer) for layer in range(L)], attention_mask=ref.attention_mask
    )
    m = ref.attention_mask[:, :width].float()  # [R, width]
    count = m.sum(0).clamp_min(1.0)[:, None, None]
    if bool((m.sum(0) == 0).any()):
        raise ValueError("some positions have no real token in any reference prompt; use longer references")
    out = {}
    for layer in range(L):
        z = cache[Site("z", layer).hook_name][:, :width].float()  # [R, width, head, d_head]
        out[layer] = (z * m[..., None, None]).sum(0) / count
    return out


@torch.no_grad()
def evaluate_circuit(
    model: HookedModel,
    prompts: PromptSet,
    circuits: Mapping[str, Sequence[HeadGroup]] | Sequence[HeadGroup],
    *,
    metric: MetricLike,
    reference: PromptSet,
    budget: int | None = None,
) -> CircuitEvaluation:
    """`model`'s metric with only each circuit's heads kept at their groups' positions and every other head
    output (all positions) mean-ablated over `reference` in `model` itself (Prakash et al. §B).

    The circuit is only head indices: a circuit found in model A is evaluated inside model B by passing B.
    """
    inputs = _bind(metric, prompts, model, "evaluate_circuit", budget)
    if not isinstance(circuits, Mapping):
        circuits = {"circuit": list(circuits)}
    if not circuits:
        raise ValueError("give at least one circuit")
    for groups in circuits.values():
        for g in groups:
            g.validate(model)
            if g.components:
                raise ValueError(f"circuit evaluation keeps heads only; group {g.name!r} has components")
    positions = {name: _group_positions(groups, inputs) for name, groups in circuits.items()}
    prompts = prompts.to(model.device)
    tokens, mask = prompts.clean, prompts.attention_mask
    B, T = tokens.shape
    cfg = model.cfg
    readout = inputs.readout
    means = mean_head_outputs(model, reference, T)
    names = list(circuits)
    writes = []
    for layer in range(cfg.n_layers):
        where = torch.ones(len(names), B, T, cfg.n_heads, dtype=torch.bool)  # ablate all ...
        for c, name in enumerate(names):
            for g, pos in zip(circuits[name], positions[name], strict=True):
                keep = _position_mask(pos, B, T)
                for gl, h in g.heads:
                    if gl == layer:
                        where[c, :, :, h] &= ~keep  # ... except the circuit's heads at their positions
        src = means[layer][None].expand(B, -1, -1, -1)  # [B, T, head, d_head]
        writes.append(MaskedWrite(site=Site("z", layer), source=src, where=where))
    values = run_masked(
        model, tokens, writes, readout, n_specs=len(names), attention_mask=mask, budget=budget
    )
    full = readout.from_logits(model(tokens, attention_mask=mask))
    return CircuitEvaluation(
        circuits=tuple(names),
        values=values.cpu(),
        model_value=full.cpu(),
        metric=readout.name,
        model=model.name,
    )

"""Circuit evaluation: run a model with only the circuit, the rest ablated (Wang et al. 2022, App. E; Prakash et
al. 2024, `eval_circuit_performance`; Conmy et al. 2023 and MIB, Mueller et al. 2025, for edges).

*Node level*: every head outside the circuit has its output `z` replaced by the ablation value; circuit heads are
kept only at their positions (`Circuit.positions`: Wang's (head, position) classes, Prakash's group positions)
and ablated elsewhere; MLPs are kept unless `ablate_mlps`. *Edge level*: each destination's input becomes
Σ over its circuit edges of the senders' current outputs plus Σ over the other edges of the senders' ablated
outputs. Ablation values are the paired corrupt run ("resample") or per-position means over the corrupt prompts
("mean", per template group with `mean_by`, as Wang et al.'s p_ABC means).

faithfulness = M(circuit) / M(model); recovery = (M(circuit) − M(empty)) / (M(model) − M(empty)), MIB's
normalised faithfulness; a curve of recovery over circuit sizes gives MIB's CPR (area under it) and CMD (area of
|1 − recovery|), by the trapezoid rule over the fraction of edges kept.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from interp.circuits.eap import (
    EdgeScores,
    dest_hook_names,
    dest_indices,
    graph_mode,
    metric_values,
    prepare,
    run_to_resid,
    source_hooks,
    source_outputs,
)
from interp.circuits.graph import Circuit, Graph, head_name, node_of, parse_head
from interp.models.base import HookedModel
from interp.patching.engine import bytes_per_token, default_budget, read_full
from interp.patching.inputs import MetricLike
from interp.sites import Site
from interp.tasks.promptset import PromptSet

LEVELS = ("node", "edge")
ABLATIONS = ("mean", "resample")
# MIB's circuit sizes, as fractions of all edges (plus the empty and the full circuit)
MIB_FRACTIONS: tuple[float, ...] = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How the complement of a circuit is ablated."""

    level: str = "node"  # node | edge
    ablation: str = (
        "mean"  # mean (per position over the corrupt prompts) | resample (the paired corrupt prompt)
    )
    mean_by: str | None = (
        "template"  # metadata key: means per group (Wang's per-template means); None: one mean
    )
    use_positions: bool = True  # node level: keep circuit heads only at their positions
    ablate_mlps: bool = False  # node level: ablate MLPs outside the circuit too (Wang et al. keep every MLP)
    max_circuits_per_pass: int | None = None  # None: as many as fit the device's memory budget

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")


@dataclass(frozen=True, kw_only=True)
class CircuitEval:
    """Metric of the model, the circuit and the empty circuit (batch means), and the ratios between them."""

    model: float
    circuit: float
    empty: float
    n_heads: int
    n_edges: int
    level: str
    ablation: str

    @property
    def faithfulness(self) -> float:
        return self.circuit / self.model if self.model != 0 else float("nan")

    @property
    def recovery(self) -> float:
        gap = self.model - self.empty
        return (self.circuit - self.empty) / gap if gap != 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faithfulness": self.faithfulness, "recovery": self.recovery}


# --------------------------------------------------------------------------------------------- ablation values
def _group_mean(x: Tensor, groups: list[Any] | None, mask: Tensor | None = None) -> Tensor:
    """Per-position mean over the batch (dim 1 of [n, batch, pos, ...]), per group when `groups` are given.

    With a padded attention `mask` [batch, pos], each position's mean is over the prompts with a real token
    there (Prakash et al. take the mean per token position)."""
    if mask is not None and bool(mask.all()):
        mask = None
    if groups is None and mask is None:
        return x.mean(1, keepdim=True).expand_as(x)
    rows_of = (
        [torch.arange(x.shape[1], device=x.device)]
        if groups is None
        else [torch.tensor([i for i, v in enumerate(groups) if v == g], device=x.device) for g in set(groups)]
    )
    out = torch.empty_like(x)
    for rows in rows_of:
        if mask is None:
            out[:, rows] = x[:, rows].mean(1, keepdim=True)
        else:
            m = mask[rows].to(x.device, x.dtype)  # [rows, pos]
            m = m.view(1, *m.shape, *([1] * (x.ndim - 3)))
            count = m.sum(1, keepdim=True).clamp_min(1.0)
            out[:, rows] = (x[:, rows] * m).sum(1, keepdim=True) / count
    return out


def _groups(prompts: Any, config: EvalConfig) -> list[Any] | None:
    if config.ablation != "mean" or config.mean_by is None:
        return None
    meta = getattr(prompts, "metadata", None) or []
    if not meta or any(config.mean_by not in m for m in meta):
        return None  # no such metadata: one mean over all prompts
    return [m[config.mean_by] for m in meta]


def _as_prompts(prompts: Any) -> Any:
    if not (hasattr(prompts, "clean") and hasattr(prompts, "corrupt")):
        raise TypeError("prompts must be a PromptSet (clean prompts, corrupt prompts, positions)")
    return prompts


# --------------------------------------------------------------------------------------------- node level
def _node_keep(circuit: Circuit, prompts: Any, L: int, H: int, use_positions: bool) -> Tensor:
    """[L, B, T, H] bool: where each head's output is kept."""

    B, T = prompts.clean.shape
    keep = torch.zeros(L, B, T, H, dtype=torch.bool)
    b = torch.arange(B)
    for layer, h in circuit.heads:
        if layer >= L or h >= H:
            raise ValueError(
                f"circuit head a{layer}.{h} does not exist in a model with {L} layers, {H} heads"
            )
        specs = circuit.kept_at(head_name(layer, h)) if use_positions else None
        if specs is None:
            keep[layer, :, :, h] = True
        else:
            for spec in specs:
                keep[layer, b, prompts.position(spec).cpu(), h] = True
    return keep


def _node_values(
    model: HookedModel,
    prompts: Any,
    readout: Any,
    keeps: Tensor,
    mlp_keeps: Tensor | None,
    z_abl: dict[int, Tensor],
    mlp_abl: dict[int, Tensor],
) -> Tensor:
    """[C, B] metric values for C node masks (keeps [C, L, B, T, H], mlp_keeps [C, L]) stacked on the batch."""
    C, L = keeps.shape[:2]
    B = prompts.clean.shape[0]
    dev = model.device
    keeps = keeps.to(dev)

    def z_hook(layer: int):
        def fn(act: Tensor, site: Site) -> Tensor:
            k = keeps[:, layer].reshape(C * B, *keeps.shape[3:])[..., None]  # (C*B, T, H, 1)
            return torch.where(k, act, z_abl[layer].repeat(C, 1, 1, 1))

        return fn

    def mlp_hook(layer: int):
        def fn(act: Tensor, site: Site) -> Tensor:
            assert mlp_keeps is not None
            k = mlp_keeps[:, layer].to(dev).repeat_interleave(B)[:, None, None]  # (C*B, 1, 1)
            return torch.where(k, act, mlp_abl[layer].repeat(C, 1, 1))

        return fn

    hooks = [(Site("z", layer), z_hook(layer)) for layer in range(L)]
    if mlp_keeps is not None:
        hooks += [(Site("mlp_out", layer), mlp_hook(layer)) for layer in range(L)]
    tokens = prompts.clean.to(dev).repeat(C, 1)
    mask = prompts.attention_mask.to(dev).repeat(C, 1)
    logits = model.run_with_hooks(tokens, hooks, attention_mask=mask)
    return read_full(readout, logits.view(C, B, *logits.shape[1:]))


def _node_ablation(
    model: HookedModel, prompts: Any, config: EvalConfig
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    L = model.cfg.n_layers
    sites = [Site("z", layer) for layer in range(L)]
    if config.ablate_mlps:
        sites += [Site("mlp_out", layer) for layer in range(L)]
    dev = model.device
    _, cache = model.run_with_cache(
        prompts.corrupt.to(dev), sites, attention_mask=prompts.attention_mask.to(dev)
    )
    groups = _groups(prompts, config)

    def ablated(x: Tensor) -> Tensor:
        return x if config.ablation == "resample" else _group_mean(x[None], groups, prompts.attention_mask)[0]

    z = {layer: ablated(cache[f"blocks.{layer}.attn.hook_z"]) for layer in range(L)}
    mlp = (
        {layer: ablated(cache[f"blocks.{layer}.hook_mlp_out"]) for layer in range(L)}
        if config.ablate_mlps
        else {}
    )
    return z, mlp


# --------------------------------------------------------------------------------------------- edge level
def circuit_edge_mask(graph: Graph, circuit: Circuit, *, keep_mlps: bool = True) -> Tensor:
    """[source, dest] bool: the circuit's edges, or for a node-only circuit every edge among its nodes, the
    embedding, the logits (and every MLP when `keep_mlps`)."""
    if circuit.edges:
        return graph.mask(list(circuit.edges))
    nodes = {*circuit.nodes, "embed", "logits"}
    if keep_mlps:
        nodes |= {f"m{layer}" for layer in range(graph.n_layers)} if graph.has_mlp else set()
    src_ok = torch.tensor([s in nodes for s in graph.sources])
    dst_ok = torch.tensor([node_of(d) in nodes for d in graph.destinations])
    return graph.valid & src_ok[:, None] & dst_ok[None, :]


def _edge_values(
    model: HookedModel,
    graph: Graph,
    tokens: Tensor,
    mask: Tensor | None,
    readout: Any,
    keeps: Tensor,
    abl: Tensor,
) -> Tensor:
    """[C, B] metric values with only the edges of each keep mask ([C, S, D] bool) left un-ablated."""
    C = keeps.shape[0]
    S = len(graph.sources)
    B, T = tokens.shape
    dev = tokens.device
    drop = (graph.valid[None] & ~keeps).to(dev, abl.dtype)  # (C, S, D)
    cur = torch.empty(S, C * B, T, abl.shape[-1], device=dev, dtype=abl.dtype)

    def write(sl: slice, x: Tensor) -> None:
        cur[sl] = x

    def dest_hook(layer: int | None, kind: str):
        up, cols = graph.n_upstream(layer, kind), dest_indices(graph, layer, kind)

        def fn(act: Tensor, hook: Any) -> Tensor:
            diff = cur[:up].view(up, C, B, T, -1) - abl[:up, None]  # (up, C, B, T, d)
            corr = torch.einsum("cse,scbtd->cbted", drop[:, :up, cols], diff).reshape(
                C * B, T, -1, diff.shape[-1]
            )
            return act - (corr if act.ndim == 4 else corr[:, :, 0])

        return fn

    hooks = source_hooks(model, graph, write)
    hooks += [(name, dest_hook(layer, kind)) for name, layer, kind in dest_hook_names(graph)]
    resid = run_to_resid(model, tokens.repeat(C, 1), hooks, None if mask is None else mask.repeat(C, 1))
    return metric_values(model, readout, resid, C)


def _edge_ablation(
    model: HookedModel, graph: Graph, prompts: Any, corrupt_t: Tensor, mask: Tensor | None, config: EvalConfig
) -> Tensor:
    src, _ = source_outputs(model, graph, corrupt_t, mask)
    return src if config.ablation == "resample" else _group_mean(src, _groups(prompts, config), mask)


def _circuits_per_pass(model: HookedModel, B: int, T: int, *, edge: bool) -> int:
    """How many circuits to stack on the batch: a forward per circuit, and at edge level the current and
    ablated source outputs ([source, batch, pos, d_model], a few copies) plus one layer's split q/k/v inputs."""
    c = model.cfg
    per = B * T * bytes_per_token(model, T)
    if edge:
        n_sources = 1 + c.n_layers * (c.n_heads + 1)
        per += 4 * B * T * (3 * n_sources * c.d_model + 8 * c.n_heads * c.d_model)
    return max(1, min(64, default_budget(model.device) // per))


# --------------------------------------------------------------------------------------------- public API
def circuit_values(
    model: HookedModel,
    circuits: Sequence[Circuit | Tensor],
    *,
    prompts: PromptSet,
    metric: MetricLike,
    config: EvalConfig = EvalConfig(),
) -> Tensor:
    """[n_circuits, batch] metric values of the model running each circuit alone (edge level: a circuit may
    also be a [source, dest] bool mask)."""
    prompts = _as_prompts(prompts)
    clean_t, corrupt_t, mask, readout, bound = prepare(model, prompts, None, metric, caller="circuit_values")
    prompts = bound if bound is not None else prompts
    out: list[Tensor] = []
    n = config.max_circuits_per_pass or _circuits_per_pass(model, *clean_t.shape, edge=config.level == "edge")
    with torch.no_grad():
        if config.level == "node":
            z_abl, mlp_abl = _node_ablation(model, prompts, config)
            L, H = model.cfg.n_layers, model.cfg.n_heads
            for i in range(0, len(circuits), n):
                chunk = [c for c in circuits[i : i + n] if isinstance(c, Circuit)]
                if len(chunk) != len(circuits[i : i + n]):
                    raise TypeError("node-level evaluation takes Circuits; edge masks need level='edge'")
                keeps = torch.stack([_node_keep(c, prompts, L, H, config.use_positions) for c in chunk])
                mlp_keeps = None
                if config.ablate_mlps:
                    mlp_keeps = torch.tensor([[layer in c.mlps for layer in range(L)] for c in chunk])
                out.append(_node_values(model, prompts, readout, keeps, mlp_keeps, z_abl, mlp_abl))
        else:
            with graph_mode(model) as graph:
                abl = _edge_ablation(model, graph, prompts, corrupt_t, mask, config)
                masks = [c if isinstance(c, Tensor) else circuit_edge_mask(graph, c) for c in circuits]
                for i in range(0, len(masks), n):
                    keeps = torch.stack(masks[i : i + n])
                    out.append(_edge_values(model, graph, clean_t, mask, readout, keeps, abl))
    return torch.cat(out).cpu()


def evaluate_circuit(
    model: HookedModel,
    circuit: Circuit,
    *,
    prompts: PromptSet,
    metric: MetricLike,
    config: EvalConfig = EvalConfig(),
) -> CircuitEval:
    """The model's, the circuit's and the empty circuit's metric (batch means) under `config`'s ablation."""
    if config.level == "edge":
        valid = Graph.from_model(model).valid
        runs: list[Circuit | Tensor] = [circuit, torch.zeros_like(valid), valid.clone()]
    else:
        runs = [circuit, Circuit()]
    vals = circuit_values(model, runs, prompts=prompts, metric=metric, config=config).mean(-1)
    if config.level == "node":  # the model itself: no hook at all
        clean_t, _, mask, readout, _ = prepare(model, prompts, None, metric, caller="evaluate_circuit")
        with torch.no_grad():
            model_value = readout.from_logits(model(clean_t, attention_mask=mask)).mean().item()
    else:
        model_value = vals[2].item()
    return CircuitEval(
        model=model_value,
        circuit=vals[0].item(),
        empty=vals[1].item(),
        n_heads=len(circuit.heads),
        n_edges=len(circuit.edges),
        level=config.level,
        ablation=config.ablation,
    )


def minimality(
    model: HookedModel,
    circuit: Circuit,
    *,
    prompts: PromptSet,
    metric: MetricLike,
    config: EvalConfig = EvalConfig(),
) -> dict[str, float]:
    """Per circuit head: (M(C) − M(C without it)) / |M(model)| (Wang et al.: every node should add ≥ 1%)."""
    if config.level != "node":
        raise ValueError("minimality is per node: use an EvalConfig with level='node'")
    heads = [head_name(*h) for h in circuit.heads]
    without = [_drop_node(circuit, n) for n in heads]
    vals = circuit_values(model, [circuit, *without], prompts=prompts, metric=metric, config=config).mean(-1)
    clean_t, _, mask, readout, _ = prepare(model, prompts, None, metric, caller="minimality")
    with torch.no_grad():
        ref = abs(readout.from_logits(model(clean_t, attention_mask=mask)).mean().item()) or 1.0
    return {n: float((vals[0] - vals[i + 1]) / ref) for i, n in enumerate(heads)}


def _drop_node(circuit: Circuit, node: str) -> Circuit:
    return Circuit(
        nodes=tuple(n for n in circuit.nodes if n != node),
        edges=tuple(e for e in circuit.edges if node not in (node_of(e[0]), node_of(e[1]))),
        positions={k: v for k, v in circuit.positions.items() if k != node},
    )


def random_circuits(
    model: HookedModel, circuit: Circuit, *, n: int = 10, seed: int = 0, per_group: bool = False
) -> list[Circuit]:
    """`n` random head sets of the circuit's size, each head taking the position of the circuit head it
    replaces (so group sizes and positions match: Prakash et al.'s random baseline).

    `per_group=True` draws each group's heads on their own (in group order; ungrouped heads last), so a head
    may be drawn for two groups and is then kept at both groups' positions (Prakash et al.'s random circuits);
    otherwise all heads are drawn at once, without repeats."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    rng = random.Random(seed)
    mine = [head_name(*h) for h in circuit.heads]
    if not per_group:
        all_heads = [head_name(layer, h) for layer in range(L) for h in range(H)]
        out = []
        for _ in range(n):
            drawn = rng.sample(all_heads, len(mine))
            positions = {
                new: circuit.positions[old]
                for old, new in zip(mine, drawn, strict=True)
                if old in circuit.positions
            }
            out.append(Circuit(nodes=tuple(drawn), positions=positions))
        return out
    every = [(layer, h) for layer in range(L) for h in range(H)]
    groups = {g: [m for m in members if m in mine] for g, members in circuit.groups.items()}
    grouped = {m for members in groups.values() for m in members}
    if rest := [m for m in mine if m not in grouped]:
        groups[""] = rest
    out = []
    for _ in range(n):
        kept: dict[str, list[str] | None] = {}  # node -> positions (None: every position)
        drawn_groups: dict[str, tuple[str, ...]] = {}
        for g, members in groups.items():
            drawn = [head_name(*x) for x in sorted(rng.sample(every, len(members)))]
            for old, new in zip(sorted(members, key=parse_head), drawn, strict=True):
                spec = circuit.kept_at(old)
                if new in kept and (kept[new] is None or spec is None):
                    kept[new] = None
                elif spec is not None:
                    kept[new] = [*dict.fromkeys([*(kept.get(new) or []), *spec])]
                else:
                    kept[new] = None
            if g:
                drawn_groups[g] = tuple(dict.fromkeys(drawn))
        positions = {k: v[0] if len(v) == 1 else tuple(v) for k, v in kept.items() if v is not None}
        out.append(Circuit(nodes=tuple(kept), groups=drawn_groups, positions=positions))
    return out


def random_baseline(
    model: HookedModel,
    circuit: Circuit,
    *,
    prompts: PromptSet,
    metric: MetricLike,
    config: EvalConfig = EvalConfig(),
    n: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Mean and std over `n` random equal-size circuits of their metric, faithfulness and recovery."""
    if config.level != "node":
        raise ValueError("the random baseline draws heads: use an EvalConfig with level='node'")
    ev = evaluate_circuit(model, circuit, prompts=prompts, metric=metric, config=config)
    vals = circuit_values(
        model, random_circuits(model, circuit, n=n, seed=seed), prompts=prompts, metric=metric, config=config
    ).mean(-1)
    faith = vals / ev.model
    rec = (vals - ev.empty) / (ev.model - ev.empty)
    return {
        "metric": vals.mean().item(),
        "faithfulness": faith.mean().item(),
        "faithfulness_std": faith.std().item() if n > 1 else 0.0,
        "recovery": rec.mean().item(),
        "n": n,
    }


COMPLETION_METHODS: tuple[str, ...] = ("backward", "forward")


def complete_circuit(
    model: HookedModel,
    circuit: Circuit,
    *,
    prompts: PromptSet,
    metric: MetricLike,
    target: float,
    config: EvalConfig = EvalConfig(),
    method: str = "backward",
) -> tuple[Circuit, list[float]]:
    """Add heads (kept at every position) to `circuit` until its metric (batch mean) reaches `target`.

    "backward": start from every head and repeatedly drop the added head whose removal costs least, while the
    metric stays at or above `target` (finds jointly needed, redundant heads); "forward": add the best head
    each round until the target is reached. A completeness check in the spirit of Wang et al.'s greedy search,
    for behaviour one-at-a-time patching misses. Returns the circuit (added heads in group "completion") and
    the metric after each round.
    """
    if config.level != "node":
        raise ValueError("completion adds heads: use an EvalConfig with level='node'")
    if method not in COMPLETION_METHODS:
        raise ValueError(f"method must be one of {COMPLETION_METHODS}, got {method!r}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    base, positions = list(circuit.nodes), dict(circuit.positions)
    others = [head_name(layer, h) for layer in range(L) for h in range(H) if head_name(layer, h) not in base]

    def value(sets: list[list[str]]) -> Tensor:
        cs = [Circuit(nodes=(*base, *extra), positions=positions) for extra in sets]
        return circuit_values(model, cs, prompts=prompts, metric=metric, config=config).mean(-1)

    if method == "forward":
        added: list[str] = []
        trace = [value([[]])[0].item()]
        while trace[-1] < target and len(added) < len(others):
            rest = [o for o in others if o not in added]
            vals = value([[*added, r] for r in rest])
            best = int(vals.argmax())
            added.append(rest[best])
            trace.append(float(vals[best]))
    else:
        added = list(others)
        trace = [value([added])[0].item()]
        while added:
            vals = value([[a for a in added if a != r] for r in added])
            best = int(vals.argmax())
            if float(vals[best]) < target:
                break
            added.pop(best)
            trace.append(float(vals[best]))
    groups = {**circuit.groups, **({"completion": tuple(added)} if added else {})}
    return Circuit(
        nodes=(*base, *added),
        edges=circuit.edges,
        scores=dict(circuit.scores),
        groups=groups,
        positions=positions,
        provenance={
            **circuit.provenance,
            "completion": {"target": target, "method": method, "added": added, "trace": trace},
        },
    ), trace


@dataclass(frozen=True, kw_only=True)
class FaithfulnessCurve:
    """Recovery of circuits of growing size (fractions of all edges) and MIB's CPR and CMD areas."""

    fractions: list[float]
    n_edges: list[int]
    values: list[float]
    recovery: list[float]
    model: float
    empty: float
    selection: str

    @property
    def cpr(self) -> float:
        """Area under the recovery curve over the fraction of edges (MIB's CPR; higher is better)."""
        return _trapezoid(self.fractions, self.recovery)

    @property
    def cmd(self) -> float:
        """Area of |1 − recovery| over the fraction of edges (MIB's CMD; lower is better)."""
        return _trapezoid(self.fractions, [abs(1 - r) for r in self.recovery])

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(
            {
                "fraction": self.fractions,
                "n_edges": self.n_edges,
                "metric": self.values,
                "recovery": self.recovery,
            }
        )

    def figure(self, *, title: str | None = None):
        from interp.plotting.figures import line

        fig = line(
            {"recovery": self.recovery},
            x=self.fractions,
            x_title="fraction of edges kept",
            y_title="normalised faithfulness",
            title=title or f"Faithfulness curve ({self.selection}): CPR {self.cpr:.3f}, CMD {self.cmd:.3f}",
        )
        return fig


def _trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1)))


def faithfulness_curve(
    model: HookedModel,
    scores: EdgeScores,
    *,
    prompts: PromptSet,
    metric: MetricLike,
    fractions: Sequence[float] = MIB_FRACTIONS,
    selection: str = "top",
    config: EvalConfig = EvalConfig(level="edge", ablation="resample"),
) -> FaithfulnessCurve:
    """Edge-level recovery of the top (or greedy) circuits of each size; CPR and CMD (MIB) from the curve."""
    if config.level != "edge":
        raise ValueError("faithfulness curves are over edges: use an EvalConfig with level='edge'")
    fr = sorted(set(float(f) for f in fractions) | {0.0, 1.0})
    if fr[0] < 0 or fr[-1] > 1:
        raise ValueError(f"fractions must lie in [0, 1]; got {list(fractions)}")
    g = scores.graph
    counts = [round(f * g.n_edges) for f in fr]
    ranked = scores.ranked() if selection == "top" else None
    masks = []
    for k in counts:
        edges = ranked[:k] if ranked is not None else scores.greedy(k)
        masks.append(g.mask(edges))
    vals = circuit_values(model, masks, prompts=prompts, metric=metric, config=config).mean(-1)
    empty, full = vals[0].item(), vals[-1].item()
    rec = [((v - empty) / (full - empty)) if full != empty else float("nan") for v in vals.tolist()]
    return FaithfulnessCurve(
        fractions=fr,
        n_edges=counts,
        values=vals.tolist(),
        recovery=rec,
        model=full,
        empty=empty,
        selection=selection,
    )


def with_positions(circuit: Circuit, positions: dict[str, str]) -> Circuit:
    """The circuit with `positions` (node -> position name) merged in."""
    return replace(circuit, positions={**circuit.positions, **positions})


__all__ = [
    "ABLATIONS",
    "COMPLETION_METHODS",
    "LEVELS",
    "MIB_FRACTIONS",
    "CircuitEval",
    "EvalConfig",
    "FaithfulnessCurve",
    "circuit_edge_mask",
    "circuit_values",
    "complete_circuit",
    "evaluate_circuit",
    "faithfulness_curve",
    "minimality",
    "random_baseline",
    "random_circuits",
    "with_positions",
]

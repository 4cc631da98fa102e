"""The computational graph of a transformer and circuits inside it (Conmy et al. 2023 "ACDC"; Hanna et al. 2024).

Nodes: the embedding (`"embed"`, the residual stream entering block 0), every attention head (`"a{layer}.{head}"`,
output z_h·W_O_h), every MLP (`"m{layer}"`) and the logits (`"logits"`, the residual entering the final norm).
Edges run from a source node to a *destination*: a head's query, key or value input (`"a{l}.{h}.q|k|v"`; with
grouped-query attention keys and values are per key/value head), an MLP's input (`"m{l}"`) or `"logits"`.

A `Circuit` is a set of nodes and/or edges with scores, optional groups (path-patching stages, head classes),
optional positions (where each node is kept: Wang et al. / Prakash et al. evaluation) and provenance; it saves to
and loads from JSON, lists itself with `to_frame()` and draws itself as a layered graph with `figure()`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp.files import atomic_write_json

Edge = tuple[str, str]
Kept = str | tuple[str, ...]  # where a node is kept: one prompt position name, or several
_HEAD = re.compile(r"^a(\d+)\.(\d+)$")
_DEST = re.compile(r"^a(\d+)\.(\d+)\.([qkv])$")
_MLP = re.compile(r"^m(\d+)$")


def head_name(layer: int, head: int) -> str:
    return f"a{layer}.{head}"


def parse_head(name: str) -> tuple[int, int]:
    """`"a3.1"` (or a destination `"a3.1.q"`) -> (3, 1)."""
    m = _HEAD.match(name) or _DEST.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a head name like 'a3.1'")
    return int(m.group(1)), int(m.group(2))


def node_of(name: str) -> str:
    """The node a source or destination name belongs to: `"a3.1.q"` -> `"a3.1"`."""
    m = _DEST.match(name)
    return head_name(int(m.group(1)), int(m.group(2))) if m else name


def node_layer(name: str, n_layers: int) -> float:
    """Drawing/order position of a node: embed -1, a head or MLP its layer (MLPs +0.5), logits n_layers."""
    if name == "embed":
        return -1.0
    if name == "logits":
        return float(n_layers)
    m = _HEAD.match(node_of(name))
    if m:
        return float(m.group(1))
    m = _MLP.match(name)
    if m:
        return int(m.group(1)) + 0.5
    raise ValueError(f"unknown node {name!r}")


@dataclass(frozen=True, kw_only=True)
class Graph:
    """Sources, destinations and valid edges of a model, in a fixed order.

    Sources are ordered embed, then per layer its heads then its MLP, so the sources upstream of any destination
    are a prefix (`n_upstream`). Destinations are ordered per layer: queries, keys, values, MLP; then logits.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    has_mlp: bool = True
    parallel_attn_mlp: bool = False

    @classmethod
    def from_model(cls, model: Any) -> Graph:
        c = model.cfg
        attn_only = bool(getattr(getattr(model, "tl", None), "cfg", None) and model.tl.cfg.attn_only)
        return cls(
            n_layers=c.n_layers,
            n_heads=c.n_heads,
            n_kv_heads=c.n_kv_heads,
            has_mlp=not attn_only,
            parallel_attn_mlp=c.parallel_attn_mlp,
        )

    # ---- sources
    @property
    def _per_layer(self) -> int:
        return self.n_heads + int(self.has_mlp)

    @cached_property
    def sources(self) -> list[str]:
        out = ["embed"]
        for layer in range(self.n_layers):
            out += [head_name(layer, h) for h in range(self.n_heads)]
            if self.has_mlp:
                out.append(f"m{layer}")
        return out

    def head_source(self, layer: int, head: int) -> int:
        return 1 + layer * self._per_layer + head

    def mlp_source(self, layer: int) -> int:
        return 1 + layer * self._per_layer + self.n_heads

    # ---- destinations
    @property
    def _dests_per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + int(self.has_mlp)

    @cached_property
    def destinations(self) -> list[str]:
        out = []
        for layer in range(self.n_layers):
            out += [f"a{layer}.{h}.q" for h in range(self.n_heads)]
            out += [f"a{layer}.{h}.k" for h in range(self.n_kv_heads)]
            out += [f"a{layer}.{h}.v" for h in range(self.n_kv_heads)]
            if self.has_mlp:
                out.append(f"m{layer}")
        return [*out, "logits"]

    def dest_slice(self, layer: int, kind: str) -> slice:
        """Destination indices of layer `layer`'s q, k or v inputs (one per head), or its MLP (`"mlp"`)."""
        base = layer * self._dests_per_layer
        H, K = self.n_heads, self.n_kv_heads
        start, n = {"q": (0, H), "k": (H, K), "v": (H + K, K), "mlp": (H + 2 * K, 1)}[kind]
        return slice(base + start, base + start + n)

    @property
    def logits_dest(self) -> int:
        return len(self.destinations) - 1

    def n_upstream(self, layer: int | None, kind: str) -> int:
        """How many sources (a prefix of `sources`) can reach destination `kind` of `layer` (None: logits)."""
        if layer is None:
            return len(self.sources)
        up = 1 + layer * self._per_layer
        if kind == "mlp" and not self.parallel_attn_mlp:
            up += self.n_heads  # an MLP reads the residual after its own layer's attention
        return up

    @cached_property
    def valid(self) -> Tensor:
        """[n_sources, n_destinations] bool: which edges exist."""
        v = torch.zeros(len(self.sources), len(self.destinations), dtype=torch.bool)
        for layer in range(self.n_layers):
            for kind in ("q", "k", "v") + (("mlp",) if self.has_mlp else ()):
                v[: self.n_upstream(layer, kind), self.dest_slice(layer, kind)] = True
        v[:, self.logits_dest] = True
        return v

    @cached_property
    def src_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.sources)}

    @cached_property
    def dst_index(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.destinations)}

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def edges(self) -> list[Edge]:
        """Every valid edge as (source, destination)."""
        return [(self.sources[i], self.destinations[j]) for i, j in self.valid.nonzero().tolist()]

    def edge_index(self, edge: Edge) -> tuple[int, int]:
        """(source index, destination index) of an edge; raise naming the problem if it does not exist."""
        src, dst = edge
        if src not in self.src_index:
            raise ValueError(f"unknown source {src!r}; sources look like 'embed', 'a0.1', 'm2'")
        if dst not in self.dst_index:
            raise ValueError(f"unknown destination {dst!r}; destinations look like 'a1.0.q', 'm2', 'logits'")
        i, j = self.src_index[src], self.dst_index[dst]
        if not self.valid[i, j]:
            raise ValueError(f"edge {src} -> {dst} does not exist: {src} is not upstream of {dst}")
        return i, j

    def mask(self, edges: list[Edge] | tuple[Edge, ...]) -> Tensor:
        """[n_sources, n_destinations] bool mask of `edges`."""
        m = torch.zeros_like(self.valid)
        for e in edges:
            m[self.edge_index(e)] = True
        return m


@dataclass(frozen=True, kw_only=True, eq=False)
class Circuit:
    """A circuit: nodes and/or edges with scores, groups, kept positions and provenance.

    `nodes` are node names (`"a3.1"`, `"m2"`; the endpoints of `edges` are added; embed and logits are implicit
    unless listed); `edges` (source, destination) pairs; `scores` maps a node name or
    an edge key `"src->dst"` to its score; `groups` maps a label (a path-patching stage, a head class) to its
    nodes; `positions` maps a node to the prompt position name where it is kept, or a tuple of names (a
    head of two groups at two positions, Prakash et al.); absent: every position.
    """

    nodes: tuple[str, ...] = ()
    edges: tuple[Edge, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    positions: dict[str, Kept] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for n in self.nodes:
            if not (n in ("embed", "logits") or _HEAD.match(n) or _MLP.match(n)):
                raise ValueError(f"circuit node {n!r} is not 'embed', 'logits', 'a{{l}}.{{h}}' or 'm{{l}}'")
        object.__setattr__(self, "edges", tuple((str(a), str(b)) for a, b in self.edges))
        edge_nodes = [node_of(x) for e in self.edges for x in e if x not in ("embed", "logits")]
        nodes = list(dict.fromkeys([*self.nodes, *edge_nodes]))
        object.__setattr__(self, "nodes", tuple(nodes))
        for g, members in self.groups.items():
            missing = [m for m in members if m not in nodes]
            if missing:
                raise ValueError(f"group {g!r} names nodes not in the circuit: {missing}")
        object.__setattr__(
            self, "positions", {k: v if isinstance(v, str) else tuple(v) for k, v in self.positions.items()}
        )

    def kept_at(self, node: str) -> tuple[str, ...] | None:
        """The position names where `node` is kept, or None for every position."""
        spec = self.positions.get(node)
        return None if spec is None else (spec,) if isinstance(spec, str) else spec

    @property
    def heads(self) -> list[tuple[int, int]]:
        """The circuit's attention heads as (layer, head), in layer order."""
        return sorted(parse_head(n) for n in self.nodes if _HEAD.match(n))

    @property
    def mlps(self) -> list[int]:
        return sorted(int(m.group(1)) for n in self.nodes if (m := _MLP.match(n)))

    def group_of(self, node: str) -> str | None:
        return next((g for g, members in self.groups.items() if node in members), None)

    def score(self, key: str | Edge) -> float | None:
        return self.scores.get(f"{key[0]}->{key[1]}" if isinstance(key, tuple) else key)

    def to_frame(self):
        """One row per node (kind "node") and per edge (kind "edge"): name, layer, head, group, position, score."""
        import pandas as pd

        rows = []
        for n in self.nodes:
            m = _HEAD.match(n)
            rows.append(
                {
                    "kind": "node",
                    "name": n,
                    "layer": int(m.group(1)) if m else None,
                    "head": int(m.group(2)) if m else None,
                    "group": self.group_of(n),
                    "position": _kept_text(self.positions.get(n)),
                    "score": self.scores.get(n),
                }
            )
        for e in self.edges:
            rows.append(
                {
                    "kind": "edge",
                    "name": f"{e[0]}->{e[1]}",
                    "layer": None,
                    "head": None,
                    "group": None,
                    "position": None,
                    "score": self.scores.get(f"{e[0]}->{e[1]}"),
                }
            )
        return pd.DataFrame(rows)

    # ---- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes),
            "edges": [list(e) for e in self.edges],
            "scores": self.scores,
            "groups": {k: list(v) for k, v in self.groups.items()},
            "positions": {k: v if isinstance(v, str) else list(v) for k, v in self.positions.items()},
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Circuit:
        unknown = set(d) - {"nodes", "edges", "scores", "groups", "positions", "provenance"}
        if unknown:
            raise ValueError(f"unknown circuit keys {sorted(unknown)}")
        return cls(
            nodes=tuple(d.get("nodes", ())),
            edges=tuple(tuple(e) for e in d.get("edges", ())),
            scores={k: float(v) for k, v in d.get("scores", {}).items()},
            groups={k: tuple(v) for k, v in d.get("groups", {}).items()},
            positions={k: v if isinstance(v, str) else tuple(v) for k, v in d.get("positions", {}).items()},
            provenance=dict(d.get("provenance", {})),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the circuit as JSON (atomically)."""
        return atomic_write_json(path, self.to_dict(), default=float)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Circuit:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ---- figure
    def figure(self, *, n_layers: int | None = None, n_heads: int | None = None, title: str | None = None):
        """A layered graph: layers left to right, heads (circles) and MLPs (squares) by index, edge width by
        |score|; node colour by group."""
        return circuit_figure(self, n_layers=n_layers, n_heads=n_heads, title=title)


def _kept_text(spec: Kept | None) -> str | None:
    return spec if spec is None or isinstance(spec, str) else "+".join(spec)


def _node_xy(name: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    if name == "embed":
        return -1.0, (n_heads - 1) / 2
    if name == "logits":
        return float(n_layers), (n_heads - 1) / 2
    m = _HEAD.match(name)
    if m:
        return float(m.group(1)), float(m.group(2))
    m = _MLP.match(name)
    if m is None:
        raise ValueError(f"unknown node {name!r}")
    return int(m.group(1)) + 0.5, (n_heads - 1) / 2


def circuit_figure(
    circuit: Circuit, *, n_layers: int | None = None, n_heads: int | None = None, title: str | None = None
):
    """The layered-graph figure of a circuit (house style, plotly)."""
    import plotly.graph_objects as go

    from interp.plotting.style import PALETTE, apply_style

    heads = circuit.heads
    L = (
        n_layers
        if n_layers is not None
        else max([h[0] + 1 for h in heads] + [m + 1 for m in circuit.mlps] + [1])
    )
    H = n_heads if n_heads is not None else max([h[1] + 1 for h in heads] + [1])
    nodes = list(dict.fromkeys(["embed", *circuit.nodes, "logits"]))
    xy = {n: _node_xy(n, L, H) for n in nodes}
    fig = go.Figure()

    def mag(key: str) -> float:
        v = circuit.scores.get(key)
        return abs(v) if v is not None and math.isfinite(v) else 0.0

    edge_scores = [mag(f"{a}->{b}") for a, b in circuit.edges]
    top = max(edge_scores, default=0.0) or 1.0
    for (a, b), s in zip(circuit.edges, edge_scores, strict=True):
        (x0, y0), (x1, y1) = xy[node_of(a)], xy[node_of(b)]
        dest = b.rsplit(".", 1)[-1] if b.count(".") == 2 else ""
        fig.add_trace(
            go.Scatter(
                x=[x0, x1],
                y=[y0, y1],
                mode="lines",
                showlegend=False,
                hoverinfo="text",
                text=f"{a} → {b}: {s:.3g}",
                line={
                    "width": 0.5 + 6 * s / top,
                    "color": "#888",
                    "dash": {"q": "solid", "k": "dash", "v": "dot"}.get(dest, "solid"),
                },
            )
        )
    groups = list(circuit.groups) + [None]
    node_scores = [mag(n) for n in nodes]
    top_n = max(node_scores, default=0.0) or 1.0
    for i, g in enumerate(groups):
        members = [n for n in nodes if circuit.group_of(n) == g]
        if not members:
            continue
        sizes = [12 + 18 * mag(n) / top_n for n in members]
        fig.add_trace(
            go.Scatter(
                x=[xy[n][0] for n in members],
                y=[xy[n][1] for n in members],
                mode="markers+text",
                name=g or "other",
                text=[n for n in members],
                textposition="top center",
                hovertext=[
                    f"{n}: score {circuit.scores.get(n, float('nan')):.3g}"
                    + (f", kept at {_kept_text(circuit.positions[n])}" if n in circuit.positions else "")
                    for n in members
                ],
                hoverinfo="text",
                marker={
                    "size": sizes,
                    "color": PALETTE[i % len(PALETTE)] if g else "#666",
                    "symbol": ["square" if _MLP.match(n) else "circle" for n in members],
                    "line": {"width": 1, "color": "white"},
                },
            )
        )
    ticks = list(range(-1, L + 1))
    fig.update_xaxes(
        tickmode="array",
        tickvals=ticks,
        ticktext=["embed", *[str(t) for t in range(L)], "logits"],
        range=[-1.5, L + 0.5],
    )
    fig.update_yaxes(tickmode="array", tickvals=list(range(H)), range=[H - 0.2, -0.8])  # head 0 on top
    fig.update_layout(
        title_text=title or circuit.provenance.get("title", "Circuit"),
        xaxis_title_text="layer",
        yaxis_title_text="head",
    )
    return apply_style(fig, height=max(360, 60 * H + 140))

"""Edge attribution patching: EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024, "Have Faith in Faithfulness";
MIB, Mueller et al. 2025), plus exact single-edge patching as the reference.

score(u → v) = (a_u^corrupt − a_u^clean) · ∂M/∂(input of v), summed over positions, averaged over prompts: a
first-order estimate of patching the sender's corrupt output into that one destination's input. A head's output
is z_h·W_O_h; a destination's input is its own copy of the residual stream (what TransformerLens' split q/k/v
inputs expose; `hook_mlp_in`; the last block's `hook_resid_post` for the logits). EAP takes the gradient on the
clean run (one clean and one corrupt forward for all Δa, one backward for all edges); EAP-IG averages it over
`ig_steps` inputs interpolated from the corrupt to the clean embedding (k/m, k = 1..m). The gradient pass needs
no split inputs: a head's input gradient is W_Q/W_K/W_V times ∂M/∂q/k/v, taken back through the attention norm
at that head's copy (tested against split-input autograd). TL backend only.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.circuits.graph import Circuit, Edge, Graph, node_of
from interp.models.base import HookedModel
from interp.patching.engine import bytes_per_token, default_budget, is_oom, values_from_resid
from interp.patching.inputs import (
    FiniteGuard,
    MetricLike,
    NonFinite,
    Prompts,
    Tokens,
    bind_inputs,
    check_budget,
    check_count,
)
from interp.patching.readout import Readout
from interp.progress import progress_bar
from interp.tasks.promptset import PromptSet

SourceActs = Float[Tensor, "source batch pos d_model"]
TL_HOOK = tuple[str, Callable[..., Any]]


# --------------------------------------------------------------------------------------------- plumbing
def check_graph_model(model: HookedModel) -> None:
    """Raise before any compute if edge-level analyses cannot run on `model`."""
    if model.backend != "tl":
        raise ValueError(
            "edge-level circuits need gradients and split q/k/v inputs: load the model with backend='tl'"
        )
    c = model.tl.cfg
    if getattr(c, "use_normalization_before_and_after", False):
        raise ValueError(
            f"{model.name}: heads' outputs pass a post-attention norm (Gemma-2 style), so the "
            "residual stream is not a sum of node outputs; edge-level analyses do not apply"
        )
    if c.positional_embedding_type == "shortformer":
        raise ValueError("shortformer positional embeddings are not supported by edge-level analyses")


@contextmanager
def graph_mode(model: HookedModel, *, split_qkv: bool = True) -> Iterator[Graph]:
    """Turn on TL's `hook_mlp_in` and (with `split_qkv`) split q/k/v inputs, restored afterwards; yield the
    model's graph."""
    check_graph_model(model)
    tl = model.tl
    old = (tl.cfg.use_split_qkv_input, tl.cfg.use_hook_mlp_in)
    tl.set_use_split_qkv_input(split_qkv)
    if not tl.cfg.attn_only:
        tl.set_use_hook_mlp_in(True)
    try:
        yield Graph.from_model(model)
    finally:
        tl.cfg.use_split_qkv_input, tl.cfg.use_hook_mlp_in = old


def dest_hook_names(graph: Graph) -> list[tuple[str, int | None, str]]:
    """(TL hook name, layer or None for logits, kind) of every destination input."""
    out: list[tuple[str, int | None, str]] = []
    for layer in range(graph.n_layers):
        out += [(f"blocks.{layer}.hook_{k}_input", layer, k) for k in ("q", "k", "v")]
        if graph.has_mlp:
            out.append((f"blocks.{layer}.hook_mlp_in", layer, "mlp"))
    return [*out, (f"blocks.{graph.n_layers - 1}.hook_resid_post", None, "logits")]


def dest_indices(graph: Graph, layer: int | None, kind: str) -> slice:
    return slice(graph.logits_dest, graph.logits_dest + 1) if layer is None else graph.dest_slice(layer, kind)


def source_hooks(model: HookedModel, graph: Graph, write: Callable[[slice, Tensor], None]) -> list[TL_HOOK]:
    """Forward hooks that hand every source output to `write(source slice, [n, rows, pos, d_model])`."""
    tl = model.tl

    def embed(act: Tensor, hook: Any) -> None:
        write(slice(0, 1), act[None])

    def heads(layer: int):
        W_O = tl.blocks[layer].attn.W_O  # [head, d_head, d_model]
        s = graph.head_source(layer, 0)

        def fn(z: Tensor, hook: Any) -> None:
            write(slice(s, s + graph.n_heads), torch.einsum("bthd,hdm->hbtm", z, W_O))

        return fn

    def mlp(layer: int):
        s = graph.mlp_source(layer)

        def fn(act: Tensor, hook: Any) -> None:
            write(slice(s, s + 1), act[None])

        return fn

    hooks: list[TL_HOOK] = [("blocks.0.hook_resid_pre", embed)]
    for layer in range(graph.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_z", heads(layer)))
        if graph.has_mlp:
            hooks.append((f"blocks.{layer}.hook_mlp_out", mlp(layer)))
    return hooks


def run_to_resid(
    model: HookedModel, tokens: Tensor, hooks: Sequence[TL_HOOK], attention_mask: Tensor | None = None
) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream entering the final norm, with `hooks` active."""
    return model.tl.run_with_hooks(
        tokens, fwd_hooks=list(hooks), stop_at_layer=model.cfg.n_layers, attention_mask=attention_mask
    )


def metric_values(model: HookedModel, readout: Readout, resid: Tensor, n: int) -> Float[Tensor, "n batch"]:
    """Metric per (copy, prompt) from final residuals [n*batch, pos, d] of `n` stacked copies of the prompts."""
    R, T, d = resid.shape
    return values_from_resid(model, readout, resid.view(n, R // n, T, d))


def source_outputs(
    model: HookedModel,
    graph: Graph,
    tokens: Tensor,
    attention_mask: Tensor | None = None,
    *,
    resid_pre: dict[int, Tensor] | None = None,
) -> tuple[SourceActs, Float[Tensor, "batch pos d_model"]]:
    """Every source's output [source, batch, pos, d_model] on `tokens`, and the final residual; with `resid_pre`
    (a dict), also each layer's `hook_resid_pre` of the same pass, keyed by layer."""
    B, T = tokens.shape
    out = torch.empty(
        len(graph.sources), B, T, model.cfg.d_model, device=tokens.device, dtype=model.tl.cfg.dtype
    )

    def write(sl: slice, x: Tensor) -> None:
        out[sl] = x

    hooks = source_hooks(model, graph, write)
    if resid_pre is not None:
        hooks += [
            (f"blocks.{layer}.hook_resid_pre", lambda act, hook: resid_pre.__setitem__(hook.layer(), act))
            for layer in range(graph.n_layers)
        ]
    resid = run_to_resid(model, tokens, hooks, attention_mask)
    return out, resid


def prepare(
    model: HookedModel,
    clean: Prompts,
    corrupt: Tokens | None,
    metric: MetricLike,
    *,
    caller: str = "eap",
) -> tuple[Tensor, Tensor, Tensor | None, Readout, PromptSet | None]:
    """(clean, corrupt, attention mask or None, readout, prompts) from a PromptSet or two token tensors,
    checked before any compute (`interp.patching.inputs.bind_inputs`); right padding only."""
    inputs = bind_inputs(model, clean, corrupt, metric=metric, caller=caller)
    return inputs.clean, inputs.corrupt, inputs.attention_mask, inputs.readout, inputs.prompts


def _contract(deltas: Tensor, grad: Tensor) -> Float[Tensor, "source dest"]:
    """Σ over batch, positions, features of Δa_u · g_v: deltas [S, B, T, d], grad [B, T, E, d] or [B, T, d]."""
    if grad.ndim == 3:
        grad = grad[:, :, None]
    E = grad.shape[2]
    g = grad.permute(2, 0, 1, 3).reshape(E, -1).float()  # (E, B*T*d)
    return deltas.reshape(deltas.shape[0], -1).float() @ g.T


# --------------------------------------------------------------------------------------------- results
@dataclass(frozen=True, kw_only=True, eq=False)
class EdgeScores:
    """Edge scores [source, destination] (0 where no edge exists) of a graph, with how they were computed."""

    graph: Graph
    scores: Float[Tensor, "source dest"]
    method: str
    ig_steps: int
    baseline: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, edge: Edge) -> float:
        return float(self.scores[self.graph.edge_index(edge)])

    def __len__(self) -> int:
        return self.graph.n_edges

    def ranked(self, *, absolute: bool = True) -> list[Edge]:
        """All valid edges, highest score (|score| when `absolute`) first; ties broken by graph order."""
        s = self.scores.abs() if absolute else self.scores
        idx = self.graph.valid.nonzero()
        vals = s[idx[:, 0], idx[:, 1]]
        order = torch.sort(vals, descending=True, stable=True).indices
        return [(self.graph.sources[int(idx[i, 0])], self.graph.destinations[int(idx[i, 1])]) for i in order]

    def top(self, n: int, *, absolute: bool = True) -> list[Edge]:
        """The `n` highest-scoring edges (by |score| unless `absolute=False`)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self.ranked(absolute=absolute)[:n]

    def greedy(self, n: int, *, absolute: bool = True) -> list[Edge]:
        """`n` edges grown from the logits: repeatedly add the best edge into a node already in the circuit
        (Hanna et al. 2024's greedy selection), so the circuit stays connected to the output."""
        s = self.scores.abs() if absolute else self.scores
        g = self.graph
        into: dict[str, list[int]] = {}
        for j, d in enumerate(g.destinations):
            into.setdefault(node_of(d), []).append(j)
        heap: list[tuple[float, int, int]] = []
        seen_nodes: set[str] = set()

        def add_node(node: str) -> None:
            if node in seen_nodes:
                return
            seen_nodes.add(node)
            for j in into.get(node, []):
                for i in g.valid[:, j].nonzero().flatten().tolist():
                    heapq.heappush(heap, (-float(s[i, j]), i, j))

        add_node("logits")
        out: list[Edge] = []
        while heap and len(out) < n:
            _, i, j = heapq.heappop(heap)
            out.append((g.sources[i], g.destinations[j]))
            add_node(g.sources[i])
        return out

    def circuit(self, n: int, *, method: str = "top", absolute: bool = True) -> Circuit:
        """A circuit of `n` edges by "top" (the n best) or "greedy" selection, scores attached."""
        if method not in ("top", "greedy"):
            raise ValueError(f"method must be 'top' or 'greedy', got {method!r}")
        edges = self.top(n, absolute=absolute) if method == "top" else self.greedy(n, absolute=absolute)
        scores = {f"{a}->{b}": self[(a, b)] for a, b in edges}
        return Circuit(
            edges=tuple(edges),
            scores=scores,
            provenance={
                "method": self.method,
                "ig_steps": self.ig_steps,
                "selection": method,
                "n_edges": n,
                "title": f"{self.method} circuit, {n} edges",
            },
        )

    def to_frame(self):
        """One row per valid edge: source, destination, score, sorted by |score|."""
        import pandas as pd

        edges = self.ranked()
        return pd.DataFrame([{"source": a, "destination": b, "score": self[(a, b)]} for a, b in edges])

    def node_scores(self) -> dict[str, float]:
        """Per source node, the sum of |score| over its outgoing edges (a node ranking from edge scores)."""
        tot = (self.scores.abs() * self.graph.valid).sum(1)
        return {s: float(tot[i]) for i, s in enumerate(self.graph.sources)}


# --------------------------------------------------------------------------------------------- EAP / EAP-IG
def _rows_per_pass(model: HookedModel, T: int, budget: int | None) -> int:
    # a forward kept for backward, per layer, plus one layer's per-head input gradients at a time
    per_row = T * (
        2 * model.cfg.n_layers * bytes_per_token(model, T) + 8 * model.cfg.n_heads * model.cfg.d_model
    )
    return max(1, (budget or default_budget(model.device)) // per_row)


def eap(
    model: HookedModel,
    *,
    clean: Prompts,
    corrupt: Tokens | None = None,
    metric: MetricLike,
    ig_steps: int = 0,
    qk_fix: bool = False,
    steps_per_pass: int | None = None,
    memory_budget: int | None = None,
    nonfinite: NonFinite = "raise",
    progress: bool | None = None,
) -> EdgeScores:
    """Edge scores by EAP (`ig_steps=0`) or EAP-IG with `ig_steps` interpolation steps (Hanna et al. 2024).

    `clean` is a PromptSet (then `corrupt=None`) or clean tokens with `corrupt` tokens of the same shape;
    `metric` a metric from `interp.metrics` (bound to the prompts, or a class to bind) or a callable from
    logits [batch, pos, vocab] to [batch]. Scores estimate M(clean with the edge's sender corrupted) − M(clean).
    The interpolation steps run stacked along the batch, `steps_per_pass` at a time (default: what fits
    `memory_budget`).
    `qk_fix` (AtP*, Kramár et al. 2024, applied to edges): a query or key edge's score becomes
    Σ (pattern with the sender's Δa added to that head's q/k input − clean pattern) · ∂M/∂pattern, the new pattern
    computed exactly (norm and softmax included), instead of the linear estimate that a saturated softmax
    breaks. On `organism/base` IOI it raises the Spearman correlation of EAP with exact edge patching from
    0.76 to ≥ 0.9 (tested); it costs one extra norm and q/k projection per (upstream source, layer).
    `nonfinite`: "raise" if the metric is NaN/inf on the clean or corrupt run, "warn" to go on; `progress`: a
    progress bar over the interpolation steps (None: on terminals unless INTERP_PROGRESS=0).
    """
    check_count(ig_steps, "ig_steps", "eap", minimum=0)
    check_count(steps_per_pass, "steps_per_pass", "eap", allow_none=True)
    memory_budget = check_budget(memory_budget, "eap")
    finite = FiniteGuard("eap", nonfinite)
    check_graph_model(model)
    clean_t, corrupt_t, mask, readout, _ = prepare(model, clean, corrupt, metric)
    if qk_fix and mask is not None:
        raise ValueError(
            "qk_fix recomputes causal attention patterns and does not take padded prompts: use "
            "prompts of one length (e.g. make(..., same_length=True))"
        )
    B, T = clean_t.shape
    alphas = [1.0] if ig_steps == 0 else [k / ig_steps for k in range(1, ig_steps + 1)]
    per_pass = steps_per_pass or max(1, _rows_per_pass(model, T, memory_budget) // B)
    with graph_mode(model, split_qkv=False) as graph:
        with torch.no_grad():
            src_c, resid_c = source_outputs(model, graph, corrupt_t, mask)
            clean_resid: dict[int, Tensor] | None = {} if qk_fix else None
            src_k, resid_k = source_outputs(model, graph, clean_t, mask, resid_pre=clean_resid)
            v_corrupt = metric_values(model, readout, resid_c, 1)
            v_clean = metric_values(model, readout, resid_k, 1)
            finite(v_corrupt, lambda i: "the corrupt run")
            finite(v_clean, lambda i: "the clean run")
            finite.done()
            m_corrupt, m_clean = v_corrupt[0].mean().item(), v_clean[0].mean().item()
            x_clean, x_corrupt = src_k[0].clone(), src_c[0].clone()
            deltas = src_c.sub_(src_k)  # [S, B, T, d]: a_u(corrupt) - a_u(clean)
            del src_k
        scores = torch.zeros(len(graph.sources), len(graph.destinations), device=model.device)
        pattern_grads: dict[int, Tensor] | None = {} if qk_fix else None
        i = 0
        bar = progress_bar(
            len(alphas), f"eap{'-ig' if ig_steps else ''} gradients", progress=progress, unit="step"
        )
        while i < len(alphas):
            try:
                scores += _gradient_pass(
                    model,
                    graph,
                    clean_t,
                    mask,
                    readout,
                    deltas,
                    x_clean,
                    x_corrupt,
                    alphas[i : i + per_pass],
                    pattern_grads=pattern_grads,
                )
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                if not is_oom(e) or per_pass == 1:
                    raise
                per_pass //= 2  # halve the stacked steps and redo this chunk
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            bar.update(min(per_pass, len(alphas) - i))
            i += per_pass
        bar.close()
        if pattern_grads is not None:
            with torch.no_grad():
                _qk_fix_scores(model, graph, clean_resid, deltas, pattern_grads, scores, per_pass * B)
    scores = (scores / (B * len(alphas))).masked_fill(~graph.valid.to(scores.device), 0.0).cpu()
    method = ("eap-ig" if ig_steps else "eap") + ("*" if qk_fix else "")
    return EdgeScores(
        graph=graph,
        scores=scores,
        method=method,
        ig_steps=ig_steps,
        baseline={"clean": m_clean, "corrupt": m_corrupt},
    )


def norm_backward(model: HookedModel, layer: int, x: Tensor, v: Tensor) -> Tensor:
    """Gradient w.r.t. the input of block `layer`'s attention norm (ln1) from gradients `v` [R, T, E, d] w.r.t.
    its output, at inputs `x` [R, T, d]: the norm's Jacobian transpose, one head copy at a time (LayerNorm:
    (u − mean u − x̂·mean(u x̂)) / σ with u = v·w; RMSNorm without the centring)."""
    tl = model.tl
    kind = tl.cfg.normalization_type
    if kind is None:
        return v
    ln = tl.blocks[layer].ln1
    centred = kind in ("LN", "LNPre")
    x = x.float()
    if centred:
        x = x - x.mean(-1, keepdim=True)
    sigma = (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()[:, :, None]  # (R, T, 1, 1)
    xh = x[:, :, None] / sigma
    u = v.float() * ln.w if hasattr(ln, "w") else v.float()
    if centred:
        u = u - u.mean(-1, keepdim=True)
    return (u - xh * (u * xh).mean(-1, keepdim=True)) / sigma


def _qkv_weight(model: HookedModel, layer: int, kind: str) -> Tensor:
    """[heads (kv heads for k, v), d_model, d_head]."""
    attn = model.tl.blocks[layer].attn
    name = f"W_{kind.upper()}"
    return (
        getattr(attn, f"_{name}", None) if kind != "q" and hasattr(attn, f"_{name}") else getattr(attn, name)
    )


def _gradient_pass(
    model: HookedModel,
    graph: Graph,
    tokens: Tensor,
    mask: Tensor | None,
    readout: Readout,
    deltas: SourceActs,
    x_clean: Tensor,
    x_corrupt: Tensor,
    alphas: list[float],
    pattern_grads: dict[int, Tensor] | None = None,
) -> Tensor:
    """Σ over prompts and steps of Δa_u · ∂M/∂input_v, at inputs x_corrupt + α (x_clean − x_corrupt).

    One ordinary forward and backward: a head's q/k/v input gradient is W·∂M/∂(q/k/v) taken back through the
    attention norm at that head's own copy of the residual (what TL's split q/k/v inputs would give, without
    materialising a residual copy per head); MLP inputs and the logits read `hook_mlp_in` / `hook_resid_post`.
    With `pattern_grads` (qk_fix), query/key edges are left to `_qk_fix_scores` and ∂M/∂pattern per layer,
    summed over steps, is added into `pattern_grads[layer]` instead.
    """
    n = len(alphas)
    B, T = tokens.shape
    scores = torch.zeros(len(graph.sources), len(graph.destinations), device=tokens.device)
    a = torch.tensor(alphas, device=tokens.device, dtype=x_clean.dtype).view(n, 1, 1, 1)
    x = (x_corrupt[None] + a * (x_clean - x_corrupt)[None]).reshape(n * B, *x_clean.shape[1:])
    x = x.detach().requires_grad_(True)
    resid_in: dict[int, Tensor] = {}

    def keep_resid(layer: int):
        def hook(act: Tensor, hook: Any) -> None:
            resid_in[layer] = act.detach()

        return hook

    def add(layer: int | None, kind: str, g: Tensor) -> None:
        up = graph.n_upstream(layer, kind)
        g = g.view(n, B, *g.shape[1:]).sum(0)  # steps share the same Δa: sum their gradients
        scores[:up, dest_indices(graph, layer, kind)] += _contract(deltas[:up], g)

    def qkv(layer: int, kind: str):
        W = _qkv_weight(model, layer, kind)

        def on_grad(g: Tensor) -> None:  # g: (R, T, E, d_head), before rotary
            if pattern_grads is not None and kind != "v":
                return
            v = torch.einsum("rteh,edh->rted", g, W)  # gradient w.r.t. each head's normed input
            add(layer, kind, norm_backward(model, layer, resid_in[layer], v))

        def hook(act: Tensor, hook: Any) -> None:
            act.register_hook(on_grad)

        return hook

    def plain(layer: int | None, kind: str):
        def hook(act: Tensor, hook: Any) -> None:
            act.register_hook(lambda g: add(layer, kind, g))

        return hook

    def pattern(layer: int):
        def on_grad(g: Tensor) -> None:
            g = g.detach().view(n, B, *g.shape[1:]).sum(0)
            pattern_grads[layer] = pattern_grads[layer] + g if layer in pattern_grads else g

        def hook(act: Tensor, hook: Any) -> None:
            act.register_hook(on_grad)

        return hook

    hooks: list[TL_HOOK] = [("blocks.0.hook_resid_pre", lambda act, hook: x)]
    for layer in range(graph.n_layers):
        hooks.append((f"blocks.{layer}.hook_resid_pre", keep_resid(layer)))
        if pattern_grads is not None:
            hooks.append((f"blocks.{layer}.attn.hook_pattern", pattern(layer)))
        hooks += [(f"blocks.{layer}.attn.hook_{k}", qkv(layer, k)) for k in ("q", "k", "v")]
        if graph.has_mlp:
            hooks.append((f"blocks.{layer}.hook_mlp_in", plain(layer, "mlp")))
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", plain(None, "logits")))
    with torch.enable_grad():
        resid = run_to_resid(model, tokens.repeat(n, 1), hooks, None if mask is None else mask.repeat(n, 1))
        total = metric_values(model, readout, resid, n).sum()
        torch.autograd.grad(total, [x])
    return scores


def _qk_fix_scores(
    model: HookedModel,
    graph: Graph,
    resid: dict[int, Tensor],
    deltas: SourceActs,
    pattern_grads: dict[int, Tensor],
    scores: Tensor,
    rows_per_pass: int,
) -> None:
    """Add the AtP* scores of every query/key edge into `scores` (in place, summed over prompts like the rest):
    for each upstream source u and layer l, the exact patterns with Δa_u added to the attention input (the clean
    `resid[l]`) of every head's query (clean keys) or key (clean queries), dotted with ∂M/∂pattern."""
    from interp.patching.attribution import causal_pattern, rotate_qk

    tl = model.tl
    B = resid[0].shape[0]
    H, K = graph.n_heads, graph.n_kv_heads

    def rotated_qk(layer: int, x: Tensor) -> tuple[Tensor, Tensor]:
        normed = tl.blocks[layer].ln1(x)
        q, k, _ = tl.blocks[layer].attn.calculate_qkv_matrices(normed, normed, normed)
        return rotate_qk(model, layer, q, "q"), rotate_qk(model, layer, k, "k")

    for layer in range(graph.n_layers):
        up = graph.n_upstream(layer, "q")
        q0, k0 = rotated_qk(layer, resid[layer])
        p0 = causal_pattern(model, layer, q0, k0)  # [B, H, T, T]
        grad = pattern_grads[layer]
        per = max(1, rows_per_pass // B)
        for s0 in range(0, up, per):
            d = deltas[s0 : min(up, s0 + per)]
            n = d.shape[0]
            qn, kn = rotated_qk(layer, (resid[layer][None] + d).reshape(n * B, *d.shape[2:]))
            for kind, pat in (
                ("q", causal_pattern(model, layer, qn, k0.repeat(n, 1, 1, 1))),
                ("k", causal_pattern(model, layer, q0.repeat(n, 1, 1, 1), kn)),
            ):
                eff = ((pat.view(n, B, H, *p0.shape[2:]) - p0) * grad).sum((1, 3, 4))  # [n, H]
                if kind == "k":
                    eff = eff.view(n, K, H // K).sum(-1)
                scores[s0 : s0 + n, graph.dest_slice(layer, kind)] += eff.float()


# --------------------------------------------------------------------------------------------- exact edges
def edge_patch(
    model: HookedModel,
    *,
    clean: Prompts,
    corrupt: Tokens | None = None,
    metric: MetricLike,
    edges: Sequence[Edge],
    max_edges_per_pass: int = 32,
) -> Float[Tensor, " edges"]:
    """Exact effect of each edge: M(clean with input_v += a_u^corrupt − a_u^clean) − M(clean), batch means.

    Only the sender's contribution to that one destination's input changes; everything else is recomputed.
    This is what EAP estimates to first order (the slow reference for it; one forward per edge, batched).
    """
    check_count(max_edges_per_pass, "max_edges_per_pass", "edge_patch")
    check_graph_model(model)
    clean_t, corrupt_t, mask, readout, _ = prepare(model, clean, corrupt, metric, caller="edge_patch")
    with graph_mode(model) as graph:
        idx = [graph.edge_index(tuple(e)) for e in edges]
        with torch.no_grad():
            src_c, _ = source_outputs(model, graph, corrupt_t, mask)
            src_k, resid = source_outputs(model, graph, clean_t, mask)
            deltas = src_c - src_k
            base = metric_values(model, readout, resid, 1)[0].mean()
            out = []
            for start in range(0, len(idx), max_edges_per_pass):
                group = idx[start : start + max_edges_per_pass]
                out.append(_patched_edges(model, graph, clean_t, mask, readout, deltas, group) - base)
    return torch.cat(out).cpu()


def _patched_edges(
    model: HookedModel,
    graph: Graph,
    tokens: Tensor,
    mask: Tensor | None,
    readout: Readout,
    deltas: SourceActs,
    group: list[tuple[int, int]],
) -> Tensor:
    n, B = len(group), tokens.shape[0]
    by_hook: dict[str, list[tuple[int, int, int | None]]] = {}
    for row, (i, j) in enumerate(group):
        for name, layer, kind in dest_hook_names(graph):
            cols = dest_indices(graph, layer, kind)
            if cols.start <= j < cols.stop:
                head = j - cols.start if kind in ("q", "k", "v") else None
                by_hook.setdefault(name, []).append((row, i, head))

    def hook_for(items: list[tuple[int, int, int | None]]):
        def fn(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            for row, i, head in items:
                rows = slice(row * B, (row + 1) * B)
                if head is None:
                    act[rows] += deltas[i]
                else:
                    act[rows, :, head] += deltas[i]
            return act

        return fn

    hooks = [(name, hook_for(items)) for name, items in by_hook.items()]
    resid = run_to_resid(model, tokens.repeat(n, 1), hooks, None if mask is None else mask.repeat(n, 1))
    return metric_values(model, readout, resid, n).mean(-1)

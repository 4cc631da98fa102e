"""Circuit evaluation: the full circuit is the model, the empty one the fully ablated model; JSON, figures."""

import pytest
import torch
from helpers import swap_batch

from interp.circuits import (
    Circuit,
    EvalConfig,
    Graph,
    circuit_values,
    eap,
    evaluate_circuit,
    faithfulness_curve,
    minimality,
    random_baseline,
)
from interp.metrics import LogitDiff
from interp.sites import Site
from interp.tasks.promptset import PromptSet

B, T = 4, 8


@pytest.fixture(scope="module")
def prompts():
    clean, corrupt, ans, wrong = swap_batch(B, T, seed=5, swap_at=(3,))
    end = torch.full((B,), T - 1)
    return PromptSet(
        name="toy",
        clean=clean,
        corrupt=corrupt,
        attention_mask=torch.ones_like(clean),
        answer_ids=ans,
        wrong_ids=wrong,
        end=end,
        positions={"END": end, "X": torch.full((B,), 3)},
        prompts=[""] * B,
        corrupt_prompts=[""] * B,
        metadata=[{"template": i % 2} for i in range(B)],
    )


def _ld(model, ps, hooks=()):
    with torch.no_grad():
        return LogitDiff.from_prompts(ps)(model.run_with_hooks(ps.clean, list(hooks))).mean().item()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_edge_level_full_and_empty(tiny_models, prompts, arch):
    model = tiny_models(arch, "tl")
    g = Graph.from_model(model)
    full, empty = g.valid.clone(), torch.zeros_like(g.valid)
    res = circuit_values(
        model,
        [full, empty],
        prompts=prompts,
        metric=LogitDiff,
        config=EvalConfig(level="edge", ablation="resample"),
    ).mean(-1)
    with torch.no_grad():
        corrupt = LogitDiff.from_prompts(prompts)(model(prompts.corrupt)).mean().item()
    assert abs(res[0].item() - _ld(model, prompts)) < 1e-5
    assert abs(res[1].item() - corrupt) < 1e-5
    # mean ablation: the empty circuit's final residual is the per-template mean of the corrupt runs' residuals
    mean = (
        circuit_values(
            model,
            [empty],
            prompts=prompts,
            metric=LogitDiff,
            config=EvalConfig(level="edge", ablation="mean"),
        )
        .mean()
        .item()
    )
    tl = model.tl
    with torch.no_grad():
        resid = tl(prompts.corrupt, stop_at_layer=tl.cfg.n_layers)
        groups = torch.tensor([m["template"] for m in prompts.metadata])
        for t in (0, 1):
            resid[groups == t] = resid[groups == t].mean(0, keepdim=True)
        want = LogitDiff.from_prompts(prompts)(tl.unembed(tl.ln_final(resid))).mean().item()
    assert abs(mean - want) < 1e-5


def test_node_level_full_empty_and_positions(tiny_models, prompts):
    model = tiny_models("gpt2", "tl")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    every = Circuit(nodes=tuple(f"a{layer}.{h}" for layer in range(L) for h in range(H)))
    cfg = EvalConfig(level="node", ablation="mean", mean_by=None)
    ev = evaluate_circuit(model, every, prompts=prompts, metric=LogitDiff, config=cfg)
    assert (
        abs(ev.circuit - ev.model) < 1e-5 and abs(ev.faithfulness - 1) < 1e-5 and abs(ev.recovery - 1) < 1e-5
    )
    # the empty circuit: every head's z replaced by its per-position mean over the corrupt prompts
    _, cache = model.run_with_cache(prompts.corrupt, [Site("z", layer) for layer in range(L)])
    means = {k: v.mean(0, keepdim=True) for k, v in cache.items()}
    hooks = [(Site("z", layer), lambda a, s: means[s.hook_name].expand_as(a)) for layer in range(L)]
    assert abs(ev.empty - _ld(model, prompts, hooks)) < 1e-5
    # a head kept only at position X: every other (head, position) is ablated
    one = Circuit(nodes=("a1.2",), positions={"a1.2": "X"})
    got = circuit_values(model, [one], prompts=prompts, metric=LogitDiff, config=cfg).mean().item()

    def keep_at_x(a, s):
        out = means[s.hook_name].expand_as(a).clone()
        if s.layer == 1:
            out[:, 3, 2] = a[:, 3, 2]
        return out

    want = _ld(model, prompts, [(Site("z", layer), keep_at_x) for layer in range(L)])
    assert abs(got - want) < 1e-5
    # resample ablation of everything is the run with every z from the corrupt prompts
    rs = evaluate_circuit(
        model,
        Circuit(),
        prompts=prompts,
        metric=LogitDiff,
        config=EvalConfig(level="node", ablation="resample"),
    )
    hooks = [(Site("z", layer), lambda a, s: cache[s.hook_name]) for layer in range(L)]
    assert abs(rs.circuit - _ld(model, prompts, hooks)) < 1e-5


def test_minimality_random_baseline_and_curve(tiny_models, prompts):
    model = tiny_models("gpt2", "tl")
    c = Circuit(nodes=("a0.1", "a1.2", "a1.3"))
    cfg = EvalConfig(level="node", ablation="mean")
    mins = minimality(model, c, prompts=prompts, metric=LogitDiff, config=cfg)
    assert set(mins) == {"a0.1", "a1.2", "a1.3"}
    ev = evaluate_circuit(model, c, prompts=prompts, metric=LogitDiff, config=cfg)
    without = evaluate_circuit(
        model, Circuit(nodes=("a0.1", "a1.3")), prompts=prompts, metric=LogitDiff, config=cfg
    )
    assert abs(mins["a1.2"] - (ev.circuit - without.circuit) / abs(ev.model)) < 1e-5
    rb = random_baseline(model, c, prompts=prompts, metric=LogitDiff, config=cfg, n=4)
    assert rb["n"] == 4 and set(rb) >= {"faithfulness", "recovery", "metric"}
    scores = eap(model, clean=prompts, metric=LogitDiff, ig_steps=2)
    curve = faithfulness_curve(model, scores, prompts=prompts, metric=LogitDiff, fractions=(0.1, 0.5))
    assert curve.fractions == [0.0, 0.1, 0.5, 1.0] and curve.n_edges[0] == 0
    assert curve.n_edges[-1] == scores.graph.n_edges
    assert abs(curve.recovery[0]) < 1e-6 and abs(curve.recovery[-1] - 1) < 1e-6
    r = curve.recovery
    assert (
        abs(curve.cpr - (0.1 * (r[0] + r[1]) / 2 + 0.4 * (r[1] + r[2]) / 2 + 0.5 * (r[2] + r[3]) / 2)) < 1e-9
    )
    assert (
        abs(
            curve.cmd
            - sum(
                w * (abs(1 - a) + abs(1 - b)) / 2
                for w, a, b in ((0.1, r[0], r[1]), (0.4, r[1], r[2]), (0.5, r[2], r[3]))
            )
        )
        < 1e-9
    )
    greedy = faithfulness_curve(
        model, scores, prompts=prompts, metric=LogitDiff, fractions=(0.5,), selection="greedy"
    )
    assert abs(greedy.recovery[-1] - 1) < 1e-6


def test_circuit_json_frame_figure(tmp_path):
    c = Circuit(
        nodes=("a2.1",),
        edges=(("a0.0", "a1.0.k"), ("a1.0", "logits"), ("m0", "a2.1.q")),
        scores={"a2.1": 0.5, "a0.0->a1.0.k": -0.25},
        groups={"movers": ("a1.0",)},
        positions={"a1.0": "END"},
        provenance={"method": "test"},
    )
    assert c.nodes == ("a2.1", "a0.0", "a1.0", "m0")
    assert c.heads == [(0, 0), (1, 0), (2, 1)] and c.mlps == [0]
    back = Circuit.load(c.save(tmp_path / "c.json"))
    assert back.to_dict() == c.to_dict()
    df = c.to_frame()
    assert len(df) == 4 + 3 and set(df["kind"]) == {"node", "edge"}
    assert df.set_index("name").loc["a1.0", "group"] == "movers"
    fig = c.figure(n_layers=3, n_heads=2)
    assert len(fig.data) >= 4
    with pytest.raises(ValueError, match="not 'embed'"):
        Circuit(nodes=("head3",))
    with pytest.raises(ValueError, match="group"):
        Circuit(nodes=("a0.0",), groups={"g": ("a1.1",)})
    g = Graph(n_layers=2, n_heads=2, n_kv_heads=2)
    assert g.sources == ["embed", "a0.0", "a0.1", "m0", "a1.0", "a1.1", "m1"]
    assert len(g.destinations) == 2 * (2 + 2 + 2 + 1) + 1
    # a head feeds its own layer's MLP but not its own layer's heads
    assert (
        g.valid[g.src_index["a0.1"], g.dst_index["m0"]]
        and not g.valid[g.src_index["a0.1"], g.dst_index["a0.0.q"]]
    )
    par = Graph(n_layers=2, n_heads=2, n_kv_heads=2, parallel_attn_mlp=True)
    assert not par.valid[par.src_index["a0.1"], par.dst_index["m0"]]


@pytest.mark.parametrize("method", ["backward", "forward"])
def test_complete_circuit_reaches_target(tiny_models, prompts, method):
    from interp.circuits import complete_circuit

    model = tiny_models("gpt2", "tl")
    cfg = EvalConfig(level="node", ablation="mean", mean_by=None)
    start = Circuit(nodes=("a1.0",), positions={"a1.0": "END"})
    full = evaluate_circuit(model, start, prompts=prompts, metric=LogitDiff, config=cfg)
    target = full.empty + 0.9 * (full.model - full.empty)
    grown, trace = complete_circuit(
        model, start, prompts=prompts, metric=LogitDiff, target=target, config=cfg, method=method
    )
    added = grown.groups.get("completion", ())
    assert grown.nodes[0] == "a1.0" and grown.positions == {"a1.0": "END"}
    got = circuit_values(model, [grown], prompts=prompts, metric=LogitDiff, config=cfg).mean().item()
    assert got >= target - 1e-6 and abs(got - trace[-1]) < 1e-5
    if method == "backward":  # no added head can go: each removal falls below the target
        fewer = [
            Circuit(nodes=tuple(n for n in grown.nodes if n != a), positions=grown.positions) for a in added
        ]
        if fewer:
            vals = circuit_values(model, fewer, prompts=prompts, metric=LogitDiff, config=cfg).mean(-1)
            assert bool((vals < target).all())

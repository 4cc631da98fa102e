"""The context/prior knob (Minder et al. 2025): CCS data, TIP, layer search, DAS, steering, separation.

Oracles: a synthetic monotone oracle for the layer search; projection algebra; pyvene's
`RotatedSpaceIntervention` for the interchange intervention; vanilla activation patching for a full-rank
identity rotation. Models are tiny random GPT-2s with the task vocabulary (no downloads).
"""

import dataclasses
import itertools
import json
import math

import pytest
import torch
from helpers import interrupted_then_resumed

from interp.sites import Site
from interp.subspace import (
    SETTINGS,
    CCSDataError,
    DASConfig,
    InterchangeData,
    LayerSearchConfig,
    Probe,
    Subspace,
    auroc,
    ccs_scores,
    check_ccs,
    check_transfer,
    correlation,
    fit_knob,
    identity_prompt,
    intent_swap_data,
    interchange_accuracy,
    knob_pairs,
    make_ccs,
    mean_difference_subspace,
    no_intent_data,
    patchscope,
    run_budget,
    search_layers,
    search_setting,
    separation,
    setting_pairs,
    steer_sweep,
    steered_pair_accuracy,
    train_das,
)
from interp.subspace.das import resid_at_last
from interp.subspace.forward import forward_last, last_token_hook
from interp.subspace.layer_search import head_patch_probe
from interp.subspace.steer import steering_hooks


@pytest.fixture(scope="module")
def ccs_tokenizer():
    from interp.models.tokenizer import build_word_tokenizer
    from interp.tasks.words import vocabulary

    return build_word_tokenizer(vocabulary())


@pytest.fixture(scope="module")
def ccs_dirs(tmp_path_factory, ccs_tokenizer):
    """Two tiny GPT-2s (a 'fine-tuned' and a 'base' one: different seeds) and one of another width."""
    from interp.models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("ccs")
    kw = dict(n_layers=3, n_heads=2, d_model=32)
    return {
        "ft": build_tiny_checkpoint("gpt2", root / "ft", ccs_tokenizer, seed=1, **kw),
        "base": build_tiny_checkpoint("gpt2", root / "base", ccs_tokenizer, seed=2, **kw),
        "wide": build_tiny_checkpoint(
            "gpt2", root / "wide", ccs_tokenizer, seed=3, n_layers=2, n_heads=2, d_model=48
        ),
    }


@pytest.fixture(scope="module")
def model(ccs_dirs):
    from interp import load_model

    return load_model(ccs_dirs["ft"], device="cpu")


@pytest.fixture(scope="module")
def ccs(ccs_tokenizer):
    return make_ccs(ccs_tokenizer, n_pairs=6, seed=0, format="instruction")


@pytest.fixture(scope="module")
def ccs_none(ccs_tokenizer):
    return make_ccs(ccs_tokenizer, n_pairs=6, seed=0, format="none")


# ------------------------------------------------------------------------------------------------ CCS data
def test_formats_share_the_same_questions(ccs_tokenizer):
    sets = {
        f: make_ccs(ccs_tokenizer, n_pairs=4, seed=3, format=f) for f in ("instruction", "weight", "none")
    }
    keys = {
        f: [(m["entity"], m["context"], m["template"]) for m in s.prompts.metadata] for f, s in sets.items()
    }
    assert keys["instruction"] == keys["weight"] == keys["none"]
    for s in sets.values():
        assert [s.prompts.metadata[int(i)]["intent"] for i in s.pairs[:, 0]] == ["context"] * 4
        assert bool((s.context_answer != s.prior_answer).all())
    none = sets["none"]
    assert all(none.prompts.prompts[int(a)] == none.prompts.prompts[int(b)] for a, b in none.pairs)


def test_scores_follow_the_pair_definition(ccs):
    n = len(ccs)
    always_ctx = torch.empty(len(ccs.prompts), dtype=torch.long)
    always_ctx[ccs.pairs[:, 0]], always_ctx[ccs.pairs[:, 1]] = ccs.context_answer, ccs.context_answer
    s = ccs_scores(always_ctx, ccs)
    assert (s.pair_acc, s.context_acc, s.prior_acc, s.context_share, s.prior_share) == (
        0.0,
        1.0,
        0.0,
        1.0,
        0.0,
    )
    right = ccs.prompts.answer_ids.clone()
    right[ccs.pairs[0, 1]] = ccs.context_answer[0]  # one prior-intent prompt wrong
    s = ccs_scores(right, ccs)
    assert s.pair_acc == pytest.approx((n - 1) / n) and s.context_acc == 1.0
    assert s.prior_acc == pytest.approx((n - 1) / n)


def test_bad_pairs_are_rejected_with_count_and_examples(ccs):
    ps = ccs.prompts
    answers = ps.answer_ids.clone()
    answers[ccs.pairs[:2, 1]] = ps.answer_ids[ccs.pairs[:2, 0]]  # two pairs: same answer under both intents
    with pytest.raises(CCSDataError, match=r"2 of 6 pairs have the same answer token.*e\.g\."):
        check_ccs(dataclasses.replace(ps, answer_ids=answers))
    meta = [dict(m) for m in ps.metadata]
    del meta[3]["intent"]
    with pytest.raises(CCSDataError, match=r"1 of 12 prompts have no intent"):
        check_ccs(dataclasses.replace(ps, metadata=meta))
    no_intent_pos = {k: v for k, v in ps.positions.items() if k != "intent"}
    with pytest.raises(CCSDataError, match=r"all 12 prompts lack the key position\(s\) \['intent'\]"):
        check_ccs(dataclasses.replace(ps, positions=no_intent_pos))
    with pytest.raises(CCSDataError, match="lack the key position"):
        check_ccs(ps, needs=["nowhere"])


def test_split_keeps_pairs_together(ccs):
    train, test = ccs.split(0.34, seed=0)
    assert len(train) + len(test) == len(ccs) and len(test) == 2
    ids = lambda s: {m["pair_id"] for m in s.prompts.metadata}  # noqa: E731
    assert not ids(train) & ids(test)


# ------------------------------------------------------------------------------------------------ TIP
def test_identity_prompt_uses_known_tokens(model):
    prompt = identity_prompt(model)
    assert " : " in prompt.text and prompt.text.endswith("?")  # no "->" or newline token in a word vocabulary
    assert model.tokenizer.unk_token_id not in prompt.tokens.tolist()


def test_patchscope_with_own_residual_is_the_unpatched_run(model):
    prompt = identity_prompt(model)
    layers = list(range(model.cfg.n_layers))
    tokens = prompt.tokens[None]
    end = torch.tensor([len(prompt.tokens) - 1])
    logits, acts = forward_last(model, tokens, end, read=[Site("resid_post", layer) for layer in layers])
    resid = torch.stack([acts[f"blocks.{layer}.hook_resid_post"] for layer in layers])  # (layer, 1, d)
    out = patchscope(model, resid.repeat(1, 3, 1), layers, prompt=prompt, batch_size=4)  # chunks span layers
    torch.testing.assert_close(
        out, logits.log_softmax(-1)[None].expand(len(layers), 3, -1), atol=1e-5, rtol=1e-5
    )


# ------------------------------------------------------------------------------------------------ layer search
def _oracle(n_layers: int, lo: int, hi: int, extra: tuple[int, ...], calls: list):
    """Monotone: the TIP score passes iff the set holds [lo, hi); the output flips to the source only when it
    also holds `extra`; the TIP P(source) drops at the first layer of `extra` still missing."""
    need = set(range(lo, hi))

    def probe(layers: tuple[int, ...]) -> Probe:
        calls.append(layers)
        have = set(layers)
        p = [0.95 if need <= have else 0.5] * n_layers
        missing = sorted(set(extra) - have)
        if need <= have and missing:
            p = [0.95 if k < missing[0] else 0.6 for k in range(n_layers)]
        done = need <= have and not missing
        return Probe(layer_p_src=tuple(p), p_src=0.9 if done else 0.2, p_tgt=0.05 if done else 0.7)

    return probe


def test_search_finds_the_true_minimal_range_within_budget():
    for n_layers in (1, 2, 3, 5, 8, 13):
        for lo, hi in itertools.combinations(range(n_layers + 1), 2):
            for extra in [
                (),
                *[(k,) for k in range(hi, n_layers)],
                *[(k, k + 2) for k in range(hi, n_layers - 2)],
            ]:
                calls: list = []
                res = search_layers(_oracle(n_layers, lo, hi, extra, calls), n_layers, LayerSearchConfig())
                assert res.found and res.layers == tuple(range(lo, hi)) + extra, (n_layers, lo, hi, extra)
                assert (res.upper, res.lower) == (hi, lo)
                assert res.runs == len(calls) == len(set(calls)) == len(res.trace)
                assert res.runs <= run_budget(n_layers) == 2 * math.ceil(math.log2(n_layers)) + n_layers


def test_search_reports_no_range_when_nothing_passes():
    res = search_layers(lambda layers: Probe(layer_p_src=(0.1,) * 6, p_src=0.1, p_tgt=0.8), 6)
    assert not res.found and res.runs <= run_budget(6)


def test_setting_pairs(ccs, ccs_none):
    for setting in SETTINGS:
        pp = setting_pairs(ccs, setting)
        assert bool((pp.source_answer != pp.target_answer).all()) and len(pp) + pp.dropped == len(ccs)
    cp = setting_pairs(ccs, "cp")
    assert torch.equal(cp.source_answer, ccs.context_answer) and torch.equal(
        cp.target_answer, ccs.prior_answer
    )
    with pytest.raises(ValueError, match="state the intent"):
        setting_pairs(ccs_none, "cp")
    with pytest.raises(ValueError, match="unknown search setting"):
        setting_pairs(ccs, "ctx")


def test_head_patch_probe_with_source_equal_target_is_unpatched(model, ccs):
    ps = ccs.prompts
    rows = ccs.rows("prior")
    pp = InterchangeData(
        setting="same",
        source_tokens=ps.clean[rows],
        source_end=ps.end[rows],
        target_tokens=ps.clean[rows],
        target_end=ps.end[rows],
        source_answer=ps.answer_ids[rows],
        target_answer=ps.wrong_ids[rows],
    )
    probe = head_patch_probe(model, pp)
    logits, _ = forward_last(model, ps.clean[rows], ps.end[rows])
    expected = logits.softmax(-1).gather(-1, ps.answer_ids[rows, None]).mean()
    for layers in [(), (0,), (0, 1, 2)]:
        assert probe(layers).p_src == pytest.approx(float(expected), abs=1e-6)


def test_search_setting_on_a_model(model, ccs):
    res = search_setting(
        model, ccs, "pc", LayerSearchConfig(threshold=0.0)
    )  # any patch passes: ub = 1, lb = 0
    assert res.found and res.upper == 1 and res.lower == 0 and res.runs <= res.budget
    assert res.to_frame().shape[0] == res.runs


# ------------------------------------------------------------------------------------------------ DAS algebra
@pytest.mark.parametrize("rank", [1, 3])
def test_subspace_algebra(rank):
    s = Subspace(16, rank, seed=0)
    u, p = s.basis, s.projection()
    torch.testing.assert_close(u.T @ u, torch.eye(rank), atol=1e-5, rtol=0)
    torch.testing.assert_close(p @ p, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(p, p.T)
    h, h_src = torch.randn(5, 16), torch.randn(5, 16)
    torch.testing.assert_close(s.interchange(h, h), h)
    out = s.interchange(h, h_src)
    torch.testing.assert_close(s.coordinates(out), s.coordinates(h_src), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out - out @ p, h - h @ p, atol=1e-5, rtol=1e-5)
    c = torch.arange(rank, dtype=torch.float32) + 2.5
    steered = s.set_coordinates(h, c)
    torch.testing.assert_close(s.coordinates(steered), c.expand(5, rank), atol=1e-5, rtol=0)
    torch.testing.assert_close(steered - steered @ p, h - h @ p, atol=1e-5, rtol=1e-5)


def test_full_rank_identity_rotation_is_vanilla_interchange():
    s = Subspace(8, 8, basis=torch.eye(8))
    h, h_src = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(s.interchange(h, h_src), h_src)


@pytest.mark.parametrize("rank", [1, 4])
def test_interchange_equals_pyvene_rotated_space_intervention(rank):
    from pyvene.models.interventions import RotatedSpaceIntervention

    torch.manual_seed(0)
    peer = RotatedSpaceIntervention(embed_dim=12)
    peer.set_interchange_dim(rank)  # swap the first `rank` rotated coordinates
    rotation = peer.rotate_layer.weight.detach()  # (d, d) orthogonal; rotated = x @ R
    ours = Subspace(12, rank, basis=rotation[:, :rank])
    base, source = torch.randn(4, 12), torch.randn(4, 12)
    with torch.no_grad():
        expected = peer(base.clone(), source.clone())
    torch.testing.assert_close(ours.interchange(base, source), expected, atol=1e-5, rtol=1e-5)


def test_bad_subspace_inputs():
    with pytest.raises(ValueError, match="orthonormal"):
        Subspace(4, 1, basis=torch.ones(4, 1))
    with pytest.raises(ValueError, match="rank"):
        Subspace(4, 5)
    with pytest.raises(ValueError, match="zero direction"):
        Subspace.from_direction(torch.zeros(4))


# ------------------------------------------------------------------------------------------------ DAS on a model
def test_steering_sets_the_coordinate_at_the_last_token_only(model, ccs):
    ps = ccs.prompts
    tokens, end, b = ps.clean[:3], ps.end[:3], torch.arange(3)
    layer, site = 1, Site("resid_post", 1)
    s = Subspace(model.cfg.d_model, 1, seed=0)
    _, before = model.run_with_cache(tokens, [site])
    _, after = model.run_with_cache(tokens, [site], hooks=steering_hooks(s, layer, 3.0, end)(b))
    h0, h1 = before[site.hook_name], after[site.hook_name]  # the cache reads the site after the steering hook
    torch.testing.assert_close(s.coordinates(h1[b, end])[:, 0], torch.full((3,), 3.0), atol=1e-5, rtol=0)
    p = s.projection()
    torch.testing.assert_close(h1[b, end] - h1[b, end] @ p, h0[b, end] - h0[b, end] @ p, atol=1e-5, rtol=1e-5)
    others = torch.ones(h0.shape[:2], dtype=torch.bool)
    others[b, end] = False
    torch.testing.assert_close(h1[others], h0[others])


def test_full_rank_das_equals_vanilla_patching(model, ccs):
    data = intent_swap_data(ccs)
    layer = 1
    s = Subspace(model.cfg.d_model, model.cfg.d_model, basis=torch.eye(model.cfg.d_model))
    h_src = resid_at_last(model, data.source_tokens, data.source_end, layer)
    site = Site("resid_post", layer)
    ours, _ = forward_last(
        model,
        data.target_tokens,
        data.target_end,
        hooks=lambda rows: [
            (site, last_token_hook(data.target_end[rows], lambda at: s.interchange(at, h_src[rows])))
        ],
    )
    vanilla, _ = forward_last(
        model,
        data.target_tokens,
        data.target_end,
        hooks=lambda rows: [(site, last_token_hook(data.target_end[rows], lambda at: h_src[rows]))],
    )
    torch.testing.assert_close(ours, vanilla, atol=1e-4, rtol=1e-4)
    h_own = resid_at_last(model, data.target_tokens, data.target_end, layer)  # source = target: a no-op
    rank1 = Subspace(model.cfg.d_model, 1, seed=0)
    noop, _ = forward_last(
        model,
        data.target_tokens,
        data.target_end,
        hooks=lambda rows: [
            (site, last_token_hook(data.target_end[rows], lambda at: rank1.interchange(at, h_own[rows])))
        ],
    )
    plain, _ = forward_last(model, data.target_tokens, data.target_end)
    torch.testing.assert_close(noop, plain, atol=1e-4, rtol=1e-4)


def test_train_das_runs_and_keeps_an_orthonormal_basis(model, ccs):
    data = intent_swap_data(ccs)
    res = train_das(model, data, DASConfig(layer=1, rank=1, epochs=2, batch_size=4, lr=1e-2))
    assert len(res.losses) == 2 * math.ceil(len(data) / 4) and all(math.isfinite(x) for x in res.losses)
    u = res.subspace.basis.detach()
    assert float(u.norm()) == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(u, Subspace(model.cfg.d_model, 1, seed=0).basis.detach())  # it trained
    assert all(p.requires_grad for p in model.tl.parameters())  # weights unfrozen again
    acc = interchange_accuracy(model, res.subspace, 1, data)
    assert 0.0 <= acc <= 1.0
    dm = mean_difference_subspace(model, ccs, 1)
    assert dm.rank == 1 and 0.0 <= interchange_accuracy(model, dm, 1, data) <= 1.0


def test_no_intent_pairs_send_each_intent_into_the_no_intent_twin(ccs, ccs_none):
    data = no_intent_data(ccs, ccs_none)
    n = len(ccs)
    assert len(data) == 2 * n
    for half, intent in enumerate(("context", "prior")):
        rows = slice(half * n, (half + 1) * n)
        torch.testing.assert_close(data.target_tokens[rows], ccs_none.prompts.clean[ccs_none.rows("context")])
        torch.testing.assert_close(data.source_tokens[rows], ccs.prompts.clean[ccs.rows(intent)])
        want = ccs.context_answer if intent == "context" else ccs.prior_answer
        torch.testing.assert_close(data.source_answer[rows], want)
    assert knob_pairs("no_intent", ccs, ccs_none).source_answer.tolist() == data.source_answer.tolist()
    assert (
        knob_pairs("intent_swap", ccs).source_answer.tolist() == intent_swap_data(ccs).source_answer.tolist()
    )


def test_no_intent_full_rank_interchange_is_the_transplant(model, ccs, ccs_none):
    """Full-rank interchange on no-intent targets writes the whole residual: its accuracy is the mean of the
    two transplant shares (an independent implementation of the same patch)."""
    from interp.subspace import transplant_shares

    full = Subspace(model.cfg.d_model, model.cfg.d_model, basis=torch.eye(model.cfg.d_model))
    acc = interchange_accuracy(model, full, 1, no_intent_data(ccs, ccs_none))
    shares = transplant_shares(model, 1, ccs, ccs_none)
    assert acc == pytest.approx((shares["context_share"] + shares["prior_share"]) / 2)


def test_knob_pairs_reject_bad_input_before_compute(ccs, ccs_none, ccs_tokenizer):
    with pytest.raises(ValueError, match="unknown DAS pairs 'swap'; valid: intent_swap, no_intent"):
        knob_pairs("swap", ccs)
    with pytest.raises(ValueError, match="needs the no-intent twins"):
        knob_pairs("no_intent", ccs)
    other = make_ccs(ccs_tokenizer, n_pairs=6, seed=9, format="none")
    with pytest.raises(CCSDataError, match="not the same \\(context, query\\) pairs"):
        no_intent_data(ccs, other)
    with pytest.raises(CCSDataError, match="must state no intent"):
        no_intent_data(ccs, ccs)
    with pytest.raises(ValueError, match="unknown DAS pairs"):  # before the model is touched
        fit_knob(None, ccs, ccs, 0, pairs="swap")
    with pytest.raises(ValueError, match="needs the no-intent twins"):
        fit_knob(None, ccs, ccs, 0, pairs="no_intent", train_none=ccs_none)


def test_fit_knob_on_no_intent_pairs(model, ccs, ccs_none):
    sub, losses, acc = fit_knob(
        model,
        ccs,
        ccs,
        1,
        pairs="no_intent",
        train_none=ccs_none,
        test_none=ccs_none,
        epochs=2,
        batch_size=4,
        lr=1e-2,
        confident_only=False,
    )
    assert sub.rank == 1 and float(sub.basis.norm()) == pytest.approx(1.0, abs=1e-5)
    assert len(losses) == 2 * math.ceil(2 * len(ccs) / 4)
    assert acc == pytest.approx(interchange_accuracy(model, sub, 1, no_intent_data(ccs, ccs_none)))


# ------------------------------------------------------------------------------------------------ steering
def test_steer_sweep_and_transfer(model, ccs_dirs, ccs, ccs_none):
    from interp import load_model

    s = mean_difference_subspace(model, ccs, 2)
    curve = steer_sweep(model, s, 2, ccs_none, [-5.0, 0.0, 5.0])
    assert len(curve.context_share) == 3
    assert all(0 <= a + b <= 1 for a, b in zip(curve.context_share, curve.prior_share, strict=True))
    assert curve.to_frame().shape == (3, 6)
    acc = steered_pair_accuracy(model, s, 2, ccs_none, c_context=-5.0, c_prior=5.0)
    assert 0.0 <= acc <= 1.0
    base = load_model(ccs_dirs["base"], device="cpu")
    assert check_transfer(s, base, 2) is None
    wide = load_model(ccs_dirs["wide"], device="cpu")
    assert "d_model 48" in check_transfer(s, wide, 2)
    with pytest.raises(ValueError, match="cannot steer"):
        steer_sweep(wide, s, 2, ccs_none, [1.0])
    with pytest.raises(ValueError, match="without an intent"):
        steer_sweep(model, s, 2, ccs, [1.0])


# ------------------------------------------------------------------------------------------------ separation
def test_auroc_and_correlation():
    lo, hi = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0])
    assert auroc(lo, hi) == 1.0 and auroc(hi, lo) == 0.0 and auroc(lo, lo) == 0.5
    assert math.isnan(auroc(lo, torch.tensor([])))
    from interp.subspace import Separation

    seps = [
        Separation(name=str(i), by="intent", context=[], prior=[], auroc=a, cohens_d=0.0, pair_acc=p)
        for i, (a, p) in enumerate([(0.5, 0.1), (0.7, 0.5), (0.9, 0.9)])
    ]
    out = correlation(seps)
    assert out["n"] == 3 and out["pearson"] == pytest.approx(
        float(torch.corrcoef(torch.tensor([[0.5, 0.7, 0.9], [0.1, 0.5, 0.9]]))[0, 1]), abs=1e-6
    )
    assert math.isnan(correlation(seps[:2])["pearson"])


def test_separation_on_a_model(model, ccs):
    s = mean_difference_subspace(model, ccs, 2)
    sep = separation(model, s, 2, ccs, name="ft")
    assert len(sep.context) == len(sep.prior) == len(ccs)
    assert sep.auroc > 0.5  # the mean-difference direction points from context to prior on its own data
    beh = separation(model, s, 2, ccs, by="behaviour")
    assert len(beh.context) + len(beh.prior) <= 2 * len(ccs)


# ------------------------------------------------------------------------------------------------ experiment
CONTRACT = (
    "layer_range",
    "layer_search_runs",
    "das_layer",
    "interchange_acc",
    "steer_context_share",
    "steer_prior_share",
    "transfer_context_share",
    "transfer_prior_share",
    "pair_acc_ft",
    "pair_acc_base",
)


@pytest.mark.parametrize("das_pairs", ["intent_swap", "no_intent"])
def test_context_knob_end_to_end_on_tiny_models(ccs_dirs, tmp_path, monkeypatch, das_pairs):
    from interp.runner import run_experiment

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")
    config = {
        "experiment": "context_knob",
        "model": str(ccs_dirs["ft"]),
        "base": str(ccs_dirs["base"]),
        "transfer_to": [str(ccs_dirs["wide"])],
        "interpolations": [0.5],
        "n_train_pairs": 8,
        "n_test_pairs": 6,
        "n_search_pairs": 4,
        "compare_ranks": [2],
        "epochs": 1,
        "confident_only": False,
        "n_c": 4,
        "das_pairs": das_pairs,
    }
    res = run_experiment(config, tmp_path / "run")
    assert set(CONTRACT) <= set(res)
    assert res["das_pairs"] == das_pairs and ("interchange_acc_intent_swap" in res) == (
        das_pairs == "no_intent"
    )
    assert res["layer_search_runs"] <= res["layer_search_budget"]
    assert res["steer_c_context"] < 0 < res["steer_c_prior"]
    assert res["transfer_wide_note"].startswith("not applied") and res["separation_n_models"] == 3
    figures = {p.stem for p in (tmp_path / "run" / "figures").glob("*.html")}
    assert figures == {"layer_search_trace", "das_training", "steering_curve", "separation_histogram"}
    again = run_experiment(config, tmp_path / "run")  # resumes from the stored steps
    assert again == res
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["status"] == "finished" and prov["steps_run"] == [] and prov["steps_skipped"]
    if das_pairs == "no_intent":
        killed, done, _ = interrupted_then_resumed(config, tmp_path / "killed", after_steps=3)
        assert killed == res and done == ["scores", "layer_search", "das"]


def test_steering_agrees_across_backends(ccs_dirs, model, ccs_none):
    from interp import load_model

    nn_model = load_model(ccs_dirs["ft"], backend="nnsight", device="cpu")
    s = Subspace(model.cfg.d_model, 1, seed=0)
    tokens, end = ccs_none.prompts.clean[:4], ccs_none.prompts.end[:4]
    tl_logits, _ = forward_last(model, tokens, end, hooks=steering_hooks(s, 1, 2.0, end))
    nn_logits, _ = forward_last(nn_model, tokens, end, hooks=steering_hooks(s, 1, 2.0, end))
    torch.testing.assert_close(nn_logits, tl_logits, atol=1e-4, rtol=1e-4)


def test_context_knob_config_errors_come_before_compute():
    from interp.config import ConfigError
    from interp.runner import resolve_config

    with pytest.raises(ConfigError, match=r"context_knob.settings: \('ctx',\) has item \[0\] = 'ctx'"):
        resolve_config({"experiment": "context_knob", "settings": ["ctx"]})
    with pytest.raises(ConfigError, match="c_values: \\[1.0, 2.0\\] needs a negative and a positive"):
        resolve_config({"experiment": "context_knob", "c_values": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="Did you mean 'das_layer'"):
        resolve_config({"experiment": "context_knob", "das_layr": 3})
    with pytest.raises(
        ConfigError, match="das_pairs: 'both' is not valid. Valid: 'intent_swap', 'no_intent'"
    ):
        resolve_config({"experiment": "context_knob", "das_pairs": "both"})


def test_interpolate_ends_are_the_two_models(ccs_dirs, model, ccs):
    from interp import load_model
    from interp.models.interpolate import interpolate

    base = load_model(ccs_dirs["base"], device="cpu")
    tokens, end = ccs.prompts.clean[:3], ccs.prompts.end[:3]
    for alpha, ref in ((0.0, base), (1.0, model)):
        mixed, _ = forward_last(interpolate(base, model, alpha), tokens, end)
        torch.testing.assert_close(mixed, forward_last(ref, tokens, end)[0], atol=1e-5, rtol=1e-5)


def test_transplant_at_the_last_layer_reproduces_the_instruction_answers():
    """Writing the paired instruction prompt's whole final residual into the no-instruction prompt must give the
    instruction prompt's own answers: shares equal its context and prior accuracy (organism/ccs-ft)."""
    from interp import load_model
    from interp.subspace import ccs_sets, evaluate_ccs, transplant_shares

    ft = load_model("organism/ccs-ft", device="cpu")
    sets = ccs_sets(ft.tokenizer, n_pairs=24, seed=5, formats=("instruction", "none"))
    last = ft.cfg.n_layers - 1
    got = transplant_shares(ft, last, sets["instruction"], sets["none"])
    want = evaluate_ccs(ft, sets["instruction"])
    assert got == {
        "context_share": pytest.approx(want.context_acc),
        "prior_share": pytest.approx(want.prior_acc),
    }
    assert want.prior_acc > 0.5  # not a comparison of zeros
    early = transplant_shares(ft, 0, sets["instruction"], sets["none"])
    assert 0.0 <= early["prior_share"] <= 1.0
    other = ccs_sets(ft.tokenizer, n_pairs=24, seed=6, formats=("none",))["none"]
    with pytest.raises(ValueError, match="same \\(context, query\\) pairs"):
        transplant_shares(ft, 0, sets["instruction"], other)
    with pytest.raises(ValueError, match="state the intent"):
        transplant_shares(ft, 0, sets["none"], sets["none"])

"""Readout inference for plain callables: a sweep with a lambda equals the same sweep on full logits.

The oracle is the full-logits path itself: the same lambda applied to `logits.detach()` has no gradient, so the
probe is inconclusive and the engines hand it the full logits of every cell.
"""

import logging

import pytest
import torch
from helpers import swap_batch

from interp.patching import patch_sweep
from interp.patching.readout import as_readout

B, T = 3, 9


@pytest.fixture(scope="module")
def pair():
    return swap_batch(B, T, seed=2, swap_at=(2, 6))


def _metrics(ans, wrong, top=None):
    """`top`: the answers the argmax accuracy checks (the clean run's predictions, so that it varies)."""
    b = torch.arange(B)
    top = ans if top is None else top
    per_row = torch.tensor([T - 1, 5, 7])  # a different read position per prompt
    return {
        "logit_diff_last": lambda lg: lg[b, -1, ans] - lg[b, -1, wrong],
        "log_prob_answer": lambda lg: lg[:, -1].log_softmax(-1)[b, ans],
        "prob_answer": lambda lg: lg[:, -1].softmax(-1)[b, ans],
        "several_positions": lambda lg: lg[b, -1, ans] - lg[b, -2, wrong] + 0.5 * lg[b, 3, ans],
        "argmax_accuracy": lambda lg: (lg[:, -1].argmax(-1) == top).float(),
        "per_row_positions": lambda lg: lg[b, per_row, ans] - lg[b, per_row, wrong],
        "item_based": lambda lg: torch.tensor([lg[i, -1, ans[i]].item() for i in range(B)]),
    }


INFERRED = {"logit_diff_last", "log_prob_answer", "prob_answer", "several_positions", "per_row_positions"}


@pytest.mark.parametrize("name", list(_metrics(torch.zeros(B), torch.zeros(B))))
@pytest.mark.parametrize("engine", ["tl", "generic"])
@pytest.mark.parametrize(("component", "per_head"), [("resid_pre", False), ("z", True)])
def test_lambda_equals_full_logits(tiny_models, pair, name, engine, component, per_head):
    clean, corrupt, ans, wrong = pair
    model = tiny_models("gpt2", "tl")
    with torch.no_grad():
        top = model(clean)[:, -1].argmax(-1)
    fn = _metrics(ans, wrong, top)[name]
    kw = dict(clean=clean, corrupt=corrupt, component=component, per_head=per_head, engine=engine)
    got = patch_sweep(model, metric=fn, **kw)
    ref = patch_sweep(model, metric=lambda lg: fn(lg.detach()), **kw)  # full logits for every cell
    assert got.scores.abs().max() > 0
    assert (got.scores - ref.scores).abs().max().item() <= 1e-6, name
    assert got.baseline == pytest.approx(ref.baseline, abs=1e-6)


def test_what_the_probe_finds(pair):
    _, _, ans, wrong = pair
    ms = _metrics(ans, wrong)
    dev = torch.device("cpu")

    def ro(name):
        return as_readout(ms[name], batch=B, seq_len=T, d_vocab=30, device=dev)

    r = ro("logit_diff_last")
    assert r.inferred and torch.equal(r.positions, torch.full((B, 1), T - 1))
    assert {tuple(sorted(set(row.tolist()))) for row in r.token_ids} == {
        tuple(sorted({int(a), int(w)})) for a, w in zip(ans, wrong, strict=True)
    }
    lp = ro("log_prob_answer")
    assert lp.inferred and lp.token_ids is None and lp.positions.shape == (B, 1)  # the whole last position
    assert sorted(ro("several_positions").positions[0].tolist()) == [3, T - 2, T - 1]
    assert ro("per_row_positions").positions[:, 0].tolist() == [T - 1, 5, 7]
    for name in ("argmax_accuracy", "item_based"):
        assert ro(name).needs_full_logits, name
    data_dependent = as_readout(
        lambda lg: lg[:, -1].max(-1).values, batch=B, seq_len=T, d_vocab=30, device=dev
    )
    assert data_dependent.needs_full_logits and "data-dependent" in data_dependent.note


def test_a_read_set_that_changes_falls_back_once(tiny_models, pair, caplog):
    """A metric that reads other entries on real logits than on the probes is caught on the first real chunk:
    full logits from then on, one debug line, the result of the metric it really is."""
    clean, corrupt, ans, wrong = pair
    b = torch.arange(B)
    calls = {"n": 0}

    def shifty(lg):
        calls["n"] += 1
        return lg[b, -1, ans if calls["n"] <= 2 else wrong]  # the two probes see `ans`, real runs `wrong`

    model = tiny_models("gpt2", "tl")
    kw = dict(clean=clean, corrupt=corrupt, component="resid_pre")
    with caplog.at_level(logging.DEBUG, logger="interp.patching.readout"):
        got = patch_sweep(model, metric=shifty, **kw)
    ref = patch_sweep(model, metric=lambda lg: lg[b, -1, wrong].detach(), **kw)
    assert (got.scores - ref.scores).abs().max().item() <= 1e-6
    lines = [r for r in caplog.records if "full logits" in r.getMessage()]
    assert len(lines) == 1 and "first chunk" in lines[0].getMessage()


def test_probe_leaves_the_global_random_state_alone(pair):
    _, _, ans, wrong = pair
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    as_readout(
        _metrics(ans, wrong)["log_prob_answer"], batch=B, seq_len=T, d_vocab=30, device=torch.device("cpu")
    )
    assert torch.equal(torch.rand(3), before)


@pytest.mark.parametrize("ig_steps", [0, 3])
def test_eap_with_a_lambda_equals_eap_with_the_metric_object(tiny_models, pair, ig_steps):
    """EAP's forward reads the metric through the same readout, and its gradient flows through the lambda."""
    from interp.circuits import eap

    clean, corrupt, ans, wrong = pair
    model = tiny_models("gpt2", "tl")

    class Declared:
        positions = torch.full((B,), T - 1)
        token_ids = torch.stack([ans, wrong], 1)

        def from_gathered(self, x):
            return x[..., 0] - x[..., 1]

        def __call__(self, lg):
            return lg[torch.arange(B), -1, ans] - lg[torch.arange(B), -1, wrong]

    kw = dict(clean=clean, corrupt=corrupt, ig_steps=ig_steps)
    ref = eap(model, metric=Declared(), **kw)
    got = eap(model, metric=_metrics(ans, wrong)["logit_diff_last"], **kw)
    assert ref.scores.abs().max() > 0
    assert torch.allclose(got.scores, ref.scores, atol=1e-6)
    assert got.baseline == pytest.approx(ref.baseline, abs=1e-6)

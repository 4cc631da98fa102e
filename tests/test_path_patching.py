"""path_patch against a plain three-pass oracle, one sender at a time."""

import pytest
import torch
from helpers import last_logit_diff as _metric
from helpers import swap_batch

from interp.patching import path_patch
from interp.sites import Site

B, T = 3, 9


@pytest.fixture(scope="module")
def data():
    return swap_batch(B, T, seed=2, swap_at=(2, 5))


def oracle(model, clean, corrupt, metric, sender, receiver=None, r_pos=None, freeze_mlps=False):
    """Wang et al. App. B, literally: cache both runs, then two more runs for this one sender."""
    L = model.cfg.n_layers
    sites = [Site("z", layer) for layer in range(L)] + [Site("mlp_out", layer) for layer in range(L)]
    _, cc = model.run_with_cache(clean, sites)
    _, kc = model.run_with_cache(corrupt, sites)

    def z_hook(layer):
        def fn(act, site):
            out = cc[site.hook_name].clone()
            if layer == sender[0]:
                out[:, :, sender[1]] = kc[site.hook_name][:, :, sender[1]]
            return out

        return fn

    hooks = [(Site("z", layer), z_hook(layer)) for layer in range(L)]
    if freeze_mlps:
        hooks += [(Site("mlp_out", layer), lambda a, s: cc[s.hook_name]) for layer in range(L)]
    if receiver is None:
        return metric(model.run_with_hooks(clean, hooks)).mean()
    _, rec = model.run_with_cache(clean, [receiver], hooks=hooks)

    def recv_hook(act, site):
        out = act.clone()
        rows = torch.arange(B)
        if receiver.head is None:
            out[rows, r_pos] = rec[receiver.hook_name][rows, r_pos]
        else:
            out[rows, r_pos, receiver.head] = rec[receiver.hook_name][rows, r_pos, receiver.head]
        return out

    return metric(model.run_with_hooks(clean, [(Site(receiver.component, receiver.layer), recv_hook)])).mean()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("freeze", ["heads", "heads+mlps"])
def test_direct_to_logits_equals_oracle(tiny_models, data, arch, freeze):
    model = tiny_models(arch, "tl")
    clean, corrupt, ans, wrong = data
    metric = _metric(ans, wrong)
    res = path_patch(model, clean=clean, corrupt=corrupt, metric=metric, convention="raw", freeze=freeze)
    with torch.no_grad():
        m_clean = metric(model(clean)).mean()
        for layer, head in res.senders:
            want = (
                oracle(model, clean, corrupt, metric, (layer, head), freeze_mlps=freeze == "heads+mlps")
                - m_clean
            )
            assert abs(res.scores[layer, head].item() - want.item()) <= 1e-5
    assert res.scores.abs().nansum() > 0


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_to_head_inputs_equals_oracle(tiny_models, data, component):
    model = tiny_models("gpt2", "tl")
    clean, corrupt, ans, wrong = data
    metric = _metric(ans, wrong)
    receiver = Site(component, 1, head=2)
    r_pos = torch.full((B,), T - 1) if component == "q" else torch.full((B,), 5)
    res = path_patch(
        model,
        clean=clean,
        corrupt=corrupt,
        metric=metric,
        receivers=[receiver],
        receiver_pos=r_pos,
        convention="raw",
    )
    assert [s for s in res.senders] == [(0, h) for h in range(4)]
    with torch.no_grad():
        m_clean = metric(model(clean)).mean()
        for layer, head in res.senders:
            want = oracle(model, clean, corrupt, metric, (layer, head), receiver, r_pos) - m_clean
            assert abs(res.scores[layer, head].item() - want.item()) <= 1e-5


def test_conventions_and_normalisation(tiny_models, data):
    model = tiny_models("gpt2", "tl")
    clean, corrupt, ans, wrong = data
    metric = _metric(ans, wrong)
    raw = path_patch(model, clean=clean, corrupt=corrupt, metric=metric, convention="raw")
    ld = path_patch(model, clean=clean, corrupt=corrupt, metric=metric, convention="logit_diff")
    denom = ld.baseline["corrupt"] - ld.baseline["clean"]
    assert torch.allclose(ld.scores * denom, raw.scores, atol=1e-5, equal_nan=True)
    # a no-op sender (clean patched into clean) scores 0
    same = path_patch(model, clean=clean, corrupt=clean.clone(), metric=metric, convention="raw")
    assert same.scores.nan_to_num().abs().max().item() <= 1e-6
    # the same head set but batched in groups of one gives the same scores
    one = path_patch(
        model, clean=clean, corrupt=corrupt, metric=metric, convention="raw", max_senders_per_pass=1
    )
    assert torch.allclose(one.scores, raw.scores, atol=1e-6, equal_nan=True)
    probs = lambda lg: lg[torch.arange(B), -1].softmax(-1)[torch.arange(B), ans]  # noqa: E731
    pc = path_patch(model, clean=clean, corrupt=corrupt, metric=probs, convention="prob_change")
    assert torch.isfinite(pc.scores[0]).all()


def test_nnsight_agrees(tiny_models, data):
    clean, corrupt, ans, wrong = data
    kw = dict(
        clean=clean,
        corrupt=corrupt,
        metric=_metric(ans, wrong),
        convention="raw",
        receivers=[Site("v", 1, head=1)],
        receiver_pos=torch.full((B,), 5),
    )
    a = path_patch(tiny_models("gpt2", "tl"), **kw)
    b = path_patch(tiny_models("gpt2", "nnsight"), **kw)
    assert torch.allclose(a.scores, b.scores, atol=1e-5, equal_nan=True)


def test_bad_inputs(tiny_models, data):
    model = tiny_models("gpt2", "tl")
    clean, corrupt, ans, wrong = data
    m = _metric(ans, wrong)
    with pytest.raises(ValueError, match="convention"):
        path_patch(model, clean=clean, corrupt=corrupt, metric=m, convention="pct")
    with pytest.raises(ValueError, match="out of range"):
        path_patch(model, clean=clean, corrupt=corrupt, metric=m, senders=[(0, 9)])
    with pytest.raises(ValueError, match="after every receiver"):
        path_patch(
            model, clean=clean, corrupt=corrupt, metric=m, senders=[(1, 0)], receivers=[Site("q", 0, head=0)]
        )
    with pytest.raises(ValueError, match="same shape"):
        path_patch(model, clean=clean, corrupt=corrupt[:, 1:], metric=m)

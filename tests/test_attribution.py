"""attribution_patch: the gradient formula against finite differences, AtP* against exact patching."""

import pytest
import torch
from helpers import last_logit_diff as _metric
from helpers import swap_batch

from interp.patching import attribution_patch, patch_sweep
from interp.sites import Site

B, T = 3, 9


@pytest.fixture(scope="module")
def data():
    return swap_batch(B, T, seed=3, swap_at=(2,))


@pytest.mark.parametrize(
    ("component", "per_head", "cell"),
    [
        ("resid_pre", False, (1, 4)),
        ("z", True, (1, 6, 2)),
        ("mlp_out", False, (0, 2)),
        ("v", True, (0, 3, 1)),
    ],
)
def test_attribution_is_gradient_times_delta(tiny_models, data, component, per_head, cell):
    """Oracle: AtP's estimate of one cell equals the finite-difference derivative along (source − target)."""
    model = tiny_models("gpt2", "tl")
    clean, corrupt, ans, wrong = data
    metric = _metric(ans, wrong)
    res = attribution_patch(
        model,
        clean=clean,
        corrupt=corrupt,
        metric=metric,
        component=component,
        per_head=per_head,
        qk_fix=False,
    )
    layer, pos, *head = cell
    site = Site(component, layer)
    with torch.no_grad():
        _, src = model.run_with_cache(clean, [site])
        _, tgt = model.run_with_cache(corrupt, [site])
        delta = src[site.hook_name] - tgt[site.hook_name]

        def run(eps):
            def hook(act, s):
                act = act.clone()
                if head:
                    act[:, pos, head[0]] += eps * delta[:, pos, head[0]]
                else:
                    act[:, pos] += eps * delta[:, pos]
                return act

            return metric(model.run_with_hooks(corrupt, [(site, hook)])).double().mean()

        eps = 1e-3
        fd = ((run(eps) - run(-eps)) / (2 * eps)).item()
    assert res.scores[cell].item() - res.baseline["corrupt"] == pytest.approx(fd, rel=1e-2, abs=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize(
    ("component", "per_head"),
    [("resid_pre", False), ("attn_out", False), ("z", True), ("q", True), ("k", True), ("pattern", True)],
)
def test_rank_correlation_with_exact(tiny_models, data, arch, component, per_head):
    model = tiny_models(arch, "tl")
    clean, corrupt, ans, wrong = data
    kw = dict(
        clean=clean, corrupt=corrupt, metric=_metric(ans, wrong), component=component, per_head=per_head
    )
    atp, exact = attribution_patch(model, **kw), patch_sweep(model, **kw)
    assert atp.scores.shape == exact.scores.shape and atp.axes == exact.axes
    a, e = atp.scores.flatten() - atp.baseline["corrupt"], exact.scores.flatten() - exact.baseline["corrupt"]
    assert torch.corrcoef(torch.stack([a, e]))[0, 1].item() >= 0.8
    if component in ("q", "k"):  # AtP* recomputes the pattern exactly: near-exact on a tiny model
        assert (atp.scores - exact.scores).abs().max().item() < 1e-3


def test_bad_inputs(tiny_models, data):
    clean, corrupt, ans, wrong = data
    with pytest.raises(ValueError, match="backend='tl'"):
        attribution_patch(
            tiny_models("gpt2", "nnsight"), clean=clean, corrupt=corrupt, metric=_metric(ans, wrong)
        )
    with pytest.raises(ValueError, match="per-head"):
        attribution_patch(
            tiny_models("gpt2", "tl"), clean=clean, corrupt=corrupt, metric=_metric(ans, wrong), component="z"
        )

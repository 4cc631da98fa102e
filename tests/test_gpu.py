"""Every public entry point on CUDA gives the CPU numbers (skipped where no GPU is present)."""

import pytest
import torch
from helpers import last_logit_diff as _metric
from helpers import swap_batch

from interp.sites import Site

pytestmark = pytest.mark.gpu
B, T = 4, 10


@pytest.fixture(scope="module")
def data():
    return swap_batch(B, T, seed=5, swap_at=(3,))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_load_and_run_on_cuda(tiny_dirs, arch, backend, data):
    from interp import load_model

    clean = data[0]
    cpu = load_model(tiny_dirs[arch], backend=backend, device="cpu")
    gpu = load_model(tiny_dirs[arch], backend=backend, device="cuda")
    assert gpu.device.type == "cuda"
    with torch.no_grad():
        a, b = cpu(clean), gpu(clean.cuda())
        _, cache = gpu.run_with_cache(clean.cuda(), [Site("z", 1), Site("resid_post", 0)])
    assert (a.cpu() - b.cpu()).abs().max().item() < 1e-4
    assert cache["blocks.1.attn.hook_z"].is_cuda


@pytest.mark.parametrize("component,per_head", [("resid_pre", False), ("z", True), ("k", True)])
def test_patching_entry_points_on_cuda(tiny_dirs, data, component, per_head):
    from interp import load_model
    from interp.patching import attribution_patch, patch_sweep, path_patch

    clean, corrupt, ans, wrong = data
    cpu = load_model(tiny_dirs["gpt2"], backend="tl", device="cpu")
    gpu = load_model(tiny_dirs["gpt2"], backend="tl", device="cuda")
    kw = dict(
        clean=clean, corrupt=corrupt, metric=_metric(ans, wrong), component=component, per_head=per_head
    )
    a, b = patch_sweep(cpu, **kw), patch_sweep(gpu, **kw)
    assert (a.scores - b.scores).abs().max().item() < 1e-4
    fast = patch_sweep(gpu, mode="fast", **kw)
    assert (fast.scores - a.scores).abs().max().item() < 0.05
    at_c, at_g = attribution_patch(cpu, **kw), attribution_patch(gpu, **kw)
    assert (at_c.scores - at_g.scores).abs().max().item() < 1e-4
    pc = path_patch(cpu, clean=clean, corrupt=corrupt, metric=_metric(ans, wrong), convention="raw")
    pg = path_patch(gpu, clean=clean, corrupt=corrupt, metric=_metric(ans, wrong), convention="raw")
    assert torch.allclose(pc.scores, pg.scores, atol=1e-4, equal_nan=True)

"""patch_sweep against TransformerLens' own `patching` module (the peer oracle), across engines and backends."""

import pytest
import torch
from helpers import swap_batch

from interp.patching import patch_sweep
from interp.sites import SiteError

B, T = 3, 9


@pytest.fixture(scope="module")
def pair():
    return swap_batch(B, T, seed=1, swap_at=(2, 6))


class LogitDiff:
    """A metric object that declares what it reads (last position, two token ids)."""

    name = "logit_diff"

    def __init__(self, ans, wrong):
        self.positions = torch.full((B,), T - 1)
        self.token_ids = torch.stack([ans, wrong], 1)

    def from_gathered(self, x):
        return x[..., 0] - x[..., 1]

    def __call__(self, logits):
        at = logits[torch.arange(B), self.positions]
        return self.from_gathered(torch.gather(at, -1, self.token_ids))


def _plain(ans, wrong):
    return lambda lg: lg[torch.arange(B), -1, ans] - lg[torch.arange(B), -1, wrong]


TL_PEERS = [  # (component, per_head, positions, TL function name, permutation of TL's axes to ours)
    ("resid_pre", False, "each", "get_act_patch_resid_pre", None),
    ("resid_mid", False, "each", "get_act_patch_resid_mid", None),
    ("attn_out", False, "each", "get_act_patch_attn_out", None),
    ("mlp_out", False, "each", "get_act_patch_mlp_out", None),
    ("z", True, "each", "get_act_patch_attn_head_out_by_pos", None),
    ("q", True, "each", "get_act_patch_attn_head_q_by_pos", None),
    ("k", True, "each", "get_act_patch_attn_head_k_by_pos", None),
    ("v", True, "each", "get_act_patch_attn_head_v_by_pos", None),
    ("pattern", True, "each", "get_act_patch_attn_head_pattern_by_pos", (0, 2, 1)),
    ("z", True, "all", "get_act_patch_attn_head_out_all_pos", None),
    ("q", True, "all", "get_act_patch_attn_head_q_all_pos", None),
    ("k", True, "all", "get_act_patch_attn_head_k_all_pos", None),
    ("v", True, "all", "get_act_patch_attn_head_v_all_pos", None),
    ("pattern", True, "all", "get_act_patch_attn_head_pattern_all_pos", None),
]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize(("component", "per_head", "positions", "peer", "perm"), TL_PEERS)
def test_exact_equals_transformerlens(tiny_models, pair, arch, component, per_head, positions, peer, perm):
    from transformer_lens import patching

    model = tiny_models(arch, "tl")
    clean, corrupt, ans, wrong = pair
    with torch.no_grad():
        _, clean_cache = model.tl.run_with_cache(clean)
        ref = getattr(patching, peer)(
            model.tl, corrupt, clean_cache, lambda lg: _plain(ans, wrong)(lg).mean()
        )
    ref = ref.permute(*perm) if perm else ref
    for metric in (LogitDiff(ans, wrong), _plain(ans, wrong)):
        for engine in ("tl", "generic"):
            res = patch_sweep(
                model,
                clean=clean,
                corrupt=corrupt,
                metric=metric,
                component=component,
                per_head=per_head,
                positions=positions,
                engine=engine,
            )
            assert res.scores.shape == ref.shape
            assert (res.scores - ref).abs().max().item() <= 1e-5, (engine, type(metric).__name__)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize(
    ("component", "per_head"),
    [("resid_pre", False), ("attn_out", False), ("z", True), ("v", True), ("resid_post", False)],
)
def test_nnsight_backend_gives_same_scores(tiny_models, pair, arch, component, per_head):
    clean, corrupt, ans, wrong = pair
    kw = dict(
        clean=clean, corrupt=corrupt, metric=LogitDiff(ans, wrong), component=component, per_head=per_head
    )
    a = patch_sweep(tiny_models(arch, "tl"), **kw)
    b = patch_sweep(tiny_models(arch, "nnsight"), **kw)
    assert (a.scores - b.scores).abs().max().item() <= 1e-5
    assert a.scores.abs().max() > 0


def test_tiny_memory_budget_still_exact(tiny_models, pair):
    clean, corrupt, ans, wrong = pair
    model = tiny_models("gpt2", "tl")
    kw = dict(clean=clean, corrupt=corrupt, metric=LogitDiff(ans, wrong), component="z", per_head=True)
    full = patch_sweep(model, **kw)
    for engine in ("tl", "generic"):
        tiny = patch_sweep(model, memory_budget=1, engine=engine, **kw)  # one cell per chunk
        assert (tiny.scores - full.scores).abs().max().item() <= 1e-6


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "component,per_head",
    [("resid_pre", False), ("z", True), ("k", True), ("mlp_out", False), ("resid_post", False), ("q", True)],
)
def test_prefix_groups_and_no_prefix_reuse_give_the_same_scores(tiny_models, pair, arch, component, per_head):
    """Recomputing from shared start positions (or from 0) changes only how much is recomputed, not the scores."""
    clean, corrupt, ans, wrong = pair
    model = tiny_models(arch, "tl")
    kw = dict(
        clean=clean, corrupt=corrupt, metric=LogitDiff(ans, wrong), component=component, per_head=per_head
    )
    ref = patch_sweep(model, **kw).scores
    assert ref.abs().max() > 0
    for variant in (
        dict(prefix_groups=1),
        dict(prefix_groups=3),
        dict(prefix_groups=99),
        dict(prefix_reuse=False),
    ):
        got = patch_sweep(model, **variant, **kw).scores
        assert (got - ref).abs().max().item() <= 1e-5, variant
    with pytest.raises(ValueError, match="prefix_groups"):
        patch_sweep(model, prefix_groups=0, **kw)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "qwen2", "gemma2"])
@pytest.mark.parametrize(
    "component,per_head",
    [
        ("z", True),
        ("q", True),
        ("attn_out", False),
        ("mlp_out", False),
        ("resid_mid", False),
        ("resid_post", False),
    ],
)
def test_tl_engine_block_local_patches_equal_full_forwards(tiny_models, pair, arch, component, per_head):
    """The TL engine runs a patch inside a block at one position through that block at that position only
    (parallel attention/MLP, post-norms, GQA, sliding windows included): the scores equal full hooked forwards."""
    clean, corrupt, ans, wrong = pair
    model = tiny_models(arch, "tl")
    if component not in model.supported_components:
        pytest.skip(f"{arch} has no {component}")
    kw = dict(
        clean=clean, corrupt=corrupt, metric=LogitDiff(ans, wrong), component=component, per_head=per_head
    )
    ref = patch_sweep(model, engine="generic", **kw).scores
    assert ref.abs().max() > 0
    got = patch_sweep(model, engine="tl", **kw).scores
    assert (got - ref).abs().max().item() <= 1e-5


def test_resid_post_is_the_next_resid_pre(tiny_models, pair):
    """Patching the residual after block l is patching the one entering block l + 1 (an identity oracle)."""
    clean, corrupt, ans, wrong = pair
    model = tiny_models("llama", "tl")
    kw = dict(clean=clean, corrupt=corrupt, metric=LogitDiff(ans, wrong))
    post = patch_sweep(model, component="resid_post", **kw).scores
    pre = patch_sweep(model, component="resid_pre", **kw).scores
    assert pre[1:].abs().max() > 0
    assert (post[:-1] - pre[1:]).abs().max().item() <= 1e-5


def test_oom_backoff(tiny_models, pair, monkeypatch):
    """An out-of-memory error halves the chunk instead of failing."""
    from interp.patching import engine

    clean, corrupt, ans, wrong = pair
    model = tiny_models("gpt2", "tl")
    kw = dict(clean=clean, corrupt=corrupt, metric=LogitDiff(ans, wrong), component="resid_pre")
    ref = patch_sweep(model, **kw)
    calls = {"n": 0}
    real = engine.run_chunked

    def flaky(n_cells, per_cell_bytes, budget, fn, on_done=None):
        def wrapped(sl):
            calls["n"] += 1
            if sl.stop - sl.start > 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            return fn(sl)

        return real(n_cells, per_cell_bytes, budget, wrapped, on_done)

    monkeypatch.setattr(engine, "run_chunked", flaky)
    res = patch_sweep(model, **kw)
    assert calls["n"] > ref.scores.numel() // ref.scores.shape[1]
    assert (res.scores - ref.scores).abs().max().item() <= 1e-6


def test_directions_and_sources(tiny_models, pair):
    clean, corrupt, ans, wrong = pair
    model = tiny_models("gpt2", "tl")
    m = LogitDiff(ans, wrong)
    den = patch_sweep(model, clean=clean, corrupt=corrupt, metric=m, component="resid_pre")
    noi = patch_sweep(model, clean=clean, corrupt=corrupt, metric=m, component="resid_pre", direction="noise")
    # denoising the whole residual stream at layer 0 at every differing position restores clean at that cell;
    # noising a position where clean == corrupt is a no-op (clean baseline)
    assert abs(noi.scores[0, 0].item() - noi.baseline["clean"]) < 1e-5
    assert abs(den.scores[0, 0].item() - den.baseline["corrupt"]) < 1e-5
    zero = patch_sweep(
        model, clean=clean, corrupt=corrupt, metric=m, component="z", per_head=True, source="zero"
    )
    with torch.no_grad():
        manual = model.run_with_hooks(corrupt, [("blocks.1.attn.hook_z", _zero_head(4, 2))])
    assert abs(zero.scores[1, 4, 2].item() - m(manual).mean().item()) < 1e-5
    mean = patch_sweep(model, clean=clean, corrupt=corrupt, metric=m, component="resid_pre", source="mean")
    assert mean.scores.shape == den.scores.shape and not torch.allclose(mean.scores, den.scores)
    r1 = patch_sweep(
        model, clean=clean, corrupt=corrupt, metric=m, component="resid_pre", source="resample", seed=3
    )
    r2 = patch_sweep(
        model, clean=clean, corrupt=corrupt, metric=m, component="resid_pre", source="resample", seed=3
    )
    assert torch.equal(r1.scores, r2.scores)


def _zero_head(pos, head):
    def fn(act, site):
        act = act.clone()
        act[:, pos, head] = 0
        return act

    return fn


def test_result_object(tiny_models, pair, tmp_path):
    from interp.patching import PatchResult

    clean, corrupt, ans, wrong = pair
    model = tiny_models("gpt2", "tl")
    res = patch_sweep(
        model, clean=clean, corrupt=corrupt, metric=LogitDiff(ans, wrong), component="z", per_head=True
    )
    df = res.to_frame()
    assert len(df) == res.scores.numel() and set(df.columns) >= {"layer", "pos", "head", "score"}
    assert df["score"].max() == pytest.approx(res.scores.max().item())
    back = PatchResult.load(res.save(tmp_path / "r"))
    assert torch.equal(back.scores, res.scores) and back.labels == res.labels and back.config == res.config
    assert res.labels["pos"][0].startswith("0:")


def test_bad_inputs_fail_before_compute(tiny_models, pair, monkeypatch):
    clean, corrupt, ans, wrong = pair
    model = tiny_models("gpt2", "tl")
    forwards = {"n": 0}
    real = model.run_with_hooks

    def counting(*a, **k):
        forwards["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(model, "run_with_hooks", counting)
    m = LogitDiff(ans, wrong)
    with pytest.raises(ValueError, match="same shape"):
        patch_sweep(model, clean=clean, corrupt=corrupt[:, :-1], metric=m)
    with pytest.raises(ValueError, match="one value per prompt"):
        patch_sweep(model, clean=clean, corrupt=corrupt, metric=lambda lg: lg[:, -1].mean())
    with pytest.raises(SiteError, match="unknown patching component"):
        patch_sweep(model, clean=clean, corrupt=corrupt, metric=m, component="resid_pree")
    with pytest.raises(ValueError, match="per_head=True"):
        patch_sweep(model, clean=clean, corrupt=corrupt, metric=m, component="z")
    with pytest.raises(ValueError, match="outside"):
        patch_sweep(model, clean=clean, corrupt=corrupt, metric=m, positions=[0, 99])
    with pytest.raises(ValueError, match="direction"):
        patch_sweep(model, clean=clean, corrupt=corrupt, metric=m, direction="sideways")
    assert forwards["n"] == 0

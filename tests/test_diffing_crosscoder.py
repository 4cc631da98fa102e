"""Crosscoders, the diff-SAE and Latent Scaling: oracles on synthetic data, resumption, torchrun, provenance."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp import load_model
from interp.diffing import (
    Crosscoder,
    CrosscoderConfig,
    CrosscoderMismatchError,
    closed_form_beta,
    kl_attributed_latents,
    latent_delta,
    latent_scaling,
    load_activation_shards,
    measure,
    patch_check,
    save_activation_shards,
    shard_activations,
    train_crosscoder,
)
from interp.finetuning.pair import ModelPair, perturbed_twin
from interp.models.identity import ModelIdentity, model_identity

SITE = "blocks.1.hook_resid_post"
SMALL = dict(
    d_sae=32, k=4, steps=120, batch_size=64, n_shards=2, checkpoint_every=40, dead_after=2000, lr=3e-3
)


def sparse_pairs(n: int, d: int = 32, n_feat: int = 12, seed: int = 0, ft_only: int = 0) -> torch.Tensor:
    """[n, 2, d] activations from sparse shared features (the same in both models) plus `ft_only` features that
    only the fine-tune has."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat + ft_only, d, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    on = torch.rand(n, n_feat + ft_only, generator=g) < 3 / (n_feat + ft_only)
    amp = on * (1 + torch.rand(n, n_feat + ft_only, generator=g))
    shared = amp[:, :n_feat] @ dirs[:n_feat]
    extra = amp[:, n_feat:] @ dirs[n_feat:] if ft_only else torch.zeros(n, d)
    noise = 0.01 * torch.randn(n, 2, d, generator=g)
    return torch.stack([shared, shared + extra], 1) + noise


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="sparsity"):
        CrosscoderConfig(sparsity="jumprelu")
    with pytest.raises(ValueError, match="multiple of n_shards"):
        CrosscoderConfig(batch_size=10, n_shards=4)
    with pytest.raises(ValueError, match="k=600 exceeds"):
        CrosscoderConfig(k=600)
    with pytest.raises(ValueError, match="d_sae"):
        CrosscoderConfig(d_sae=0)


def test_identical_models_give_no_ft_only_latents_and_the_stated_fve_holds(tmp_path):
    x = sparse_pairs(2800)
    x[:, 1] = x[:, 0]  # the same activations in both models
    train, held = x[:2500], x[2500:]
    cc = train_crosscoder(train, CrosscoderConfig(**SMALL), site=SITE, held_out=held)
    classes = cc.latent_classes()
    assert "ft_only" not in classes and "base_only" not in classes
    assert cc.stats["fve"] > 0.5
    # the stated FVE on held-out activations, recomputed one token at a time with the dense formula
    err = var = 0.0
    mean = held.double().mean(0)
    with torch.no_grad():
        for row in held:
            xn = row / cc.scale[:, None]
            pre = torch.relu(torch.einsum("md,mdf->f", xn, cc.W_enc) + cc.b_enc)
            f = pre * (pre * cc.W_dec.norm(dim=-1).sum(0) > cc.threshold)
            rec = (torch.einsum("f,mfd->md", f, cc.W_dec) + cc.b_dec) * cc.scale[:, None]
            err += float(((rec - row).double() ** 2).sum())
            var += float(((row.double() - mean) ** 2).sum())
    assert cc.stats["fve"] == pytest.approx(1 - err / var, abs=1e-4)
    # save / load round trip
    cc.save(tmp_path / "cc")
    again = Crosscoder.load(tmp_path / "cc")
    torch.testing.assert_close(again(held), cc(held))
    assert again.stats == cc.stats and again.latent_classes() == classes


def test_planted_ft_only_features_are_found():
    x = sparse_pairs(4000, ft_only=3, seed=1)
    cc = train_crosscoder(x, CrosscoderConfig(**{**SMALL, "steps": 300}), site=SITE, held_out=x[:1000])
    ft_only = cc.latents_of("ft_only")
    assert len(ft_only) >= 2
    assert len(cc.latents_of("base_only")) == 0


def test_l1_crosscoder_and_diff_sae_train():
    x = sparse_pairs(2000, ft_only=2)
    cfg = CrosscoderConfig(**{**SMALL, "sparsity": "l1", "l1_coef": 0.05})
    cc = train_crosscoder(x, cfg, site=SITE, held_out=x[:500])
    assert cc.stats["fve"] > 0.5 and cc.stats["l0"] > 0
    diff = (x[:, 1] - x[:, 0])[:, None]  # [n, 1, d]
    sae = train_crosscoder(diff, CrosscoderConfig(**SMALL), site=SITE, kind="diff_sae", held_out=diff[:500])
    assert sae.n_models == 1 and sae.stats["fve"] > 0.3
    with pytest.raises(ValueError, match="two models"):
        sae.relative_norm()
    with pytest.raises(ValueError, match="two models' activations"):
        train_crosscoder(diff, CrosscoderConfig(**SMALL), site=SITE)


def test_resumed_training_equals_uninterrupted(tmp_path):
    x = sparse_pairs(1500, seed=2)
    cfg = CrosscoderConfig(**SMALL)
    full = train_crosscoder(x, cfg, site=SITE)
    part = train_crosscoder(x, cfg, site=SITE, out_dir=tmp_path / "run", stop_at=50)
    assert part.stats["steps_done"] == 50 and (tmp_path / "run" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run" / "crosscoder.json").exists()  # not finished
    resumed = train_crosscoder(x, cfg, site=SITE, out_dir=tmp_path / "run")
    for name, p in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], p, atol=0, rtol=0, equal_nan=True)
    assert (tmp_path / "run" / "crosscoder.json").is_file()
    with pytest.raises(ValueError, match="another config"):
        train_crosscoder(x, CrosscoderConfig(**{**SMALL, "k": 5}), site=SITE, out_dir=tmp_path / "run")


def test_shards_do_not_change_the_batches():
    """Training on the shards one process owns is the same run whatever splits the shards among processes."""
    x = sparse_pairs(1000, seed=3)
    cfg = CrosscoderConfig(**{**SMALL, "steps": 30})
    a = train_crosscoder(x, cfg, site=SITE)
    b = train_crosscoder(shard_activations(x, 2), cfg, site=SITE)
    torch.testing.assert_close(a.W_dec, b.W_dec, atol=0, rtol=0)
    with pytest.raises(ValueError, match="n_shards"):
        train_crosscoder(shard_activations(x, 4), cfg, site=SITE)


def test_two_process_gloo_training_equals_one_process(tmp_path):
    x = sparse_pairs(1200, seed=4)
    ids = [ModelIdentity(name="base", weights_sha256="aa"), ModelIdentity(name="ft", weights_sha256="bb")]
    save_activation_shards(x, tmp_path / "acts", 2, site=SITE, models=ids)
    shards, manifest = load_activation_shards(tmp_path / "acts")
    assert sorted(shards.shards) == [0, 1] and manifest["site"] == SITE
    args = [
        "--steps",
        "40",
        "--d-sae",
        "32",
        "--k",
        "4",
        "--batch-size",
        "64",
        "--lr",
        "0.003",
        "--dead-after",
        "2000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [
        "-m",
        "interp.diffing.crosscoder",
        "--acts",
        str(tmp_path / "acts"),
        "--out",
        str(tmp_path / "two"),
        *args,
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 rank(s)" in proc.stdout
    two = Crosscoder.load(tmp_path / "two")
    cfg = CrosscoderConfig(d_sae=32, k=4, steps=40, batch_size=64, lr=0.003, dead_after=2000, n_shards=2)
    one = train_crosscoder(x, cfg, site=SITE, models=ids)
    for name, p in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], p, atol=1e-4, rtol=1e-4, equal_nan=True)
    assert two.models == one.models


# ------------------------------------------------------------------------------------------------ Latent Scaling
def test_closed_form_beta_matches_least_squares():
    g = torch.Generator().manual_seed(5)
    v = torch.randn(3, 8, generator=g)
    f = torch.rand(200, 3, generator=g)
    y = torch.randn(200, 3, 8, generator=g)
    beta = closed_form_beta(v, f, y)
    for j in range(3):
        a = (f[:, j : j + 1] * v[j]).reshape(-1, 1)  # (n*d, 1): the design of y_j ~ beta f_j v_j
        ref = torch.linalg.lstsq(a, y[:, j].reshape(-1, 1)).solution.item()
        assert float(beta[j]) == pytest.approx(ref, rel=1e-4)


def test_latent_scaling_recovers_a_planted_scale():
    """A latent with no base decoder, whose direction the base activations do carry at scale 0.3."""
    d, n = 8, 2000
    g = torch.Generator().manual_seed(6)
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    f_true = torch.rand(n, generator=g) * (torch.rand(n, generator=g) < 0.3)
    noise = 0.01 * torch.randn(n, 2, d, generator=g)
    x = torch.stack([0.3 * f_true[:, None] * direction, f_true[:, None] * direction], 1) + noise
    cc = Crosscoder(d, 2, sparsity="l1", site=SITE)
    with torch.no_grad():
        cc.W_enc.zero_()
        cc.W_enc[1, :, 0] = direction  # reads the fine-tune's activation along the direction
        cc.W_dec.zero_()
        cc.W_dec[1, 0] = direction  # decodes into the fine-tune only: "ft-only" by decoder norms
    assert cc.latent_classes()[0] == "ft_only"
    ls = latent_scaling(cc, x, [0], batch_size=500)
    assert float(ls.beta["ft_error"][0]) == pytest.approx(1.0, abs=0.05)
    assert float(ls.nu_error[0]) == pytest.approx(0.3, abs=0.05)
    assert len(ls.confirmed(0.2)) == 0 and len(ls.confirmed(0.5)) == 1


# ------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def model_pairs(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("cc-models")
    ft = perturbed_twin(tiny_dirs["gpt2"], root / "ft", scale=0.05, seed=7)
    other = perturbed_twin(tiny_dirs["gpt2"], root / "other", scale=0.05, seed=8)
    return {
        n: load_model(p, backend="tl", device="cpu")
        for n, p in (("base", tiny_dirs["gpt2"]), ("ft", ft), ("other", other))
    }


def test_crosscoder_refuses_a_pair_it_was_not_trained_on(model_pairs):
    base, ft, other = model_pairs["base"], model_pairs["ft"], model_pairs["other"]
    assert model_identity(base) != model_identity(ft)
    cc = Crosscoder(base.cfg.d_model, 8, site=SITE, models=(model_identity(base), model_identity(ft)))
    assert cc.check_pair(ModelPair(base, ft)).layer == 1
    with pytest.raises(CrosscoderMismatchError, match=r"fine-tune .*weights") as err:
        cc.check_pair(ModelPair(base, other))
    assert model_identity(other).weights_sha256 in str(err.value)
    cc.check_pair(ModelPair(base, other), allow_mismatch=True)
    deep = Crosscoder(base.cfg.d_model, 8, site="blocks.5.hook_resid_post", models=cc.models)
    with pytest.raises(CrosscoderMismatchError, match="out of range"):
        deep.check_pair(ModelPair(base, ft))
    wide = Crosscoder(2 * base.cfg.d_model, 8, site=SITE, models=cc.models)
    with pytest.raises(CrosscoderMismatchError, match="width"):
        wide.check_pair(ModelPair(base, ft))


def test_all_latents_patch_recovers_what_the_crosscoder_reconstructs(model_pairs):
    """With every latent, Delta = decoded ft - decoded base (minus the decoder-bias difference)."""
    base, ft = model_pairs["base"], model_pairs["ft"]
    pair = ModelPair(base, ft)
    cc = Crosscoder(
        base.cfg.d_model, 4, sparsity="l1", site=SITE, models=(model_identity(base), model_identity(ft))
    )
    with torch.no_grad():
        cc.W_enc.normal_(0, 0.1)
        cc.W_dec.normal_(0, 0.1)
    ids = torch.randint(3, 25, (3, 6))
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    _, cb = base.run_with_cache(ids, [SITE])
    _, cf = ft.run_with_cache(ids, [SITE])
    x = torch.stack([cb[SITE], cf[SITE]], 2).reshape(-1, 2, base.cfg.d_model)
    f = cc.encode(x)
    want = (cc.decode(f) - cc.b_dec * cc.scale[:, None])[:, 1] - (
        cc.decode(f) - cc.b_dec * cc.scale[:, None]
    )[:, 0]
    got = latent_delta(cc, range(4))(cb[SITE], cf[SITE]).reshape(-1, base.cfg.d_model)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    check = patch_check(pair, ids, mask, mask.sum(1) - 1, SITE, latent_delta(cc, []))
    assert check.recovery()["mean"] == pytest.approx(0.0, abs=1e-6)


def test_measure_counts_dead_latents():
    x = sparse_pairs(500)
    cc = Crosscoder(32, 8, sparsity="l1", site=SITE)
    with torch.no_grad():
        cc.W_enc[:, :, :4].normal_(0, 1)  # latents 4..7 never fire (zero encoder, zero bias)
    stats = measure(cc, x)
    assert stats["dead_fraction"] == pytest.approx(0.5, abs=0.13)
    assert cc.latent_classes()[7] == "dead"


def test_sample_weights_draw_only_weighted_rows_and_fingerprint_the_run(tmp_path):
    x = sparse_pairs(400, seed=9)
    w = torch.zeros(400)
    w[:50] = w[200:250] = 1.0  # only these rows may be drawn (each shard needs some weight)
    shards = shard_activations(x, 2, weights=w)
    g = torch.Generator().manual_seed(0)
    drawn = shards.draw(0, 500, g)
    assert all(any(torch.equal(r, x[i]) for i in range(50)) for r in drawn[:20])
    with pytest.raises(ValueError, match="positive sum"):
        shard_activations(x, 2, weights=torch.zeros(400))
    cfg = CrosscoderConfig(**{**SMALL, "steps": 20})
    train_crosscoder(x, cfg, site=SITE, sample_weights=w, out_dir=tmp_path / "w", stop_at=10)
    with pytest.raises(ValueError, match="data"):  # other weights: not the same run, no silent resume
        train_crosscoder(x, cfg, site=SITE, sample_weights=w + 1, out_dir=tmp_path / "w")


def test_kl_attributed_latents_rank_by_kl_where_active_times_change():
    f = torch.zeros(6, 4)
    f[:3, 0] = 1.0  # latent 0: active where KL is high
    f[3:, 1] = 1.0  # latent 1: active where KL is low
    f[:3, 2] = 1.0  # latent 2: where KL is high, but its decoder does not change
    f[0, 3] = 5.0  # latent 3: too rare
    kl = torch.tensor([4.0, 3.0, 3.0, 0.1, 0.1, 0.1])
    change = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert kl_attributed_latents(f, kl, change, min_active=2, n=4) == [0, 1]
    assert kl_attributed_latents(f, kl, change, min_active=1, n=1) == [3]
    with pytest.raises(ValueError, match="kl"):
        kl_attributed_latents(f, kl[:3], change, min_active=1, n=1)

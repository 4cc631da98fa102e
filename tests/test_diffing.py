"""Model diffing: oracles for output diffing, lenses, the activation-difference lens, the causal check, and bad input."""

import pytest
import torch

from interp import load_model
from interp.diffing import (
    Keep,
    TunedLens,
    TunedLensConfig,
    activation_difference_lens,
    check_layers,
    continuation_nll,
    diff_lens_from,
    diff_lens_keep,
    direction_delta,
    final_readout,
    first_positions,
    greedy_generate,
    logit_lens,
    mine_positions,
    mine_tokens,
    paired_pass,
    patch_check,
    real_positions,
    steering_hooks,
    texts_to_tokens,
    top_kl_positions,
    train_tuned_lens,
)
from interp.finetuning.pair import ModelPair, PairMismatchError, perturbed_twin
from interp.models.identity import ModelMismatchError
from interp.sites import Site, SiteError

TEXTS = [
    "When Mary and John went to the store , John gave a drink to Mary",
    "Tom bought a ball at the park",
    "Anna had fun at school later",
    "When Tom and Anna went to the park , Anna gave a book to Tom .",
    "Mary went to school",
]


@pytest.fixture(scope="module")
def twins(tiny_dirs, tmp_path_factory):
    """Per backend: the tiny GPT-2, a twin perturbed everywhere, and a twin perturbed in block 0 only."""
    root = tmp_path_factory.mktemp("diffing")
    everywhere = perturbed_twin(tiny_dirs["gpt2"], root / "ft", scale=0.05, seed=3)
    block0 = perturbed_twin(
        tiny_dirs["gpt2"], root / "ft0", select=lambda n: ".h.0." in n, scale=0.05, seed=4
    )
    cache = {}

    def get(backend: str, which: str = "ft"):
        key = (backend, which)
        if key not in cache:
            path = {"base": tiny_dirs["gpt2"], "ft": everywhere, "ft0": block0}[which]
            cache[key] = load_model(path, backend=backend, device="cpu")
        return cache[key]

    return get


@pytest.fixture(scope="module")
def corpus(tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["gpt2"]))
    return texts_to_tokens(tok, TEXTS, max_length=32)


def _slow_kl(pair: ModelPair, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(ft || base) per token, one unpadded row at a time."""
    out = torch.zeros(ids.shape)
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        row = ids[i : i + 1, :n]
        lb = pair.base(row)[0].double().log_softmax(-1)
        lf = pair.finetuned(row)[0].double().log_softmax(-1)
        out[i, :n] = torch.nn.functional.kl_div(lb, lf, log_target=True, reduction="none").sum(-1).float()
    return out


# ------------------------------------------------------------------------------------------------ output diffing
@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_kl_of_a_model_with_itself_is_zero(twins, corpus, backend):
    m = twins(backend, "base")
    ids, mask = corpus
    res = paired_pass(ModelPair(m, m), ids, mask, lens_layers=[0, 1])
    assert res.kl.abs().max() < 1e-5 and res.lens_kl.abs().max() < 1e-5
    assert res.logprob_shift.abs().max() < 1e-5


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_paired_pass_kl_matches_unbatched_oracle(twins, corpus, backend):
    pair = ModelPair(twins(backend, "base"), twins(backend, "ft"))
    ids, mask = corpus
    res = paired_pass(pair, ids, mask, batch_size=2)
    torch.testing.assert_close(res.kl, _slow_kl(pair, ids, mask), atol=2e-5, rtol=1e-4)
    assert res.kl.max() > 1e-3  # the twins do differ
    # one forward per model per batch, whatever is collected
    n_batches = -(-ids.shape[0] // 2)
    assert res.n_forwards == {"base": n_batches, "finetuned": n_batches}


def test_kl_agrees_across_backends(twins, corpus):
    ids, mask = corpus
    a = paired_pass(ModelPair(twins("tl", "base"), twins("tl", "ft")), ids, mask)
    b = paired_pass(ModelPair(twins("nnsight", "base"), twins("nnsight", "ft")), ids, mask)
    torch.testing.assert_close(a.kl, b.kl, atol=1e-4, rtol=1e-3)


def test_mining_ranks_positions_and_tokens(twins, corpus):
    pair = ModelPair(twins("tl", "base"), twins("tl", "ft"))
    ids, mask = corpus
    res = paired_pass(pair, ids, mask, n_promoted=3)
    mined = mine_positions(res, ids, pair.base.tokenizer, top=6, context=3)
    kls = [m.kl for m in mined]
    assert kls == sorted(kls, reverse=True) and len(mined) == 6
    slow = _slow_kl(pair, ids, mask)
    slow[:, 0] = 0
    assert kls[0] == pytest.approx(float(slow.max()), rel=1e-3)
    top = top_kl_positions(res, 6)
    assert all(int(mask[d, p]) == 1 and p > 0 for d, p in top.tolist())
    # the promoted tokens of a position are the largest log-prob increases there
    row, pos = int(top[0, 0]), int(top[0, 1])
    n = int(mask[row].sum())
    lb = pair.base(ids[row : row + 1, :n])[0, pos].log_softmax(-1)
    lf = pair.finetuned(ids[row : row + 1, :n])[0, pos].log_softmax(-1)
    assert set(res.promoted[row, pos].tolist()) == set((lf - lb).topk(3).indices.tolist())
    toks = mine_tokens(res, pair.base.tokenizer, top=5)
    counts = [t["promoted_count"] for t in toks]
    assert counts == sorted(counts, reverse=True) and sum(counts) > 0


# ------------------------------------------------------------------------------------------------ lenses
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_logit_lens_of_the_last_layer_is_the_output(tiny_models, corpus, arch, backend):
    m = tiny_models(arch, backend)
    ids, mask = corpus
    last = Site("resid_post", m.cfg.n_layers - 1)
    logits, cache = m.run_with_cache(ids, [last], attention_mask=mask)
    torch.testing.assert_close(final_readout(m)(cache[last.hook_name]), logits.float(), atol=1e-4, rtol=1e-4)


def test_tuned_lens_trains_saves_and_refuses_other_models(twins, corpus, tmp_path):
    m = twins("tl", "base")
    ids, mask = corpus
    lens = train_tuned_lens(m, ids, mask, config=TunedLensConfig(steps=60, lr=3e-3, batch_size=64))
    kl = lens.stats["kl_to_final"]
    assert kl["0"]["tuned_lens_kl"] < kl["0"]["logit_lens_kl"]  # the translator helps where the lens is worst
    assert kl[str(m.cfg.n_layers - 1)]["logit_lens_kl"] < 1e-5  # the last layer's logit lens is the output
    lens.save(tmp_path / "lens")
    again = TunedLens.load(tmp_path / "lens")
    h = torch.randn(4, m.cfg.d_model)
    torch.testing.assert_close(again.logits(m, h, 0), lens.logits(m, h, 0))
    again.check_model(twins("nnsight", "base"))  # the same weights on the other backend
    with pytest.raises(ModelMismatchError, match="trained on"):
        again.check_model(twins("tl", "ft"))
    again.check_model(twins("tl", "ft"), allow_mismatch=True)


def test_lenses_refuse_bad_layers_before_compute(twins, corpus):
    m = twins("tl", "base")
    ids, mask = corpus
    with pytest.raises(ValueError, match=r"layer 7 out of range; .* has layers 0\.\.1"):
        check_layers(m, [0, 7])
    with pytest.raises(ValueError, match="out of range"):
        paired_pass(ModelPair(m, m), ids, mask, lens_layers=[5])
    with pytest.raises(SiteError, match="out of range"):
        paired_pass(
            ModelPair(m, m),
            ids,
            mask,
            keep=[Keep(name="x", sites=("blocks.9.hook_resid_post",), where=mask.bool())],
        )
    with pytest.raises(ValueError, match="out of range"):
        activation_difference_lens(ModelPair(m, m), ids, mask, layers=[2])
    with pytest.raises(TypeError, match="ints"):
        check_layers(m, ["1"])


def test_unpaired_models_list_every_mismatch(tiny_models):
    with pytest.raises(PairMismatchError) as err:
        ModelPair(tiny_models("gpt2", "tl"), tiny_models("llama", "tl"))
    assert "architecture" in str(err.value) and len(err.value.mismatches) >= 2


# ------------------------------------------------------------------------------------------------ diff lens
@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_diff_lens_of_identical_models_is_zero(twins, corpus, backend):
    m = twins(backend, "base")
    ids, mask = corpus
    dl = activation_difference_lens(ModelPair(m, m), ids, mask, k=3)
    assert dl.mean.abs().max() == 0 and dl.per_position.abs().max() == 0
    assert dl.unit(1).abs().max() == 0 and dl.norm.min() > 0


def test_diff_lens_means_match_a_loop(twins, corpus):
    pair = ModelPair(twins("tl", "base"), twins("tl", "ft"))
    ids, mask = corpus
    k, layers = 3, [0, 1]
    res = paired_pass(pair, ids, mask, keep=[diff_lens_keep(mask, layers, k)], batch_size=2)
    dl = diff_lens_from(res, layers, k)
    for layer in layers:
        site = Site("resid_post", layer)
        per = torch.zeros(k, pair.base.cfg.d_model)
        for p in range(1, k + 1):
            rows = [i for i in range(len(ids)) if int(mask[i].sum()) > p]
            diffs = []
            for i in rows:
                n = int(mask[i].sum())
                _, cb = pair.base.run_with_cache(ids[i : i + 1, :n], [site])
                _, cf = pair.finetuned.run_with_cache(ids[i : i + 1, :n], [site])
                diffs.append(cf[site.hook_name][0, p] - cb[site.hook_name][0, p])
            per[p - 1] = torch.stack(diffs).mean(0)
        torch.testing.assert_close(dl.per_position[layers.index(layer)], per, atol=1e-5, rtol=1e-4)
    assert first_positions(mask, k).sum() == sum(min(k, int(m.sum()) - 1) for m in mask)
    lens_top = logit_lens(pair.finetuned, dl.at(1)).topk(3).indices
    assert lens_top.shape == (3,)


def test_steering_with_zero_is_the_model_and_coherence_is_its_loss(twins):
    m = twins("tl", "base")
    prompts = [[0, 5, 6, 7], [0, 8, 9]]
    plain = greedy_generate(m, prompts, 4)
    zero = greedy_generate(m, prompts, 4, hooks=steering_hooks(1, torch.zeros(m.cfg.d_model)))
    assert plain == zero and all(len(c) == 4 for c in plain)
    far = greedy_generate(m, prompts, 4, hooks=steering_hooks(0, 50 * torch.randn(m.cfg.d_model)))
    assert continuation_nll(m, prompts, plain) <= continuation_nll(m, prompts, far)
    # the NLL of a greedy continuation is the mean of -log p(argmax) at each step
    ids = torch.tensor([prompts[0] + plain[0]])
    lp = m(ids)[0].log_softmax(-1)
    ref = -sum(float(lp[3 + i, plain[0][i]]) for i in range(4)) / 4
    assert continuation_nll(m, prompts[:1], plain[:1]) == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------------------------------------------ causal check
@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_patching_the_whole_difference_recovers_all_kl(twins, corpus, backend):
    """The twin differs in block 0 only: after block 0, base + (x_ft - x_base) is the fine-tune's stream."""
    pair = ModelPair(twins(backend, "base"), twins(backend, "ft0"))
    ids, mask = corpus
    end = mask.sum(1) - 1
    full = patch_check(pair, ids, mask, end, "blocks.0.hook_resid_post", lambda xb, xf: xf - xb)
    assert full.kl_before.sum() > 1e-4
    rec = full.recovery()
    assert rec["add_to_base"] == pytest.approx(1.0, abs=1e-3) and rec["ablate_in_ft"] == pytest.approx(
        1.0, abs=1e-3
    )
    none = patch_check(
        pair, ids, mask, end, "blocks.0.hook_resid_post", direction_delta(torch.zeros(pair.base.cfg.d_model))
    )
    assert none.recovery()["mean"] == pytest.approx(0.0, abs=1e-5)
    floored = none.recovery(kl_floor=1e6)
    assert abs(floored["mean"]) < 1e-9


def test_patch_check_refuses_bad_positions(twins, corpus):
    pair = ModelPair(twins("tl", "base"), twins("tl", "ft"))
    ids, mask = corpus
    with pytest.raises(ValueError, match="real token"):
        patch_check(
            pair, ids, mask, torch.full((len(ids),), 31), "blocks.0.hook_resid_post", lambda a, b: b - a
        )
    with pytest.raises(SiteError, match="out of range"):
        patch_check(pair, ids, mask, mask.sum(1) - 1, "blocks.4.hook_resid_post", lambda a, b: b - a)


def test_real_positions_skip_bos_and_padding(corpus):
    _, mask = corpus
    real = real_positions(mask)
    assert not real[:, 0].any() and int(real.sum()) == int(mask.sum()) - len(mask)

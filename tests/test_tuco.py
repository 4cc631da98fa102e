"""TuCo (Nuti et al. 2025): exact decomposition, endpoints, the paper's toy example, backend agreement, alpha-scaling."""

import json

import pytest
import torch
from helpers import interrupted_then_resumed

from interp import load_model
from interp.finetuning import (
    ModelPair,
    PairMismatchError,
    generate_scaled,
    scaled_logits,
    tuco,
    tuco_score,
    tuco_scores,
)
from interp.finetuning.pair import perturbed_twin
from interp.sites import Site

ARCHS = ["gpt2", "llama"]
ALL_ARCHS = ["gpt2", "gpt_neox", "llama", "qwen2", "gemma2"]
BLOCKS = {
    "gpt2": "transformer.h.",
    "gpt_neox": "gpt_neox.layers.",
    "llama": "model.layers.",
    "qwen2": "model.layers.",
    "gemma2": "model.layers.",
}


@pytest.fixture(scope="module")
def pairs(tiny_dirs, tmp_path_factory):
    """(base, fine-tuned) per (arch, backend); the twin differs from the base in its blocks only."""
    root = tmp_path_factory.mktemp("tuco")
    twins = {
        a: perturbed_twin(tiny_dirs[a], root / a, select=lambda n, a=a: n.startswith(BLOCKS[a]))
        for a in ALL_ARCHS
    }
    cache = {}

    def get(arch, backend):
        if (arch, backend) not in cache:
            cache[arch, backend] = (
                load_model(tiny_dirs[arch], backend=backend, device="cpu"),
                load_model(twins[arch], backend=backend, device="cpu"),
            )
        return cache[arch, backend]

    return get


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 25, (3, 8), generator=g)
    ids[:, 0] = 0  # BOS
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding
    return ids, mask


def test_paper_toy_example():
    """App. A: PTC per layer (0, 0, h, -h/2), FTC (h, -h/2, 0, 0) -> TuCo 0.5 (the max-over-layers beta gives 1)."""
    h = torch.tensor([1.0, -2.0, 0.5])
    z = torch.zeros_like(h)
    ptc = torch.stack([z, z, h, -h / 2])
    ftc = torch.stack([h, -h / 2, z, z])
    assert tuco_score(ptc, ftc).item() == pytest.approx(0.5)
    beta = max(tuco_score(ptc[: i + 1], ftc[: i + 1]).item() for i in range(4))
    assert beta == pytest.approx(1.0)
    assert tuco_score(z[None], z[None]).item() == 0.0  # no update at all: 0, not NaN


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
@pytest.mark.parametrize("arch", ARCHS)
def test_decomposition_is_exact(pairs, batch, arch, backend):
    """PTC_l + FTC_l is the FT block's update on x_l; x0 + sum(PTC + FTC) is the FT final residual."""
    base, ft = pairs(arch, backend)
    ids, mask = batch
    res = tuco(ft, base, ids, attention_mask=mask)
    L = ft.cfg.n_layers
    assert res.ptc.shape == res.ftc.shape == (L, 3, 8, ft.cfg.d_model)
    sites = [Site("resid_pre", i) for i in range(L)] + [Site("resid_post", i) for i in range(L)]
    _, cache = ft.run_with_cache(ids, sites, attention_mask=mask)
    real = mask.bool()
    for i in range(L):
        update = cache[f"blocks.{i}.hook_resid_post"] - cache[f"blocks.{i}.hook_resid_pre"]
        assert (res.ptc[i] + res.ftc[i] - update)[real].abs().max() < 1e-5
    assert torch.allclose(res.x0[real], cache["blocks.0.hook_resid_pre"][real], atol=1e-6)
    final = cache[f"blocks.{L - 1}.hook_resid_post"]
    assert (res.final_residual() - final)[real].abs().max() < 1e-5
    assert bool(((res.score > 0) & (res.score < 1)).all())
    assert torch.allclose(res.preco, 1 - res.score)


@pytest.mark.parametrize("arch", ARCHS)
def test_ptc_is_the_pretrained_block(pairs, batch, arch):
    """PTC_l = base block l applied to the FT stream (TransformerLens blocks as the oracle)."""
    base, ft = pairs(arch, "tl")
    ids, _ = batch
    res = tuco(ft, base, ids)
    _, cache = ft.run_with_cache(ids, [Site("resid_pre", i) for i in range(ft.cfg.n_layers)])
    for i in range(ft.cfg.n_layers):
        x = cache[f"blocks.{i}.hook_resid_pre"]
        assert torch.allclose(res.ptc[i], base.tl.blocks[i](x) - x, atol=1e-6)
        assert torch.allclose(res.ptc[i] + res.ftc[i], ft.tl.blocks[i](x) - x, atol=1e-5)


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_identical_models_give_zero(pairs, batch, backend):
    base, _ = pairs("llama", backend)
    ids, mask = batch
    res = tuco(base, base, ids, attention_mask=mask)
    assert res.ftc.abs().max().item() == 0.0
    assert res.score.abs().max().item() == 0.0


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_backends_agree(pairs, batch, arch):
    ids, mask = batch
    a = tuco(*reversed(pairs(arch, "tl")), ids, attention_mask=mask)
    b = tuco(*reversed(pairs(arch, "nnsight")), ids, attention_mask=mask)
    real = mask.bool()
    assert (a.score - b.score).abs().max() < 1e-5
    assert (a.ptc - b.ptc)[:, real].abs().max() < 1e-4


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_padding_and_chunking_do_not_change_scores(pairs, batch, backend):
    base, ft = pairs("gpt2", backend)
    ids, mask = batch
    res = tuco(ft, base, ids, attention_mask=mask)
    alone = tuco(ft, base, ids[1:2, :5])  # row 1 without its padding
    assert res.last.tolist() == [7, 4, 7]
    assert (res.score[1] - alone.score[0]).abs() < 1e-5
    chunked = tuco_scores(ft, base, ids, attention_mask=mask, batch_size=2)
    assert torch.allclose(chunked, res.score, atol=1e-6)


def test_breakdowns(pairs, batch):
    base, ft = pairs("gpt2", "tl")
    ids, mask = batch
    res = tuco(ft, base, ids, attention_mask=mask)
    L = ft.cfg.n_layers
    assert res.per_layer().shape == res.cumulative().shape == (L, 3)
    assert torch.allclose(res.cumulative()[-1], res.score, atol=1e-6)
    per_pos = res.per_position()
    assert torch.allclose(per_pos[torch.arange(3), res.last], res.score, atol=1e-6)
    assert per_pos[1, 5:].isnan().all()
    assert list(res.to_frame().columns) == ["prompt", "tuco", "preco", "last"]


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
@pytest.mark.parametrize("arch", ARCHS)
def test_alpha_endpoints(pairs, batch, arch, backend):
    """alpha = 1 is the FT model exactly; alpha = 0 with shared embeddings/unembedding is the base model."""
    base, ft = pairs(arch, backend)
    ids, mask = batch
    real = mask.bool()
    with torch.no_grad():
        ft_logits, base_logits = ft(ids, attention_mask=mask), base(ids, attention_mask=mask)
    one = scaled_logits(ft, base, ids, 1.0, attention_mask=mask)
    assert (one - ft_logits)[real].abs().max() < 1e-5
    zero = scaled_logits(ft, base, ids, 0.0, attention_mask=mask)
    assert (zero - base_logits)[real].abs().max() < 1e-4
    half = scaled_logits(ft, base, ids, 0.5, attention_mask=mask)
    assert (half - ft_logits)[real].abs().max() > 1e-3


def _greedy(step, ids, n):
    out = []
    for _ in range(n):
        nxt = step(ids)[:, -1].argmax(-1)
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return torch.stack(out, 1)


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
@pytest.mark.parametrize("arch", ARCHS)
def test_generation_matches_uncached_reference(pairs, batch, arch, backend):
    """The two key/value caches give the same tokens as re-running the scaled model on the whole prefix."""
    base, ft = pairs(arch, backend)
    ids, mask = batch
    gen1 = generate_scaled(ft, base, ids, 1.0, 4, attention_mask=mask)
    gen_half = generate_scaled(ft, base, ids, 1.5, 4, attention_mask=mask)
    for row in range(3):
        prompt = ids[row : row + 1, : int(mask[row].sum())]
        with torch.no_grad():
            assert gen1[row].tolist() == _greedy(lambda x: ft(x), prompt, 4)[0].tolist()
        ref = _greedy(lambda x: scaled_logits(ft, base, x, 1.5), prompt, 4)
        assert gen_half[row].tolist() == ref[0].tolist()


def test_mismatched_pair_lists_every_mismatch(tiny_dirs, tmp_path, pairs):
    from interp.models.tiny import build_tiny_checkpoint
    from interp.models.tokenizer import build_word_tokenizer

    other_tok = build_word_tokenizer(["Mary", "John", "store", "drink", "cat"])
    folder = build_tiny_checkpoint("gpt2", tmp_path / "other", other_tok, n_layers=3, n_heads=2, d_model=32)
    other = load_model(folder, backend="tl", device="cpu")
    base, _ = pairs("gpt2", "tl")
    with pytest.raises(PairMismatchError) as err:
        tuco(other, base, torch.zeros(1, 3, dtype=torch.long))
    msg = str(err.value)
    for word in ("layers", "d_model", "heads", "vocabulary", "d_vocab"):
        assert word in msg
    assert len(err.value.mismatches) >= 5
    with pytest.raises(PairMismatchError, match="backend"):
        ModelPair(base, pairs("gpt2", "nnsight")[1])


def test_unmerged_lora_is_refused(tiny_dirs, pairs):
    base, _ = pairs("gpt2", "nnsight")
    lora = load_model(tiny_dirs["gpt2"], backend="nnsight", device="cpu")
    lora.hf_model.transformer.h[0].attn.c_attn.add_module("lora_A", torch.nn.Linear(4, 4))
    with pytest.raises(PairMismatchError, match="LoRA"):
        ModelPair(base, lora)


def test_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        scaled_logits(None, None, torch.zeros(1, 2, dtype=torch.long), -1.0)


def test_tuco_experiment_end_to_end(organism_like, tmp_path, monkeypatch):
    from interp.runner import run_experiment

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")  # no browser start-up for static images
    config = {
        "experiment": "tuco",
        "base": str(organism_like["base"]),
        "finetuned": str(organism_like["ft"]),
        "n_chat": 8,
        "n_pretrain": 8,
        "n_generate": 2,
        "alphas": [0.0, 1.0],
        "max_new_tokens": 2,
        "n_layer_profile": 4,
        "batch_size": 4,
    }
    res = run_experiment(config, tmp_path / "run")
    for key in ("auc_chat_vs_pretrain", "auc_forbidden_vs_allowed"):
        assert key in res and 0.0 <= res[key] <= 1.0
    assert set(res["refusal_rate_by_alpha"]) == {"0", "1"}
    assert all(0.0 <= r <= 1.0 for r in res["refusal_rate_by_alpha"].values())
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["refusal_rate_by_alpha"] == res["refusal_rate_by_alpha"]
    assert (tmp_path / "run" / "figures" / "tuco_chat_vs_pretrain.html").exists()
    assert run_experiment(config, tmp_path / "run") == res  # resumes from its stored steps
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["status"] == "finished" and prov["steps_run"] == [] and prov["steps_skipped"]
    killed, done, _ = interrupted_then_resumed(config, tmp_path / "killed", after_steps=1)
    assert killed == res and done == ["scores"]


def test_refusal_ids_are_the_refusal_words_on_realistic_tokenizers():
    """The refusal word's id is read after a space, in context where the tokenizer adds a bare `▁` (Llama-2's
    legacy pipeline: `" Sorry"` -> `["▁", "▁Sorry"]`, whose first id is the space marker, not the word)."""
    from fixtures import REALISTIC

    from interp.experiments.tuco import _refusal_ids
    from interp.models.tokenizer import build_word_tokenizer

    for name, make in REALISTIC.items():
        tok = make()
        assert [tok.decode([i]).strip() for i in _refusal_ids(tok)] == ["Sorry"], name
    with pytest.raises(ValueError, match=r"refusal word\(s\) \['Sorry'\] are not single tokens"):
        _refusal_ids(build_word_tokenizer(["Sure", "I"]))

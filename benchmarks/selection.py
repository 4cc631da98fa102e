"""Data-selection speed (MoNA): sparse pool similarity, and SAE encoding vs a plain forward to the same layer.

1. Similarity: N synthetic sparse samples (d_sae 32,768, 64 non-zeros each) against a dense prototype, for
   generalized Jaccard, cosine and Euclidean; N = 1M on GPU (goal: Jaccard <= 1 s), 100k on CPU. The peer is the
   dense reference `generalized_jaccard` on a densified slice (timed per row and extrapolated; stated in the JSON),
   which also checks that both agree.
2. Encoding: `encode_texts` (forward to the SAE's layer + TopK encode + sparse mean pool) vs a plain forward of the
   same model to the same layer (`stop_at_layer`) and a full forward, on a random GPT-2-small, same texts.
Usage: python benchmarks/selection.py [--n N] [--out benchmarks/results/selection-<cpu|gpu>.json]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import device_name, random_gpt2, timed, write_json  # noqa: E402


def synthetic_pool(n: int, d_sae: int, nnz: int, device: str, seed: int = 0):
    """n rows of `nnz` distinct random features each (sorted), values in (0, 1)."""
    from interp.selection import SparseEmbeddings

    g = torch.Generator(device=device).manual_seed(seed)
    keys = torch.rand(n, d_sae // 64, generator=g, device=device)  # distinct features: one per block of 64
    block = keys.topk(nnz, dim=1).indices.sort(dim=1).values
    idx = (block * 64 + torch.randint(0, 64, block.shape, generator=g, device=device)).to(torch.int32)
    vals = torch.rand(n, nnz, generator=g, device=device)
    offsets = torch.arange(0, n * nnz + 1, nnz, device=device)
    return SparseEmbeddings(offsets=offsets, indices=idx.reshape(-1), values=vals.reshape(-1), d_sae=d_sae)


def bench_similarity(n: int, device: str, d_sae: int = 32768, nnz: int = 64, repeats: int = 5) -> dict:
    from interp.selection import generalized_jaccard, pool_similarity

    pool = synthetic_pool(n, d_sae, nnz, device)
    prototype = pool.mean(torch.arange(100, device=device))
    out: dict = {"n_samples": n, "d_sae": d_sae, "nnz_per_sample": nnz, "device": device}
    for metric in ("jaccard", "cosine", "euclidean"):
        pool_similarity(pool, prototype, metric)  # warm-up
        times = [timed(lambda m=metric: pool_similarity(pool, prototype, m))[1] for _ in range(repeats)]
        out[f"{metric}_s"] = round(min(times), 4)
    rows = min(2000, n)
    sub = pool.subset(torch.arange(rows, device=device))
    dense = sub.to_dense()
    ref, t_dense = timed(lambda: generalized_jaccard(dense, prototype))
    got = pool_similarity(pool, prototype, "jaccard")[:rows]
    out["dense_reference_s_extrapolated"] = round(t_dense / rows * n, 3)
    out["dense_reference_rows_timed"] = rows
    out["dense_reference_memory_gb_for_all"] = round(n * d_sae * 4 / 1e9, 1)
    out["max_abs_diff_vs_dense"] = float((got - ref).abs().max())
    return out


def bench_encoding(
    device: str, n_texts: int, n_tokens: int, d_sae: int, k: int, layer: int, batch: int
) -> dict:
    import interp
    from interp.selection import encode_texts, random_topk_sae

    model = interp.load_model(random_gpt2("gpt2-small"), backend="tl", device=device)
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in torch.randint(0, 50000, (n_texts * (n_tokens - 1),), generator=g).tolist()]
    texts = [" ".join(words[i * (n_tokens - 1) : (i + 1) * (n_tokens - 1)]) for i in range(n_texts)]
    sae = random_topk_sae(model.cfg.d_model, d_sae, k, f"blocks.{layer}.hook_resid_post").to(device)
    tokens = model.to_tokens(texts)  # all the same length: BOS + n_tokens - 1 words

    def plain(stop: int | None):
        with torch.no_grad():
            for i in range(0, n_texts, batch):
                model.tl(
                    tokens[i : i + batch], stop_at_layer=stop, return_type=None if stop is None else "logits"
                )

    encode_texts(model, sae, texts[:batch], batch_size=batch)  # warm-up
    plain(layer + 1)
    emb, t_enc = timed(lambda: encode_texts(model, sae, texts, batch_size=batch))
    _, t_plain = timed(lambda: plain(layer + 1))
    _, t_full = timed(lambda: plain(None))
    n_tok = n_texts * n_tokens
    return {
        "model": "gpt2-small (random init)",
        "device": device,
        "n_texts": n_texts,
        "tokens_per_text": n_tokens,
        "layer": layer,
        "d_sae": d_sae,
        "k": k,
        "batch": batch,
        "encode_s": round(t_enc, 3),
        "forward_to_layer_s": round(t_plain, 3),
        "full_forward_s": round(t_full, 3),
        "encode_tok_per_s": round(n_tok / t_enc),
        "forward_to_layer_tok_per_s": round(n_tok / t_plain),
        "full_forward_tok_per_s": round(n_tok / t_full),
        "encode_overhead_x": round(t_enc / t_plain, 2),
        "mean_nnz_per_sample": round(emb.nnz / len(emb), 1),
    }


def main() -> None:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--n", type=int, default=1_000_000 if gpu else 100_000, help="pool size for the similarity"
    )
    p.add_argument("--out", default=f"benchmarks/results/selection-{'gpu' if gpu else 'cpu'}.json")
    args = p.parse_args()
    device = "cuda" if gpu else "cpu"
    if not gpu:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sim = bench_similarity(args.n, device)
    print("similarity", sim, flush=True)
    enc_cfg = (
        dict(n_texts=1024, n_tokens=128, d_sae=32768, k=64, layer=6, batch=64)
        if gpu
        else dict(n_texts=32, n_tokens=32, d_sae=16384, k=64, layer=6, batch=16)
    )
    enc = bench_encoding(device, **enc_cfg)
    print("encoding", enc, flush=True)
    write_json(
        args.out,
        {
            "device": device_name(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "similarity": sim,
            "encoding": enc,
            "note": "dense reference time is measured on dense_reference_rows_timed rows and scaled "
            "to n_samples; it would need dense_reference_memory_gb_for_all GB at once",
        },
    )
    print("wrote", args.out)


if __name__ == "__main__":
    main()

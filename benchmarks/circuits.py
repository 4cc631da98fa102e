"""Edge attribution speed: EAP-IG (m = 5 steps) against exact edge patching of the same edges, same model and inputs.

Cases: (1) IOI on `organism/base` (or, when the zoo has not built it, a tiny random GPT-2 on IOI prompts), every
edge patched exactly; (2) a random-init GPT-2-small config with 100 prompts x 16 tokens (GPU; on CPU the default
is 8 prompts), where exact edge patching (one forward per edge, batched) runs on a seeded random subset of edges
and its full time is extrapolated per edge (stated in the JSON). Timings are medians of 3 runs after a warm-up.
The goal for case 2 on a GPU is EAP-IG <= 0.5 s. Agreement with the exact effects: Spearman and Pearson over the
measured edges, and the share of the 20 largest exact effects that EAP-IG (or EAP, or EAP* = EAP with
qk_fix) also ranks in its top 20.
Usage: python benchmarks/circuits.py [--gpt2-prompts 100] [--subset 1024] [--out benchmarks/results/circuits-<dev>.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import device_name, random_gpt2, timed, write_json  # noqa: E402

from interp.metrics import rank_correlation  # noqa: E402

GOAL_GPU_SECONDS = 0.5


def _median_time(fn, repeats: int) -> tuple[object, float, list[float]]:
    fn()  # warm-up
    runs, out = [], None
    for _ in range(repeats):
        out, t = timed(fn)
        runs.append(t)
    return out, statistics.median(runs), runs


def ioi_case(device: str) -> tuple[object, object, str]:
    """(model, IOI PromptSet, name): organism/base when built, else a tiny random GPT-2 with the task words."""
    import interp
    from interp.tasks import make, vocabulary

    try:
        from interp import zoo

        if "organism/base" in zoo.names():
            zoo.path("organism/base")
            model = interp.load_model("organism/base", backend="tl", device=device)
            return model, make("ioi", model.tokenizer, n=64, seed=0, same_length=True), "organism/base"
    except (ImportError, KeyError, FileNotFoundError, AttributeError) as e:
        print(f"organism/base unavailable ({type(e).__name__}: {e}); using a tiny random GPT-2", flush=True)
    from interp.models.tiny import build_tiny_checkpoint
    from interp.models.tokenizer import build_word_tokenizer

    folder = Path(tempfile.gettempdir()) / "interp-bench-tiny-ioi"
    if not (folder / "config.json").exists():
        build_tiny_checkpoint("gpt2", folder, build_word_tokenizer(vocabulary()), n_layers=4, d_model=128)
    model = interp.load_model(folder, backend="tl", device=device)
    return model, make("ioi", model.tokenizer, n=64, seed=0, same_length=True), "tiny-gpt2 (random, 4 layers)"


def gpt2_case(device: str, n_prompts: int, seq: int):
    """A random-init GPT-2-small config on random tokens with an IOI-like one-token corruption."""
    import interp

    model = interp.load_model(random_gpt2("gpt2-small"), backend="tl", device=device)
    g = torch.Generator().manual_seed(0)
    V = model.cfg.d_vocab
    clean = torch.randint(10, V, (n_prompts, seq), generator=g)
    corrupt = clean.clone()
    corrupt[:, seq // 3] = torch.randint(10, V, (n_prompts,), generator=g)
    ans, wrong = (
        torch.randint(10, V, (n_prompts,), generator=g),
        torch.randint(10, V, (n_prompts,), generator=g),
    )
    from interp.metrics import LogitDiff

    metric = LogitDiff(positions=torch.full((n_prompts,), seq - 1), token_ids=torch.stack([ans, wrong], 1))
    return model, clean.to(device), corrupt.to(device), metric


def bench(name: str, model, clean, corrupt, metric, subset: int | None, repeats: int) -> dict:
    from interp.circuits import eap, edge_patch

    kw = dict(clean=clean, corrupt=corrupt, metric=metric)
    ig, t_ig, ig_runs = _median_time(lambda: eap(model, ig_steps=5, **kw), repeats)
    plain_scores, t_eap, _ = _median_time(lambda: eap(model, ig_steps=0, **kw), repeats)
    star, t_star, _ = _median_time(lambda: eap(model, ig_steps=0, qk_fix=True, **kw), repeats)
    edges = ig.graph.edges()
    n = len(edges)
    if subset is None or subset >= n:
        pick, extrapolated = list(range(n)), False
    else:
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:subset].tolist()
        extrapolated = True
    chosen = [edges[i] for i in pick]
    edge_patch(model, edges=chosen[:2], **kw)  # warm-up
    exact, t_exact = timed(lambda: edge_patch(model, edges=chosen, **kw))
    t_exact_all = t_exact / len(chosen) * n
    est = torch.tensor([ig[e] for e in chosen])
    B, T = clean.clean.shape if hasattr(clean, "clean") else clean.shape
    row = {
        "case": name,
        "prompts": B,
        "seq": T,
        "layers": model.cfg.n_layers,
        "heads": model.cfg.n_heads,
        "edges": n,
        "ig_steps": 5,
        "device": device_name(),
        "threads": torch.get_num_threads(),
        "eap_ig_seconds": round(t_ig, 4),
        "eap_ig_runs": [round(x, 4) for x in ig_runs],
        "eap_seconds": round(t_eap, 4),
        "eap_star_seconds": round(t_star, 4),
        "exact_edges_measured": len(chosen),
        "exact_seconds_measured": round(t_exact, 3),
        "exact_extrapolated": extrapolated,
        "exact_seconds_all_edges": round(t_exact_all, 3),
        "speedup_vs_exact": round(t_exact_all / t_ig, 1),
        "spearman_eap_ig_vs_exact": round(rank_correlation(est, exact), 4),
    }
    plain = torch.tensor([plain_scores[e] for e in chosen])
    row["spearman_eap_vs_exact"] = round(rank_correlation(plain, exact), 4)
    fixed = torch.tensor([star[e] for e in chosen])  # EAP with AtP*'s exact attention patterns (qk_fix)
    row["spearman_eap_star_vs_exact"] = round(rank_correlation(fixed, exact), 4)
    row["pearson_eap_ig_vs_exact"] = round(float(torch.corrcoef(torch.stack([est, exact]))[0, 1]), 4)
    k = min(20, len(chosen))  # do the largest exact effects come out on top?
    top = set(exact.abs().topk(k).indices.tolist())
    row[f"top{k}_overlap_eap_ig"] = round(len(top & set(est.abs().topk(k).indices.tolist())) / k, 3)
    row[f"top{k}_overlap_eap"] = round(len(top & set(plain.abs().topk(k).indices.tolist())) / k, 3)
    row[f"top{k}_overlap_eap_star"] = round(len(top & set(fixed.abs().topk(k).indices.tolist())) / k, 3)
    print(row, flush=True)
    return row


def main() -> None:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpt2-prompts", type=int, default=100 if gpu else 8)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument(
        "--subset",
        type=int,
        default=1024 if gpu else 48,
        help="exact-patch this many random edges of GPT-2-small and extrapolate per edge",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--skip-ioi", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    device = "cuda" if gpu else "cpu"
    rows = []
    if not a.skip_ioi:
        from interp.metrics import LogitDiff

        model, ps, name = ioi_case(device)
        rows.append(bench(f"IOI on {name}", model, ps.to(device), None, LogitDiff, None, a.repeats))
    if not a.skip_gpt2:
        model, clean, corrupt, metric = gpt2_case(device, a.gpt2_prompts, a.seq)
        row = bench("random GPT-2-small", model, clean, corrupt, metric, a.subset, a.repeats)
        row["goal_seconds"] = GOAL_GPU_SECONDS if gpu else None
        row["meets_goal"] = row["eap_ig_seconds"] <= GOAL_GPU_SECONDS if gpu else None
        rows.append(row)
    out = a.out or os.path.join(
        os.path.dirname(__file__), "results", f"circuits-{'gpu' if gpu else 'cpu'}.json"
    )
    write_json(
        out,
        {
            "benchmark": "circuits",
            "device": device_name(),
            "torch": torch.__version__,
            "notes": "EAP-IG m=5, EAP and EAP* (qk_fix) vs exact single-edge patching (one forward per "
            "edge, batched 32 edges per pass); exact times on a random edge subset are extrapolated per edge where "
            "exact_extrapolated is true",
            "rows": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Patching speed and memory: interp's batched sweeps vs TransformerLens' `patching` module, same model, inputs,
metric, same run.

Each sweep is timed with a metric object (which declares the positions and token ids it reads) and with the
TransformerLens idiom, a plain lambda `logits[:, -1, a] - logits[:, -1, b]` (whose read set interp infers).
CPU: GPT-2-small config, random init; resid_pre at 8 x 16 and 4 x 12 tokens, head z by position at 8 x 16.
GPU: batch 64 x 16, exact and fast mode, small and medium, each with one start position per patched position and
with 1 and 4 shared ones (`prefix_groups`). TransformerLens runs one forward per cell; on CPU its head-by-position
sweep (2,304 cells) would take ~15 min, so it is timed on a seeded random subset of cells and its full time
extrapolated per cell (stated in the JSON). The memory row: a 2-layer model with a 128k vocabulary at 4 x 256
tokens, peak bytes of interp's sweep under a small `memory_budget` against TransformerLens' per-cell forward.
Usage: python benchmarks/patching.py [--sizes gpt2-small] [--shapes 8x16 4x12] [--out benchmarks/results/...]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INTERP_PROGRESS", "0")

import torch  # noqa: E402
from _common import GPT2_SIZES, LiveBytes, device_name, random_gpt2, timed, write_json  # noqa: E402

from interp.metrics import rank_correlation  # noqa: E402


def _inputs(V: int, batch: int, seq: int, device: str):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(10, V, (batch, seq), generator=g).to(device)
    corrupt = clean.clone()
    corrupt[:, seq // 3] = torch.randint(10, V, (batch,), generator=g).to(
        device
    )  # an IOI-like one-token swap
    ans = torch.randint(10, V, (batch,), generator=g).to(device)
    wrong = torch.randint(10, V, (batch,), generator=g).to(device)
    return g, clean, corrupt, ans, wrong


def _metrics(batch: int, seq: int, ans: torch.Tensor, wrong: torch.Tensor, device: str) -> dict:
    b = torch.arange(batch, device=device)

    class LogitDiff:  # the metric object: interp reads positions / token ids from it
        name = "logit_diff"
        positions = torch.full((batch,), seq - 1, device=device)
        token_ids = torch.stack([ans, wrong], 1)

        def from_gathered(self, x):
            return x[..., 0] - x[..., 1]

        def __call__(self, logits):
            return logits[b, -1, ans] - logits[b, -1, wrong]

    return {"object": LogitDiff(), "lambda": lambda logits: logits[b, -1, ans] - logits[b, -1, wrong]}


SWEEPS = {  # name -> (component, per_head, TL function, TL setter, TL axes)
    "resid_pre": ("resid_pre", False, "get_act_patch_resid_pre", "layer_pos_patch_setter", ("layer", "pos")),
    "head_z_by_pos": (
        "z",
        True,
        "get_act_patch_attn_head_out_by_pos",
        "layer_pos_head_vector_patch_setter",
        ("layer", "pos", "head_index"),
    ),
}


def bench(
    model,
    size: str,
    batch: int,
    seq: int,
    sweeps: list[str],
    device: str,
    tl_subset: int | None,
    modes: list[str],
    prefix_groups: list[int | None],
) -> list[dict]:
    import pandas as pd
    from transformer_lens import patching as P

    from interp.patching import patch_sweep

    g, clean, corrupt, ans, wrong = _inputs(model.cfg.d_vocab, batch, seq, device)
    metrics = _metrics(batch, seq, ans, wrong, device)
    tl_metric = metrics["lambda"]
    with torch.no_grad():
        _, clean_cache = model.tl.run_with_cache(clean)
    rows = []
    for name in sweeps:
        comp, per_head, tl_name, setter_name, axes = SWEEPS[name]
        tl_fn, setter = getattr(P, tl_name), getattr(P, setter_name)
        L, H = model.cfg.n_layers, model.cfg.n_heads
        n_cells = L * seq * (H if per_head else 1)
        with torch.no_grad():
            if tl_subset is None or tl_subset >= n_cells or not per_head:
                ref, tl_time = timed(
                    lambda f=tl_fn: f(model.tl, corrupt, clean_cache, lambda lg: tl_metric(lg).mean())
                )
                ref_cells, measured = None, n_cells
            else:
                grid = torch.cartesian_prod(*[torch.arange(n) for n in (L, seq, H)])
                pick = grid[torch.randperm(len(grid), generator=g)[:tl_subset]]
                df = pd.DataFrame(pick.numpy(), columns=list(axes))
                ref, t_tl = timed(
                    lambda s=setter, c=comp, d=df: P.generic_activation_patch(
                        model.tl, corrupt, clean_cache, lambda lg: tl_metric(lg).mean(), s, c, index_df=d
                    )
                )
                ref_cells, tl_time, measured = pick, t_tl / tl_subset * n_cells, tl_subset
        for kind, metric in metrics.items():
            for mode, pg in [(m, p) for m in modes for p in prefix_groups]:
                patch_sweep(
                    model,
                    clean=clean[:2],
                    corrupt=corrupt[:2],
                    metric=lambda lg: lg[:, -1, 0],
                    component=comp,
                    per_head=per_head,
                    mode=mode,
                    positions=[0],
                )  # warm-up
                res, t_ours = timed(
                    lambda c=comp, h=per_head, m=mode, p=pg, mt=metric: patch_sweep(
                        model,
                        clean=clean,
                        corrupt=corrupt,
                        metric=mt,
                        component=c,
                        per_head=h,
                        mode=m,
                        prefix_groups=p,
                    )
                )
                ours = res.scores.to(ref.device)
                ours_at = ours[tuple(ref_cells.T)] if ref_cells is not None else ours
                moved = (ref.cpu() - res.baseline["corrupt"]).abs() > 1e-4
                rows.append(
                    {
                        "model": size,
                        "sweep": name,
                        "metric": kind,
                        "cells": n_cells,
                        "batch": batch,
                        "seq": seq,
                        "mode": mode,
                        "prefix_groups": pg,
                        "device": device_name(),
                        "tl_seconds": round(tl_time, 3),
                        "tl_cells_measured": measured,
                        "tl_extrapolated": ref_cells is not None,
                        "interp_seconds": round(t_ours, 3),
                        "speedup": round(tl_time / t_ours, 1),
                        "max_abs_diff": float((ours_at.cpu() - ref.cpu()).abs().max()),
                        # rank agreement over the cells the patch moves (unmoved cells all tie at the baseline)
                        "spearman_vs_tl_moved_cells": round(
                            rank_correlation(ours_at.cpu()[moved], ref.cpu()[moved]), 5
                        ),
                        "moved_cells": int(moved.sum()),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def memory_row(
    device: str, *, vocab: int = 128_000, batch: int = 4, seq: int = 256, budget: int = 32 << 20
) -> dict:
    """Peak bytes of a resid_pre sweep at a large vocabulary under `budget`, against one TransformerLens cell."""
    import pandas as pd
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import patching as P

    from interp.models.base import ModelConfig
    from interp.models.tl import TLModel
    from interp.models.tokenizer import build_word_tokenizer
    from interp.patching import patch_sweep

    torch.manual_seed(0)
    d, L, H = 64, 2, 4
    cfg = HookedTransformerConfig(
        n_layers=L, d_model=d, n_heads=H, d_head=d // H, d_mlp=4 * d, n_ctx=seq, d_vocab=vocab, act_fn="gelu",
        normalization_type="LN", device=device,
    )  # fmt: skip
    mc = ModelConfig(
        architecture="GPT2LMHeadModel", n_layers=L, n_heads=H, n_kv_heads=H, d_model=d, d_head=d // H,
        d_mlp=4 * d, d_vocab=vocab, n_ctx=seq,
    )  # fmt: skip
    model = TLModel(
        HookedTransformer(cfg).eval(), build_word_tokenizer([f"w{i}" for i in range(60)]), mc, name="wide"
    )
    g, clean, corrupt, ans, wrong = _inputs(
        60, batch, seq, device
    )  # prompt ids the small tokenizer can label
    ans, wrong = (torch.randint(vocab - 1000, vocab, (batch,), generator=g).to(device) for _ in range(2))
    metric = _metrics(batch, seq, ans, wrong, device)["object"]

    def peak(fn):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = fn()
            return out, torch.cuda.max_memory_allocated() - base
        with LiveBytes() as mem:
            out = fn()
        return out, mem.peak

    with torch.no_grad():
        res, ours = peak(
            lambda: patch_sweep(model, clean=clean, corrupt=corrupt, metric=metric, memory_budget=budget)
        )
        _, clean_cache = model.tl.run_with_cache(clean)
        cells = pd.DataFrame([[1, seq // 3]], columns=["layer", "pos"])
        ref, theirs = peak(
            lambda: P.generic_activation_patch(
                model.tl, corrupt, clean_cache, lambda lg: metric(lg).mean(), P.layer_pos_patch_setter, "resid_pre",
                index_df=cells,
            )
        )  # fmt: skip
    row = {
        "model": f"{L}-layer d={d}, vocab {vocab}",
        "sweep": "memory: resid_pre",
        "batch": batch,
        "seq": seq,
        "cells": L * seq,
        "device": device_name(),
        "memory_budget_bytes": budget,
        "interp_peak_bytes": int(ours),
        "within_budget": bool(ours <= budget),
        "full_logits_bytes": batch * seq * vocab * 4,
        "tl_peak_bytes_one_cell": int(theirs),
        "max_abs_diff_tl_cell": float((res.scores[1, seq // 3] - ref.flatten()[0].cpu()).abs()),
    }
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    gpu = torch.cuda.is_available()
    ap.add_argument(
        "--sizes",
        nargs="+",
        choices=sorted(GPT2_SIZES),
        default=["gpt2-small", "gpt2-medium"] if gpu else ["gpt2-small"],
    )
    ap.add_argument(
        "--shapes",
        nargs="+",
        default=["64x16"] if gpu else ["8x16", "4x12"],
        help="batch x tokens of the resid_pre sweeps",
    )
    ap.add_argument(
        "--head-z-shapes",
        nargs="*",
        default=None,
        help="batch x tokens of the head-z sweeps (default: the first of --shapes)",
    )
    ap.add_argument(
        "--tl-subset",
        type=int,
        default=None if gpu else 96,
        help="time TransformerLens on this many random cells of per-head sweeps and extrapolate",
    )
    ap.add_argument(
        "--prefix-groups",
        nargs="+",
        default=["none", "1", "4"] if gpu else ["none"],
        help="interp variants: 'none' (one start position per patched position) or k shared ones",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the large-vocabulary memory row")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    device = "cuda" if gpu else "cpu"
    modes = ["exact", "fast"] if gpu else ["exact"]
    groups = [None if g == "none" else int(g) for g in a.prefix_groups]
    head_z = a.shapes[:1] if a.head_z_shapes is None else a.head_z_shapes
    shapes = list(dict.fromkeys([*a.shapes, *head_z]))
    import interp

    rows = []
    for size in a.sizes:
        model = interp.load_model(random_gpt2(size), backend="tl", device=device)
        for shape in shapes:
            batch, seq = (int(x) for x in shape.lower().split("x"))
            sweeps = [
                s for s, on in (("resid_pre", shape in a.shapes), ("head_z_by_pos", shape in head_z)) if on
            ]
            rows += bench(model, size, batch, seq, sweeps, device, a.tl_subset, modes, groups)
        del model
    if not a.no_memory:
        rows.append(memory_row(device))
    out = a.out or os.path.join(
        os.path.dirname(__file__), "results", f"patching-{'gpu' if gpu else 'cpu'}.json"
    )
    write_json(
        out, {"benchmark": "patching", "device": device_name(), "torch": torch.__version__, "rows": rows}
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Patching speed: interp's batched sweeps vs TransformerLens' `patching` module, same model, inputs, metric.

CPU: GPT-2-small config, batch 8 x 16 tokens. GPU: batch 64 x 16, exact and fast mode, small and medium, each
with one start position per patched position and with 1 and 4 shared ones (`prefix_groups`).
TransformerLens runs one forward per cell; on CPU its head-by-position sweep (2,304 cells) would take ~15 min,
so it is timed on a seeded random subset of cells and its full time extrapolated per cell (stated in the JSON).
Usage: python benchmarks/patching.py [--sizes gpt2-small] [--out benchmarks/results/patching-<device>.json]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import GPT2_SIZES, device_name, random_gpt2, timed, write_json  # noqa: E402

from interp.metrics import rank_correlation  # noqa: E402


def bench(
    size: str,
    batch: int,
    seq: int,
    device: str,
    tl_subset: int | None,
    modes: list[str],
    prefix_groups: list[int | None],
) -> list[dict]:
    import pandas as pd
    from transformer_lens import patching as P

    import interp
    from interp.patching import patch_sweep

    model = interp.load_model(random_gpt2(size), backend="tl", device=device)
    g = torch.Generator().manual_seed(0)
    V = model.cfg.d_vocab
    clean = torch.randint(10, V, (batch, seq), generator=g).to(device)
    corrupt = clean.clone()
    corrupt[:, seq // 3] = torch.randint(10, V, (batch,), generator=g).to(
        device
    )  # an IOI-like one-token swap
    ans, wrong = (
        torch.randint(10, V, (batch,), generator=g).to(device),
        torch.randint(10, V, (batch,), generator=g).to(device),
    )
    b = torch.arange(batch, device=device)

    class LogitDiff:  # the metric object interp reads positions/token ids from
        name = "logit_diff"
        positions = torch.full((batch,), seq - 1, device=device)
        token_ids = torch.stack([ans, wrong], 1)

        def from_gathered(self, x):
            return x[..., 0] - x[..., 1]

        def __call__(self, logits):
            return logits[b, -1, ans] - logits[b, -1, wrong]

    metric = LogitDiff()
    with torch.no_grad():
        _, clean_cache = model.tl.run_with_cache(clean)
    rows = []
    for name, comp, per_head, tl_fn, setter, axes in [
        (
            "resid_pre",
            "resid_pre",
            False,
            P.get_act_patch_resid_pre,
            P.layer_pos_patch_setter,
            ("layer", "pos"),
        ),
        (
            "head_z_by_pos",
            "z",
            True,
            P.get_act_patch_attn_head_out_by_pos,
            P.layer_pos_head_vector_patch_setter,
            ("layer", "pos", "head_index"),
        ),
    ]:
        L, H = model.cfg.n_layers, model.cfg.n_heads
        n_cells = L * seq * (H if per_head else 1)
        with torch.no_grad():
            if tl_subset is None or tl_subset >= n_cells or not per_head:
                ref, t_tl = timed(
                    lambda f=tl_fn: f(model.tl, corrupt, clean_cache, lambda lg: metric(lg).mean())
                )
                ref_cells, tl_time, measured = None, t_tl, n_cells
            else:
                grid = torch.cartesian_prod(
                    *[torch.arange(n) for n in ((L, seq, H) if per_head else (L, seq))]
                )
                pick = grid[torch.randperm(len(grid), generator=g)[:tl_subset]]
                df = pd.DataFrame(pick.numpy(), columns=list(axes))
                ref, t_tl = timed(
                    lambda s=setter, c=comp, d=df: P.generic_activation_patch(
                        model.tl, corrupt, clean_cache, lambda lg: metric(lg).mean(), s, c, index_df=d
                    )
                )
                ref_cells, tl_time, measured = pick, t_tl / tl_subset * n_cells, tl_subset
        for mode, pg in [(m, g) for m in modes for g in prefix_groups]:
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
                lambda c=comp, h=per_head, m=mode, g=pg: patch_sweep(
                    model,
                    clean=clean,
                    corrupt=corrupt,
                    metric=metric,
                    component=c,
                    per_head=h,
                    mode=m,
                    prefix_groups=g,
                )
            )
            ours = res.scores.to(ref.device)
            ours_at = ours[tuple(ref_cells.T)] if ref_cells is not None else ours
            moved = (ref.cpu() - res.baseline["corrupt"]).abs() > 1e-4
            rows.append(
                {
                    "model": size,
                    "sweep": name,
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


def main() -> None:
    ap = argparse.ArgumentParser()
    gpu = torch.cuda.is_available()
    ap.add_argument(
        "--sizes",
        nargs="+",
        choices=sorted(GPT2_SIZES),
        default=["gpt2-small", "gpt2-medium"] if gpu else ["gpt2-small"],
    )
    ap.add_argument("--batch", type=int, default=64 if gpu else 8)
    ap.add_argument("--seq", type=int, default=16)
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
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    device = "cuda" if gpu else "cpu"
    modes = ["exact", "fast"] if gpu else ["exact"]
    groups = [None if g == "none" else int(g) for g in a.prefix_groups]
    rows = []
    for size in a.sizes:
        rows += bench(size, a.batch, a.seq, device, a.tl_subset, modes, groups)
    out = a.out or os.path.join(
        os.path.dirname(__file__), "results", f"patching-{'gpu' if gpu else 'cpu'}.json"
    )
    write_json(
        out, {"benchmark": "patching", "device": device_name(), "torch": torch.__version__, "rows": rows}
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

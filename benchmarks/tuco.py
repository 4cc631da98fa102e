"""TuCo cost: one `tuco(...)` call against one forward pass of the fine-tuned model (target: ratio <= 2.2).

A random-init GPT-2-small config and a perturbed twin (every weight + N(0, 0.002^2)) play base and fine-tune.
Both timings are the median of 3 runs after a warm-up, at a fixed thread count (default 1 on CPU, so that the
ratio does not depend on how busy the machine's other cores are); both run in the same process on the same input.
Usage: python benchmarks/tuco.py [--batch 8 --seq 32 --threads 1] [--backend tl] [--out benchmarks/results/...]
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

TARGET = 2.2


def bench(size: str, batch: int, seq: int, backend: str, device: str, repeats: int = 3) -> dict:
    import interp
    from interp.finetuning import tuco
    from interp.finetuning.pair import perturbed_twin

    base_dir = random_gpt2(size)
    twin_dir = Path(tempfile.gettempdir()) / f"interp-bench-{size}-twin"
    if not (twin_dir / "config.json").exists():
        perturbed_twin(base_dir, twin_dir, scale=0.002, seed=1)
    base = interp.load_model(base_dir, backend=backend, device=device)
    ft = interp.load_model(twin_dir, backend=backend, device=device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, ft.cfg.d_vocab, (batch, seq), generator=g).to(device)
    with torch.no_grad():
        ft(ids), tuco(ft, base, ids)  # warm-up
        fwd, tc = [], []
        for _ in range(repeats):  # interleaved, so a burst of load hits both
            fwd.append(timed(lambda: ft(ids))[1])
            res, t = timed(lambda: tuco(ft, base, ids))
            tc.append(t)
    t_fwd, t_tuco = statistics.median(fwd), statistics.median(tc)
    return {
        "model": size,
        "backend": backend,
        "batch": batch,
        "seq": seq,
        "device": device_name(),
        "threads": torch.get_num_threads(),
        "ft_forward_seconds": round(t_fwd, 4),
        "tuco_seconds": round(t_tuco, 4),
        "ratio": round(t_tuco / t_fwd, 3),
        "target_ratio": TARGET,
        "meets_target": t_tuco / t_fwd <= TARGET,
        "forward_runs": [round(x, 4) for x in fwd],
        "tuco_runs": [round(x, 4) for x in tc],
        "mean_tuco": round(float(res.score.mean()), 4),
    }


def main() -> None:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="gpt2-small")
    ap.add_argument("--batch", type=int, default=64 if gpu else 8)
    ap.add_argument("--seq", type=int, default=128 if gpu else 32)
    ap.add_argument("--threads", type=int, default=None if gpu else 1)
    ap.add_argument("--backend", nargs="+", default=["tl"], choices=["tl", "nnsight"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = "cuda" if gpu else "cpu"
    rows = [bench(a.size, a.batch, a.seq, b, device) for b in a.backend]
    for r in rows:
        print(
            f"{r['model']} {r['backend']} batch {r['batch']}x{r['seq']} on {r['device']}: FT forward "
            f"{r['ft_forward_seconds']:.3f} s, TuCo {r['tuco_seconds']:.3f} s, ratio {r['ratio']:.2f} "
            f"(target <= {TARGET})",
            flush=True,
        )
    out = a.out or os.path.join(os.path.dirname(__file__), "results", f"tuco-{'gpu' if gpu else 'cpu'}.json")
    write_json(out, {"benchmark": "tuco", "device": device_name(), "torch": torch.__version__, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

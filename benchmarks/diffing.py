"""Model-diffing cost: crosscoder training throughput against a plain forward of both models, and the cost of
collecting activations (one forward per model) against that plain forward.

The peer of every number is measured in the same run on the same tokens: `plain` = one forward of the base and one
of the fine-tune per batch (no caching); `collect` = `paired_pass` (KL, top tokens, lens KL off, the crosscoder
site kept at every real token), which must cost about the same (ratio near 1) and run exactly one forward per
model per batch; `crosscoder` = BatchTopK crosscoder training steps on the collected activations, in tokens/s.
Default models: organism/base and organism/chat-ft (d_model 128); `--model gpt2-small` uses a random-init GPT-2
small and a perturbed twin. Timings are medians of `--repeats` after a warm-up, at a fixed thread count.
Usage: python benchmarks/diffing.py [--model organisms|gpt2-small] [--docs 256] [--seq 64] [--threads 1]
    [--device cpu] [--out benchmarks/results/diffing-cpu.json]
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


def _pair(model: str, device: str):
    import interp
    from interp.finetuning.pair import ModelPair, perturbed_twin

    if model == "organisms":
        names = ("organism/base", "organism/chat-ft")
    else:
        base_dir = random_gpt2(model)
        twin = Path(tempfile.gettempdir()) / f"interp-bench-{model}-twin"
        if not (twin / "config.json").exists():
            perturbed_twin(base_dir, twin, scale=0.002, seed=1)
        names = (base_dir, twin)
    return ModelPair(*(interp.load_model(n, backend="tl", device=device) for n in names))


def bench(
    model: str, docs: int, seq: int, batch: int, device: str, repeats: int, steps: int, d_sae: int
) -> dict:
    from interp.diffing import CrosscoderConfig, Keep, paired_pass, real_positions, train_crosscoder

    pair = _pair(model, device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, pair.base.cfg.d_vocab, (docs, seq), generator=g)
    ids[:, 0] = pair.base.tokenizer.bos_token_id or 0
    mask = torch.ones_like(ids)
    n_tok = int(mask.sum())
    site = f"blocks.{pair.n_layers // 2}.hook_resid_post"
    keep = [Keep(name="cc", sites=(site,), where=real_positions(mask))]

    def plain() -> None:
        with torch.no_grad():
            for s in range(0, docs, batch):
                pair.base(ids[s : s + batch].to(device))
                pair.finetuned(ids[s : s + batch].to(device))

    def collect():
        return paired_pass(pair, ids, mask, keep=keep, batch_size=batch)

    plain(), collect()  # warm-up
    t_plain, t_collect = [], []
    for _ in range(repeats):  # interleaved, so a burst of load hits both
        t_plain.append(timed(plain)[1])
        res, t = timed(collect)
        t_collect.append(t)
    acts = res.activations("cc").to(device)
    cfg = CrosscoderConfig(d_sae=d_sae, k=16, steps=steps, batch_size=512, n_shards=4)
    train_crosscoder(acts, CrosscoderConfig(d_sae=d_sae, k=16, steps=5, batch_size=512), site=site)  # warm-up
    t_cc = [timed(lambda: train_crosscoder(acts, cfg, site=site))[1] for _ in range(repeats)]
    tp, tc, tcc = statistics.median(t_plain), statistics.median(t_collect), statistics.median(t_cc)
    n_batches = -(-docs // batch)
    plain_tps = n_tok / tp
    cc_tps = steps * cfg.batch_size / tcc
    return {
        "model": model,
        "d_model": pair.base.cfg.d_model,
        "docs": docs,
        "seq": seq,
        "tokens": n_tok,
        "batch": batch,
        "device": device_name(),
        "threads": torch.get_num_threads(),
        "plain_forward_both_seconds": round(tp, 4),
        "plain_forward_both_tokens_per_s": round(plain_tps, 1),
        "collect_seconds": round(tc, 4),
        "collect_over_plain": round(tc / tp, 3),
        "forwards_per_model": res.n_forwards,
        "batches": n_batches,
        "one_forward_per_model_per_batch": res.n_forwards == {"base": n_batches, "finetuned": n_batches},
        "crosscoder_d_sae": d_sae,
        "crosscoder_steps": steps,
        "crosscoder_seconds": round(tcc, 4),
        "crosscoder_tokens_per_s": round(cc_tps, 1),
        "crosscoder_over_plain_throughput": round(cc_tps / plain_tps, 4),
        "runs": {
            "plain": [round(x, 4) for x in t_plain],
            "collect": [round(x, 4) for x in t_collect],
            "crosscoder": [round(x, 4) for x in t_cc],
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="organisms", choices=["organisms", "gpt2-small"])
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--d-sae", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    res = bench(
        args.model, args.docs, args.seq, args.batch, args.device, args.repeats, args.steps, args.d_sae
    )
    res["load_average"] = list(os.getloadavg())
    for k, v in res.items():
        if k != "runs":
            print(f"{k:36s} {v}")
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    out = (
        args.out
        or f"benchmarks/results/diffing-{kind}{'' if args.model == 'organisms' else '-' + args.model}.json"
    )
    write_json(out, res)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

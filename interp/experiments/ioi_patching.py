"""Experiment `ioi_patching`: where does a model compute IOI (Wang et al. 2022)?

Activation patching of the residual stream and of every head's output on IOI (denoising clean → ABC corrupt),
path patching of every head to the logits (direct effect), and attribution patching against exact patching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp.experiments.api import Run, register_experiment
from interp.metrics import rank_correlation


@dataclass(frozen=True, kw_only=True)
class IOIPatchingConfig:
    model: str = "organism/base"  # any local folder or hub id (e.g. "gpt2" online) works too
    backend: str = "tl"
    n_prompts: int = 32
    template: int = 0  # one IOI template, so that all prompts share one length
    components: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out")


DEMO = {"n_prompts": 8, "components": ["resid_pre"]}


@register_experiment("ioi_patching", config=IOIPatchingConfig, demo=DEMO)
def ioi_patching(cfg: IOIPatchingConfig, run: Run) -> dict[str, Any]:
    """Activation, path and attribution patching on IOI: heatmaps, tables and headline numbers."""
    from interp import tasks
    from interp.metrics import LogitDiff
    from interp.models.load import load_model
    from interp.patching import attribution_patch, patch_sweep, path_patch

    model = load_model(cfg.model, backend=cfg.backend, device=run.device)
    prompts = tasks.make("ioi", model.tokenizer, n=cfg.n_prompts, seed=run.seed, template=cfg.template)
    metric = LogitDiff.from_prompts(prompts)
    results: dict[str, Any] = {"model": cfg.model, "n_prompts": len(prompts)}
    for comp in cfg.components:
        res = patch_sweep(model, clean=prompts, metric=metric, component=comp)
        run.figure(
            res.figure(title=f"IOI: patching {comp} (clean → corrupt), logit difference"), f"patch_{comp}"
        )
        run.table(res.to_frame(), f"patch_{comp}")
        results[f"{comp}_max"] = float(res.scores.max())
    results["ld_clean"], results["ld_corrupt"] = res.baseline["clean"], res.baseline["corrupt"]
    heads = patch_sweep(model, clean=prompts, metric=metric, component="z", per_head=True, positions="all")
    run.figure(heads.figure(title="IOI: patching each head's output at all positions"), "patch_heads")
    pp = path_patch(model, clean=prompts, metric=metric, receivers="logits", convention="logit_diff")
    run.figure(
        pp.figure(title="IOI: path patching each head → logits (normalised: 1 = corrupt effect)"),
        "path_patch_logits",
    )
    run.table(pp.to_frame(), "path_patch_logits")
    # score 1 = this head's corrupt output alone moves the logit difference all the way to the corrupt run's
    results["path_patch_top_heads"] = ", ".join(f"{a}.{b}" for a, b in pp.top(3))
    results["path_patch_top_score"] = float(torch.nan_to_num(pp.scores, nan=-1e9).max())
    atp = attribution_patch(
        model, clean=prompts, metric=metric, component="z", per_head=True, positions="all"
    )
    results["atp_spearman_heads"] = rank_correlation(atp.scores, heads.scores)
    return results

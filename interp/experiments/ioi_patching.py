"""Experiment `ioi_patching`: where does a model compute IOI (Wang et al. 2022)?

Activation patching of the residual stream and of every head's output on IOI (denoising clean → ABC corrupt),
path patching of every head to the logits (direct effect), and attribution patching against exact patching.
Each sweep is a step of the run, so a resumed run loads the finished ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp.config import each, model_name, non_empty, one_of, param, positive
from interp.experiments.api import Run, register_experiment
from interp.metrics import rank_correlation
from interp.models.load import BACKENDS
from interp.patching.sweep import SWEEP_COMPONENTS
from interp.tasks.words import IOI_TEMPLATES


@dataclass(frozen=True, kw_only=True)
class IOIPatchingConfig:
    model: str = param("organism/base", check=model_name)  # any local folder or hub id ("gpt2" online) too
    backend: str = param("tl", check=one_of(BACKENDS))
    n_prompts: int = param(32, check=positive)
    template: int = param(0, check=one_of(range(len(IOI_TEMPLATES))))  # one template: equal prompt lengths
    components: tuple[str, ...] = param(
        ("resid_pre", "attn_out", "mlp_out"), check=(non_empty, each(one_of(SWEEP_COMPONENTS)))
    )


DEMO = {"n_prompts": 8, "components": ["resid_pre"]}


@register_experiment("ioi_patching", config=IOIPatchingConfig, demo=DEMO)
def ioi_patching(cfg: IOIPatchingConfig, run: Run) -> dict[str, Any]:
    """Activation, path and attribution patching on IOI: heatmaps, tables and headline numbers."""
    from interp import tasks
    from interp.metrics import LogitDiff
    from interp.models.load import load_model
    from interp.patching import PatchResult, PathPatchResult, attribution_patch, patch_sweep, path_patch

    model = load_model(cfg.model, backend=cfg.backend, device=run.device)
    prompts = tasks.make("ioi", model.tokenizer, n=cfg.n_prompts, seed=run.seed, template=cfg.template)
    metric = LogitDiff.from_prompts(prompts)

    def sweep(name: str, **kw: Any) -> PatchResult:
        folder = run.step_folder(
            name, lambda d: patch_sweep(model, clean=prompts, metric=metric, **kw).save(d)
        )
        return PatchResult.load(folder)

    results: dict[str, Any] = {"model": cfg.model, "n_prompts": len(prompts)}
    for comp in cfg.components:
        res = sweep(f"patch_{comp}", component=comp)
        run.figure(
            res.figure(title=f"IOI: patching {comp} (clean → corrupt), logit difference"), f"patch_{comp}"
        )
        run.table(res.to_frame(), f"patch_{comp}")
        results[f"{comp}_max"] = float(res.scores.max())
    results["ld_clean"], results["ld_corrupt"] = res.baseline["clean"], res.baseline["corrupt"]
    heads = sweep("patch_heads", component="z", per_head=True, positions="all")
    run.figure(heads.figure(title="IOI: patching each head's output at all positions"), "patch_heads")

    def direct_effect() -> dict[str, Any]:
        pp = path_patch(model, clean=prompts, metric=metric, receivers="logits", convention="logit_diff")
        return {
            "scores": pp.scores.tolist(),
            "senders": pp.senders,
            "values": pp.values.tolist(),
            "baseline": pp.baseline,
            "convention": pp.convention,
            "receivers": pp.receivers,
        }

    d = run.step("path_patch_logits", direct_effect)
    pp = PathPatchResult(
        scores=torch.tensor(d["scores"]),
        senders=[(a, b) for a, b in d["senders"]],
        values=torch.tensor(d["values"]),
        baseline=d["baseline"],
        convention=d["convention"],
        receivers=d["receivers"],
    )
    run.figure(
        pp.figure(title="IOI: path patching each head → logits (normalised: 1 = corrupt effect)"),
        "path_patch_logits",
    )
    run.table(pp.to_frame(), "path_patch_logits")
    # score 1 = this head's corrupt output alone moves the logit difference all the way to the corrupt run's
    results["path_patch_top_heads"] = ", ".join(f"{a}.{b}" for a, b in pp.top(3))
    results["path_patch_top_score"] = float(torch.nan_to_num(pp.scores, nan=-1e9).max())
    atp = run.step(
        "attribution",
        lambda: {
            "scores": attribution_patch(
                model, clean=prompts, metric=metric, component="z", per_head=True, positions="all"
            ).scores
        },
    )
    results["atp_spearman_heads"] = rank_correlation(atp["scores"], heads.scores)
    return results

"""The `context_knob` experiment: Minder et al. 2025's knob, found in a CCS-fine-tuned model, applied to its base.

Steps: CCS scores of both models; the linear-time layer search in the four settings; DAS (rank 1) at the layer
with the best held-out interchange accuracy among the intent-swap ranges, with a difference-of-means baseline
and higher ranks for comparison; steering on no-instruction prompts (the steering values picked on training
prompts, evaluated on held-out ones); transfer of the same `u` to the base model and further models of the same
width; the separation of `uᵀh` by intent and its correlation with PairAcc across models (base, fine-tuned,
others sharing their residual basis, and weight interpolations between base and fine-tuned, since no
intermediate checkpoints are saved).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from interp.config import (
    ConfigError,
    at_least,
    check_fields,
    each,
    in_range,
    model_name,
    non_empty,
    non_negative,
    one_of,
    param,
    positive,
)
from interp.experiments.api import Run, register_experiment
from interp.models.base import HookedModel
from interp.models.interpolate import interpolate
from interp.models.load import BACKENDS, DTYPES
from interp.subspace.ccs import CCSPairs, ccs_sets, evaluate_ccs, make_ccs
from interp.subspace.das import (
    DAS_PAIRS,
    Subspace,
    confident_twins,
    fit_knob,
    intent_swap_data,
    interchange_accuracy,
    knob_pairs,
    mean_difference_subspace,
)
from interp.subspace.layer_search import (
    SETTINGS,
    LayerSearchConfig,
    LayerSearchResult,
    search_figure,
    search_setting,
)
from interp.subspace.separation import Separation, correlation, separation, separation_figure
from interp.subspace.steer import (
    SteerCurve,
    check_transfer,
    default_c_values,
    pick_c,
    steer_sweep,
    steered_pair_accuracy,
    steering_figure,
    transplant_shares,
)

INTENT_SWAP = ("cp", "pc")


@dataclass(frozen=True, kw_only=True)
class ContextKnobConfig:
    """Parameters of `context_knob` (defaults: the zoo organisms on CPU; see the README for Llama-3.1-8B)."""

    model: str = param(
        "organism/ccs-ft", check=model_name
    )  # the CCS-fine-tuned model where the knob is found
    base: str = param("organism/base", check=model_name)  # the model the same u is transferred to
    # further transfer targets (when d_model matches)
    transfer_to: tuple[str, ...] = param(("organism/base-llama",), check=each(model_name))
    # more models sharing `model`'s residual basis, for the separation correlation
    compare: tuple[str, ...] = param((), check=each(model_name))
    # base -> model weight mixes (TL backend only)
    interpolations: tuple[float, ...] = param(
        (0.25, 0.5, 0.75), check=each(in_range(0, 1, open_low=True, open_high=True))
    )
    backend: str = param("tl", check=one_of(BACKENDS))
    dtype: str = param("float32", check=one_of(DTYPES))
    # DAS training and steering-value choice (training entities)
    n_train_pairs: int = param(256, check=positive)
    # held-out entities: scores, interchange accuracy, steering, separation
    n_test_pairs: int = param(128, check=positive)
    n_search_pairs: int = param(32, check=at_least(2))  # held-out pairs for the layer search
    settings: tuple[str, ...] = param(SETTINGS, check=(non_empty, each(one_of(SETTINGS))))
    threshold: float = param(0.88, check=in_range(0, 1))  # the layer search's thresholds (the paper's values)
    epsilon: float = param(0.3, check=in_range(0, 1))
    phi: float = param(0.05, check=in_range(0, 1))
    # None: best held-out interchange accuracy over the intent-swap ranges
    das_layer: int | None = param(None, check=non_negative)
    compare_ranks: tuple[int, ...] = param((2, 4), check=each(at_least(2)))  # ranks above 1
    epochs: int = param(3, check=positive)
    das_batch_size: int = param(8, check=positive)
    lr: float = param(1e-3, check=positive)
    # DAS pairs: "intent_swap" (the paper: same context and query, opposite intent) or "no_intent" (target: the
    # prompt without an intent, source: its twin with one; trains for the knob's use on such prompts)
    das_pairs: str = param("intent_swap", check=one_of(DAS_PAIRS))
    confident_only: bool = True  # train and test DAS on pairs the model answers right under both intents
    # empty: a symmetric sweep scaled to the coordinates (`default_c_values`)
    c_values: tuple[float, ...] = ()
    c_scale: float = param(1.5, check=positive)
    n_c: int = param(9, check=at_least(2))
    batch_size: int = param(64, check=positive)  # prompts per forward pass

    def __post_init__(self) -> None:
        check_fields(self, where="context_knob")
        if self.c_values and not min(self.c_values) < 0 < max(self.c_values):
            raise ConfigError(
                f"context_knob.c_values: {list(self.c_values)} needs a negative and a positive value"
            )


def _load(name: str, cfg: ContextKnobConfig, device: str) -> HookedModel:
    from interp.models.load import load_model

    return load_model(name, backend=cfg.backend, device=device, dtype=cfg.dtype)


def _range_text(layers: list[int] | tuple[int, ...]) -> str:
    """Layers as compact ranges: (1, 2, 3, 5) -> "1-3,5"."""
    out: list[str] = []
    for k in sorted(layers):
        if out and int(out[-1].split("-")[-1]) == k - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{k}"
        else:
            out.append(str(k))
    return ",".join(out)


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", name.split("/")[-1]).strip("_").lower()


def _search(model: HookedModel, ccs: CCSPairs, cfg: ContextKnobConfig) -> dict[str, dict]:
    scfg = LayerSearchConfig(threshold=cfg.threshold, epsilon=cfg.epsilon, phi=cfg.phi)
    return {s: search_setting(model, ccs, s, scfg, batch_size=cfg.batch_size).to_dict() for s in cfg.settings}


DEMO = {
    "das_pairs": "no_intent",
    "transfer_to": [],
    "interpolations": [],
    "n_train_pairs": 64,
    "n_test_pairs": 32,
    "n_search_pairs": 16,
    "settings": ["cp"],
    "epochs": 2,
    "lr": 1e-2,
    "compare_ranks": [],
}


@register_experiment("context_knob", config=ContextKnobConfig, demo=DEMO)
def context_knob(cfg: ContextKnobConfig, run: Run) -> dict[str, Any]:
    """Find the context/prior knob in a CCS-fine-tuned model and steer it and its base (Minder et al. 2025)."""
    from interp.plotting import line

    ft, base = _load(cfg.model, cfg, run.device), _load(cfg.base, cfg, run.device)
    if cfg.das_layer is not None and not 0 <= cfg.das_layer < ft.cfg.n_layers:
        raise ValueError(
            f"das_layer {cfg.das_layer} out of range: {cfg.model} has layers 0..{ft.cfg.n_layers - 1}"
        )
    tok = ft.tokenizer
    train = ccs_sets(
        tok, n_pairs=cfg.n_train_pairs, seed=run.seed, formats=("instruction", "none"), split="train"
    )
    test = ccs_sets(tok, n_pairs=cfg.n_test_pairs, seed=run.seed + 1, split="test")
    search_ccs = make_ccs(
        tok, n_pairs=cfg.n_search_pairs, seed=run.seed + 2, format="instruction", split="test"
    )

    scores = run.step(
        "scores",
        lambda: {
            name: {
                fmt: evaluate_ccs(m, c, batch_size=cfg.batch_size).to_dict()
                for fmt, c in test.items()
                if fmt != "none"
            }
            for name, m in (("ft", ft), ("base", base))
        },
    )

    # ---- layer search (four settings)
    searches = {
        s: LayerSearchResult.from_dict(d)
        for s, d in run.step("layer_search", lambda: _search(ft, search_ccs, cfg)).items()
    }
    run.table(
        [r for s in searches.values() for r in s.to_frame().assign(setting=s.setting).to_dict("records")],
        "layer_search_trace",
    )
    run.figure(search_figure(searches), "layer_search_trace")
    swap = sorted({k for s in INTENT_SWAP if s in searches and searches[s].found for k in searches[s].layers})

    # ---- DAS: layer choice, the knob, baselines
    candidates = [cfg.das_layer] if cfg.das_layer is not None else (swap or list(range(ft.cfg.n_layers)))
    das_kw: dict[str, Any] = dict(
        epochs=cfg.epochs,
        batch_size=cfg.das_batch_size,
        lr=cfg.lr,
        seed=run.seed,
        confident_only=cfg.confident_only,
        pairs=cfg.das_pairs,
        train_none=train["none"],
        test_none=test["none"],
    )

    def das_scan() -> dict[str, Any]:
        out: dict[str, Any] = {"layers": {}}
        for layer in candidates:
            sub, losses, acc = fit_knob(ft, train["instruction"], test["instruction"], layer, **das_kw)
            out["layers"][str(layer)] = {"acc": acc, "losses": losses, "basis": sub.basis.detach().tolist()}
        return out

    scan = run.step("das", das_scan)
    layer = int(max(scan["layers"], key=lambda k: (scan["layers"][k]["acc"], -int(k))))
    knob = Subspace(ft.cfg.d_model, 1, basis=torch.tensor(scan["layers"][str(layer)]["basis"]))
    run.save_tensors("knob", {"u": knob.basis.detach(), "layer": torch.tensor(layer)})

    def baselines() -> dict[str, float]:
        ti, tn = confident_twins(ft, test["instruction"], test["none"], confident_only=cfg.confident_only)
        held_out = knob_pairs(cfg.das_pairs, ti, tn)
        train_c, _ = confident_twins(ft, train["instruction"], confident_only=cfg.confident_only)
        dm = mean_difference_subspace(ft, train_c, layer)
        out = {"mean_diff": interchange_accuracy(ft, dm, layer, held_out)}
        if cfg.das_pairs != "intent_swap":  # the knob on the paper's held-out pairs
            out["intent_swap"] = interchange_accuracy(ft, knob, layer, intent_swap_data(ti))
        for r in cfg.compare_ranks:
            out[f"rank{r}"] = fit_knob(
                ft, train["instruction"], test["instruction"], layer, rank=r, **das_kw
            )[2]
        return out

    base_acc = run.step("das_baselines", baselines)
    run.figure(
        line(
            {f"layer {k}": v["losses"] for k, v in scan["layers"].items()},
            title=f"DAS training (rank 1, {cfg.das_pairs.replace('_', '-')} pairs)",
            x_title="training step",
            y_title="cross-entropy (nats)",
        ),
        "das_training",
    )

    # ---- steering on no-instruction prompts, c chosen on training prompts
    c_values = list(cfg.c_values) or run.step(
        "c_values",
        lambda: default_c_values(
            ft, knob, layer, train["instruction"], scale=cfg.c_scale, n=cfg.n_c, batch_size=cfg.batch_size
        ),
    )

    def steering() -> dict[str, Any]:
        tuning = steer_sweep(ft, knob, layer, train["none"], c_values, batch_size=cfg.batch_size)
        c_ctx, c_pri = pick_c(tuning)
        curves = {
            "ft": steer_sweep(ft, knob, layer, test["none"], c_values, batch_size=cfg.batch_size),
            "base": steer_sweep(base, knob, layer, test["none"], c_values, batch_size=cfg.batch_size),
        }
        out: dict[str, Any] = {
            "c_context": c_ctx,
            "c_prior": c_pri,
            "curves": {k: v.to_dict() for k, v in curves.items()},
            "notes": {},
        }
        out["transplant"] = transplant_shares(
            ft, layer, test["instruction"], test["none"], batch_size=cfg.batch_size
        )
        out["pair_acc"] = {
            k: steered_pair_accuracy(
                m, knob, layer, test["none"], c_context=c_ctx, c_prior=c_pri, batch_size=cfg.batch_size
            )
            for k, m in (("ft", ft), ("base", base))
        }
        for name in cfg.transfer_to:
            other = _load(name, cfg, run.device)
            reason = check_transfer(knob, other, layer)
            if reason:
                out["notes"][name] = f"not applied: {reason}"
                continue
            out["curves"][name] = steer_sweep(
                other, knob, layer, test["none"], c_values, batch_size=cfg.batch_size
            ).to_dict()
            out["notes"][name] = (
                "applied: same width, but an independently trained model shares no residual "
                "basis with the fine-tuned one (a control)"
            )
        return out

    steer = run.step("steering", steering)
    curves = {k: SteerCurve(**v) for k, v in steer["curves"].items()}
    c_ctx, c_pri = steer["c_context"], steer["c_prior"]
    run.table(
        [r for k, cv in curves.items() for r in cv.to_frame().assign(name=k).to_dict("records")], "steering"
    )
    run.figure(steering_figure(curves, c_ctx, c_pri), "steering_curve")

    # ---- separation of u^T h by intent, and its correlation with PairAcc across models
    def separations() -> list[dict]:
        models: list[tuple[str, HookedModel]] = [("base", base), ("ft", ft)]
        models += [(n, _load(n, cfg, run.device)) for n in cfg.compare]
        if cfg.backend == "tl":
            models += [(f"interp {a:g}", interpolate(base, ft, a)) for a in cfg.interpolations]
        return [
            separation(m, knob, layer, test["instruction"], name=n, batch_size=cfg.batch_size).to_dict()
            for n, m in models
        ]

    seps = [Separation(**d) for d in run.step("separation", separations)]
    corr = correlation(seps)
    run.table(
        [{k: v for k, v in s.to_dict().items() if k not in ("context", "prior")} for s in seps], "separation"
    )
    run.figure(separation_figure([s for s in seps if s.name in ("base", "ft")]), "separation_histogram")

    ft_curve, base_curve = curves["ft"], curves["base"]
    results: dict[str, Any] = {
        "layer_range": _range_text(swap) if swap else "none found",
        "layer_search_runs": sum(s.runs for s in searches.values()),
        "layer_search_budget": sum(s.budget for s in searches.values()),
        **{
            f"layer_range_{s}": (_range_text(r.layers) if r.found else "none found")
            for s, r in searches.items()
        },
        "das_layer": layer,
        "das_pairs": cfg.das_pairs,
        "interchange_acc": scan["layers"][str(layer)]["acc"],
        "interchange_acc_mean_diff": base_acc["mean_diff"],
        **{f"interchange_acc_{k}": v for k, v in base_acc.items() if k != "mean_diff"},
        "steer_c_context": c_ctx,
        "steer_c_prior": c_pri,
        "steer_context_share": ft_curve.at(c_ctx)[0],
        "steer_prior_share": ft_curve.at(c_pri)[1],
        # the ceiling at the knob's site: the whole last-token residual of the paired instruction prompt
        "transplant_context_share": steer["transplant"]["context_share"],
        "transplant_prior_share": steer["transplant"]["prior_share"],
        "unsteered_context_share_ft": ft_curve.unsteered_context_share,
        "unsteered_prior_share_ft": ft_curve.unsteered_prior_share,
        "transfer_context_share": base_curve.at(c_ctx)[0],
        "transfer_prior_share": base_curve.at(c_pri)[1],
        "unsteered_context_share_base": base_curve.unsteered_context_share,
        "unsteered_prior_share_base": base_curve.unsteered_prior_share,
        "steer_pair_acc_ft": steer["pair_acc"]["ft"],
        "steer_pair_acc_base": steer["pair_acc"]["base"],
        "pair_acc_ft": scores["ft"]["instruction"]["pair_acc"],
        "pair_acc_base": scores["base"]["instruction"]["pair_acc"],
        "pair_acc_ft_weight": scores["ft"]["weight"]["pair_acc"],
        "pair_acc_base_weight": scores["base"]["weight"]["pair_acc"],
        "separation_auroc_ft": next(s.auroc for s in seps if s.name == "ft"),
        "separation_auroc_base": next(s.auroc for s in seps if s.name == "base"),
        "separation_pair_acc_pearson": corr["pearson"],
        "separation_d_pair_acc_pearson": correlation(seps, stat="cohens_d")["pearson"],
        "separation_n_models": corr["n"],
    }
    for name, note in steer["notes"].items():
        results[f"transfer_{_key(name)}_note"] = note
        if name in curves:
            results[f"transfer_{_key(name)}_context_share"] = curves[name].at(c_ctx)[0]
            results[f"transfer_{_key(name)}_prior_share"] = curves[name].at(c_pri)[1]
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()}

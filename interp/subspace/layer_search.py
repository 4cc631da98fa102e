"""Linear-time layer search (Minder et al. 2025, `auto_search`): the layers whose heads carry the answer.

Patching per-head outputs `z` (all heads of a set of layers, last token only) from a source run into a target
run, the search finds a small layer set whose patch transfers the source answer:

1. upper bound: binary search for the smallest `ub` such that patching layers `[0, ub)` gives a max-over-layers
   TIP probability of the source answer above `threshold`;
2. lower bound: binary search for the largest `lb` such that `[lb, ub)` still does;
3. refinement: while the patched run's output P(source) <= P(target) + `epsilon`, add the first layer
   `k > max(layers)` at which the TIP P(source) drops by more than `phi`, and patch again.

Each distinct layer set is one patched run; the search uses at most 2⌈log₂ L⌉ + L of them (`run_budget`).
`search_layers` is the algorithm on any probe function (tested on a synthetic oracle); `search_setting` runs it
on a model for one of the paper's four settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from interp.models.base import HookedModel
from interp.sites import Site
from interp.subspace.ccs import CCSPairs, InterchangeData
from interp.subspace.forward import forward_last, last_token_hook
from interp.subspace.patchscope import IdentityPrompt, identity_prompt, tip_probs

# prior / context: source and target share the intent, the (context, query) differs, so the answer differs.
# cp: the context-intent prompt patched into the prior-intent prompt of the same pair (source answer: context);
# pc: the prior-intent prompt patched into the context-intent prompt (source answer: prior).
SETTINGS: tuple[str, ...] = ("prior", "context", "cp", "pc")


@dataclass(frozen=True, kw_only=True)
class Probe:
    """What one patched run tells the search (batch means)."""

    layer_p_src: tuple[float, ...]  # TIP P(source answer) of each layer's last-token residual
    p_src: float  # the patched run's output probability of the source answer
    p_tgt: float  # ... of the target answer

    @property
    def score(self) -> float:
        return max(self.layer_p_src)


@dataclass(frozen=True, kw_only=True)
class LayerSearchConfig:
    """The search's thresholds (the paper's values)."""

    threshold: float = 0.88  # max-over-layers TIP P(source) a range must exceed
    epsilon: float = 0.3  # refinement stops once output P(source) > P(target) + epsilon
    phi: float = 0.05  # a drop of TIP P(source) larger than this marks a layer to add


@dataclass(frozen=True, kw_only=True)
class LayerSearchResult:
    """The layers found, the bounds, the patched runs used against the budget, and the trace of every run."""

    layers: tuple[int, ...]
    upper: int
    lower: int
    found: bool  # False when even patching every layer stays below the threshold
    runs: int
    budget: int
    trace: list[dict] = field(default_factory=list)  # one entry per run: step, layers, score, p_src, p_tgt
    config: LayerSearchConfig = field(default_factory=LayerSearchConfig)
    setting: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LayerSearchResult:
        return cls(**{**d, "layers": tuple(d["layers"]), "config": LayerSearchConfig(**d["config"])})

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{**t, "layers": ",".join(map(str, t["layers"]))} for t in self.trace])


def run_budget(n_layers: int) -> int:
    """The most patched runs the search may use: 2⌈log₂ L⌉ + L."""
    return 2 * math.ceil(math.log2(n_layers)) + n_layers


def search_layers(
    probe: Callable[[tuple[int, ...]], Probe],
    n_layers: int,
    cfg: LayerSearchConfig = LayerSearchConfig(),
    *,
    setting: str = "",
) -> LayerSearchResult:
    """Minder et al.'s linear-time search over `n_layers`, with `probe(layers)` one patched run (memoised)."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    memo: dict[tuple[int, ...], Probe] = {}
    trace: list[dict] = []
    step = "upper"

    def run(layers: Sequence[int]) -> Probe:
        key = tuple(sorted(layers))
        if key not in memo:
            memo[key] = p = probe(key)
            if len(p.layer_p_src) != n_layers:
                raise ValueError(
                    f"probe gave {len(p.layer_p_src)} per-layer probabilities for {n_layers} layers"
                )
            trace.append(
                {
                    "run": len(memo),
                    "step": step,
                    "layers": list(key),
                    "score": p.score,
                    "p_src": p.p_src,
                    "p_tgt": p.p_tgt,
                    "layer_p_src": list(p.layer_p_src),
                }
            )
        return memo[key]

    def passes(layers: range) -> bool:
        return run(layers).score > cfg.threshold

    lo, hi = 1, n_layers  # smallest ub in [1, L] with [0, ub) passing
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(range(0, mid)):
            hi = mid
        else:
            lo = mid + 1
    ub = lo
    found = passes(range(0, ub))  # memoised unless ub = L was never tried
    if not found:
        return LayerSearchResult(
            layers=tuple(range(n_layers)),
            upper=ub,
            lower=0,
            found=False,
            runs=len(memo),
            budget=run_budget(n_layers),
            trace=trace,
            config=cfg,
            setting=setting,
        )
    step = "lower"
    lo, hi = 0, ub - 1  # largest lb in [0, ub - 1] with [lb, ub) passing ([0, ub) passes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if passes(range(mid, ub)):
            lo = mid
        else:
            hi = mid - 1
    lb = lo
    step = "refine"
    layers = tuple(range(lb, ub))
    while True:
        p = run(layers)
        if p.p_src > p.p_tgt + cfg.epsilon:
            break
        drops = [
            k for k in range(max(layers) + 1, n_layers) if p.layer_p_src[k - 1] - p.layer_p_src[k] > cfg.phi
        ]
        if not drops:
            break
        layers = tuple(sorted((*layers, drops[0])))
    return LayerSearchResult(
        layers=layers,
        upper=ub,
        lower=lb,
        found=True,
        runs=len(memo),
        budget=run_budget(n_layers),
        trace=trace,
        config=cfg,
        setting=setting,
    )


# ------------------------------------------------------------------------------------------ on a model
def setting_pairs(ccs: CCSPairs, setting: str) -> InterchangeData:
    """The (source, target) rows of `setting` (see `SETTINGS`) on `ccs` (instruction or weight format).

    prior/context pair each prompt with the same-intent prompt of the next pair; rows whose two answers coincide
    are dropped (counted in `dropped`).
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown search setting {setting!r}; valid: {', '.join(SETTINGS)}")
    if ccs.format == "none":
        raise ValueError(
            "the layer search needs prompts that state the intent (format 'instruction' or 'weight')"
        )
    ps, n = ccs.prompts, len(ccs)
    if setting in ("prior", "context"):
        if n < 2:
            raise ValueError(
                f"setting {setting!r} pairs different (context, query)s: it needs >= 2 pairs, got {n}"
            )
        tgt = ccs.rows(setting)
        src = tgt.roll(-1)  # the same intent, the next pair
    else:
        src, tgt = (
            (ccs.rows("context"), ccs.rows("prior"))
            if setting == "cp"
            else (ccs.rows("prior"), ccs.rows("context"))
        )
    keep = ps.answer_ids[src] != ps.answer_ids[tgt]
    if not bool(keep.any()):
        raise ValueError(f"setting {setting!r}: every source answer equals its target answer")
    src, tgt = src[keep], tgt[keep]
    return InterchangeData(
        setting=setting,
        source_tokens=ps.clean[src],
        source_end=ps.end[src],
        target_tokens=ps.clean[tgt],
        target_end=ps.end[tgt],
        source_answer=ps.answer_ids[src],
        target_answer=ps.answer_ids[tgt],
        dropped=int((~keep).sum()),
    )


def head_patch_probe(
    model: HookedModel, pp: InterchangeData, *, prompt: IdentityPrompt | None = None, batch_size: int = 64
) -> Callable[[tuple[int, ...]], Probe]:
    """`probe(layers)`: patch every head's `z` of `layers` at the last token, source -> target, and read TIP."""
    n_layers = model.cfg.n_layers
    prompt = prompt or identity_prompt(model)
    z_sites = [Site("z", layer) for layer in range(n_layers)]
    resid_sites = [Site("resid_post", layer) for layer in range(n_layers)]
    with torch.no_grad():
        _, src = forward_last(model, pp.source_tokens, pp.source_end, read=z_sites, batch_size=batch_size)
    src_z = {s.layer: src[s.hook_name] for s in z_sites}  # layer -> [batch, head, d_head]
    answers = torch.stack([pp.source_answer, pp.target_answer], 1)  # (batch, 2)

    def probe(layers: tuple[int, ...]) -> Probe:
        def hooks(rows: Tensor):
            end = pp.target_end[rows]
            return [
                (Site("z", layer), last_token_hook(end, lambda at, v=src_z[layer][rows]: v))  # type: ignore[misc]
                for layer in layers
            ]

        with torch.no_grad():
            logits, acts = forward_last(
                model, pp.target_tokens, pp.target_end, hooks=hooks, read=resid_sites, batch_size=batch_size
            )
        resid = torch.stack([acts[s.hook_name] for s in resid_sites])  # (layer, batch, d)
        tip = tip_probs(model, resid, range(n_layers), answers, prompt=prompt)  # (layer, batch, 2)
        out = logits.softmax(-1).gather(-1, answers.to(logits.device)).mean(0)  # (2,)
        return Probe(
            layer_p_src=tuple(tip[..., 0].mean(1).tolist()), p_src=float(out[0]), p_tgt=float(out[1])
        )

    return probe


def search_setting(
    model: HookedModel,
    ccs: CCSPairs,
    setting: str,
    cfg: LayerSearchConfig = LayerSearchConfig(),
    *,
    prompt: IdentityPrompt | None = None,
    batch_size: int = 64,
) -> LayerSearchResult:
    """The layer search for one of the paper's four settings on `model`."""
    probe = head_patch_probe(model, setting_pairs(ccs, setting), prompt=prompt, batch_size=batch_size)
    return search_layers(probe, model.cfg.n_layers, cfg, setting=setting)


def tip_by_layer(result: LayerSearchResult) -> Float[Tensor, "run layer"]:
    """The per-layer TIP P(source) of every run of a search, in run order (for the trace figure)."""
    return torch.tensor([t["layer_p_src"] for t in result.trace])


def search_figure(searches: dict[str, LayerSearchResult]):
    """The search trace: max-over-layers TIP P(source answer) of every patched run, per setting."""
    from interp.plotting import line

    if not searches:
        raise ValueError("no searches to plot")
    fig = line(
        {s: [t["score"] for t in r.trace] for s, r in searches.items()},
        title="Layer search: max-over-layers TIP P(source answer) per patched run",
        x_title="patched run",
        y_title="max TIP probability of the source answer",
    )
    threshold = next(iter(searches.values())).config.threshold
    fig.add_hline(y=threshold, line_dash="dot", annotation_text=f"threshold {threshold}")
    return fig

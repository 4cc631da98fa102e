"""Lenses: read a residual stream as next-token logits, per layer (logit lens; tuned lens).

The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens") applies the model's own final norm and
unembedding to an intermediate residual. The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from
Transformers with the Tuned Lens") first maps the residual of layer l through a learned affine translator
`h + A_l h + b_l` (A and b start at zero), trained to match the model's final next-token distribution (KL) on the
model's own activations. Both read `resid_post` of a layer (the block's output). A tuned lens is saved with the
model it was trained on and refuses other models.

Save format of a tuned lens (a folder): `tuned_lens.safetensors` (`A.{layer}` [d_model, d_model], `b.{layer}`
[d_model]) and `tuned_lens.json` (`format`, `layers`, `d_model`, `model` = {name, weights_sha256, basis},
`config`, `stats`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.diffing._progress import progress_iter
from interp.models.base import HookedModel
from interp.models.identity import ModelIdentity, check_trained_on, model_identity
from interp.sites import Site

Readout = Callable[[Tensor], Tensor]
TUNED_LENS_FORMAT = "interp.tuned_lens/1"
_BASE_MODEL_NORMS = ("ln_f", "norm", "final_layer_norm", "final_layernorm")


def check_layers(model: HookedModel, layers: Sequence[int], what: str = "layers") -> list[int]:
    """`layers` as a list of ints, each in [0, n_layers); raise naming the valid range otherwise (no compute)."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"{what} must be a sequence of layer indices, got {type(layers).__name__}")
    n = model.cfg.n_layers
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{what} must hold ints; got {layer!r} ({type(layer).__name__})")
        if not 0 <= layer < n:
            raise ValueError(f"{what}: layer {layer} out of range; {model.name} has layers 0..{n - 1}")
        out.append(layer)
    if not out:
        raise ValueError(f"{what} is empty: give at least one layer")
    return out


def final_readout(model: HookedModel) -> Readout:
    """`resid [..., d_model] -> logits [..., vocab]` (float32): the model's final norm, unembedding and logit
    soft-cap, applied to a residual in the space of the last block's output (the logit lens)."""
    if model.backend == "tl":
        tl = model.tl
        cap = float(getattr(tl.cfg, "output_logits_soft_cap", -1.0) or -1.0)

        def tl_readout(x: Tensor) -> Tensor:
            shape = x.shape
            x = x.reshape(-1, 1, shape[-1]).to(tl.W_U.device, tl.W_U.dtype)  # (n, 1, d): TL's [batch pos d]
            h = tl.ln_final(x) if tl.cfg.normalization_type is not None else x
            logits = tl.unembed(h).float()
            if cap > 0:
                logits = cap * torch.tanh(logits / cap)
            return logits.reshape(*shape[:-1], -1)

        return tl_readout
    hf = getattr(model, "hf_model", None)
    if hf is None:
        raise TypeError(f"no readout for {type(model).__name__} on backend {model.backend!r}")
    inner = hf.base_model
    norm = next((getattr(inner, n) for n in _BASE_MODEL_NORMS if hasattr(inner, n)), None)
    if norm is None:
        raise TypeError(
            f"cannot find the final norm of {model.cfg.architecture} (looked for {', '.join(_BASE_MODEL_NORMS)})"
        )
    head = hf.get_output_embeddings()
    cap = float(getattr(hf.config, "final_logit_softcapping", None) or -1.0)

    def hf_readout(x: Tensor) -> Tensor:
        x = x.to(head.weight.device, head.weight.dtype)
        logits = head(norm(x)).float()
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    return hf_readout


def logit_lens(model: HookedModel, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """The logit lens of `resid` (any leading shape): the model's final norm and unembedding, float32."""
    if resid.shape[-1] != model.cfg.d_model:
        raise ValueError(f"resid has width {resid.shape[-1]}, {model.name} has d_model {model.cfg.d_model}")
    with torch.no_grad():
        return final_readout(model)(resid)


def top_tokens(model: HookedModel, logits: Float[Tensor, " vocab"], k: int = 10) -> list[str]:
    """The `k` highest-scoring tokens of one logit vector, as strings (leading-space markers removed)."""
    ids = logits.float().topk(min(k, logits.shape[-1])).indices.tolist()
    return [t.lstrip("Ġ▁") for t in model.tokenizer.convert_ids_to_tokens(ids)]


@contextlib.contextmanager
def frozen(model: HookedModel) -> Iterator[None]:
    """Turn off `requires_grad` on the model's parameters for the block (restored after)."""
    roots = [m for m in (getattr(model, "tl", None), getattr(model, "hf_model", None)) if m is not None]
    params = [p for r in roots for p in r.parameters()]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, rg in zip(params, before, strict=True):
            p.requires_grad_(rg)


# ------------------------------------------------------------------------------------------------ tuned lens
@dataclass(frozen=True, kw_only=True)
class TunedLensConfig:
    """How the translators are trained (Adam on the KL to the model's final distribution)."""

    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 512  # tokens per step
    max_tokens: int = 16_384  # training tokens kept (a seeded subset of the real tokens)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"TunedLensConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TunedLensConfig.lr must be > 0, got {self.lr}")
        if self.seed < 0:
            raise ValueError(f"TunedLensConfig.seed must be >= 0, got {self.seed}")


class TunedLens(nn.Module):
    """One affine translator per layer (`h + A_l h + b_l`), read out through the model's final norm and
    unembedding (Belrose et al. 2023). `model` is the identity of the model it was trained on."""

    def __init__(self, layers: Sequence[int], d_model: int, model: ModelIdentity) -> None:
        super().__init__()
        self.layers = tuple(int(x) for x in layers)
        self.d_model = d_model
        self.model = model
        self.A = nn.ParameterDict({str(x): nn.Parameter(torch.zeros(d_model, d_model)) for x in self.layers})
        self.b = nn.ParameterDict({str(x): nn.Parameter(torch.zeros(d_model)) for x in self.layers})
        self.stats: dict[str, Any] = {}
        self.config: dict[str, Any] = {}

    def translate(self, resid: Float[Tensor, "... d_model"], layer: int) -> Float[Tensor, "... d_model"]:
        if layer not in self.layers:
            raise ValueError(f"this tuned lens has translators for layers {list(self.layers)}, not {layer}")
        A, b = self.A[str(layer)], self.b[str(layer)]
        x = resid.to(A.dtype)
        return x + x @ A.T + b

    def check_model(self, model: HookedModel, *, allow_mismatch: bool = False) -> None:
        """Raise `ModelMismatchError` unless `model` is the one this lens was trained on."""
        if model.cfg.d_model != self.d_model:
            raise ValueError(f"tuned lens has d_model {self.d_model}; {model.name} has {model.cfg.d_model}")
        check_trained_on(self.model, model, what="tuned lens", allow_mismatch=allow_mismatch)

    def logits(
        self, model: HookedModel, resid: Float[Tensor, "... d_model"], layer: int
    ) -> Float[Tensor, "... vocab"]:
        """The tuned-lens logits of `resid` (layer `layer`'s `resid_post`) through `model`'s readout."""
        return final_readout(model)(self.translate(resid.to(self.A[str(layer)].device), layer))

    def save(self, folder: str | Path) -> Path:
        """Write the translators and their metadata to `folder` (atomically, file by file)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"A.{x}": self.A[str(x)].detach().cpu().contiguous() for x in self.layers}
        tensors |= {f"b.{x}": self.b[str(x)].detach().cpu().contiguous() for x in self.layers}
        tmp = folder / f".tuned_lens.{os.getpid()}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, folder / "tuned_lens.safetensors")
        meta = {
            "format": TUNED_LENS_FORMAT,
            "layers": list(self.layers),
            "d_model": self.d_model,
            "model": self.model.to_dict(),
            "config": self.config,
            "stats": self.stats,
        }
        tmp = folder / f".tuned_lens.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder / "tuned_lens.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> TunedLens:
        from safetensors.torch import load_file

        folder = Path(folder)
        for f in ("tuned_lens.json", "tuned_lens.safetensors"):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder} is not a tuned-lens folder: no {f}")
        meta = json.loads((folder / "tuned_lens.json").read_text())
        if meta.get("format") != TUNED_LENS_FORMAT:
            raise ValueError(f"{folder}: format {meta.get('format')!r}, expected {TUNED_LENS_FORMAT!r}")
        lens = cls(meta["layers"], meta["d_model"], ModelIdentity.from_dict(meta["model"]))
        state = load_file(str(folder / "tuned_lens.safetensors"))
        with torch.no_grad():
            for x in lens.layers:
                lens.A[str(x)].copy_(state[f"A.{x}"])
                lens.b[str(x)].copy_(state[f"b.{x}"])
        lens.stats, lens.config = meta.get("stats", {}), meta.get("config", {})
        return lens.to(device)


def _kl_rows(logp_p: Tensor, logp_q: Tensor) -> Tensor:
    """KL(p || q) per row, from log-probabilities (float32)."""
    return (logp_p.exp() * (logp_p - logp_q)).sum(-1)


def train_tuned_lens(
    model: HookedModel,
    tokens: Tensor,
    attention_mask: Tensor,
    *,
    layers: Sequence[int] | None = None,
    config: TunedLensConfig | None = None,
    batch_size: int = 64,
    progress: bool | None = None,
) -> TunedLens:
    """A tuned lens for `model`, trained on its own `resid_post` activations over `tokens` (real tokens only).

    Each translator minimises KL(final distribution || tuned-lens distribution) of its layer; the last layer
    needs none but gets one too (it learns the identity). `stats` holds the mean KL of the logit lens and of the
    tuned lens per layer on the training tokens.
    """
    cfg = config or TunedLensConfig()
    layers = check_layers(model, list(range(model.cfg.n_layers)) if layers is None else list(layers))
    sites = [Site("resid_post", x) for x in layers]
    acts: dict[int, list[Tensor]] = {x: [] for x in layers}
    finals: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            ids, mask = tokens[start : start + batch_size], attention_mask[start : start + batch_size]
            logits, cache = model.run_with_cache(ids, sites, attention_mask=mask)
            real = mask.to(logits.device).bool()
            finals.append(logits[real].float().log_softmax(-1).cpu())
            for s in sites:
                acts[s.layer].append(cache[s.hook_name][real].float().cpu())
    target = torch.cat(finals)  # (n, vocab)
    g = torch.Generator().manual_seed(cfg.seed)
    keep = torch.randperm(target.shape[0], generator=g)[: cfg.max_tokens]
    target = target[keep]
    dev = model.device
    lens = TunedLens(layers, model.cfg.d_model, model_identity(model)).to(dev)
    readout = final_readout(model)
    opt = torch.optim.Adam(lens.parameters(), lr=cfg.lr)
    xs = {x: torch.cat(acts[x])[keep] for x in layers}
    n = target.shape[0]
    with frozen(model):
        for _ in progress_iter(range(cfg.steps), desc="tuned lens", progress=progress):
            rows = torch.randint(n, (min(cfg.batch_size, n),), generator=g)
            tgt = target[rows].to(dev)
            loss = torch.zeros((), device=dev)
            for x in layers:
                lp = readout(lens.translate(xs[x][rows].to(dev), x)).log_softmax(-1)
                loss = loss + _kl_rows(tgt, lp).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            tgt = target.to(dev)
            stats = {}
            for x in layers:
                h = xs[x].to(dev)
                stats[str(x)] = {
                    "logit_lens_kl": float(_kl_rows(tgt, readout(h).log_softmax(-1)).mean()),
                    "tuned_lens_kl": float(
                        _kl_rows(tgt, readout(lens.translate(h, x)).log_softmax(-1)).mean()
                    ),
                }
    lens.stats = {"n_tokens": n, "kl_to_final": stats}
    lens.config = dataclasses.asdict(cfg)
    return lens

"""Crosscoders on paired activations, and the diff-SAE baseline.

A crosscoder (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing") encodes the
base and fine-tune activations of one token with one shared encoder, `f = ReLU(sum_m W_enc[m] x_m + b_enc)`, and
decodes each model with its own decoder, `x_m ~ W_dec[m]^T f + b_dec[m]`. A latent whose fine-tune decoder is much
longer than its base decoder exists only in the fine-tune: latent classes come from the relative decoder norm
`(1 + (|d_ft| - |d_base|) / max(|d_ft|, |d_base|)) / 2` (Minder et al. 2025, "Robustly identifying concepts
introduced during chat fine-tuning using crosscoders"): ft-only > 0.9, base-only < 0.1, shared within 0.1 of 0.5,
else other. Sparsity: BatchTopK (Bussmann et al. 2024; the k * batch largest decoder-norm-weighted activations of a
batch are kept, a learned threshold at inference: Minder et al. 2025, "Overcoming sparsity artifacts in
crosscoders") with the AuxK loss on dead latents (Gao et al. 2024), or the L1 penalty weighted by the summed decoder
norms. The diff-SAE is the same dictionary with one "model": an SAE on ft - base activations.

Inputs are scaled per model so that the mean squared norm of a token's activation is d_in (the scales are kept and
undone on decoding: `encode`/`decode` work in model units).

Training is data-parallel over data shards: a global batch draws `batch_size / n_shards` rows from each shard with
a generator seeded by (seed, step, shard), so the batches do not depend on how many processes share the shards.
Under `torchrun` (gloo on CPU, nccl on GPU) rank r owns shards r, r+W, ...; the BatchTopK threshold of a batch is
found over all ranks (each rank's k * batch largest values are gathered), gradients are summed, and every rank takes
the same optimizer step: two processes reproduce one process up to the order of float additions. Checkpoints are
written atomically every `checkpoint_every` steps and a rerun into the same folder resumes exactly.

Save format (a folder): `crosscoder.safetensors` (W_enc [n_models, d_in, d_sae], b_enc [d_sae], W_dec [n_models,
d_sae, d_in], b_dec [n_models, d_in], scale [n_models], threshold []) and `crosscoder.json` (`format`, `kind`
"crosscoder" | "diff_sae", `site` (TL hook name), `d_in`, `d_sae`, `n_models`, `models`: the [base, fine-tune]
identities {name, weights_sha256, basis} it was trained on, `config`, `stats`: FVE on held-out activations, L0,
dead fraction, latent frequencies are in `latent_frequency` of the tensors file when measured).

    torchrun --nproc_per_node 2 -m interp.diffing.crosscoder --acts ACTS_DIR --out CC_DIR --steps 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.diffing._progress import progress_enabled, progress_iter
from interp.models.identity import ModelIdentity, check_trained_on
from interp.selection.features import dist_info, init_distributed
from interp.selection.sae import site_width
from interp.sites import Site, SiteError, from_hook_name

FORMAT = "interp.crosscoder/1"
WEIGHTS = "crosscoder.safetensors"
META = "crosscoder.json"
CHECKPOINT = "checkpoint.pt"
SPARSITY = ("batchtopk", "l1")
KINDS = ("crosscoder", "diff_sae")
CLASSES = ("ft_only", "base_only", "shared", "other", "dead")
Acts = Float[Tensor, "n n_models d_in"]


class CrosscoderMismatchError(ValueError):
    """A crosscoder applied to models, a site or a width it was not trained on."""


@dataclass(frozen=True, kw_only=True)
class CrosscoderConfig:
    """A crosscoder's size, sparsity and training schedule (defaults: the organisms, d_model 128)."""

    d_sae: int = 512  # latents
    sparsity: str = "batchtopk"  # batchtopk | l1
    k: int = 16  # BatchTopK: active latents per token (on average over a batch)
    l1_coef: float = 0.3  # L1: weight of sum_j f_j (|d_base,j| + |d_ft,j|) (normalised units)
    steps: int = 2000
    batch_size: int = 512  # tokens per step, over all shards and ranks
    lr: float = 2e-3
    warmup: float = 0.05  # fraction of steps with a linear lr warm-up; the last 20 % decay linearly to 0
    aux_k: int = 64  # AuxK: dead latents used to reconstruct the residual (BatchTopK)
    aux_coef: float = 1 / 32
    dead_after: int = 50_000  # tokens without firing after which a latent counts as dead
    threshold_decay: float = 0.99  # EMA of the per-batch BatchTopK threshold (the inference threshold)
    init_norm: float = 0.1  # initial decoder row norm (normalised units)
    n_shards: int = 4  # data shards: the unit of data parallelism (a multiple of the number of processes)
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "d_sae",
            "k",
            "steps",
            "batch_size",
            "aux_k",
            "dead_after",
            "n_shards",
            "checkpoint_every",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CrosscoderConfig.{name} must be an int >= 1, got {v!r}")
        if self.sparsity not in SPARSITY:
            raise ValueError(f"CrosscoderConfig.sparsity must be one of {SPARSITY}, got {self.sparsity!r}")
        if self.k > self.d_sae:
            raise ValueError(f"CrosscoderConfig.k={self.k} exceeds d_sae={self.d_sae}")
        if self.batch_size % self.n_shards:
            raise ValueError(
                f"CrosscoderConfig.batch_size={self.batch_size} must be a multiple of n_shards={self.n_shards}"
            )
        for name in ("lr", "init_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CrosscoderConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("l1_coef", "aux_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CrosscoderConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warmup < 0.8 or not 0 <= self.threshold_decay < 1:
            raise ValueError("CrosscoderConfig: warmup must lie in [0, 0.8) and threshold_decay in [0, 1)")
        if self.seed < 0:
            raise ValueError(f"CrosscoderConfig.seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ the module
class Crosscoder(nn.Module):
    """A sparse dictionary over `n_models` aligned activations of width `d_in` (2: a crosscoder; 1: an SAE).

    `encode(x [n, n_models, d_in]) -> f [n, d_sae]` (BatchTopK at inference: `f_j = pre_j` where the
    decoder-norm-weighted `pre_j * w_j` exceeds the learned threshold, independent of the batch); `decode(f)`
    gives `[n, n_models, d_in]`; both in model units. `models` are the identities the activations came from.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        n_models: int = 2,
        *,
        sparsity: str = "batchtopk",
        k: int | None = 16,
        kind: str = "crosscoder",
        site: str = "",
        models: Sequence[ModelIdentity | None] = (),
    ) -> None:
        super().__init__()
        if sparsity not in SPARSITY or kind not in KINDS:
            raise ValueError(f"sparsity must be one of {SPARSITY} and kind one of {KINDS}")
        self.d_in, self.d_sae, self.n_models = d_in, d_sae, n_models
        self.sparsity, self.k, self.kind, self.site = sparsity, k, kind, site
        self.models: tuple[ModelIdentity | None, ...] = tuple(models) if models else (None, None)  # base, ft
        self.W_enc = nn.Parameter(torch.zeros(n_models, d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(n_models, d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(n_models, d_in))
        self.register_buffer("scale", torch.ones(n_models))
        self.register_buffer("threshold", torch.tensor(-1.0))
        self.register_buffer("latent_frequency", torch.full((d_sae,), float("nan")))
        self.config: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}

    # ---- maths --------------------------------------------------------------------------------------
    def normalise(self, x: Acts) -> Acts:
        self._check_input(x)
        return x.to(self.W_enc.device, self.W_enc.dtype) / self.scale[:, None]

    def pre_acts(self, xn: Acts) -> Float[Tensor, "n d_sae"]:
        """ReLU(sum_m W_enc[m] x_m + b_enc) of normalised inputs."""
        return torch.relu(torch.einsum("nmd,mdf->nf", xn, self.W_enc) + self.b_enc)

    def decoder_norms(self) -> Float[Tensor, "n_models d_sae"]:
        """|W_dec[m, j]| per model and latent (normalised units)."""
        return self.W_dec.norm(dim=-1)

    def latent_weights(self) -> Float[Tensor, " d_sae"]:
        """The summed decoder norms: the crosscoder's L1 weight and BatchTopK ranking weight of each latent."""
        return self.decoder_norms().sum(0)

    def encode(self, x: Acts) -> Float[Tensor, "n d_sae"]:
        """Latent activations of model-unit inputs (BatchTopK: the learned threshold; L1: plain ReLU)."""
        pre = self.pre_acts(self.normalise(x))
        if self.sparsity == "l1":
            return pre
        if float(self.threshold) < 0:
            raise RuntimeError(
                "this BatchTopK crosscoder has no inference threshold yet (it was never trained)"
            )
        return pre * (pre * self.latent_weights() > self.threshold)

    def decode_normalised(self, f: Float[Tensor, "n d_sae"]) -> Acts:
        return torch.einsum("nf,mfd->nmd", f, self.W_dec) + self.b_dec

    def decode(self, f: Float[Tensor, "n d_sae"]) -> Acts:
        """Reconstructions `[n, n_models, d_in]` in model units."""
        return self.decode_normalised(f) * self.scale[:, None]

    def forward(self, x: Acts) -> Acts:
        return self.decode(self.encode(x))

    def contribution(self, f: Float[Tensor, "n d_sae"], latents: Tensor | Sequence[int]) -> Acts:
        """`sum_{j in latents} f_j W_dec[m, j]` per model `[n, n_models, d_in]`, in model units."""
        idx = torch.as_tensor(latents, dtype=torch.long, device=f.device)
        return torch.einsum("nf,mfd->nmd", f[:, idx], self.W_dec[:, idx]) * self.scale[:, None]

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 3 or x.shape[1:] != (self.n_models, self.d_in):
            raise ValueError(
                f"{self.kind} expects activations [n, {self.n_models}, {self.d_in}]; got {tuple(x.shape)}"
            )

    # ---- latent classes -----------------------------------------------------------------------------
    def relative_norm(self) -> Float[Tensor, " d_sae"]:
        """(1 + (|d_ft| - |d_base|) / max(|d_ft|, |d_base|)) / 2: 1 = fine-tune only, 0 = base only."""
        if self.n_models != 2:
            raise ValueError("relative decoder norms need a crosscoder of two models")
        n = self.decoder_norms().detach()
        return 0.5 * (1 + (n[1] - n[0]) / n.max(0).values.clamp_min(1e-12))

    def latent_classes(self, *, threshold: float = 0.1) -> list[str]:
        """Each latent's class: ft_only, base_only, shared, other, or dead (never fired on the measured data)."""
        r = self.relative_norm().cpu()
        freq = self.latent_frequency.cpu()
        out = []
        for j in range(self.d_sae):
            if not math.isnan(float(freq[j])) and float(freq[j]) == 0:
                out.append("dead")
            elif r[j] > 1 - threshold:
                out.append("ft_only")
            elif r[j] < threshold:
                out.append("base_only")
            elif abs(float(r[j]) - 0.5) < threshold:
                out.append("shared")
            else:
                out.append("other")
        return out

    def latents_of(self, cls: str, *, threshold: float = 0.1) -> Tensor:
        """Indices of the latents of class `cls`."""
        if cls not in CLASSES:
            raise ValueError(f"unknown latent class {cls!r}; valid: {', '.join(CLASSES)}")
        return torch.tensor(
            [j for j, c in enumerate(self.latent_classes(threshold=threshold)) if c == cls], dtype=torch.long
        )

    # ---- checks -------------------------------------------------------------------------------------
    def check_pair(self, pair: Any, *, allow_mismatch: bool = False) -> Site:
        """Raise `CrosscoderMismatchError` unless `pair` (a `ModelPair`) is the pair this was trained on, at a
        site its models have, of width d_in; return the site."""
        try:
            site = from_hook_name(self.site)
        except SiteError as e:
            raise CrosscoderMismatchError(f"{self.kind} reads {self.site!r}, not a known hook: {e}") from e
        problems = []
        for role, model, identity in (
            ("base", pair.base, self.models[0]),
            ("fine-tune", pair.finetuned, self.models[1]),
        ):
            try:
                model.check_site(site)
            except SiteError as e:
                problems.append(f"{role} {model.name}: {e}")
                continue
            width = site_width(model, site)
            if width != self.d_in:
                problems.append(
                    f"{role} {model.name} has width {width} at {site}, the {self.kind} d_in {self.d_in}"
                )
            try:
                check_trained_on(
                    identity, model, what=f"this {self.kind}", role=role, allow_mismatch=allow_mismatch
                )
            except ValueError as e:
                problems.append(str(e))
        if problems:
            trained = ", ".join(str(m) for m in self.models)
            raise CrosscoderMismatchError(
                f"the {self.kind} trained on [{trained}] at {self.site} does not fit {pair!r}:\n  - "
                + "\n  - ".join(problems)
            )
        return site

    # ---- files --------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write `crosscoder.safetensors` and `crosscoder.json` into `folder` (each atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = folder / f".{WEIGHTS}.{os.getpid()}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, folder / WEIGHTS)
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "site": self.site,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "n_models": self.n_models,
            "sparsity": self.sparsity,
            "k": self.k,
            "models": [m.to_dict() if m is not None else None for m in self.models],
            "config": self.config,
            "stats": self.stats,
        }
        tmp = folder / f".{META}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder / META)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Crosscoder:
        """A crosscoder saved with `save`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        for f in (META, WEIGHTS):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder} is not a crosscoder folder: no {f}")
        meta = json.loads((folder / META).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder / META}: format {meta.get('format')!r}, expected {FORMAT!r}")
        cc = cls(
            meta["d_in"],
            meta["d_sae"],
            meta["n_models"],
            sparsity=meta["sparsity"],
            k=meta["k"],
            kind=meta["kind"],
            site=meta["site"],
            models=[ModelIdentity.from_dict(m) if m else None for m in meta["models"]],
        )
        cc.load_state_dict(load_file(str(folder / WEIGHTS)))
        cc.config, cc.stats = meta.get("config", {}), meta.get("stats", {})
        return cc.to(device)


def kl_attributed_latents(f: Tensor, kl: Tensor, change: Tensor, *, min_active: int, n: int) -> list[int]:
    """The `n` latents whose decoded change is largest where the outputs differ (label-free): the
    activation-weighted mean KL(ft || base) over the tokens where a latent is active, times `change` (its decoder
    change |d_ft - d_base| for a crosscoder, |d| for a diff-SAE); latents active on fewer than `min_active` tokens
    are left out. `f`: [n, d_sae] activations, `kl`: [n] per-token KL."""
    if f.ndim != 2 or kl.shape != (f.shape[0],) or change.shape != (f.shape[1],):
        raise ValueError(
            f"f [n, d_sae], kl [n], change [d_sae]; got {tuple(f.shape)}, {tuple(kl.shape)}, {tuple(change.shape)}"
        )
    active = (f > 0).sum(0)
    kappa = (f * kl[:, None]).sum(0) / f.sum(0).clamp_min(1e-12) * change
    kappa = torch.where(active >= min_active, kappa, torch.full_like(kappa, -1.0))
    order = kappa.argsort(descending=True)[:n]
    return [int(j) for j in order if float(kappa[j]) > 0]


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True, kw_only=True, eq=False)
class ActivationShards:
    """The data shards this process owns (`shards[s]`: [n_s, n_models, d_in]) out of `n_shards`; `weights[s]`
    ([n_s], optional) makes training draw rows in proportion to them instead of uniformly."""

    shards: dict[int, Tensor]
    n_shards: int
    weights: dict[int, Tensor] | None = None

    def __post_init__(self) -> None:
        shapes = {tuple(t.shape[1:]) for t in self.shards.values()}
        if len(shapes) > 1:
            raise ValueError(f"activation shards of different widths: {sorted(shapes)}")
        for s, t in self.shards.items():
            if t.ndim != 3 or len(t) == 0:
                raise ValueError(
                    f"activation shard {s} must be a non-empty [n, n_models, d_in] tensor; got {tuple(t.shape)}"
                )
        if self.weights is not None:
            for s, t in self.shards.items():
                w = self.weights.get(s)
                if w is None or w.shape != (len(t),) or bool((w < 0).any()) or not float(w.sum()) > 0:
                    raise ValueError(f"shard {s}: weights must be [n_s] non-negative with a positive sum")

    def draw(self, shard: int, n: int, generator: torch.Generator) -> Tensor:
        """`n` rows of `shard`: uniform, or in proportion to its weights (with replacement)."""
        t = self.shards[shard]
        if self.weights is None:
            return t[torch.randint(len(t), (n,), generator=generator)]
        w = self.weights[shard].double().cpu()
        return t[torch.multinomial(w, n, replacement=True, generator=generator).to(t.device)]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(next(iter(self.shards.values())).shape[1:])  # type: ignore[return-value]


def shard_activations(
    acts: Acts, n_shards: int, *, rank: int = 0, world: int = 1, weights: Tensor | None = None
) -> ActivationShards:
    """Split `acts` (and its sampling `weights` [n], if any) into `n_shards` contiguous shards; keep those of
    `rank` (r, r+world, ...)."""
    if acts.ndim != 3:
        raise ValueError(f"activations must be [n, n_models, d_in]; got {tuple(acts.shape)}")
    if len(acts) < n_shards:
        raise ValueError(f"{len(acts)} activations cannot fill {n_shards} shards")
    if weights is not None and weights.shape != (len(acts),):
        raise ValueError(f"weights must be [n] = ({len(acts)},); got {tuple(weights.shape)}")
    parts = torch.tensor_split(acts, n_shards)
    mine = range(rank, n_shards, world)
    w = torch.tensor_split(weights, n_shards) if weights is not None else None
    return ActivationShards(
        shards={s: parts[s] for s in mine}, n_shards=n_shards, weights={s: w[s] for s in mine} if w else None
    )


def save_activation_shards(
    acts: Acts, folder: str | Path, n_shards: int, *, site: str, models: Sequence[ModelIdentity | None]
) -> Path:
    """Write `acts` as `n_shards` safetensors files plus `manifest.json` (for `torchrun` training)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = torch.tensor_split(acts.float().cpu(), n_shards)
    for s, t in enumerate(parts):
        tmp = folder / f".acts-{s:05d}.{os.getpid()}.tmp"
        save_file({"acts": t.contiguous()}, str(tmp))
        os.replace(tmp, folder / f"acts-{s:05d}.safetensors")
    manifest = {
        "n_shards": n_shards,
        "n": len(acts),
        "shape": list(acts.shape[1:]),
        "site": site,
        "models": [m.to_dict() if m else None for m in models],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def load_activation_shards(
    folder: str | Path, *, rank: int = 0, world: int = 1
) -> tuple[ActivationShards, dict]:
    """The shards of `rank` from a folder written by `save_activation_shards`, and its manifest."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise FileNotFoundError(f"{folder} holds no activation shards (no manifest.json)")
    manifest = json.loads((folder / "manifest.json").read_text())
    n = manifest["n_shards"]
    shards = {s: load_file(str(folder / f"acts-{s:05d}.safetensors"))["acts"] for s in range(rank, n, world)}
    return ActivationShards(shards=shards, n_shards=n), manifest


# ------------------------------------------------------------------------------------------------ training
def _all_reduce(t: Tensor) -> Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _gather_cat(t: Tensor) -> Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return torch.cat(out)


def _batch_rng(seed: int, step: int, shard: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + shard) % (2**63 - 1))


def _lr_factor(cfg: CrosscoderConfig, step: int) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm and cfg.warmup > 0:
        return (step + 1) / warm
    return min(1.0, 5 * (1 - step / cfg.steps))


def _stats_of(shards: ActivationShards, dev: torch.device) -> tuple[Tensor, Tensor]:
    """(scale [M], mean [M, d]) over every shard of every rank: scale_m = sqrt(E|x_m|^2 / d)."""
    M, d = shards.shape
    sq = torch.zeros(M, dtype=torch.float64)
    total = torch.zeros(M, d, dtype=torch.float64)
    count = torch.zeros(1, dtype=torch.float64)
    for t in shards.shards.values():
        t64 = t.double()
        sq += (t64**2).sum((0, 2))
        total += t64.sum(0)
        count += len(t)
    packed = _all_reduce(torch.cat([sq, total.flatten(), count]))
    sq, total, count = packed[:M], packed[M : M + M * d].view(M, d), packed[-1]
    scale = (sq / count / d).sqrt()
    return scale.float().to(dev), (total / count).float().to(dev)


def _variance_per_token(shards: ActivationShards, scale: Tensor, mean_n: Tensor) -> tuple[float, int]:
    """(E |x_n - mean_n|^2 summed over models, token count) of the normalised activations, over every rank."""
    var = torch.zeros(2, dtype=torch.float64)
    for t in shards.shards.values():
        xn = t.to(scale.device).double() / scale.double()[:, None]
        var[0] += float(((xn - mean_n.double()) ** 2).sum())
        var[1] += len(t)
    var = _all_reduce(var)
    return float(var[0] / var[1]), int(var[1])


def _init(cc: Crosscoder, cfg: CrosscoderConfig, mean_n: Tensor) -> None:
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        w = torch.randn(cc.n_models, cc.d_sae, cc.d_in, generator=g)
        w = w / w.norm(dim=-1, keepdim=True) * cfg.init_norm
        cc.W_dec.copy_(w)
        cc.W_enc.copy_(w.transpose(1, 2))
        cc.b_enc.zero_()
        cc.b_dec.copy_(mean_n)


def _checkpoint_key(cfg: CrosscoderConfig, cc: Crosscoder) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "kind": cc.kind,
        "site": cc.site,
        "d_in": cc.d_in,
        "n_models": cc.n_models,
        "models": [m.to_dict() if m else None for m in cc.models],
    }


def _save_checkpoint(
    path: Path, cc: Crosscoder, opt: torch.optim.Optimizer, step: int, since: Tensor, key: dict
) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(
        {
            "key": key,
            "step": step,
            "model": cc.state_dict(),
            "opt": opt.state_dict(),
            "since_fired": since.cpu(),
        },
        tmp,
    )
    os.replace(tmp, path)


def train_crosscoder(
    data: Acts | ActivationShards,
    config: CrosscoderConfig | None = None,
    *,
    site: str,
    sample_weights: Tensor | None = None,
    models: Sequence[ModelIdentity | None] = (None, None),
    kind: str = "crosscoder",
    held_out: Acts | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    stop_at: int | None = None,
    progress: bool | None = None,
) -> Crosscoder:
    """Train a crosscoder (or, with `kind="diff_sae"` and one model, a diff-SAE) on paired activations.

    `data`: `[n, n_models, d_in]` (split into `config.n_shards` shards here; under torch.distributed each rank keeps
    its own) or the `ActivationShards` this rank owns. `sample_weights` ([n], with a tensor `data`): draw
    training rows in proportion to them (e.g. a mixture of uniform and the output KL, to focus the dictionary
    where the models differ); the activation scales are still those of the whole data. `out_dir`: checkpoints
    (`checkpoint.pt`, atomic) and, on rank 0, the final crosscoder; a rerun with the same config resumes from the last checkpoint. `stop_at`: stop
    after that many steps (checkpointed), e.g. to slice a long run. `held_out`: activations on which the stated
    FVE, L0 and latent frequencies are measured. Every rank returns the same trained crosscoder.
    """
    cfg = config or CrosscoderConfig()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    try:
        from_hook_name(site)
    except SiteError as e:
        raise ValueError(f"site {site!r} is not a TransformerLens hook name: {e}") from e
    rank, world = dist_info()
    if cfg.n_shards % world:
        raise ValueError(f"n_shards={cfg.n_shards} must be a multiple of the number of processes ({world})")
    if isinstance(data, ActivationShards):
        if sample_weights is not None:
            raise ValueError("with sharded data, pass the sampling weights as ActivationShards(weights=...)")
        shards = data
    else:
        shards = shard_activations(data, cfg.n_shards, rank=rank, world=world, weights=sample_weights)
    if shards.n_shards != cfg.n_shards:
        raise ValueError(f"the data has {shards.n_shards} shards; the config says n_shards={cfg.n_shards}")
    owned = sorted(shards.shards)
    if owned != list(range(rank, cfg.n_shards, world)):
        raise ValueError(
            f"rank {rank} of {world} must own shards {list(range(rank, cfg.n_shards, world))}, has {owned}"
        )
    M, d = shards.shape
    if kind == "crosscoder" and M != 2:
        raise ValueError(f"a crosscoder reads two models' activations [n, 2, d]; got {M} per token")
    if kind == "diff_sae" and M != 1:
        raise ValueError(
            f"a diff-SAE reads one difference per token [n, 1, d] (ft - base); got {M} per token"
        )
    if held_out is not None and tuple(held_out.shape[1:]) != (M, d):
        raise ValueError(
            f"held_out {tuple(held_out.shape)} does not match the training activations [n, {M}, {d}]"
        )
    dev = torch.device(device) if device is not None else next(iter(shards.shards.values())).device
    cc = Crosscoder(d, cfg.d_sae, M, sparsity=cfg.sparsity, k=cfg.k, kind=kind, site=site, models=models).to(
        dev
    )
    scale, mean = _stats_of(shards, dev)
    cc.scale.copy_(scale)
    mean_n = mean / scale[:, None]
    var_per_token, n_tokens = _variance_per_token(shards, scale, mean_n)
    _init(cc, cfg, mean_n)
    opt = torch.optim.Adam(cc.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    since = torch.zeros(cfg.d_sae, device=dev)
    start = 0
    key = _checkpoint_key(cfg, cc)
    # a fingerprint of the data: token count, activation scales, sampling weights
    key["data"] = {"n_tokens": n_tokens, "scale": [round(float(v), 5) for v in scale]}
    if shards.weights is not None:
        local_sum = float(sum(float(w.sum()) for w in shards.weights.values()))
        key["data"]["weights_sum"] = round(
            float(_all_reduce(torch.tensor([local_sum], dtype=torch.float64))[0]), 5
        )
    ckpt = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=False)
        if state["key"] != key:
            changed = sorted(k for k in key if state["key"].get(k) != key[k])
            raise ValueError(
                f"{ckpt} holds a run of another config ({', '.join(changed)} differ); use another out_dir"
            )
        cc.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        since = state["since_fired"].to(dev)
        start = state["step"]
    per_shard = cfg.batch_size // cfg.n_shards
    K = cfg.k * cfg.batch_size
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    show = progress_enabled(progress) and rank == 0
    bar = progress_iter(range(start, end), desc=f"{kind} training", total=end - start, progress=show)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(cfg, step)
        rows = [shards.draw(s, per_shard, _batch_rng(cfg.seed, step, s)) for s in owned]
        x = torch.cat(rows).to(dev) / cc.scale[:, None]  # (b, M, d) normalised
        pre = cc.pre_acts(x)  # (b, F)
        w = cc.latent_weights()
        if cfg.sparsity == "batchtopk":
            scaled = pre * w
            local = scaled.detach().flatten().topk(min(K, scaled.numel())).values
            theta = _gather_cat(local).topk(K).values[-1]
            mask = (scaled.detach() >= theta) & (scaled.detach() > 0)
            f = pre * mask
            with torch.no_grad():
                cc.threshold.copy_(
                    theta
                    if float(cc.threshold) < 0
                    else cfg.threshold_decay * cc.threshold + (1 - cfg.threshold_decay) * theta
                )
        else:
            mask = pre.detach() > 0
            f = pre
        x_hat = cc.decode_normalised(f)
        err = x - x_hat
        denom = cfg.batch_size * var_per_token
        loss = (err**2).sum() / denom
        if cfg.sparsity == "l1":
            loss = loss + cfg.l1_coef * (f * w).sum() / (cfg.batch_size * math.sqrt(var_per_token))
        fired = _all_reduce(mask.any(0).float())
        with torch.no_grad():
            since += cfg.batch_size
            since[fired > 0] = 0
        dead = since > cfg.dead_after
        if cfg.sparsity == "batchtopk" and bool(dead.any()) and cfg.aux_coef > 0:
            k_aux = min(cfg.aux_k, int(dead.sum()))
            vals, idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
            z_aux = torch.zeros_like(pre).scatter(-1, idx, vals.clamp_min(0))
            aux = ((torch.einsum("nf,mfd->nmd", z_aux, cc.W_dec) - err.detach()) ** 2).sum() / denom
            loss = loss + cfg.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in cc.parameters():
            if p.grad is not None:
                _all_reduce(p.grad)
        opt.step()
        if ckpt is not None and rank == 0 and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == end):
            _save_checkpoint(ckpt, cc, opt, step + 1, since, key)
    cc.config = cfg.to_dict()
    cc.stats = {"steps_done": end, "n_train_tokens": n_tokens}
    if held_out is not None:
        cc.stats.update(measure(cc, held_out.to(dev)))
    if out_dir is not None and rank == 0 and end == cfg.steps:
        cc.save(out_dir)
    return cc


@torch.no_grad()
def measure(cc: Crosscoder, acts: Acts, *, batch_size: int = 4096) -> dict[str, Any]:
    """FVE (overall and per model), mean L0 and dead fraction of `cc` on `acts`; sets `cc.latent_frequency`."""
    acts = acts.to(cc.W_enc.device)
    mean = acts.double().mean(0)
    err = torch.zeros(cc.n_models, dtype=torch.float64, device=acts.device)
    var = torch.zeros(cc.n_models, dtype=torch.float64, device=acts.device)
    fired = torch.zeros(cc.d_sae, dtype=torch.float64, device=acts.device)
    l0 = 0.0
    for i in range(0, len(acts), batch_size):
        x = acts[i : i + batch_size]
        f = cc.encode(x)
        err += ((cc.decode(f) - x).double() ** 2).sum((0, 2))
        var += ((x.double() - mean) ** 2).sum((0, 2))
        fired += (f > 0).double().sum(0)
        l0 += float((f > 0).sum())
    cc.latent_frequency.copy_((fired / len(acts)).float())
    per_model = (1 - err / var).tolist()
    return {
        "fve": round(float(1 - err.sum() / var.sum()), 6),
        "fve_per_model": [round(v, 6) for v in per_model],
        "l0": round(l0 / len(acts), 4),
        "dead_fraction": round(float((fired == 0).double().mean()), 6),
        "n_eval_tokens": len(acts),
    }


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> None:
    """Train a crosscoder on an activation-shard folder (one process, or one rank of torchrun)."""
    p = argparse.ArgumentParser(prog="python -m interp.diffing.crosscoder", description=main.__doc__)
    p.add_argument("--acts", required=True, help="folder written by save_activation_shards")
    p.add_argument("--out", required=True, help="checkpoint and output folder (resumable)")
    p.add_argument("--kind", default="crosscoder", choices=KINDS)
    for f in dataclasses.fields(CrosscoderConfig):
        if f.name == "n_shards":
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = p.parse_args(argv)
    rank, world, device = init_distributed()
    shards, manifest = load_activation_shards(args.acts, rank=rank, world=world)
    cfg = CrosscoderConfig(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(CrosscoderConfig)
            if f.name != "n_shards"
        },
        n_shards=manifest["n_shards"],
    )
    models = [ModelIdentity.from_dict(m) if m else None for m in manifest["models"]]
    shards = ActivationShards(
        shards={s: t.to(device) for s, t in shards.shards.items()}, n_shards=shards.n_shards
    )
    cc = train_crosscoder(
        shards, cfg, site=manifest["site"], models=models, kind=args.kind, out_dir=args.out, device=device
    )
    if rank == 0:
        print(f"trained {cc.kind} d_sae={cc.d_sae} for {cfg.steps} steps on {world} rank(s) into {args.out}")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # rank 0 has written the crosscoder; no rank tears gloo down while another still works
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

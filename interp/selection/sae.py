"""SAEs for data selection (MoNA, Ma et al. 2025): load one, check its hook against a model, TopK-encode tokens.

`load_sae` takes a sae-lens SAE (object, local folder, or release + id when online), a zoo name
(`"sae/base-resid-L2"`), or a folder in EleutherAI `sparsify` format (`sae.safetensors` holding `encoder.weight`
or `W_enc`, `encoder.bias`/`b_enc`, `b_dec`, plus `cfg.json` with `k`). Every SAE becomes a `SparseCoder`, which
encodes with sparsify's formula `z = TopK(ReLU(W_enc (x - b_dec) + b_enc))` and returns only the k (value,
index) pairs per token, never a dense [tokens, d_sae] matrix. sae-lens SAEs of other architectures keep their
own `encode` (their non-zeros are taken from its dense output).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp import zoo_location
from interp.models.identity import ModelIdentity, check_trained_on
from interp.sites import Site, SiteError, from_hook_name

SPARSIFY_WEIGHTS = "sae.safetensors"
SAE_LENS_WEIGHTS = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
# components whose activation is one vector per token, and the model dimension that is its width
_WIDTH_OF: dict[str, str] = {
    "resid_pre": "d_model",
    "resid_mid": "d_model",
    "resid_post": "d_model",
    "attn_out": "d_model",
    "mlp_out": "d_model",
    "embed": "d_model",
    "pos_embed": "d_model",
    "resid_final": "d_model",
    "mlp_post": "d_mlp",
    "z": "n_heads*d_head",  # hook_z SAEs read the heads concatenated
}


class SAELoadError(RuntimeError):
    """An SAE name, folder or file that cannot be loaded, with the reason."""


class SAESiteError(ValueError):
    """An SAE whose hook does not exist in the model, or whose d_in is not that hook's width."""


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SparseCoder:
    """A sparse autoencoder's encoder, reading activations at `hook_name` (a TransformerLens hook name).

    TopK SAEs hold `W_enc` [d_in, d_sae], `b_enc`, `b_dec` and `k`; `dense_encode` (set for sae-lens SAEs of other
    architectures) replaces the TopK formula by the SAE's own encoder. `trained_on` records the model the SAE was
    trained on (name and weights hash, where known): `check_model` refuses any other model unless
    `allow_mismatch`.
    """

    W_enc: Float[Tensor, "d_in d_sae"]
    b_enc: Float[Tensor, " d_sae"]
    b_dec: Float[Tensor, " d_in"]
    k: int | None
    hook_name: str
    name: str = "sae"
    apply_b_dec_to_input: bool = True
    dense_encode: Callable[[Tensor], Tensor] | None = None
    trained_on: ModelIdentity | None = None
    allow_mismatch: bool = False  # use the SAE on models other than `trained_on`

    def __post_init__(self) -> None:
        d_in, d_sae = self.W_enc.shape
        if self.b_enc.shape != (d_sae,) or self.b_dec.shape != (d_in,):
            raise SAELoadError(
                f"SAE {self.name}: W_enc {tuple(self.W_enc.shape)}, b_enc {tuple(self.b_enc.shape)} "
                f"and b_dec {tuple(self.b_dec.shape)} do not fit together ([d_in, d_sae], [d_sae], [d_in])"
            )
        if self.dense_encode is None and (self.k is None or not 0 < self.k <= d_sae):
            raise SAELoadError(f"SAE {self.name}: TopK needs 0 < k <= d_sae={d_sae}, got k={self.k}")
        try:
            from_hook_name(self.hook_name)
        except SiteError as e:
            raise SAELoadError(
                f"SAE {self.name} reads hook {self.hook_name!r}, which is not a known hook: {e}"
            ) from e

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def site(self) -> Site:
        return from_hook_name(self.hook_name)

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SparseCoder:
        """A copy with the weights on `device` and in `dtype` (a sae-lens `dense_encode` SAE moves with it)."""
        if self.dense_encode is not None and hasattr(self.dense_encode, "__self__"):
            self.dense_encode.__self__.to(device=device, dtype=dtype)  # the sae-lens module behind it
        move = {f: getattr(self, f).to(device=device, dtype=dtype) for f in ("W_enc", "b_enc", "b_dec")}
        return dataclasses.replace(self, **move)

    # ---- encoding ------------------------------------------------------------------------------------
    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """ReLU(W_enc (x - b_dec) + b_enc): the pre-TopK activations of sparsify's `Sae.pre_acts`."""
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return torch.relu(x @ self.W_enc + self.b_enc)

    @torch.no_grad()
    def encode_topk(
        self, x: Float[Tensor, "... d_in"]
    ) -> tuple[Float[Tensor, "... k"], Int[Tensor, "... k"]]:
        """The (values, feature indices) of each token's active latents, k per token (values >= 0, some may be 0).

        TopK SAEs: `TopK(ReLU(W_enc (x - b_dec) + b_enc))` (MoNA Eq. 6, sparsify's formula). Other sae-lens
        architectures: the largest entries of their own `encode(x)`, as many as the densest token has.
        """
        if x.shape[-1] != self.d_in:
            raise SAESiteError(f"SAE {self.name} expects inputs of width d_in={self.d_in}, got {x.shape[-1]}")
        if self.dense_encode is None:
            assert self.k is not None  # a coder without dense_encode is TopK
            values, indices = self.pre_acts(x).topk(self.k, dim=-1, sorted=False)
            return values, indices
        dense = torch.relu(self.dense_encode(x.to(self.W_enc.dtype)))
        width = max(1, int((dense > 0).sum(-1).max())) if dense.numel() else 1
        return dense.topk(width, dim=-1, sorted=False)

    @torch.no_grad()
    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """The dense latent activations (zeros off the top k); for tests and small inputs."""
        values, indices = self.encode_topk(x)
        return torch.zeros(*x.shape[:-1], self.d_sae, dtype=values.dtype, device=values.device).scatter_(
            -1, indices, values
        )

    # ---- checks --------------------------------------------------------------------------------------
    def check_model(self, model: Any, *, allow_mismatch: bool | None = None) -> Site:
        """Raise `SAESiteError` unless this SAE's hook exists in `model` and d_in equals the hook's width, and
        `ModelMismatchError` if `model` is not the model the SAE was trained on (unless `allow_mismatch`, which
        defaults to the SAE's own `allow_mismatch`)."""
        site = self.site
        try:
            model.check_site(site)
        except SiteError as e:
            raise SAESiteError(
                f"SAE {self.name} reads {self.hook_name}, which {model.name} does not have: {e}"
            ) from e
        if site.component not in _WIDTH_OF:
            raise SAESiteError(
                f"SAE {self.name} reads {self.hook_name} ({site.component}); sample embeddings need a "
                f"per-token vector site: {', '.join(_WIDTH_OF)}"
            )
        width = site_width(model, site)
        if width != self.d_in:
            raise SAESiteError(
                f"SAE {self.name} has d_in={self.d_in} but hook {self.hook_name} of {model.name} has "
                f"width {width} ({_WIDTH_OF[site.component]}): this SAE was trained on another model "
                "or another site"
            )
        check_trained_on(
            self.trained_on,
            model,
            what=f"SAE {self.name} ({self.hook_name})",
            allow_mismatch=self.allow_mismatch if allow_mismatch is None else allow_mismatch,
        )
        return site

    def __repr__(self) -> str:
        kind = f"TopK k={self.k}" if self.dense_encode is None else "sae-lens encode"
        return (
            f"SparseCoder({self.name!r}, {self.hook_name}, d_in={self.d_in}, d_sae={self.d_sae}, {kind}, "
            f"device={self.device})"
        )


def site_width(model: Any, site: Site) -> int:
    """The width of one token's activation at `site` (z: the heads concatenated)."""
    c = model.cfg
    if site.component == "z":
        return c.n_heads * c.d_head
    return getattr(c, _WIDTH_OF[site.component])


# ---------------------------------------------------------------------------------------------- loading
def random_topk_sae(
    d_in: int, d_sae: int, k: int, hook_name: str, *, seed: int = 0, name: str = "random-topk"
) -> SparseCoder:
    """A random TopK SAE (unit-norm encoder rows, small biases): for tests, benchmarks and offline fallbacks."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_in, d_sae, generator=g)
    W = W / W.norm(dim=0, keepdim=True)
    return SparseCoder(
        W_enc=W,
        b_enc=0.01 * torch.randn(d_sae, generator=g),
        b_dec=0.1 * torch.randn(d_in, generator=g),
        k=k,
        hook_name=hook_name,
        name=name,
    )


def save_sparsify(coder: SparseCoder, folder: str | Path, *, W_dec: Tensor | None = None) -> Path:
    """Write a TopK `coder` as a sparsify folder: `sae.safetensors` (encoder.weight [d_sae, d_in], encoder.bias,
    W_dec, b_dec) and `cfg.json` (d_in, num_latents, k, hook_name)."""
    from safetensors.torch import save_file

    if coder.k is None:
        raise ValueError("only TopK SAEs can be written in sparsify format")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    W_dec = W_dec if W_dec is not None else coder.W_enc.T.clone()
    save_file(
        {
            "encoder.weight": coder.W_enc.T.contiguous().cpu(),
            "encoder.bias": coder.b_enc.contiguous().cpu(),
            "W_dec": W_dec.contiguous().cpu(),
            "b_dec": coder.b_dec.contiguous().cpu(),
        },
        str(folder / SPARSIFY_WEIGHTS),
    )
    cfg = {
        "d_in": coder.d_in,
        "num_latents": coder.d_sae,
        "k": coder.k,
        "hook_name": coder.hook_name,
        "normalize_decoder": True,
    }
    if coder.trained_on is not None:
        cfg["trained_on"] = coder.trained_on.to_dict()
    (folder / CFG_FILE).write_text(json.dumps(cfg, indent=1))
    return folder


def _sparsify_hook(folder: Path, cfg: dict[str, Any]) -> str | None:
    """sparsify names a hookpoint by its folder (`layers.30` = the output of block 30, `embed_tokens`)."""
    for key in ("hook_name", "hookpoint"):
        if cfg.get(key):
            name = str(cfg[key])
            m = re.fullmatch(r"(?:model\.)?layers[._](\d+)", name)
            return f"blocks.{m.group(1)}.hook_resid_post" if m else name
    if folder.name == "embed_tokens":
        return "hook_embed"
    m = re.fullmatch(r"(?:model\.)?layers[._](\d+)", folder.name)
    return f"blocks.{m.group(1)}.hook_resid_post" if m else None


def load_sparsify(folder: str | Path, *, hook_name: str | None = None) -> SparseCoder:
    """A TopK SAE from a sparsify folder (`sae.safetensors` + `cfg.json`); `hook_name` overrides the folder name."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for f in (SPARSIFY_WEIGHTS, CFG_FILE):
        if not (folder / f).is_file():
            raise SAELoadError(f"{folder} is not a sparsify SAE folder: no {f}")
    cfg = json.loads((folder / CFG_FILE).read_text())
    state = load_file(str(folder / SPARSIFY_WEIGHTS))
    if "k" not in cfg:
        raise SAELoadError(f"{folder / CFG_FILE} has no `k`: only TopK sparsify SAEs are supported")
    if "encoder.weight" in state:
        W_enc = state["encoder.weight"].T  # nn.Linear stores [d_sae, d_in]
    elif "W_enc" in state:
        W_enc = state["W_enc"]
        d_in = cfg.get("d_in")
        if d_in is not None and W_enc.shape[0] != d_in and W_enc.shape[1] == d_in:
            W_enc = W_enc.T
    else:
        raise SAELoadError(
            f"{folder / SPARSIFY_WEIGHTS} has neither encoder.weight nor W_enc; keys: {sorted(state)}"
        )
    d_in, d_sae = W_enc.shape
    if cfg.get("d_in") not in (None, d_in):
        raise SAELoadError(f"{folder}: cfg.json says d_in={cfg['d_in']} but the encoder has d_in={d_in}")
    b_enc = state.get("encoder.bias", state.get("b_enc", torch.zeros(d_sae)))
    b_dec = state.get("b_dec", torch.zeros(d_in))
    hook = hook_name or _sparsify_hook(folder, cfg)
    if hook is None:
        raise SAELoadError(
            f"cannot tell which hook the sparsify SAE in {folder} reads (no hook_name/hookpoint in "
            "cfg.json and the folder is not named layers.N): pass hook_name="
        )
    return SparseCoder(
        W_enc=W_enc.float(),
        b_enc=b_enc.float(),
        b_dec=b_dec.float(),
        k=int(cfg["k"]),
        hook_name=hook,
        name=f"sparsify:{folder.name}",
        trained_on=ModelIdentity.from_dict(cfg["trained_on"]) if cfg.get("trained_on") else None,
    )


def from_sae_lens(sae: Any, *, hook_name: str | None = None, name: str | None = None) -> SparseCoder:
    """A `SparseCoder` from a sae-lens SAE: TopK weights copied out; other architectures keep `sae.encode`."""
    cfg = sae.cfg
    hook = hook_name or cfg.metadata.get("hook_name")
    if not hook:
        raise SAELoadError("the sae-lens SAE names no hook (cfg.metadata.hook_name): pass hook_name=")
    name = name or cfg.metadata.get("sae_id") or cfg.metadata.get("model_name") or "sae-lens"
    model_name = cfg.metadata.get("model_name")
    plain_topk = (
        cfg.architecture() == "topk"
        and cfg.normalize_activations == "none"
        and not getattr(cfg, "rescale_acts_by_decoder_norm", False)
        and cfg.reshape_activations == "none"
    )
    b_enc = getattr(sae, "b_enc", None)
    W_enc, b_dec = sae.W_enc.detach(), sae.b_dec.detach()
    b_enc = b_enc.detach() if isinstance(b_enc, Tensor) else torch.zeros(W_enc.shape[1], device=W_enc.device)
    return SparseCoder(
        W_enc=W_enc,
        b_enc=b_enc,
        b_dec=b_dec,
        k=cfg.k if plain_topk else None,
        hook_name=hook,
        name=str(name),
        apply_b_dec_to_input=bool(cfg.apply_b_dec_to_input),
        dense_encode=None if plain_topk else sae.encode,
        trained_on=ModelIdentity(
            name=str(model_name), weights_sha256=cfg.metadata.get("model_weights_sha256")
        )
        if model_name
        else None,
    )


def _load_folder(folder: Path, hook_name: str | None) -> SparseCoder:
    if (folder / SPARSIFY_WEIGHTS).is_file():
        return load_sparsify(folder, hook_name=hook_name)
    if (folder / SAE_LENS_WEIGHTS).is_file():
        from sae_lens import SAE

        try:
            sae = SAE.load_from_disk(str(folder))
        except Exception as e:
            raise SAELoadError(f"sae-lens could not load the SAE in {folder}: {e}") from e
        return _with_card_provenance(from_sae_lens(sae, hook_name=hook_name, name=folder.name), folder)
    raise SAELoadError(
        f"{folder} holds no SAE: expected {SAE_LENS_WEIGHTS} (sae-lens) or {SPARSIFY_WEIGHTS} "
        "(sparsify) with cfg.json"
    )


def _with_card_provenance(coder: SparseCoder, folder: Path) -> SparseCoder:
    """The model a zoo SAE was trained on, from its `card.json` (organism name and weights hash)."""
    card_path = folder / "card.json"
    if not card_path.is_file():
        return coder
    card = json.loads(card_path.read_text())
    if card.get("trained_on"):
        return dataclasses.replace(coder, trained_on=ModelIdentity.from_dict(card["trained_on"]))
    if card.get("organism"):
        identity = ModelIdentity(name=card["organism"], weights_sha256=card.get("organism_weights_sha256"))
        return dataclasses.replace(coder, trained_on=identity)
    return coder


def _zoo_folder(name: str) -> Path:
    try:
        return zoo_location.built_folder(name)
    except (FileNotFoundError, ValueError) as e:
        raise SAELoadError(f"no zoo SAE {name!r}: {e}") from None


def _hub_sae(release: str, sae_id: str, hook_name: str | None) -> SparseCoder:
    """sae-lens release + id, or a hub repo holding sparsify folders (`EleutherAI/sae-llama-3-8b-32x`, `layers.30`)."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        if release in get_pretrained_saes_directory():
            return from_sae_lens(
                SAE.from_pretrained(release, sae_id), hook_name=hook_name, name=f"{release}/{sae_id}"
            )
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(release, allow_patterns=[f"{sae_id}/*"], local_files_only=offline))
    except SAELoadError:
        raise
    except Exception as e:
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
        raise SAELoadError(
            f"could not load SAE {release!r} / {sae_id!r}{hint}: {type(e).__name__}: {e}"
        ) from e
    return _load_folder(root / sae_id, hook_name)


def load_sae(
    source: str | os.PathLike | SparseCoder | Any,
    *,
    sae_id: str | None = None,
    hook_name: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    allow_mismatch: bool = False,
) -> SparseCoder:
    """Load an SAE as a `SparseCoder` on `device`.

    `source`: a `SparseCoder` or sae-lens SAE object; a zoo name (`"sae/base-resid-L2"`); a local folder (sae-lens
    or sparsify format); or, with `sae_id`, a sae-lens release or a hub repo of sparsify folders (online).
    `hook_name` overrides the hook the SAE names (needed where the files name none). `allow_mismatch=True` lets
    the SAE run on models other than the one it records it was trained on.
    """
    if isinstance(source, SparseCoder):
        coder = source if hook_name is None else dataclasses.replace(source, hook_name=hook_name)
    elif hasattr(source, "cfg") and hasattr(source, "W_enc"):
        coder = from_sae_lens(source, hook_name=hook_name)
    else:
        name = str(source)
        local = Path(name).expanduser()
        if name.startswith("sae/"):
            coder = _load_folder(_zoo_folder(name), hook_name)
        elif local.is_dir():
            coder = _load_folder(local / sae_id if sae_id and (local / sae_id).is_dir() else local, hook_name)
        elif sae_id is not None:
            coder = _hub_sae(name, sae_id, hook_name)
        else:
            raise SAELoadError(
                f"no SAE at {name!r}: not a zoo name (sae/...), not a local folder, and no sae_id "
                "given for a sae-lens release or hub repo"
            )
    if allow_mismatch:
        coder = dataclasses.replace(coder, allow_mismatch=True)
    return coder.to(device=device, dtype=dtype)


def selection_sae(
    model: Any,
    source: str,
    *,
    sae_id: str | None = None,
    random_layer: int | None = None,
    random_d: int = 1024,
    random_k: int = 16,
) -> SparseCoder:
    """The SAE a data selection uses, on `model`'s device: `load_sae(source, sae_id=...)`, or for
    `source="random"` a random TopK SAE (`random_d` features, `random_k` active) on `resid_post` of
    `random_layer` (default: the penultimate block), an offline stand-in."""
    if source == "random":
        layer = random_layer if random_layer is not None else max(0, model.cfg.n_layers - 2)
        return random_topk_sae(
            model.cfg.d_model, random_d, random_k, f"blocks.{layer}.hook_resid_post", seed=0
        ).to(model.device)
    return load_sae(source, sae_id=sae_id, device=model.device)

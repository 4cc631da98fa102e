"""Which model an artifact was trained on: a model's name plus a hash of its weights, and the check against it.

SAEs, crosscoders and tuned lenses read one model's activations; applied to another model of the same width they
give silent wrong numbers. Each records the `ModelIdentity` of the model(s) it was trained on, and refuses other
models (unless the caller passes `allow_mismatch=True`).

The weights hash is the zoo's convention (`card["parent"]["weights_sha256"]`): the first 16 hex digits of the
SHA-256 of the checkpoint's `model.safetensors` (several weight files: of their hashes, in name order), so it is
the same for both backends and for every process that loads the folder. A model with no checkpoint folder gets a
hash of its in-memory parameters instead, marked `params-<backend>:`. `basis` says whether TransformerLens
processed the weights (folded layer norms change the residual basis, so activations differ).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HASH_CHARS = 16
_FILE_CACHE: dict[tuple[str, int, int], str] = {}
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


class ModelMismatchError(ValueError):
    """An artifact used on a model other than the one it was trained on; the message lists both identities."""


@dataclass(frozen=True, kw_only=True)
class ModelIdentity:
    """A model's name and a hash of its weights (`weights_sha256`, None when unknown), plus its residual basis."""

    name: str
    weights_sha256: str | None = None
    basis: str = (
        "hf"  # "hf": the checkpoint's own weights; "tl-processed": TransformerLens folded/centred them
    )

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "weights_sha256": self.weights_sha256, "basis": self.basis}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelIdentity:
        unknown = sorted(set(d) - {"name", "weights_sha256", "basis"})
        if unknown or "name" not in d:
            raise ValueError(
                f"a model identity is {{name, weights_sha256, basis}}; got keys {sorted(d)} "
                f"(unknown: {unknown})"
            )
        return cls(name=str(d["name"]), weights_sha256=d.get("weights_sha256"), basis=d.get("basis", "hf"))

    def __str__(self) -> str:
        basis = "" if self.basis == "hf" else f", {self.basis}"
        return f"{self.name} (weights {self.weights_sha256 or 'unknown'}{basis})"


def file_sha256(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the SHA-256 of a file (cached by path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_CACHE[key] = h.hexdigest()[:_HASH_CHARS]
    return _FILE_CACHE[key]


def weights_sha256(folder: str | os.PathLike) -> str:
    """The weights hash of a checkpoint folder: `file_sha256(model.safetensors)`, or, with several weight files,
    the hash of their hashes in name order. Raises FileNotFoundError when the folder holds no weights."""
    folder = Path(folder)
    files = sorted({f for g in WEIGHT_GLOBS for f in folder.glob(g) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"{folder} holds no weight files ({', '.join(WEIGHT_GLOBS)})")
    if len(files) == 1:
        return file_sha256(files[0])
    joined = "\n".join(f"{f.name}:{file_sha256(f)}" for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()[:_HASH_CHARS]


def _checkpoint_folder(model: Any) -> Path | None:
    """The local checkpoint folder `model` was loaded from, found without touching the network."""
    hf = getattr(model, "hf_model", None)
    candidates = [getattr(getattr(hf, "config", None), "_name_or_path", None)] if hf is not None else []
    name = str(getattr(model, "name", ""))
    if name.startswith(("organism/", "sae/")):
        from interp import zoo_location

        if zoo_location.is_zoo_name(name):
            candidates.append(str(zoo_location.folder_of(name)))
    candidates.append(name)
    for c in candidates:
        if c and Path(c).expanduser().is_dir() and (Path(c).expanduser() / "config.json").is_file():
            return Path(c).expanduser()
    if name and "/" in name and not name.startswith((".", "/", "~")):  # a hub id: only a cached snapshot
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True, allow_patterns=["*.json"]))
        except Exception:
            return None
    return None


def _params_sha256(model: Any) -> str:
    """A hash of the in-memory parameters (backend-specific layout), for models without a checkpoint folder."""
    import torch

    h = hashlib.sha256()
    roots = [m for m in (getattr(model, "tl", None), getattr(model, "hf_model", None)) if m is not None]
    state = roots[0].state_dict() if roots else {}
    for name, p in sorted(state.items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return f"params-{getattr(model, 'backend', '?')}:{h.hexdigest()[:_HASH_CHARS]}"


def residual_basis(model: Any) -> str:
    """ "tl-processed" when TransformerLens folded the layer norms into the weights, else "hf"."""
    tl = getattr(model, "tl", None)
    norm = getattr(getattr(tl, "cfg", None), "normalization_type", None)
    return "tl-processed" if norm in ("LNPre", "RMSPre") else "hf"


def model_identity(model: Any) -> ModelIdentity:
    """The identity of a loaded model (`interp.load_model`): its name and its checkpoint's weights hash."""
    folder = _checkpoint_folder(model)
    digest = None
    if folder is not None:
        try:
            digest = weights_sha256(folder)
        except FileNotFoundError:
            digest = None
    if digest is None:
        digest = _params_sha256(model)
    return ModelIdentity(
        name=str(getattr(model, "name", "?")), weights_sha256=digest, basis=residual_basis(model)
    )


def identity_mismatch(expected: ModelIdentity, actual: ModelIdentity) -> str | None:
    """Why `actual` is not the model `expected` names (None when it is, or when no hash allows telling)."""
    if expected.basis != actual.basis:
        return f"residual basis {expected.basis} vs {actual.basis} (load with the same process_weights)"
    if expected.weights_sha256 and actual.weights_sha256:
        if expected.weights_sha256 != actual.weights_sha256:
            return f"weights {expected.weights_sha256} vs {actual.weights_sha256}"
        return None
    return None


def check_trained_on(
    expected: ModelIdentity | None,
    model: Any,
    *,
    what: str,
    role: str = "model",
    allow_mismatch: bool = False,
) -> ModelIdentity:
    """Raise `ModelMismatchError` unless `model` is the one `expected` names; return `model`'s identity.

    `what` names the artifact ("SAE sae/base-resid-L2"). Without a weights hash on either side only the names can
    be compared, and a difference there is a warning (a folder path and a zoo name may be the same model).
    """
    actual = model_identity(model)
    if expected is None or allow_mismatch:
        return actual
    problem = identity_mismatch(expected, actual)
    if problem:
        raise ModelMismatchError(
            f"{what} was trained on {expected} but the {role} is {actual}: {problem}. Use the model it was "
            "trained on, or pass allow_mismatch=True to use it anyway"
        )
    if not (expected.weights_sha256 and actual.weights_sha256) and expected.name != actual.name:
        warnings.warn(
            f"{what} was trained on {expected.name!r}; the {role} is {actual.name!r} (no weights hash to compare)",
            stacklevel=2,
        )
    return actual

"""One entry point from a name (hub id, local folder, organism name) to a hooked model on either backend."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from interp import zoo_location
from interp.models.base import HookedModel, ModelConfig
from interp.models.progress import load_progress

BACKENDS = ("tl", "nnsight")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


DTYPES: tuple[str, ...] = tuple(_DTYPES)


class ModelLoadError(RuntimeError):
    """A model name or folder that cannot be loaded, with the reason."""


def _organism_folder(name: str) -> Path | None:
    """The folder of a built zoo entry, or None if `name` is not a zoo name."""
    if not zoo_location.is_zoo_name(name):
        return None
    try:
        return zoo_location.built_folder(name)
    except FileNotFoundError as e:
        raise ModelLoadError(str(e)) from None


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve(name_or_path: str | os.PathLike, *, allow_pickle: bool = False) -> Path:
    """A local checkpoint folder for a local path, an organism name, or a hub id (downloaded when online).

    Hub downloads fetch safetensors weights; pickle weights (`pytorch_model*.bin`) only with `allow_pickle`.
    """
    name = str(name_or_path)
    org = _organism_folder(name)
    if org is not None:
        return org
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{p} exists but is not a Hugging Face checkpoint folder (no config.json)")
        return p
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        raise ModelLoadError(f"no checkpoint folder at {p}: the path does not exist")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]
    if allow_pickle:
        patterns.append("pytorch_model*.bin")
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # a cached snapshot works offline
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass  # not cached: try the hub below
    if not _hub_reachable():
        raise ModelLoadError(
            f"{name!r} is not a local folder, not a model organism (see interp.zoo.names()), and not in the "
            "Hugging Face cache, and the hub is unreachable (offline or HF_HUB_OFFLINE=1). Pass a local checkpoint "
            "folder or an organism name such as 'organism/base'."
        )
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:
        raise ModelLoadError(f"could not download {name!r} from the Hugging Face hub: {e}") from e


def check_weights(folder: Path, *, allow_pickle: bool = False) -> None:
    """Raise unless `folder` has safetensors weights, or pickle weights (`pytorch_model*.bin`) and `allow_pickle`."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.glob("pytorch_model*.bin"))
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{folder} has only pickle weights ({', '.join(pickles)}), and unpickling can run arbitrary code; "
            "pass allow_pickle=True to load them if you trust the checkpoint (or convert it to safetensors)"
        )
    if not pickles:
        raise ModelLoadError(f"{folder} has no model weights (no *.safetensors or pytorch_model*.bin files)")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    backend: str = "tl",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    process_weights: bool = False,
    device_map: str | dict | None = None,
    remote: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    **hf_kwargs: Any,
) -> HookedModel:
    """Load a causal LM as a hooked model.

    `name_or_path`: a hub id (online), a local HF checkpoint folder, or an organism name (`"organism/base"`).
    `backend`: `"tl"` (TransformerLens HookedTransformer, unprocessed weights unless `process_weights=True`) or
    `"nnsight"` (`nnsight.LanguageModel`; `remote=True` runs on NDIF). `device_map` is passed to HF loading
    (accelerate sharding). Weights are read from safetensors; a checkpoint with only pickle weights
    (`pytorch_model.bin`) loads only with `allow_pickle=True`. Remote code runs only with
    `trust_remote_code=True`, which reaches every config, tokenizer and model read (no prompt on stdin).
    A failure inside transformers or a backend raises `ModelLoadError` naming the folder and the cause.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    dtype = dtype or torch.float32
    if remote and backend != "nnsight":
        raise ValueError("remote=True (NDIF) needs backend='nnsight'")
    folder = resolve(name_or_path, allow_pickle=allow_pickle)
    check_weights(folder, allow_pickle=allow_pickle)
    dev = _device(device)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"transformers could not load the tokenizer of {folder}: {_cause(e)}") from e
    load_kw: dict[str, Any] = dict(
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        use_safetensors=None if allow_pickle else True,
        **hf_kwargs,
    )
    if backend == "nnsight":
        load_kw.setdefault("attn_implementation", "eager")  # attention patterns are readable
    if device_map is not None:
        load_kw["device_map"] = device_map
    try:
        with load_progress(folder):
            hf = AutoModelForCausalLM.from_pretrained(str(folder), **load_kw)
    except Exception as e:
        raise ModelLoadError(f"transformers could not load {folder}: {_cause(e)}") from e
    if device_map is None and not remote:
        hf = hf.to(dev)
    hf.eval()
    cfg = ModelConfig.from_hf(hf.config)
    name = str(name_or_path)
    if backend == "tl":
        from interp.models.tl import TLModel, build_hooked_transformer

        n_devices = torch.cuda.device_count() if device_map is not None and torch.cuda.is_available() else 1
        try:
            tl = build_hooked_transformer(
                folder,
                hf,
                device=dev,
                dtype=dtype,
                process_weights=process_weights,
                n_devices=max(1, n_devices),
                trust_remote_code=trust_remote_code,
            )
        except Exception as e:
            raise ModelLoadError(f"TransformerLens could not load {folder}: {_cause(e)}") from e
        return TLModel(tl, tokenizer, cfg, name=name)
    from nnsight import LanguageModel

    from interp.models.nnsight_backend import NNsightModel

    try:
        lm = LanguageModel(hf, tokenizer=tokenizer)
    except Exception as e:
        raise ModelLoadError(f"nnsight could not wrap {folder}: {_cause(e)}") from e
    return NNsightModel(lm, tokenizer, cfg, name=name, hf_model=hf, remote=remote)


def _cause(e: BaseException) -> str:
    """`ErrorType: message` of an exception, on one line."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__

"""`ModelPair`: a base model and its fine-tune, checked to be comparable before any compute.

Analyses that move activations between two models (TuCo, Nuti et al. 2025; CMAP, Prakash et al. 2024) need the
same architecture, widths, depth, heads and vocabulary on both sides, and weights that are not hiding an unmerged
LoRA adapter. `ModelPair` checks all of this at construction and raises one `PairMismatchError` that lists
every mismatch, so a user fixes them in one go. The two models stay independent instances.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.models.base import HookedModel


class PairMismatchError(ValueError):
    """Two models that cannot be compared site by site; `mismatches` lists every reason."""

    def __init__(
        self, first: str, second: str, mismatches: list[str], roles: tuple[str, str] = ("base", "fine-tuned")
    ) -> None:
        self.mismatches = mismatches
        lines = "\n".join(f"  - {m}" for m in mismatches)
        super().__init__(
            f"{roles[0]} {first!r} and {roles[1]} {second!r} are not a compatible pair "
            f"({len(mismatches)} mismatch{'es' if len(mismatches) != 1 else ''}; values are "
            f"{roles[0]} vs {roles[1]}):\n{lines}"
        )


# ModelConfig fields compared one by one (label used in the message)
_CONFIG_FIELDS = (
    ("architecture", "architecture"),
    ("n_layers", "layers"),
    ("d_model", "d_model"),
    ("n_heads", "heads"),
    ("n_kv_heads", "kv heads"),
    ("d_head", "d_head"),
    ("d_mlp", "d_mlp"),
    ("d_vocab", "d_vocab (embedding rows)"),
    ("parallel_attn_mlp", "parallel attention/MLP"),
)


def _torch_modules(model: HookedModel) -> list[Any]:
    return [m for m in (getattr(model, "tl", None), getattr(model, "hf_model", None)) if m is not None]


def lora_modules(model: HookedModel) -> list[str]:
    """Names of unmerged LoRA/peft modules or parameters in `model` (empty when there are none)."""
    found: list[str] = []
    for root in _torch_modules(model):
        for name, mod in root.named_modules():
            if type(mod).__module__.startswith("peft") or "lora_" in name:
                found.append(name or type(mod).__name__)
        for name, _ in root.named_parameters():
            if ".base_layer." in f".{name}" or "lora_" in name:
                found.append(name)
    return sorted(set(found))


def _param_facts(model: HookedModel) -> tuple[torch.dtype | None, torch.device | None]:
    for root in _torch_modules(model):
        for p in root.parameters():
            return p.dtype, p.device
    return None, None


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocab_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's token -> id map, computed once per tokenizer object (large vocabularies make
    comparing the maps themselves cost as much as a small model's forward pass)."""
    try:
        return _FINGERPRINTS[tokenizer]
    except (KeyError, TypeError):
        pass
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256("\x00".join(f"{t}\x01{i}" for t, i in items).encode()).hexdigest()
    with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed next time
        _FINGERPRINTS[tokenizer] = digest
    return digest


def _vocab_mismatch(tok_a: Any, tok_b: Any) -> str | None:
    if tok_a is tok_b or vocab_fingerprint(tok_a) == vocab_fingerprint(tok_b):
        return None
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    only_a = sorted(set(va) - set(vb))
    only_b = sorted(set(vb) - set(va))
    moved = sorted(t for t in set(va) & set(vb) if va[t] != vb[t])
    parts = [f"sizes {len(va)} vs {len(vb)}"]
    if only_a:
        parts.append(f"{len(only_a)} tokens only in the first (e.g. {only_a[:3]})")
    if only_b:
        parts.append(f"{len(only_b)} tokens only in the second (e.g. {only_b[:3]})")
    if moved:
        parts.append(
            f"{len(moved)} tokens with different ids (e.g. {moved[0]!r}: {va[moved[0]]} vs {vb[moved[0]]})"
        )
    return "vocabulary: " + "; ".join(parts)


def pair_mismatches(
    base: HookedModel, finetuned: HookedModel, roles: tuple[str, str] = ("base", "fine-tuned")
) -> list[str]:
    """Every reason why `base` and `finetuned` cannot be compared site by site (empty when compatible)."""
    out: list[str] = []
    if base.backend != finetuned.backend:
        out.append(f"backend: {base.backend} vs {finetuned.backend} (load both with the same backend)")
    a, b = base.cfg, finetuned.cfg
    for field, label in _CONFIG_FIELDS:
        va, vb = getattr(a, field), getattr(b, field)
        if va != vb:
            out.append(f"{label}: {va} vs {vb}")
    vocab = _vocab_mismatch(base.tokenizer, finetuned.tokenizer)
    if vocab:
        out.append(vocab)
    if base.backend == finetuned.backend == "tl":  # processed weights change the residual basis
        for key in ("normalization_type", "positional_embedding_type"):
            va = getattr(getattr(base, "tl").cfg, key, None)  # noqa: B009  (TL backend: has .tl)
            vb = getattr(getattr(finetuned, "tl").cfg, key, None)  # noqa: B009
            if va != vb:
                out.append(f"TransformerLens {key}: {va} vs {vb} (load both with the same process_weights)")
    (da, dev_a), (db, dev_b) = _param_facts(base), _param_facts(finetuned)
    if da != db:
        out.append(f"dtype: {da} vs {db}")
    if dev_a != dev_b:
        out.append(f"device: {dev_a} vs {dev_b}")
    for role, model in zip(roles, (base, finetuned), strict=True):
        lora = lora_modules(model)
        if lora:
            out.append(
                f"{role} model has an unmerged LoRA adapter ({len(lora)} peft modules/params, e.g. "
                f"{lora[0]}): merge it first (peft `merge_and_unload()`)"
            )
    return out


def check_pair(
    first: HookedModel, second: HookedModel, roles: tuple[str, str] = ("base", "fine-tuned")
) -> None:
    """Raise one `PairMismatchError` listing every mismatch between two models (no compute)."""
    problems = pair_mismatches(first, second, roles)
    if problems:
        raise PairMismatchError(first.name, second.name, problems, roles)


@dataclass(frozen=True)
class ModelPair:
    """A base model and a fine-tune of it, checked compatible at construction (else `PairMismatchError`)."""

    base: HookedModel
    finetuned: HookedModel

    def __post_init__(self) -> None:
        for role, m in (("base", self.base), ("finetuned", self.finetuned)):
            if not isinstance(m, HookedModel):
                raise TypeError(
                    f"ModelPair.{role} must be a HookedModel (interp.load_model); got {type(m).__name__}"
                )
        check_pair(self.base, self.finetuned)

    @property
    def backend(self) -> str:
        return self.base.backend

    @property
    def n_layers(self) -> int:
        return self.base.cfg.n_layers

    def __repr__(self) -> str:
        return (
            f"ModelPair(base={self.base.name!r}, finetuned={self.finetuned.name!r}, backend={self.backend})"
        )


def perturbed_twin(
    src: str | Path,
    dst: str | Path,
    *,
    select: Callable[[str], bool] | None = None,
    scale: float = 0.02,
    seed: int = 1,
) -> Path:
    """A synthetic 'fine-tune' of HF checkpoint `src` saved to `dst`: the parameters whose names pass `select`
    (all when None) get seeded Gaussian noise of std `scale`. For tests and benchmarks of pair analyses."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.models.progress import load_progress

    with load_progress(src):
        model = AutoModelForCausalLM.from_pretrained(str(src))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if select is None or select(name):
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    model.save_pretrained(str(dst))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    return Path(dst)

"""TransformerLens backend: a `HookedTransformer` built from a local HF checkpoint, unprocessed weights by default."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp.models.base import HookedModel, HookFn, ModelConfig, apply_hook
from interp.sites import COMPONENTS, Site

# config fields TransformerLens reads that transformers 5 no longer writes: architecture -> {field: its source}
_TL_MISSING_FIELDS = {"GPT2LMHeadModel": {"n_ctx": "n_positions"}}


@contextmanager
def _tl_view(folder: Path) -> Iterator[Path]:
    """A temporary folder for TransformerLens to read `folder` through: its files symlinked, its name neutral.

    TransformerLens guesses the architecture from substrings of the model name ("llama", "gemma"), so a local
    folder called `base-llama` would be misread; the view's name is random hex. Its config.json carries the
    fields TL reads but transformers 5 no longer writes (a GPT-2 saved today has no `n_ctx`).
    """
    cfg = json.loads((folder / "config.json").read_text())
    arch = (cfg.get("architectures") or [""])[0]
    for field, source in _TL_MISSING_FIELDS.get(arch, {}).items():
        if field not in cfg and source in cfg:
            cfg[field] = cfg[source]
    root = Path(tempfile.gettempdir()) / f"interp-tl-{os.getuid()}"
    view = root / uuid.uuid4().hex[:16]
    view.mkdir(parents=True)
    try:
        for entry in folder.resolve().iterdir():
            if entry.name != "config.json":
                (view / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        (view / "config.json").write_text(json.dumps(cfg, indent=2))
        yield view
    finally:
        shutil.rmtree(view, ignore_errors=True)


def _gemma2_cfg_dict(c: Any) -> dict[str, Any]:
    """TransformerLens config for a local Gemma-2 checkpoint (TL only knows Gemma-2 by hub name)."""
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    window = getattr(c, "sliding_window", None) or c.max_position_embeddings
    return {
        "d_model": c.hidden_size,
        "d_head": d_head,
        "n_heads": c.num_attention_heads,
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": c.max_position_embeddings,
        "eps": c.rms_norm_eps,
        "d_vocab": c.vocab_size,
        "act_fn": c.hidden_activation,
        "normalization_type": "RMS",
        "rotary_base": getattr(c, "rope_theta", None) or (c.rope_parameters or {}).get("rope_theta", 10000.0),
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "use_attn_scale": True,
        "attn_scale": math.sqrt(c.query_pre_attn_scalar),
        "n_key_value_heads": c.num_key_value_heads,
        "window_size": window,
        "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in c.layer_types],
        "attn_scores_soft_cap": c.attn_logit_softcapping or -1.0,
        "output_logits_soft_cap": c.final_logit_softcapping or -1.0,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM",
    }


def build_hooked_transformer(
    folder: Path,
    hf_model: Any,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    process_weights: bool = False,
    n_devices: int = 1,
    trust_remote_code: bool = False,
):
    """A `HookedTransformer` with the weights of `hf_model` (loaded from `folder`), no tokenizer attached.

    `trust_remote_code` is passed to every config read TransformerLens makes (else transformers would ask on
    stdin for a checkpoint with custom code).
    """
    with _tl_view(folder) as view:
        return _build(view, hf_model, device, dtype, process_weights, n_devices, trust_remote_code)


def _build(
    link: Path,
    hf_model: Any,
    device: str | torch.device,
    dtype: torch.dtype,
    process_weights: bool,
    n_devices: int,
    trust_remote_code: bool,
):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    arch = (hf_model.config.architectures or [""])[0]
    if arch == "Gemma2ForCausalLM":
        d = _gemma2_cfg_dict(hf_model.config)
        d.update(
            model_name=link.name,
            init_weights=False,
            device=str(device),
            dtype=dtype,
            n_devices=n_devices,
            default_prepend_bos=True,
            from_checkpoint=False,
        )
        cfg = HookedTransformerConfig.from_dict(d)
    else:
        cfg = loading.get_pretrained_model_config(
            str(link),
            hf_cfg=hf_model.config.to_dict(),
            fold_ln=process_weights,
            device=device,
            n_devices=n_devices,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
    state = loading.get_pretrained_state_dict(
        str(link), cfg, hf_model, dtype=dtype, trust_remote_code=trust_remote_code
    )
    model = HookedTransformer(cfg, None, move_to_device=False)
    model.load_and_process_state_dict(
        state,
        fold_ln=process_weights,
        center_writing_weights=process_weights,
        center_unembed=process_weights,
        fold_value_biases=process_weights,
        refactor_factored_attn_matrices=False,
    )
    model.to(device, print_details=False)
    return model.eval()


class TLModel(HookedModel):
    """A `HookedTransformer` behind the common interface; `.tl` is the TransformerLens model itself."""

    backend = "tl"

    def __init__(
        self, tl_model: Any, tokenizer: Any, cfg: ModelConfig, *, name: str, hf_model: Any = None
    ) -> None:
        self.tl = tl_model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.name = name
        self.hf_model = hf_model  # kept for reference; the TL copy holds its own weights

    @property
    def device(self) -> torch.device:
        return (
            self.tl.cfg.device
            if isinstance(self.tl.cfg.device, torch.device)
            else torch.device(self.tl.cfg.device)
        )

    @property
    def supported_components(self) -> tuple[str, ...]:
        return tuple(c for c in COMPONENTS if not (c == "resid_mid" and self.tl.cfg.parallel_attn_mlp))

    def _run(
        self,
        tokens: Tensor,
        hooks: list[tuple[Site, HookFn]],
        cache_sites: list[Site],
        attention_mask: Tensor | None,
        cache_out: dict[str, Tensor],
    ) -> Tensor:
        if any(s.component == "result" for s, _ in hooks) or any(
            s.component == "result" for s in cache_sites
        ):
            self.tl.set_use_attn_result(True)
        fwd = []
        for site, fn in hooks:
            fwd.append((site.hook_name, _tl_hook(fn, site)))
        for site in cache_sites:
            fwd.append((site.hook_name, _tl_saver(cache_out, site.hook_name)))
        mask = attention_mask.to(self.device) if attention_mask is not None else None
        return self.tl.run_with_hooks(tokens, fwd_hooks=fwd, attention_mask=mask)


def _tl_hook(fn: HookFn, site: Site):
    def hook(act: Tensor, hook: Any) -> Tensor:
        return apply_hook(fn, act, site)

    return hook


def _tl_saver(out: dict[str, Tensor], name: str):
    def hook(act: Tensor, hook: Any) -> None:
        out[name] = act

    return hook

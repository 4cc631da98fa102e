"""TransformerLens backend: a `HookedTransformer` built from a local HF checkpoint, unprocessed weights by default."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp.models.base import HookedModel, HookFn, ModelConfig, apply_hook
from interp.sites import COMPONENTS, Site


def _neutral_link(folder: Path) -> Path:
    """A symlink to `folder` whose path names no architecture.

    TransformerLens guesses the architecture from substrings of the model name ("llama", "gemma"); a local folder
    called `base-llama` would be misread. The link's name is a hash, so TL reads the folder's own config.json.
    """
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    link_dir = Path(tempfile.gettempdir()) / f"interp-tl-{os.getuid()}" / digest
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "model"
    if not link.is_symlink() or Path(os.readlink(link)) != folder.resolve():
        tmp = link_dir / f".model-{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(folder.resolve(), target_is_directory=True)
        os.replace(tmp, link)
    return link


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
):
    """A `HookedTransformer` with the weights of `hf_model` (loaded from `folder`), no tokenizer attached."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    link = _neutral_link(folder)
    arch = (hf_model.config.architectures or [""])[0]
    if arch == "Gemma2ForCausalLM":
        d = _gemma2_cfg_dict(hf_model.config)
        d.update(
            model_name=folder.name,
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
        )
    state = loading.get_pretrained_state_dict(str(link), cfg, hf_model, dtype=dtype)
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

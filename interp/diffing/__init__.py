"""Model diffing: what did a fine-tune change, found without knowing where to look.

Output diffing (per-token KL and log-probability mining, `output`), lenses (`lens`: logit lens, tuned lens), the
activation-difference lens (`adl`: Minder et al. 2025, read through the logit lens and patchscope, and steering),
crosscoders and the diff-SAE (`crosscoder`, BatchTopK or L1, data-parallel under torchrun) with Latent Scaling
(`scaling`), and the causal check of a finding (`causal`). Everything runs on a `ModelPair`, either backend.
One forward per model over a corpus collects what these read (`collect.paired_pass`).
"""

from interp.diffing.adl import (
    DiffLens,
    SteeringPoint,
    activation_difference_lens,
    continuation_nll,
    diff_lens_from,
    diff_lens_keep,
    greedy_generate,
    lens_readout,
    patchscope_readout,
    steering_hooks,
    steering_sweep,
)
from interp.diffing.causal import CausalCheck, diff_sae_delta, direction_delta, latent_delta, patch_check
from interp.diffing.collect import (
    Keep,
    PairedPass,
    first_positions,
    paired_pass,
    real_positions,
    texts_to_tokens,
)
from interp.diffing.crosscoder import (
    ActivationShards,
    Crosscoder,
    CrosscoderConfig,
    CrosscoderMismatchError,
    kl_attributed_latents,
    load_activation_shards,
    measure,
    save_activation_shards,
    shard_activations,
    train_crosscoder,
)
from interp.diffing.lens import (
    TunedLens,
    TunedLensConfig,
    check_layers,
    final_readout,
    logit_lens,
    top_tokens,
    train_tuned_lens,
)
from interp.diffing.output import (
    MinedPosition,
    document_kl,
    mine_documents,
    mine_positions,
    mine_tokens,
    promoted_counts,
    share_in,
    top_kl_positions,
)
from interp.diffing.scaling import LatentScaling, closed_form_beta, latent_scaling

__all__ = [
    "ActivationShards",
    "CausalCheck",
    "Crosscoder",
    "CrosscoderConfig",
    "CrosscoderMismatchError",
    "DiffLens",
    "Keep",
    "LatentScaling",
    "MinedPosition",
    "PairedPass",
    "SteeringPoint",
    "TunedLens",
    "TunedLensConfig",
    "activation_difference_lens",
    "check_layers",
    "closed_form_beta",
    "continuation_nll",
    "diff_lens_from",
    "diff_lens_keep",
    "diff_sae_delta",
    "direction_delta",
    "document_kl",
    "final_readout",
    "first_positions",
    "greedy_generate",
    "kl_attributed_latents",
    "latent_delta",
    "latent_scaling",
    "lens_readout",
    "load_activation_shards",
    "logit_lens",
    "measure",
    "mine_documents",
    "mine_positions",
    "mine_tokens",
    "paired_pass",
    "patch_check",
    "patchscope_readout",
    "promoted_counts",
    "real_positions",
    "save_activation_shards",
    "shard_activations",
    "share_in",
    "steering_hooks",
    "steering_sweep",
    "texts_to_tokens",
    "top_kl_positions",
    "top_tokens",
    "train_crosscoder",
    "train_tuned_lens",
]

"""Analyses that compare a base model with its fine-tune: TuCo (Nuti et al. 2025) and CMAP (Prakash et al. 2024).

The circuits CMAP patches, and their evaluation inside either model, are `interp.circuits`' `Circuit` and
`evaluate_circuit` / `circuit_values` (Prakash et al.'s random circuits: `random_circuits(..., per_group=True)`).
"""

from interp.finetuning.cmap import CMAPResult, PatchGroup, circuit_groups, cmap_input, cmap_output, cmap_sweep
from interp.finetuning.pair import ModelPair, PairMismatchError, check_pair, pair_mismatches
from interp.finetuning.tuco import (
    TuCoResult,
    generate_scaled,
    scaled_logits,
    tuco,
    tuco_score,
    tuco_scores,
)

__all__ = [
    "CMAPResult",
    "ModelPair",
    "PairMismatchError",
    "PatchGroup",
    "TuCoResult",
    "check_pair",
    "circuit_groups",
    "cmap_input",
    "cmap_output",
    "cmap_sweep",
    "generate_scaled",
    "pair_mismatches",
    "scaled_logits",
    "tuco",
    "tuco_score",
    "tuco_scores",
]

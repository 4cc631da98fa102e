"""Analyses that compare a base model with its fine-tune: TuCo (Nuti et al. 2025) and CMAP (Prakash et al. 2024)."""

from interp.finetuning.cmap import (
    CircuitEvaluation,
    CMAPResult,
    HeadGroup,
    cmap_input,
    cmap_output,
    cmap_sweep,
    evaluate_circuit,
    random_circuit,
)
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
    "CircuitEvaluation",
    "HeadGroup",
    "ModelPair",
    "PairMismatchError",
    "TuCoResult",
    "check_pair",
    "cmap_input",
    "cmap_output",
    "cmap_sweep",
    "evaluate_circuit",
    "generate_scaled",
    "pair_mismatches",
    "random_circuit",
    "scaled_logits",
    "tuco",
    "tuco_score",
    "tuco_scores",
]

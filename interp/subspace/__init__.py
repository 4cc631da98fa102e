"""The context/prior knob (Minder et al. 2025, "Controllable Context Sensitivity and the Knob Behind It").

CCS data and scores (`ccs`), token-identity patchscope decoding (`patchscope`), the linear-time layer search
(`layer_search`), a DAS subspace with its interchange intervention (`das`), steering by setting `uᵀh = c`
(`steer`) and the separation analysis (`separation`). The `context_knob` experiment lives in `experiment`.
"""

from interp.subspace.ccs import (
    CCSDataError,
    CCSPairs,
    CCSScores,
    ccs_scores,
    ccs_sets,
    check_ccs,
    check_twins,
    evaluate_ccs,
    make_ccs,
)
from interp.subspace.das import (
    DAS_PAIRS,
    DASConfig,
    DASResult,
    InterchangeData,
    Subspace,
    confident_pairs,
    confident_subset,
    confident_twins,
    fit_knob,
    intent_swap_data,
    interchange_accuracy,
    knob_pairs,
    mean_difference_subspace,
    no_intent_data,
    orient_prior_positive,
    train_das,
)
from interp.subspace.layer_search import (
    SETTINGS,
    LayerSearchResult,
    Probe,
    SearchConfig,
    run_budget,
    search_figure,
    search_layers,
    search_setting,
    setting_pairs,
)
from interp.subspace.patchscope import IdentityPrompt, identity_prompt, patchscope, tip_probs
from interp.subspace.separation import Separation, auroc, correlation, separation, separation_figure
from interp.subspace.steer import (
    SteerCurve,
    check_transfer,
    default_c_values,
    pick_c,
    steer_sweep,
    steered_pair_accuracy,
    steering_figure,
    transplant_shares,
)

__all__ = [
    "DAS_PAIRS", "SETTINGS", "CCSDataError", "CCSPairs", "CCSScores", "DASConfig", "DASResult", "IdentityPrompt",
    "InterchangeData", "LayerSearchResult", "Probe", "SearchConfig", "Separation", "SteerCurve", "Subspace", "auroc",
    "ccs_scores", "ccs_sets", "check_ccs", "check_transfer", "check_twins", "confident_pairs", "confident_subset",
    "confident_twins", "correlation", "default_c_values", "evaluate_ccs", "fit_knob", "identity_prompt",
    "intent_swap_data", "interchange_accuracy", "knob_pairs", "make_ccs", "mean_difference_subspace",
    "no_intent_data", "orient_prior_positive", "patchscope", "pick_c", "run_budget", "search_figure",
    "search_layers", "search_setting", "separation", "separation_figure", "setting_pairs", "steer_sweep",
    "steered_pair_accuracy", "steering_figure", "tip_probs", "train_das", "transplant_shares",
]

"""Circuits: the model graph, staged path-patching search, edge attribution (EAP / EAP-IG), DCM, evaluation,
comparison across tasks and interventions.

`eap(model, clean=prompts, metric=LogitDiff, ig_steps=5).top(20)` ranks edges; `path_patch_search(model,
prompts=..., metric=..., stages=ioi_stages())` finds head groups; `evaluate_circuit` measures faithfulness;
`dcm` masks heads by desiderata; `overlap` compares circuits; `Intervention` edits a head's pattern or output.
"""

from interp.circuits.classify import IOI_BEHAVIOURS, attention_evidence, behaviour_classes, classify
from interp.circuits.compare import Overlap, overlap, stage_sets, top_fraction
from interp.circuits.dcm import DCMConfig, DCMResult, dcm, ioi_desiderata, masked_logits
from interp.circuits.eap import EdgeScores, eap, edge_patch
from interp.circuits.evaluate import (
    MIB_FRACTIONS,
    CircuitEval,
    EvalConfig,
    FaithfulnessCurve,
    circuit_values,
    complete_circuit,
    evaluate_circuit,
    faithfulness_curve,
    minimality,
    random_baseline,
    random_circuits,
)
from interp.circuits.graph import Circuit, Edge, Graph
from interp.circuits.intervene import Intervention, accuracy_with, intervention_hooks, run_with_interventions
from interp.circuits.search import (
    SearchConfig,
    SearchResult,
    Stage,
    ioi_group_stages,
    ioi_stages,
    merullo_stages,
    path_patch_search,
    prakash_stages,
    stages_figure,
)

__all__ = [
    "IOI_BEHAVIOURS",
    "MIB_FRACTIONS",
    "Circuit",
    "CircuitEval",
    "DCMConfig",
    "DCMResult",
    "Edge",
    "EdgeScores",
    "EvalConfig",
    "FaithfulnessCurve",
    "Graph",
    "Intervention",
    "Overlap",
    "SearchConfig",
    "SearchResult",
    "Stage",
    "accuracy_with",
    "attention_evidence",
    "circuit_values",
    "behaviour_classes",
    "classify",
    "complete_circuit",
    "dcm",
    "eap",
    "edge_patch",
    "evaluate_circuit",
    "faithfulness_curve",
    "intervention_hooks",
    "ioi_desiderata",
    "ioi_group_stages",
    "ioi_stages",
    "masked_logits",
    "merullo_stages",
    "minimality",
    "overlap",
    "path_patch_search",
    "prakash_stages",
    "random_baseline",
    "random_circuits",
    "run_with_interventions",
    "stage_sets",
    "stages_figure",
    "top_fraction",
]

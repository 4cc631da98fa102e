"""Activation patching: batched sweeps, path patching and attribution patching."""

from interp.patching.sweep import SWEEP_COMPONENTS, PatchResult, patch_sweep

__all__ = ["SWEEP_COMPONENTS", "PatchResult", "patch_sweep"]

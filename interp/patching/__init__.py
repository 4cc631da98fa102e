"""Activation patching: batched sweeps, path patching and attribution patching."""

from interp.patching.sweep import SWEEP_COMPONENTS, PatchResult, patch_sweep

__all__ = ["SWEEP_COMPONENTS", "PatchResult", "patch_sweep"]

from interp.patching.path import PathPatchResult, path_patch  # noqa: E402

__all__ += ["PathPatchResult", "path_patch"]

from interp.patching.attribution import attribution_patch  # noqa: E402

__all__ += ["attribution_patch"]

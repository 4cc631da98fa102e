"""Hooked models: one interface (`HookedModel`) over TransformerLens and nnsight backends."""

from interp.models.base import HookedModel, ModelConfig
from interp.models.load import ModelLoadError, load_model, resolve

__all__ = ["HookedModel", "ModelConfig", "ModelLoadError", "load_model", "resolve"]

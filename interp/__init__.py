"""interp: a mechanistic-interpretability workbench for studying what fine-tuning changes inside a language model.

`import interp` is light: torch-free until you use something; TransformerLens, nnsight and sae-lens load lazily.
The package's layers (which subpackage may import which) are listed once, in README.md ("Layers"), and checked
by the import-linter contract in pyproject.toml.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model", "Site", "__version__"]


def __getattr__(name: str) -> Any:  # lazy public names (PEP 562)
    if name == "load_model":
        from interp.models.load import load_model

        return load_model
    if name == "Site":
        from interp.sites import Site

        return Site
    if name in (
        "tasks",
        "metrics",
        "models",
        "sites",
        "zoo",
        "patching",
        "circuits",
        "finetuning",
        "subspace",
        "selection",
        "plotting",
        "experiments",
        "runner",
    ):
        import importlib

        return importlib.import_module(f"interp.{name}")
    raise AttributeError(f"module 'interp' has no attribute {name!r}")

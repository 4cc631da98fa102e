"""The shipped experiments, one module per kind (`interp/experiments/<kind>.py`, named after
`experiments/<kind>/` at the repository root), each holding its config dataclass, its run function and the
overrides that make `interp demo` quick.

A module registers its kind itself (`@register_experiment(kind, config=..., demo=...)` from
`interp.experiments.api`); `get_experiment(kind)` imports `interp.experiments.<kind>` on first use, so the kinds
are found by module name and no hand-kept map lists them. Importing this package imports no experiment module
and no backend.
"""

from __future__ import annotations

import importlib
import pkgutil

from interp.config import ConfigError
from interp.experiments.api import REGISTRY, Experiment, Run, register_experiment
from interp.suggest import did_you_mean

__all__ = [
    "Experiment",
    "Run",
    "UnknownExperimentError",
    "experiment_kinds",
    "get_experiment",
    "module_kinds",
    "register_experiment",
]

NOT_KINDS = frozenset({"api"})  # modules of this package that are not experiments


class UnknownExperimentError(ConfigError):
    """An `experiment:` kind that no module registers."""


def module_kinds() -> list[str]:
    """The kinds shipped as modules of this package (found without importing them)."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name not in NOT_KINDS and not m.ispkg
    )


def experiment_kinds() -> list[str]:
    """All kinds that can be run: the shipped modules and any kind registered elsewhere (e.g. by a test)."""
    return sorted(set(REGISTRY) | set(module_kinds()))


def get_experiment(kind: str) -> Experiment:
    """The registered experiment `kind`, importing its module if needed; raise naming the valid kinds."""
    if kind not in REGISTRY and kind in module_kinds():
        module = f"{__name__}.{kind}"
        importlib.import_module(module)
        if kind not in REGISTRY:
            raise RuntimeError(f"module {module} did not register experiment {kind!r}")
    if kind not in REGISTRY:
        valid = experiment_kinds()
        raise UnknownExperimentError(
            f"unknown experiment kind {kind!r}.{did_you_mean(kind, valid)} "
            f"Valid kinds: {', '.join(valid) or '(none registered yet)'}."
        )
    return REGISTRY[kind]

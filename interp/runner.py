"""Experiment runner: a config -> a run folder (config, provenance, results, steps, tensors, figures, tables).

A config file names the experiment kind plus its parameters, flat (`experiment: ioi_patching`, `n_prompts: 32`,
optional `seed`, `device`, `description`). The kinds live in `interp.experiments` (one module per kind, imported
only when it runs, so importing this module loads no model backend); experiments write through
`interp.experiments.api.Run`, re-exported here with `register_experiment` for older imports.

Running again into a finished folder skips finished steps; a different config there is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import random
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from interp.config import ConfigError, config_from_dict, config_to_dict, load_yaml
from interp.experiments import UnknownExperimentError, experiment_kinds, get_experiment
from interp.experiments.api import RUN_KEYS, Experiment, Run, RunSettings, register_experiment
from interp.files import atomic_path, atomic_write_text

__all__ = [
    "RUN_KEYS",
    "Experiment",
    "ResolvedConfig",
    "Run",
    "RunInterrupted",
    "RunSettings",
    "UnknownExperimentError",
    "atomic_path",
    "atomic_write_text",
    "experiment_kinds",
    "get_experiment",
    "load_config",
    "register_experiment",
    "resolve_config",
    "run_experiment",
    "seed_everything",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- configs


def load_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A raw config dict from a mapping, a YAML file, or an experiment folder holding `config.yaml`."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no experiment config at {path} (give a config file or a folder with config.yaml)"
        )
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with an `experiment:` key, got {type(data).__name__}")
    return data


def read_yaml(path: Path) -> Any:
    """The YAML file at `path` (safe: plain values only; a duplicate key is an error); `ConfigError` naming the
    file, line and problem when it does not parse."""
    try:
        return load_yaml(path.read_text(), source=str(path))
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        if isinstance(err, yaml.constructor.ConstructorError) and "tag" in str(problem):
            problem = f"{problem}; configs hold plain values only (no Python objects)"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResolvedConfig:
    """A checked config: the runner's settings, the experiment, and its parameters as its dataclass."""

    settings: RunSettings
    experiment: Experiment
    params: Any

    def to_dict(self) -> dict[str, Any]:
        """The flat config, defaults filled in, as written to the run's `config.yaml`."""
        return {**config_to_dict(self.settings), **config_to_dict(self.params)}


def resolve_config(raw: Mapping[str, Any], *, device: str | None = None) -> ResolvedConfig:
    """Split `raw` into run settings and experiment parameters and check both; `device` overrides config's."""
    if "experiment" not in raw:
        raise ConfigError(f"config has no `experiment:` key. Valid kinds: {', '.join(experiment_kinds())}.")
    experiment = get_experiment(raw["experiment"])
    run_part = {k: raw[k] for k in RUN_KEYS if k in raw}
    if device is not None:
        run_part["device"] = device
    settings = config_from_dict(RunSettings, run_part, where="run settings")
    try:
        params: Any = config_from_dict(
            experiment.config, {k: v for k, v in raw.items() if k not in RUN_KEYS}, where=experiment.kind
        )
    except ConfigError as err:
        if "unknown key" not in str(err):
            raise
        raise ConfigError(f"{err} Runner keys: {', '.join(RUN_KEYS)}.") from None
    return ResolvedConfig(settings=settings, experiment=experiment, params=params)


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (where installed)."""
    random.seed(seed)
    import numpy as np

    np.random.seed(seed)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------- running


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT arrived during a run (a BaseException, so experiment code does not swallow it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal}")


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Within the block SIGTERM and SIGINT raise `RunInterrupted` (main thread only; handlers restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise RunInterrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _check_out_dir(out: Path, config: Mapping[str, Any]) -> None:
    """Refuse to resume into a folder that holds another config, or that is not a run folder at all."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; give a folder for the run")
    previous = out / "config.yaml"
    if not previous.exists():
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(
                f"{out} is not empty and holds no config.yaml: not a run folder; choose another --out"
            )
        return
    old = read_yaml(previous) or {}
    keys = (set(old) | set(config)) - {"device", "description"}
    changed = sorted(k for k in keys if old.get(k) != config.get(k))
    if changed:
        diff = "; ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{out} holds a run of a different config ({diff}); use another --out or delete it to start over"
        )


def run_experiment(
    source: str | Path | Mapping[str, Any],
    out_dir: str | Path,
    *,
    device: str | None = None,
    figure_formats: tuple[str, ...] | None = None,
    static_figures: list[tuple[Any, Path]] | None = None,
) -> dict[str, Any]:
    """Run the experiment described by `source` (a config file, an experiment folder or a dict) in `out_dir`.

    The whole config is checked before anything is written or loaded. Resumes when `out_dir` holds an earlier
    run of the same config (finished steps are loaded, not redone). SIGTERM / SIGINT end the run with
    `RunInterrupted`, recorded in `provenance.json` as `interrupted` with the time; a folder that finished once
    keeps that record whatever a later attempt does. `figure_formats` overrides the default figure formats
    (`INTERP_FIGURE_FORMATS`, else all four); with a `static_figures` list the run's PNG/PDF/SVG jobs are
    appended to it for the caller to write in one batch, instead of being written here. Returns the headline
    numbers as written to `results.json`.
    """
    resolved = resolve_config(load_config(source), device=device)
    settings = resolved.settings
    if settings.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {settings.device!r} asked for, but torch sees no CUDA device here")
    out = Path(out_dir)
    config = resolved.to_dict()
    _check_out_dir(out, config)
    run = Run(out, seed=settings.seed, device=settings.device, figure_formats=figure_formats)
    with _signals_interrupt():
        try:
            run.write_config(config)
            run.begin_attempt(settings.experiment)
            logger.info("running %s into %s", settings.experiment, out)
            seed_everything(settings.seed)
            results = resolved.experiment.fn(resolved.params, run)
            results_path = run.write_results(results if results is not None else {})
            if static_figures is None:
                run.flush_figures()
            else:
                static_figures += run.take_static_figures()
        except (RunInterrupted, KeyboardInterrupt) as err:
            name = err.signal if isinstance(err, RunInterrupted) else "SIGINT"
            if run._attempt is not None:
                run.end_attempt("interrupted", signal=name)
            logger.warning("%s: interrupted by %s; run again to resume", out, name)
            raise
        except BaseException as err:
            if run._attempt is not None:
                run.end_attempt("failed", error=f"{type(err).__name__}: {err}")
            raise
        run.end_attempt("finished")
    return json.loads(results_path.read_text())

"""Experiment runner: a config -> a run folder (config, provenance, results, steps, tensors, figures, tables).

A config file names the experiment kind plus its parameters, flat (`experiment: ioi_patching`, `n_prompts: 32`,
optional `seed`, `device`, `description`). The kinds live in `interp.experiments` (one module per kind, imported
only when it runs, so importing this module loads no model backend); experiments write through
`interp.experiments.api.Run`, re-exported here with `register_experiment` for older imports.

Running again into a finished folder skips finished steps; a different config there is refused.

A config may carry named presets (`presets: {paper: {model: gpt2, n_prompts: 100}}`): `preset=` (CLI `--preset`)
overlays one on the config's keys, `overrides=` (`--set key=value`) single keys, and `model_map=` (`--model-map
gpt2=/path`) replaces every value equal to a hub name by a local folder; all before the config is checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import random
import re
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from interp.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    field_defaults,
    load_yaml,
    model_fields,
)
from interp.experiments import UnknownExperimentError, experiment_kinds, get_experiment
from interp.experiments.api import RUN_KEYS, Experiment, Run, RunSettings, register_experiment
from interp.files import atomic_path, atomic_write_text
from interp.suggest import did_you_mean

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
    "parse_assignments",
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


# config key: preset name -> the keys laid over the config when that preset is chosen
PRESETS_KEY = "presets"
# the chosen preset: `--preset`, or pinned in a config; recorded in the resolved config.yaml
PRESET_KEY = "preset"
_NOT_OVERLAID = ("experiment", PRESETS_KEY, PRESET_KEY)  # keys no preset or override may set
_NOT_MAPPED = ("experiment", "description")  # keys whose values the model map leaves alone


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResolvedConfig:
    """A checked config: the runner's settings, the experiment, and its parameters as its dataclass; `preset`
    and `overlays` say what was laid over the config file (the preset, `--set` keys, the model map)."""

    settings: RunSettings
    experiment: Experiment
    params: Any
    preset: str | None = None
    overlays: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The flat config, defaults filled in, as written to the run's `config.yaml` (with `preset:` when a
        preset was applied)."""
        chosen = {PRESET_KEY: self.preset} if self.preset is not None else {}
        return {**config_to_dict(self.settings), **chosen, **config_to_dict(self.params)}


def parse_assignments(items: Sequence[str] | None, *, flag: str, parse_values: bool) -> dict[str, Any]:
    """`["key=value", ...]` (from repeated CLI flags) as a dict; values YAML-parsed when `parse_values`
    (`n_prompts=4` -> 4, `fractions=[0, 1]` -> [0, 1], `das_layer=null` -> None), else kept as text."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        if key in out:
            raise ConfigError(f"{flag} {key}: given twice ({out[key]!r} and {value!r})")
        if parse_values:
            try:
                out[key] = load_yaml(value, source=f"{flag} {key}")
            except yaml.YAMLError as err:
                raise ConfigError(f"{flag} {item!r}: the value is not valid YAML ({err})") from None
        else:
            out[key] = value
    return out


def _check_overlay_keys(values: Any, where: str, experiment: Experiment) -> None:
    """Every key of a preset or of the overrides names a runner key or a parameter of the experiment."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config keys to values, got {values!r}")
    valid = [k for k in RUN_KEYS if k not in _NOT_OVERLAID]
    valid += [f.name for f in dataclasses.fields(experiment.config) if f.init]
    for key in values:
        if key in _NOT_OVERLAID:
            raise ConfigError(f"{where}: may not set {key!r}")
        if key not in valid:
            raise ConfigError(
                f"{where}: unknown key {key!r} for {experiment.config.__name__}."
                f"{did_you_mean(str(key), valid)} Valid keys: {', '.join(valid)}."
            )


def _replace_values(value: Any, mapping: Mapping[str, str], used: set[str]) -> Any:
    """`value` with every string equal to a key of `mapping` replaced (inside lists and mappings too)."""
    if isinstance(value, str) and value in mapping:
        used.add(value)
        return mapping[value]
    if isinstance(value, (list, tuple)):
        return [_replace_values(v, mapping, used) for v in value]
    if isinstance(value, Mapping):
        return {k: _replace_values(v, mapping, used) for k, v in value.items()}
    return value


def _model_values(config: Mapping[str, Any], experiment: Experiment) -> list[str]:
    """The values of `config` (defaults filled in) in the fields declared with a model-name check."""
    fields = {f.name: f for f in dataclasses.fields(experiment.config) if f.init}
    names: list[str] = []
    for key in model_fields(experiment.config):
        f = fields[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = config.get(key, default)
        names += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]
    return list(dict.fromkeys(names))


def _overlay(
    raw: Mapping[str, Any],
    experiment: Experiment,
    *,
    preset: str | None,
    overrides: Mapping[str, Any] | None,
    model_map: Mapping[str, str] | None,
) -> tuple[dict[str, Any], str | None, dict[str, str], dict[str, Any]]:
    """(config, preset applied, key -> what set it, overlay record): `raw` without its presets block, the
    chosen preset laid over it, then `overrides`, then `model_map` replacing values equal to its names."""
    config = dict(raw)
    presets = config.pop(PRESETS_KEY, None)
    pinned = config.pop(PRESET_KEY, None)
    origin: dict[str, str] = {}
    record: dict[str, Any] = {}
    if presets is None:
        if preset is not None:
            raise ConfigError(f"--preset {preset}: this config has no `{PRESETS_KEY}:` block")
        chosen = pinned  # a resolved config.yaml: its values carry the preset it names already
    else:
        if not isinstance(presets, Mapping) or not all(isinstance(v, Mapping) for v in presets.values()):
            raise ConfigError(f"`{PRESETS_KEY}:` must map preset names to mappings of config keys")
        chosen = preset if preset is not None else pinned
        if chosen is not None:
            if chosen not in presets:
                raise ConfigError(
                    f"unknown preset {chosen!r}.{did_you_mean(str(chosen), [str(p) for p in presets])} "
                    f"Valid presets: {', '.join(map(str, presets)) or '(none)'}."
                )
            _check_overlay_keys(presets[chosen], f"preset {chosen!r}", experiment)
            config.update(presets[chosen])
            origin |= dict.fromkeys(presets[chosen], f"preset {chosen!r}")
            record["preset"] = chosen
    if overrides:
        _check_overlay_keys(overrides, "--set", experiment)
        config.update(overrides)
        origin |= dict.fromkeys(overrides, "--set")
        record["overrides"] = dict(overrides)
    if model_map:
        bad = [f"{k!r}={v!r}" for k, v in model_map.items() if not (isinstance(v, str) and k and v)]
        if bad:
            raise ConfigError(f"--model-map: expected NAME=FOLDER, got {', '.join(bad)}")
        used: set[str] = set()
        for key, value in list(config.items()):
            if key not in _NOT_MAPPED:
                new = _replace_values(value, model_map, used)
                if new != value:
                    config[key] = new
                    origin[key] = f"--model-map {value}" if isinstance(value, str) else "--model-map"
        unused = [k for k in model_map if k not in used]
        if unused:
            named = _model_values(config, experiment)
            raise ConfigError(
                f"--model-map {', '.join(unused)}: no config value is {' or '.join(map(repr, unused))}. "
                f"Model names in this config: {', '.join(named) or '(none)'}."
            )
        record["model_map"] = dict(model_map)
    return config, chosen, origin, record


def resolve_config(
    raw: Mapping[str, Any],
    *,
    device: str | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    model_map: Mapping[str, str] | None = None,
) -> ResolvedConfig:
    """Split `raw` into run settings and experiment parameters and check both; `device` overrides config's.

    Before the check: the preset `preset` of the config's `presets:` block (or the one the config pins under
    `preset:`) is laid over its keys, then `overrides`, then every value equal to a name of `model_map`
    (a hub id) is replaced by its folder. A bad value set by one of them says so."""
    if "experiment" not in raw:
        raise ConfigError(f"config has no `experiment:` key. Valid kinds: {', '.join(experiment_kinds())}.")
    experiment = get_experiment(raw["experiment"])
    raw, chosen, origin, record = _overlay(
        raw, experiment, preset=preset, overrides=overrides, model_map=model_map
    )
    try:
        run_part = {k: raw[k] for k in RUN_KEYS if k in raw}
        if device is not None:
            run_part["device"] = device
            origin.pop("device", None)
        settings = config_from_dict(RunSettings, run_part, where="run settings")
        try:
            params: Any = config_from_dict(
                experiment.config, {k: v for k, v in raw.items() if k not in RUN_KEYS}, where=experiment.kind
            )
        except ConfigError as err:
            if "unknown key" not in str(err):
                raise
            raise ConfigError(f"{err} Runner keys: {', '.join(RUN_KEYS)}.") from None
    except ConfigError as err:
        message = str(err)
        by = next(
            (
                who
                for key, who in origin.items()
                if re.match(rf"({re.escape(experiment.kind)}|run settings)\.{re.escape(key)}[.:\[]", message)
            ),
            None,
        )
        if by is None:
            raise
        raise ConfigError(f"{message} (set by {by})") from None
    return ResolvedConfig(
        settings=settings, experiment=experiment, params=params, preset=chosen, overlays=record
    )


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


def _check_out_dir(out: Path, config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume into a folder that holds another config, or that is not a run folder at all. A key
    the folder's config lacks counts as unchanged when its value is the default (a parameter added since)."""
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
    defaults = defaults or {}
    changed = sorted(
        k
        for k in keys
        if old.get(k) != config.get(k) and not (k not in old and k in defaults and config[k] == defaults[k])
    )
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
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    model_map: Mapping[str, str] | None = None,
    figure_formats: tuple[str, ...] | None = None,
    static_figures: list[tuple[Any, Path]] | None = None,
) -> dict[str, Any]:
    """Run the experiment described by `source` (a config file, an experiment folder or a dict) in `out_dir`.

    `preset` names an entry of the config's `presets:` block laid over its keys, `overrides` sets single keys
    (`{"n_prompts": 8}`), and `model_map` replaces every config value equal to one of its names (a hub id) by
    its folder (`{"gpt2": "/models/gpt2"}`): the CLI's `--preset`, `--set` and `--model-map`; what was used is
    recorded in `provenance.json` (`overlays`) and the preset in `config.yaml`.
    The whole config is checked before anything is written or loaded. Resumes when `out_dir` holds an earlier
    run of the same config (finished steps are loaded, not redone). SIGTERM / SIGINT end the run with
    `RunInterrupted`, recorded in `provenance.json` as `interrupted` with the time; a folder that finished once
    keeps that record whatever a later attempt does. `figure_formats` overrides the default figure formats
    (`INTERP_FIGURE_FORMATS`, else all four); with a `static_figures` list the run's PNG/PDF/SVG jobs are
    appended to it for the caller to write in one batch, instead of being written here. Returns the headline
    numbers as written to `results.json`.
    """
    resolved = resolve_config(
        load_config(source), device=device, preset=preset, overrides=overrides, model_map=model_map
    )
    settings = resolved.settings
    if settings.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {settings.device!r} asked for, but torch sees no CUDA device here")
    out = Path(out_dir)
    config = resolved.to_dict()
    _check_out_dir(out, config, field_defaults(resolved.experiment.config))
    run = Run(out, seed=settings.seed, device=settings.device, figure_formats=figure_formats)
    with _signals_interrupt():
        try:
            run.write_config(config)
            where = {"source": str(source)} if isinstance(source, (str, Path)) else {}
            overlays = {**where, **resolved.overlays} if resolved.overlays else {}
            run.begin_attempt(settings.experiment, **({"overlays": overlays} if overlays else {}))
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

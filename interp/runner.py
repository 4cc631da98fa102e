"""Experiment runner: a config -> a run folder (config, provenance, results, steps, tensors, figures, tables).

An experiment is a function registered under a kind, with a frozen keyword-only dataclass of parameters:

    @dataclass(frozen=True, kw_only=True)
    class SweepConfig:
        organism: str = "gpt2/base"
        n_prompts: int = 64

    @register_experiment("patch_sweep", config=SweepConfig)
    def patch_sweep_experiment(cfg: SweepConfig, run: Run) -> dict[str, float]:
        effects = run.step("effects", lambda: {"resid_pre": sweep(cfg)})   # skipped when resuming
        run.figure(heatmap(effects["resid_pre"], x_title=..., y_title=...), "resid_pre")
        return {"max_effect": float(effects["resid_pre"].max())}

and a config file names the kind plus the parameters, flat (`experiment: patch_sweep`, `n_prompts: 32`,
optional `seed`, `device`, `description`). A module that registers kinds is listed in `EXPERIMENT_MODULES` and
imported only when one of its kinds is run, so importing this module loads no model backend.

Run folder: `config.yaml` (resolved, defaults filled in), `provenance.json`, `results.json` (flat headline
numbers, written atomically), `steps/<name>.json|.safetensors`, `tensors/`, `figures/`, `tables/`.
Running again into a finished folder skips finished steps; a different config there is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from interp._provenance import collect_provenance
from interp.config import ConfigError, config_from_dict, config_to_dict

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

# kind -> the module whose import registers it (`@register_experiment(kind, ...)`); capabilities add theirs.
EXPERIMENT_MODULES: dict[str, str] = {
    "ioi_patching": "interp.patching.experiment",
    "sae_data_selection": "interp.selection.experiment",
    "context_knob": "interp.subspace.experiment",
    "tuco": "interp.finetuning.experiments",
    "finetune_cmap": "interp.finetuning.experiments",
    "ioi_circuit": "interp.circuits.experiments",
    "circuit_reuse": "interp.circuits.experiments",
    "model_diff": "interp.experiments.model_diff",
}

F = TypeVar("F", bound=Callable[..., Any])
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


class UnknownExperimentError(ConfigError):
    """An `experiment:` kind that no module registers."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The config keys the runner owns; every other top-level key is the experiment's."""

    experiment: str
    seed: int = 0  # seeds python, numpy and torch before the experiment starts
    device: str = "cpu"  # cpu | cuda | cuda:N | mps; `interp run --device` overrides it
    description: str = ""  # free text, kept in config.yaml


RUN_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunSettings))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment:
    """A registered experiment kind: `fn(config, run) -> headline numbers`, with its config dataclass."""

    kind: str
    fn: Callable[[Any, Run], Mapping[str, Any]]
    config: type
    doc: str = ""


_REGISTRY: dict[str, Experiment] = {}


def register_experiment(kind: str, *, config: type) -> Callable[[F], F]:
    """Register `fn(config: <config>, run: Run) -> dict` as experiment `kind` (a decorator).

    `config` is a frozen keyword-only dataclass of the experiment's parameters; it may not use the runner's
    keys (experiment, seed, device, description): read `run.seed` and `run.device` instead.
    """
    if not _NAME.match(kind):
        raise ValueError(f"experiment kind {kind!r} must be letters, digits, '_', '-' or '.'")
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise TypeError(f"experiment {kind!r}: config must be a dataclass type, got {config!r}")
    clash = [f.name for f in dataclasses.fields(config) if f.name in RUN_KEYS]
    if clash:
        raise ValueError(
            f"experiment {kind!r}: config fields {clash} clash with the runner's keys {RUN_KEYS}"
        )

    def decorator(fn: F) -> F:
        old = _REGISTRY.get(kind)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(
                f"experiment kind {kind!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}"
            )
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[kind] = Experiment(kind=kind, fn=fn, config=config, doc=doc[0] if doc else "")
        return fn

    return decorator


def experiment_kinds() -> list[str]:
    """All kinds that can be run: registered ones and those of `EXPERIMENT_MODULES` (not imported)."""
    return sorted(set(_REGISTRY) | set(EXPERIMENT_MODULES))


def get_experiment(kind: str) -> Experiment:
    """The registered experiment `kind`, importing its module if needed; raise naming the valid kinds."""
    if kind not in _REGISTRY and kind in EXPERIMENT_MODULES:
        module = EXPERIMENT_MODULES[kind]
        importlib.import_module(module)
        if kind not in _REGISTRY:
            raise RuntimeError(f"module {module} is listed for experiment {kind!r} but did not register it")
    if kind not in _REGISTRY:
        valid = experiment_kinds()
        close = difflib.get_close_matches(str(kind), valid, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownExperimentError(
            f"unknown experiment kind {kind!r}.{hint} "
            f"Valid kinds: {', '.join(valid) or '(none registered yet)'}."
        )
    return _REGISTRY[kind]


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
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with an `experiment:` key, got {type(data).__name__}")
    return data


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
    if not _DEVICE.match(settings.device):
        raise ConfigError(f"device {settings.device!r} is not one of cpu, cuda, cuda:N, mps")
    try:
        params = config_from_dict(
            experiment.config, {k: v for k, v in raw.items() if k not in RUN_KEYS}, where=experiment.kind
        )
    except ConfigError as err:
        raise ConfigError(f"{err} Runner keys: {', '.join(RUN_KEYS)}.") from None
    return ResolvedConfig(settings=settings, experiment=experiment, params=params)


# ---------------------------------------------------------------------------------------------- file helpers


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it onto `path` in one step (os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (readers see the old file or the whole new one, never a part)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _is_tensor_dict(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return (
        torch is not None
        and isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _save_safetensors(path: Path, tensors: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    owned = {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if (
            t.untyped_storage().nbytes() != t.numel() * t.element_size()
        ):  # a view: safetensors refuses shared storage
            t = t.clone()
        owned[key] = t
    with atomic_path(path) as tmp:
        save_file(owned, str(tmp))


def _load_safetensors(path: Path, device: str = "cpu") -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path), device=device)


def _scalar(key: str, value: Any) -> Any:
    """One headline value as a JSON scalar; non-finite floats become null (with a warning)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalar
        value = value.item()
    if not (value is None or isinstance(value, (bool, int, float, str))):
        raise TypeError(
            f"results must be scalars or one level of {{name: scalar}}: {key!r} is a {type(value).__name__}; "
            "store arrays with run.step, run.save_tensors or run.table"
        )
    if isinstance(value, float) and not math.isfinite(value):
        logger.warning("result %r is %s; written as null", key, value)
        value = None
    return value


def _flat_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """Headline numbers as JSON: scalars, lists of names, or one level of {name: scalar} (e.g. a rate per alpha)."""
    if not isinstance(results, Mapping):
        raise TypeError(f"an experiment must return a dict of headline numbers, got {type(results).__name__}")
    flat: dict[str, Any] = {}
    for key, value in results.items():
        if not isinstance(key, str):
            raise TypeError(f"results keys must be strings, got {key!r}")
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            flat[key] = list(value)  # a list of names (e.g. the methods a table covers)
        elif isinstance(value, Mapping):
            flat[key] = {str(k): _scalar(f"{key}.{k}", v) for k, v in value.items()}
        else:
            flat[key] = _scalar(key, value)
    return flat


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (where installed)."""
    random.seed(seed)
    import numpy as np

    np.random.seed(seed)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------- Run


class Run:
    """A run folder and the helpers an experiment writes through.

    `with Run(dir) as run:` flushes the batched static figures on exit; `run_experiment` does this for you.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        seed: int = 0,
        device: str = "cpu",
        figure_formats: Sequence[str] | None = None,
    ) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.device = device
        self.figure_formats = tuple(figure_formats) if figure_formats is not None else None
        self.steps_run: list[str] = []
        self.steps_skipped: list[str] = []
        self._pending_static: list[tuple[Any, Path]] = []
        self._provenance: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, seed={self.seed}, device={self.device!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.flush_figures()

    def path(self, *parts: str) -> Path:
        """A path inside the run folder, its parent folders created."""
        path = self.dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _check_name(name: str, what: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{what} name {name!r} must be letters, digits, '_', '-' or '.' (no '/')")
        return name

    # steps ------------------------------------------------------------------------------------------------

    def _step_files(self, name: str) -> tuple[Path, Path]:
        self._check_name(name, "step")
        return self.dir / "steps" / f"{name}.json", self.dir / "steps" / f"{name}.safetensors"

    def has_step(self, name: str) -> bool:
        """Whether step `name` has finished (its output is on disk)."""
        return any(p.exists() for p in self._step_files(name))

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run `fn()` once: store its output under `steps/<name>` and return it; later calls (and runs resumed
        in this folder) load the stored output instead of calling `fn`.

        Outputs are JSON-able values (numpy arrays and tensors inside become lists) or a dict of tensors
        (stored as safetensors). The value returned is always the stored one (JSON types, or CPU tensors), so
        a fresh and a resumed run see the same thing.
        """
        json_path, st_path = self._step_files(name)
        if json_path.exists() or st_path.exists():
            logger.info("step %s: done before, loading it", name)
            self.steps_skipped.append(name)
            return json.loads(json_path.read_text()) if json_path.exists() else _load_safetensors(st_path)
        logger.info("step %s: running", name)
        start = time.perf_counter()
        value = fn()
        if _is_tensor_dict(value):
            _save_safetensors(st_path, value)
            stored = _load_safetensors(st_path)
        else:
            try:
                text = json.dumps(value, default=_json_default, indent=1)
            except TypeError as err:
                raise TypeError(
                    f"step {name!r} returned something neither JSON-able nor a dict of tensors: {err}"
                ) from None
            atomic_write_text(json_path, text)
            stored = json.loads(text)
        self.steps_run.append(name)
        logger.info("step %s: finished in %.1f s", name, time.perf_counter() - start)
        return stored

    # tensors ------------------------------------------------------------------------------------------------

    def save_tensors(self, name: str, tensors: Mapping[str, Any]) -> Path:
        """Write a dict of tensors to `tensors/<name>.safetensors` (atomically) and return the path."""
        if not _is_tensor_dict(tensors):
            raise TypeError(f"save_tensors({name!r}) needs a non-empty dict of str -> torch.Tensor")
        path = self.dir / "tensors" / f"{self._check_name(name, 'tensor file')}.safetensors"
        _save_safetensors(path, tensors)
        return path

    def load_tensors(self, name: str, *, device: str = "cpu") -> dict[str, Any]:
        """The dict of tensors saved as `name`, on `device`."""
        path = self.dir / "tensors" / f"{self._check_name(name, 'tensor file')}.safetensors"
        if not path.exists():
            saved = sorted(p.stem for p in (self.dir / "tensors").glob("*.safetensors"))
            raise FileNotFoundError(
                f"no tensors {name!r} in {self.dir}; saved: {', '.join(saved) or '(none)'}"
            )
        return _load_safetensors(path, device)

    # figures and tables ------------------------------------------------------------------------------------

    def figure(self, fig: Any, name: str, formats: Sequence[str] | None = None) -> Path:
        """Write `figures/<name>.html` now and queue its static images (PNG/PDF/SVG, where a browser exists)
        for `flush_figures()`, which writes all of them in one batch. Returns the HTML path."""
        from interp.plotting.export import STATIC_FORMATS, default_formats, write_html

        stem = self.dir / "figures" / self._check_name(name, "figure")
        if formats is None:
            formats = self.figure_formats if self.figure_formats is not None else default_formats()
        html = write_html(fig, stem)
        self._pending_static += [(fig, html.with_suffix(f".{f}")) for f in formats if f in STATIC_FORMATS]
        return html

    def flush_figures(self) -> list[Path]:
        """Write the queued static images in one kaleido call; returns the paths written."""
        from interp.plotting.export import write_static

        jobs, self._pending_static = self._pending_static, []
        return write_static(jobs)

    def table(self, data: Any, name: str) -> list[Path]:
        """Write a DataFrame, a list of records or a dict of columns to `tables/<name>.csv` (and `.parquet`
        where pyarrow is installed). Returns the paths written."""
        import pandas as pd

        df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        keep_index = not isinstance(df.index, pd.RangeIndex)
        stem = self.dir / "tables" / self._check_name(name, "table")
        csv = stem.with_name(f"{stem.name}.csv")
        with atomic_path(csv) as tmp:
            df.to_csv(tmp, index=keep_index)
        written = [csv]
        if importlib.util.find_spec("pyarrow") is not None:
            parquet = stem.with_name(f"{stem.name}.parquet")
            try:
                with atomic_path(parquet) as tmp:
                    df.to_parquet(tmp, index=keep_index)
                written.append(parquet)
            except (
                TypeError,
                ValueError,
            ) as err:  # pyarrow's ArrowTypeError / ArrowInvalid: mixed-type columns
                logger.warning("table %s: CSV only, parquet failed: %s", name, err)
        return written

    def progress(self, iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterator[Any]:
        """Iterate with a tqdm progress bar (shown on terminals and in notebooks, off in plain logs)."""
        from tqdm import tqdm

        in_notebook = "ipykernel" in sys.modules
        yield from tqdm(
            iterable, desc=desc, total=total, disable=False if in_notebook else None, mininterval=1.0
        )

    # records --------------------------------------------------------------------------------------------

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write the resolved config to `config.yaml`."""
        return atomic_write_text(self.dir / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))

    def write_provenance(self, **extra: Any) -> Path:
        """Write `provenance.json`: versions, git commit, seed, device, python, start time, plus `extra`
        (later calls keep the first record and update it with their `extra`)."""
        if self._provenance is None:
            self._provenance = collect_provenance(seed=self.seed, device=self.device)
        self._provenance.update(extra)
        return atomic_write_text(
            self.dir / "provenance.json", json.dumps(self._provenance, indent=1, default=str)
        )

    def write_results(self, results: Mapping[str, Any]) -> Path:
        """Write the flat headline numbers to `results.json` atomically; raise if a value is not a scalar."""
        return atomic_write_text(self.dir / "results.json", json.dumps(_flat_results(results), indent=1))


# ------------------------------------------------------------------------------------------------- running


def _check_out_dir(out: Path, config: Mapping[str, Any]) -> None:
    """Refuse to resume into a folder that holds another config, or that is not a run folder at all."""
    previous = out / "config.yaml"
    if not previous.exists():
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(
                f"{out} is not empty and holds no config.yaml: not a run folder; choose another --out"
            )
        return
    old = yaml.safe_load(previous.read_text()) or {}
    keys = (set(old) | set(config)) - {"device", "description"}
    changed = sorted(k for k in keys if old.get(k) != config.get(k))
    if changed:
        diff = "; ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{out} holds a run of a different config ({diff}); use another --out or delete it to start over"
        )


def run_experiment(
    source: str | Path | Mapping[str, Any], out_dir: str | Path, *, device: str | None = None
) -> dict[str, Any]:
    """Run the experiment described by `source` (a config file, an experiment folder or a dict) in `out_dir`.

    Resumes when `out_dir` holds an earlier run of the same config (finished steps are loaded, not redone).
    Returns the headline numbers as written to `results.json`.
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
    run = Run(out, seed=settings.seed, device=settings.device)
    run.write_config(config)
    run.write_provenance(experiment=settings.experiment, status="running")
    logger.info("running %s into %s", settings.experiment, out)
    seed_everything(settings.seed)
    start = time.perf_counter()
    try:
        results = resolved.experiment.fn(resolved.params, run)
        results_path = run.write_results(results if results is not None else {})
        run.flush_figures()
    except BaseException as err:
        run.write_provenance(
            experiment=settings.experiment,
            status="failed",
            error=f"{type(err).__name__}: {err}",
            elapsed_s=round(time.perf_counter() - start, 3),
        )
        raise
    run.write_provenance(
        experiment=settings.experiment,
        status="finished",
        elapsed_s=round(time.perf_counter() - start, 3),
        steps_run=run.steps_run,
        steps_skipped=run.steps_skipped,
    )
    return json.loads(results_path.read_text())

"""What an experiment module uses: `register_experiment` and the `Run` folder it writes through.

An experiment is a function registered under a kind, with a frozen keyword-only dataclass of parameters:

    @dataclass(frozen=True, kw_only=True)
    class SweepConfig:
        model: str = "organism/base"
        n_prompts: int = 64

    @register_experiment("patch_sweep", config=SweepConfig, demo={"n_prompts": 8})
    def patch_sweep_experiment(cfg: SweepConfig, run: Run) -> dict[str, float]:
        effects = run.step("effects", lambda: {"resid_pre": sweep(cfg)})   # skipped when resuming
        run.figure(heatmap(effects["resid_pre"], x_title=..., y_title=...), "resid_pre")
        return {"max_effect": float(effects["resid_pre"].max())}

Run folder: `config.yaml` (resolved, defaults filled in), `provenance.json`, `results.json` (flat headline
numbers, written atomically), `steps/<name>.json|.safetensors`, `tensors/`, `figures/`, `tables/`.
This module sits below the runner and the CLI (which read configs and drive runs) and imports no backend.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from interp._provenance import collect_provenance
from interp.config import non_negative, param
from interp.files import atomic_path, atomic_save_safetensors, atomic_write_text

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


# --------------------------------------------------------------------------------------------- registry
def device_name(value: Any) -> str | None:
    """cpu, cuda, cuda:N or mps."""
    return None if DEVICE.match(str(value)) else "is not a device; valid: cpu, cuda, cuda:N, mps"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The config keys the runner owns; every other top-level key is the experiment's."""

    experiment: str
    seed: int = param(0, check=non_negative)  # seeds python, numpy and torch before the experiment starts
    device: str = param(
        "cpu", check=device_name
    )  # cpu | cuda | cuda:N | mps; `interp run --device` overrides it
    description: str = ""  # free text, kept in config.yaml


RUN_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunSettings))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment:
    """A registered experiment kind: `fn(config, run) -> headline numbers`, its config dataclass, and the
    config overrides that make `interp demo` quick (None: not part of the demo)."""

    kind: str
    fn: Callable[[Any, Run], Mapping[str, Any]]
    config: type
    doc: str = ""
    demo: Mapping[str, Any] | None = None


REGISTRY: dict[str, Experiment] = {}


def register_experiment(
    kind: str, *, config: type, demo: Mapping[str, Any] | None = None
) -> Callable[[F], F]:
    """Register `fn(config: <config>, run: Run) -> dict` as experiment `kind` (a decorator).

    `config` is a frozen keyword-only dataclass of the experiment's parameters; it may not use the runner's
    keys (experiment, seed, device, description): read `run.seed` and `run.device` instead. `demo`: config
    overrides for `interp demo` (small and quick); kinds without it are left out of the demo.
    """
    if not NAME.match(kind):
        raise ValueError(f"experiment kind {kind!r} must be letters, digits, '_', '-' or '.'")
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise TypeError(f"experiment {kind!r}: config must be a dataclass type, got {config!r}")
    clash = [f.name for f in dataclasses.fields(config) if f.name in RUN_KEYS]
    if clash:
        raise ValueError(
            f"experiment {kind!r}: config fields {clash} clash with the runner's keys {RUN_KEYS}"
        )
    if demo is not None:
        fields = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(demo) - fields - set(RUN_KEYS))
        if unknown:
            raise ValueError(
                f"experiment {kind!r}: demo overrides {unknown} are not keys of {config.__name__}"
            )

    def decorator(fn: F) -> F:
        old = REGISTRY.get(kind)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(
                f"experiment kind {kind!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}"
            )
        doc = (fn.__doc__ or "").strip().splitlines()
        REGISTRY[kind] = Experiment(
            kind=kind,
            fn=fn,
            config=config,
            doc=doc[0] if doc else "",
            demo=dict(demo) if demo is not None else None,
        )
        return fn

    return decorator


# ---------------------------------------------------------------------------------------------- storage
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
    owned = {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():  # a view: safetensors refuses it
            t = t.clone()
        owned[key] = t
    atomic_save_safetensors(path, owned)


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


def flat_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """Headline numbers as JSON: scalars, lists of names, or one level of {name: scalar} (e.g. a rate per
    alpha)."""
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


PAUSE_ENV = "INTERP_TEST_PAUSE_AFTER_STEPS"  # tests: after this many steps (run or loaded), wait for a signal


def _pause_for_tests(n_done: int) -> None:
    """With `INTERP_TEST_PAUSE_AFTER_STEPS=k`, sleep after the k-th step of this attempt, run or loaded (so a
    test can interrupt a run, or a rerun, at a known point with a real signal)."""
    wanted = os.environ.get(PAUSE_ENV)
    if wanted and n_done == int(wanted):
        logger.info("paused after %d step(s) (%s)", n_done, PAUSE_ENV)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.1)


# -------------------------------------------------------------------------------------------------- Run
class Run:
    """A run folder and the helpers an experiment writes through.

    `with Run(dir) as run:` flushes the batched static figures on exit; the runner does this for you.
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
        self._attempt: dict[str, Any] | None = None  # this process's entry of provenance["attempts"]
        self._start = time.perf_counter()

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
        if not NAME.match(name):
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
            logger.info("%s: step %s: done before, loading it", self.dir.name, name)
            self.steps_skipped.append(name)
            self._record_steps()
            _pause_for_tests(len(self.steps_run) + len(self.steps_skipped))
            return json.loads(json_path.read_text()) if json_path.exists() else _load_safetensors(st_path)
        logger.info("%s: step %s: running", self.dir.name, name)
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
        logger.info("%s: step %s: finished in %.1f s", self.dir.name, name, time.perf_counter() - start)
        self._record_steps()
        _pause_for_tests(len(self.steps_run) + len(self.steps_skipped))
        return stored

    def step_folder(self, name: str, fn: Callable[[Path], Any]) -> Path:
        """`step` for outputs that save themselves: `fn(folder)` fills `steps/<name>/` once (a half-written
        folder of an interrupted attempt is cleared first); later calls and resumed runs return the folder."""
        folder = self.dir / "steps" / self._check_name(name, "step")

        def fill() -> dict[str, str]:
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            fn(folder)
            return {"folder": name}

        self.step(name, fill)
        return folder

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
        static = [html.with_suffix(f".{f}") for f in formats if f in STATIC_FORMATS]
        if self._attempt is not None and not self.steps_run:  # nothing recomputed: the images stand
            static = [p for p in static if not p.exists()]
        self._pending_static += [(fig, p) for p in static]
        return html

    def take_static_figures(self) -> list[tuple[Any, Path]]:
        """The queued static image jobs, handed over (the caller writes them, e.g. many runs in one batch)."""
        jobs, self._pending_static = self._pending_static, []
        return jobs

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
            except (TypeError, ValueError) as err:  # pyarrow's ArrowTypeError / ArrowInvalid: mixed types
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

    def begin_attempt(self, experiment: str, **facts: Any) -> Path:
        """Start this process's attempt in `provenance.json`: the first attempt records the environment; a
        later one (resuming, or rerunning a finished folder) keeps the earlier record and adds its own entry.
        `facts` (e.g. the preset and model map the config was resolved with) go into both."""
        path = self.dir / "provenance.json"
        previous: dict[str, Any] | None = None
        if path.exists():
            try:
                previous = json.loads(path.read_text())
            except json.JSONDecodeError:
                previous = None
        fresh = collect_provenance(seed=self.seed, device=self.device)
        record = previous if isinstance(previous, dict) else {**fresh, "experiment": experiment, **facts}
        attempts = record.setdefault("attempts", [])
        self._attempt = {
            "started": fresh["time"],
            "status": "running",
            "command": fresh["command"],
            "git": fresh["git"],
            **facts,
            "steps_run": self.steps_run,
            "steps_skipped": self.steps_skipped,
        }
        attempts.append(self._attempt)
        self._provenance = record
        self._start = time.perf_counter()
        return self._write_record()

    def end_attempt(self, status: str, **extra: Any) -> Path:
        """End this process's attempt with `status` (finished | failed | interrupted) and `extra` facts."""
        if self._attempt is None:
            raise RuntimeError("end_attempt() before begin_attempt()")
        ended = collect_provenance(seed=self.seed, device=self.device)["time"]
        self._attempt.update(
            status=status, ended=ended, elapsed_s=round(time.perf_counter() - self._start, 3), **extra
        )
        if status == "interrupted":
            self._attempt["interrupted_at"] = ended
        return self._write_record()

    def _record_steps(self) -> None:
        if self._attempt is not None:
            self._write_record()

    def _write_record(self) -> Path:
        """Write provenance.json: the top-level status, elapsed time and step lists are those of the latest
        finished attempt when there is one (a rerun never overwrites a finished record), else of the latest."""
        assert self._provenance is not None
        record = self._provenance
        attempts = record["attempts"]
        finished = [a for a in attempts if a["status"] == "finished"]
        shown = finished[-1] if finished else attempts[-1]
        for key in ("error", "signal", "interrupted_at", "elapsed_s"):
            record.pop(key, None)
        record.update(
            status=shown["status"],
            steps_run=list(shown["steps_run"]),
            steps_skipped=list(shown["steps_skipped"]),
            **{k: shown[k] for k in ("error", "signal", "interrupted_at", "elapsed_s") if k in shown},
        )
        return atomic_write_text(self.dir / "provenance.json", json.dumps(record, indent=1, default=str))

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
        return atomic_write_text(self.dir / "results.json", json.dumps(flat_results(results), indent=1))

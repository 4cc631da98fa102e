"""`interp demo`: the zoo card, then every experiment kind run with its demo overrides (small and quick), each
into `out_dir/<kind>/` as an ordinary run folder (so a second demo into the same folder resumes); at the end a
table lists the figures written.

A kind takes part by passing `demo={...overrides...}` to `register_experiment`; a kind whose models are zoo
entries that are not built is skipped with a note. A failing kind stops the demo with `DemoStepError` (the CLI
exits non-zero); nothing is swallowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

FIGURE_SUFFIXES = (".html", ".png", ".pdf", ".svg")
DEMO_FORMATS = ("html", "png")  # the demo's figures: interactive HTML and a PNG preview
ZOO_STEP = "zoo"


class DemoStepError(RuntimeError):
    """A demo step failed; `step` names it and the original error is the `__cause__`."""

    def __init__(self, step: str, err: BaseException) -> None:
        super().__init__(f"demo step {step!r} failed: {type(err).__name__}: {err}")
        self.step = step


def demo_kinds() -> list[str]:
    """The experiment kinds with demo overrides, in name order (imports their modules)."""
    from interp.experiments import experiment_kinds, get_experiment

    return [k for k in experiment_kinds() if get_experiment(k).demo is not None]


def demo_config(kind: str) -> dict[str, Any]:
    """The config `interp demo` runs for `kind`: its defaults with the kind's demo overrides."""
    from interp.experiments import get_experiment

    return {"experiment": kind, **(get_experiment(kind).demo or {})}


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def missing_models(config: dict[str, Any]) -> list[str]:
    """The zoo entries a config names (its kind's defaults filled in) that are not built; read before the
    config is checked, so that a demo without its organisms says what to build instead of failing."""
    from interp import zoo_location
    from interp.experiments import get_experiment

    values: dict[str, Any] = {}
    for f in dataclasses.fields(get_experiment(config["experiment"]).config):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    values |= config
    return zoo_location.missing(*dict.fromkeys(_strings(values)))


def _figures_since(folder: Path, since: float) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in FIGURE_SUFFIXES and p.is_file() and p.stat().st_mtime >= since
    )


def _results_table(kind: str, results: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"{kind}: results", show_header=False)
    for key, value in results.items():
        if isinstance(value, dict):
            value = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
            )
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


def run_demo(out_dir: str | Path, *, only: Sequence[str] | None = None) -> list[Path]:
    """Run the zoo step and every demo kind (all, or those named in `only`) into `out_dir/<step>/`; return the
    figures written. Raises `DemoStepError` at the first failing step."""
    from rich.console import Console
    from rich.table import Table

    from interp.plotting.export import write_static
    from interp.runner import run_experiment

    console = Console()
    out = Path(out_dir)
    steps = [ZOO_STEP, *demo_kinds()]
    if only:
        unknown = sorted(set(only) - set(steps))
        if unknown:
            raise ValueError(f"unknown demo step(s) {unknown}; steps: {', '.join(steps)}")
        steps = [s for s in steps if s in only]
    figures: list[tuple[str, Path]] = []
    static_jobs: list[tuple[Any, Path]] = []  # every kind's PNGs, written in one batch at the end
    for i, step in enumerate(steps, 1):
        console.rule(f"[bold]{i}/{len(steps)} {step}[/bold]")
        folder = out / step
        start = time.time() - 1.0  # mtime granularity
        try:
            if step == ZOO_STEP:
                folder.mkdir(parents=True, exist_ok=True)
                zoo_step(folder)
                continue
            config = demo_config(step)
            missing = missing_models(config)
            if missing:
                console.print(
                    f"{step} needs {', '.join(missing)}: build them with `interp zoo build`; skipped"
                )
                continue
            results = run_experiment(config, folder, figure_formats=DEMO_FORMATS, static_figures=static_jobs)
        except Exception as err:
            raise DemoStepError(step, err) from err
        console.print(_results_table(step, results))
        figures += [(step, p) for p in _figures_since(folder, start)]
        figures += [(step, p) for _, p in static_jobs if folder in p.parents and (step, p) not in figures]
    write_static(static_jobs)
    table = Table(title=f"Figures written under {out}", show_lines=False)
    table.add_column("step")
    table.add_column("figure")
    for name, path in sorted(figures):
        table.add_row(name, str(path))
    if not figures:
        table.add_row("-", "(none)")
    console.print(table)
    return [p for _, p in sorted(figures)]


def zoo_entry(function: str) -> Callable[..., Any] | None:
    """`interp.zoo.<function>` (its entry points: `cli_list`, `build`), or None in a checkout without a zoo.

    Errors raised while importing an existing zoo propagate.
    """
    try:
        zoo = importlib.import_module("interp.zoo")
    except ModuleNotFoundError as err:
        if err.name != "interp.zoo":
            raise
        return None
    return getattr(zoo, function, None)


def zoo_step(out: Path) -> None:
    """The model-organism zoo card, or a note that the zoo is not built."""
    cli_list = zoo_entry("cli_list")
    if cli_list is None:
        print("The model-organism zoo is not built: this checkout has no interp.zoo.cli_list() yet.")
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cli_list()
    card = buffer.getvalue()
    (out / "zoo_card.txt").write_text(card)
    print(card, end="")

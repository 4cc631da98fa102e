"""`interp demo`: every capability's demo step, in order, each writing into `out_dir/<step>/`.

A capability adds a step with `@register_demo_step("patching", order=30)` on a function
`fn(out: Path) -> None` in a module listed in `DEMO_MODULES` (imported only when the demo runs). A failing
step stops the demo with `DemoStepError` (the CLI exits non-zero); nothing is swallowed. At the end a table
lists the figures written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[[Path], None])

# Modules whose import registers demo steps; capabilities add theirs (the zoo step lives here).
DEMO_MODULES: tuple[str, ...] = (
    "interp.patching.experiment",
    "interp.selection.experiment",
    "interp.subspace.experiment",
    "interp.finetuning.experiments",
    "interp.circuits.experiments",
)
FIGURE_SUFFIXES = (".html", ".png", ".pdf", ".svg")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoStep:
    """One demo step: `fn(out)` writes into `out`; steps run by ascending `order`, then name."""

    name: str
    order: int
    fn: Callable[[Path], None]
    doc: str = ""


class DemoStepError(RuntimeError):
    """A demo step failed; `step` names it and the original error is the `__cause__`."""

    def __init__(self, step: str, err: BaseException) -> None:
        super().__init__(f"demo step {step!r} failed: {type(err).__name__}: {err}")
        self.step = step


_STEPS: dict[str, DemoStep] = {}


def register_demo_step(name: str, order: int) -> Callable[[F], F]:
    """Register `fn(out: Path) -> None` as demo step `name` (a decorator); `order` places it (zoo = 0)."""

    def decorator(fn: F) -> F:
        old = _STEPS.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(
                f"demo step {name!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}"
            )
        doc = (fn.__doc__ or "").strip().splitlines()
        _STEPS[name] = DemoStep(name=name, order=order, fn=fn, doc=doc[0] if doc else "")
        return fn

    return decorator


def demo_steps() -> list[DemoStep]:
    """All demo steps in run order (imports `DEMO_MODULES` first)."""
    for module in DEMO_MODULES:
        importlib.import_module(module)
    return sorted(_STEPS.values(), key=lambda s: (s.order, s.name))


def _figures_since(folder: Path, since: float) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in FIGURE_SUFFIXES and p.is_file() and p.stat().st_mtime >= since
    )


def run_demo(out_dir: str | Path, *, only: Sequence[str] | None = None) -> list[Path]:
    """Run the demo steps (all, or those named in `only`) into `out_dir/<step>/`; return the figures written.

    Raises `DemoStepError` at the first failing step.
    """
    from rich.console import Console
    from rich.table import Table

    console = Console()
    out = Path(out_dir)
    steps = demo_steps()
    if only:
        unknown = sorted(set(only) - {s.name for s in steps})
        if unknown:
            raise ValueError(f"unknown demo step(s) {unknown}; steps: {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if s.name in only]
    figures: list[tuple[str, Path]] = []
    for i, step in enumerate(steps, 1):
        console.rule(f"[bold]{i}/{len(steps)} {step.name}[/bold]" + (f" — {step.doc}" if step.doc else ""))
        folder = out / step.name
        folder.mkdir(parents=True, exist_ok=True)
        start = time.time() - 1.0  # mtime granularity
        try:
            step.fn(folder)
        except Exception as err:
            raise DemoStepError(step.name, err) from err
        figures += [(step.name, p) for p in _figures_since(folder, start)]
    table = Table(title=f"Figures written under {out}", show_lines=False)
    table.add_column("step")
    table.add_column("figure")
    for name, path in figures:
        table.add_row(name, str(path))
    if not figures:
        table.add_row("-", "(none yet: capabilities add their demo steps as they land)")
    console.print(table)
    return [p for _, p in figures]


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


@register_demo_step("zoo", order=0)
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

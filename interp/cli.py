"""The `interp` command: `run`, `demo`, `zoo list|build`, `bench`.

Importing this module loads typer only; every command imports what it needs when it runs. There is no `-d`
short flag anywhere: nnsight reads `-d` from `sys.argv` at import and would switch on its debug mode.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

REPO_ROOT = Path(__file__).resolve().parents[1]

app = typer.Typer(
    name="interp",
    help="interp: a mechanistic-interpretability workbench (run experiments, the demo, the model zoo).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
zoo_app = typer.Typer(help="The model-organism zoo: list what is built, or build it.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@app.command()
def run(
    config: Annotated[
        Path, typer.Argument(help="An experiment folder holding config.yaml, or a config file.")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run folder (default: runs/<experiment name>); resumes if it exists."),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu | cuda | cuda:N (overrides the config).")
    ] = None,
) -> None:
    """Run an experiment config into a run folder (config, provenance, results, figures); resumable."""
    from rich.console import Console
    from rich.table import Table

    from interp.config import ConfigError
    from interp.runner import run_experiment

    name = config.name if config.is_dir() else config.stem
    out = out if out is not None else Path("runs") / name
    try:
        results = run_experiment(config, out, device=device)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        raise _fail(str(err)) from err
    table = Table(title=f"results ({out / 'results.json'})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs.")] = Path("out/demo"),
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this step (repeatable).")] = None,
) -> None:
    """Run every capability's demo step in order and list the figures written."""
    from interp.demo import DemoStepError, run_demo

    try:
        run_demo(out, only=only)
    except DemoStepError as err:
        import traceback

        traceback.print_exception(err.__cause__ or err, file=sys.stderr)
        raise _fail(str(err)) from err


def _zoo(function: str) -> Callable[..., Any]:
    """`interp.zoo.<function>`, or exit non-zero with a message where this checkout has none."""
    from interp.demo import zoo_entry

    entry = zoo_entry(function)
    if entry is None:
        raise _fail(f"the model-organism zoo is not part of this checkout yet (no interp.zoo.{function}())")
    return entry


@zoo_app.command("list")
def zoo_list() -> None:
    """Print the zoo card: the organisms, what each was trained on, and whether it is built."""
    _zoo("cli_list")()


@zoo_app.command("build")
def zoo_build(
    only: Annotated[
        str | None, typer.Option("--only", help="Build just this organism (and what it needs).")
    ] = None,
) -> None:
    """Train and save the model organisms that are missing (minutes on CPU)."""
    _zoo("build")(only=only)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="A script in benchmarks/ (without .py); extra arguments pass through.")
    ],
) -> None:
    """Run benchmarks/<name>.py with this Python; its exit status is the command's."""
    folder = REPO_ROOT / "benchmarks"
    script = folder / f"{name}.py"
    if not script.is_file():
        found = (
            sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))
            if folder.is_dir()
            else []
        )
        raise _fail(f"no benchmark {script}; available: {', '.join(found) or '(none yet)'}")
    code = subprocess.call([sys.executable, str(script), *ctx.args], cwd=REPO_ROOT)
    if code:
        raise typer.Exit(code)


# loggers of dependencies that chat at INFO or below (bm25s even sets DEBUG at import; see selection.baselines)
THIRD_PARTY_LOGGERS = (
    "bm25s",
    "datasets",
    "filelock",
    "fsspec",
    "httpx",
    "huggingface_hub",
    "kaleido",
    "choreographer",
    "matplotlib",
    "nnsight",
    "PIL",
    "sae_lens",
    "torch",
    "transformer_lens",
    "transformers",
    "urllib3",
)


def configure_logging(level: int = logging.INFO) -> logging.Handler:
    """One rich handler on the root logger, at `level`: interp's records at `level` and above, every other
    logger's from WARNING (the root's level). A library's plain `logging.info(...)` (TransformerLens) then finds
    a root handler and installs no second one, so each line prints once."""
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, show_time=False, console=Console(stderr=True))
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("interp")
    ours.setLevel(level)
    for old in list(ours.handlers):
        ours.removeHandler(old)
    ours.propagate = True
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def main() -> None:
    """Console-script entry point (`interp`): logging configured once (INFO from interp), then the typer app."""
    configure_logging()
    app()

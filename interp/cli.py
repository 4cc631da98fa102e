"""The `interp` command: `run`, `demo`, `zoo list|build`, `bench`.

Importing this module loads typer only; every command imports what it needs when it runs. There is no `-d`
short flag anywhere: nnsight reads `-d` from `sys.argv` at import and would switch on its debug mode.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
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


DEBUG = {"on": False}  # `--debug`: let errors raise with their traceback


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """interp: a mechanistic-interpretability workbench (run experiments, the demo, the model zoo)."""
    DEBUG["on"] = debug


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the input was wrong (a config, a path, a model name): one line, exit status 2."""
    from interp.config import ConfigError
    from interp.models.load import ModelLoadError

    return (
        ConfigError,
        ModelLoadError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        PermissionError,
    )


@contextlib.contextmanager
def _one_line_errors(debug: bool, out: Path | None = None) -> Iterator[None]:
    """User errors as `error: <message>` (exit 2), other errors as one line with a hint (exit 1), an interrupt
    as a note on how to resume (exit 128 + signal); with `--debug`, errors keep their traceback."""
    from interp.runner import RunInterrupted

    try:
        yield
    except (RunInterrupted, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, RunInterrupted) else signal.SIGINT
        where = f"; {out} keeps its finished steps: run the same command again to resume" if out else ""
        typer.secho(f"interrupted by {signal.Signals(signum).name}{where}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(128 + int(signum)) from None
    except typer.Exit:
        raise
    except _user_errors() as err:
        if debug:
            raise
        raise _fail(str(err), 2) from None
    except Exception as err:
        if debug:
            raise
        raise _fail(f"{type(err).__name__}: {err} (run with --debug for the traceback)", 1) from None


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
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="Lay this entry of the config's `presets:` over it (e.g. paper)."),
    ] = None,
    model_map: Annotated[
        list[str] | None,
        typer.Option(
            "--model-map",
            help="NAME=FOLDER: every config value equal to NAME (a hub id) becomes FOLDER (repeatable).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE: set one config key, VALUE read as YAML (repeatable)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Run an experiment config into a run folder (config, provenance, results, figures); resumable."""
    from rich.console import Console
    from rich.table import Table

    from interp.runner import parse_assignments, run_experiment

    name = config.name if config.is_dir() else config.stem
    out = out if out is not None else Path("runs") / name
    with _one_line_errors(debug or DEBUG["on"], out):
        results = run_experiment(
            config,
            out,
            device=device,
            preset=preset,
            overrides=parse_assignments(set_, flag="--set", parse_values=True),
            model_map=parse_assignments(model_map, flag="--model-map", parse_values=False),
        )
    table = Table(title=f"results ({out / 'results.json'})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs.")] = Path("out/demo"),
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Run only this step: zoo or a kind (repeatable).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """The zoo card, then every experiment kind with its demo overrides; lists the figures written."""
    from interp.demo import DemoStepError, run_demo

    with _one_line_errors(debug or DEBUG["on"], out):
        try:
            run_demo(out, only=only)
        except DemoStepError as err:
            if debug or DEBUG["on"]:
                raise
            raise _fail(f"{err} (run with --debug for the traceback)", 1) from None
        except ValueError as err:  # an unknown --only step
            raise _fail(str(err), 2) from None


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
    build = _zoo("build")
    with _one_line_errors(DEBUG["on"]):
        try:
            build(only=only)
        except KeyError as err:  # the zoo's ZooError: an unknown name
            raise _fail(str(err), 2) from None


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

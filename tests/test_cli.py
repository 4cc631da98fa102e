"""The `interp` command line: help, run, demo, zoo, bench (in-process through typer's CliRunner)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from interp import cli as cli_module
from interp import demo as demo_module
from interp.cli import app
from interp.runner import Run, register_experiment

cli = CliRunner()


@dataclasses.dataclass(frozen=True, kw_only=True)
class EchoConfig:
    value: float = 1.5


@register_experiment("_test_cli_echo", config=EchoConfig)
def echo_experiment(cfg: EchoConfig, run: Run) -> dict[str, float]:
    """Return the configured value."""
    return {"value": run.step("echo", lambda: cfg.value)}


def test_help_lists_commands_and_no_d_flag() -> None:
    result = cli.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "demo", "zoo", "bench"):
        assert command in result.output
    click_app = typer.main.get_command(app)

    def options(command) -> list[str]:
        opts = [o for p in command.params for o in (*p.opts, *p.secondary_opts)]
        for sub in getattr(command, "commands", {}).values():
            opts += options(sub)
        return opts

    assert "-d" not in options(click_app)  # nnsight reads -d from sys.argv


def test_run_writes_a_run_folder(tmp_path: Path) -> None:
    config = tmp_path / "echo.yaml"
    config.write_text("experiment: _test_cli_echo\nvalue: 2.5\n")
    out = tmp_path / "run"
    result = cli.invoke(app, ["run", str(config), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "2.5" in result.output
    assert json.loads((out / "results.json").read_text()) == {"value": 2.5}
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "provenance.json", "results.json", "steps"}


def test_run_reports_config_errors_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("experiment: _test_cli_echo\nvalu: 2\n")
    result = cli.invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert (
        result.exit_code == 2 and "unknown key 'valu'" in result.output and "Traceback" not in result.output
    )
    config.write_text("experiment: no_such_kind\n")
    result = cli.invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Valid kinds:" in result.output


def test_demo_exits_zero_and_lists_figures(tmp_path: Path) -> None:
    result = cli.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "zoo" in result.output and "Figures written" in result.output


@dataclasses.dataclass(frozen=True, kw_only=True)
class BoomConfig:
    fail: bool = False


def boom_experiment(cfg: BoomConfig, run: Run) -> dict[str, float]:
    if cfg.fail:
        raise RuntimeError("kaput")
    return {}


def test_failing_demo_step_exits_nonzero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from interp.experiments.api import REGISTRY, Experiment

    boom = Experiment(kind="_test_cli_boom", fn=boom_experiment, config=BoomConfig, demo={"fail": True})
    monkeypatch.setitem(REGISTRY, "_test_cli_boom", boom)  # in the demo for this test only
    result = cli.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--only", "_test_cli_boom"])
    assert result.exit_code == 1
    assert "demo step '_test_cli_boom' failed: RuntimeError: kaput" in result.output


def test_demo_runs_every_kind_with_its_demo_overrides() -> None:
    from interp.experiments import module_kinds

    assert set(module_kinds()) <= set(demo_module.demo_kinds())
    assert demo_module.demo_config("ioi_patching")["n_prompts"] < 32


def test_zoo_without_zoo_module_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "interp.zoo", None)  # as on a checkout without the zoo
    for args in (["zoo", "list"], ["zoo", "build", "--only", "x"]):
        result = cli.invoke(app, args)
        assert result.exit_code == 1 and "interp.zoo" in result.output
    result = cli.invoke(app, ["demo", "--out", str(tmp_path), "--only", "zoo"])
    assert result.exit_code == 0 and "zoo is not built" in result.output


def test_zoo_commands_delegate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("interp.zoo")
    fake.cli_list = lambda: print("organism/base  gpt2  built")
    fake.build = lambda only=None: calls.append(only)
    monkeypatch.setitem(sys.modules, "interp.zoo", fake)
    assert cli.invoke(app, ["zoo", "build", "--only", "organism/base"]).exit_code == 0
    assert calls == ["organism/base"]
    result = cli.invoke(app, ["demo", "--out", str(tmp_path), "--only", "zoo"])
    assert result.exit_code == 0 and "organism/base" in result.output
    assert (tmp_path / "zoo" / "zoo_card.txt").read_text() == "organism/base  gpt2  built\n"


def test_bench_runs_a_script_with_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "echo.py").write_text("import sys\nsys.exit(int(sys.argv[1]))\n")
    monkeypatch.setattr(cli_module, "REPO_ROOT", tmp_path)
    assert cli.invoke(app, ["bench", "echo", "0"]).exit_code == 0
    assert cli.invoke(app, ["bench", "echo", "3"]).exit_code == 3
    result = cli.invoke(app, ["bench", "no_such_benchmark"])
    assert result.exit_code == 1 and "no benchmark" in result.output and "available: echo" in result.output


def test_console_entry_point_demo(tmp_path: Path) -> None:
    """The console entry point runs a demo step in a fresh process (the whole demo is tested in-process above)."""
    cmd = [
        sys.executable,
        "-c",
        "from interp.cli import main; main()",
        "demo",
        "--only",
        "ioi_patching",
        "--out",
        str(tmp_path / "d"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "ioi_patching" / "figures" / "patch_resid_pre.html").is_file()


def test_cli_logs_each_line_once_and_no_debug(tmp_path: Path) -> None:
    """A real `interp run` (TransformerLens load: a root `logging.info`; bm25s: DEBUG at import) prints every
    log line once, no DEBUG line and no weight-loading bar."""
    config = tmp_path / "sel.yaml"
    config.write_text(
        "experiment: sae_data_selection\nmodel: tiny:gpt2\nsae: random\npool_size: 40\ntarget_share: 0.1\n"
        "n_targets: 2\nratios: [0.1]\nmain_ratio: 0.1\nmethods: [sae_jaccard, bm25]\n"
        "downstream_methods: []\n"
    )
    cmd = [
        sys.executable,
        "-c",
        "from interp.cli import main; main()",
        "run",
        str(config),
        "--out",
        str(tmp_path / "r"),
    ]
    env = {**os.environ, "INTERP_FIGURE_FORMATS": "html", "COLUMNS": "200"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    lines = [line.rstrip() for line in done.stderr.splitlines() if line.strip()]
    assert any("step scores: finished" in line for line in lines), lines
    repeated = [line for line, n in Counter(lines).items() if n > 1]
    assert not repeated, repeated
    assert not [line for line in lines if "DEBUG" in line], lines
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr


CLI_BAD_INPUTS = [
    ("experiment: [_test_cli_echo\n", "not valid YAML (line 2"),
    ("experiment: !!python/object/apply:os.getcwd []\n", "no Python objects"),
    ("experiment: ioi_patching\nexperiment: tuco\n", "duplicate key 'experiment'"),
    ("experiment: ioi_patching\nn_prompts: 0\n", "ioi_patching.n_prompts: 0 must be > 0"),
    ("experiment: ioi_patching\ntemplate: 99\n", "ioi_patching.template: 99 is not valid"),
    ("experiment: ioi_patching\nbackend: jax\n", "ioi_patching.backend: 'jax' is not valid"),
    ("experiment: ioi_patching\nmodel: organism/nope\n", "'organism/nope' is not a built zoo entry"),
    ("experiment: ioi_patching\ncomponents: [resid_pre, bogus]\n", "'bogus' that is not valid"),
    ("experiment: ioi_patching\nseed: -1\n", "seed: -1 must be >= 0"),
    ("experiment: _test_cli_echo\nvalue: [1, 2]\n", "value: expected float"),
    ("experiment: _test_cli_echo\nvalu: 2\n", "Did you mean 'value'?"),
    ("experiment: ioi_patchin\n", "Did you mean 'ioi_patching'"),
    ("- just a list\n", "expected a mapping with an `experiment:` key"),
]


@pytest.mark.parametrize(("text", "message"), CLI_BAD_INPUTS)
def test_user_errors_are_one_line_with_exit_status_2(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = cli.invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and message in " ".join(lines), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written or loaded


def test_path_errors_and_debug_tracebacks(tmp_path: Path) -> None:
    config = tmp_path / "echo.yaml"
    config.write_text("experiment: _test_cli_echo\n")
    (tmp_path / "a_file").write_text("x")
    for args, message in (
        (["run", str(config), "--out", str(tmp_path / "a_file")], "is a file, not a folder"),
        (["run", str(tmp_path / "missing.yaml")], "no experiment config at"),
    ):
        result = cli.invoke(app, args)
        assert result.exit_code == 2 and result.output.startswith("error: ") and message in result.output
        assert "Traceback" not in result.output
    result = cli.invoke(app, ["run", str(config), "--out", str(tmp_path / "a_file"), "--debug"])
    assert result.exit_code != 0 and isinstance(result.exception, Exception)
    assert "is a file" in str(result.exception)  # raised with its traceback
    result = cli.invoke(app, ["--debug", "run", str(config), "--out", str(tmp_path / "a_file")])
    assert "is a file" in str(result.exception)

"""The experiment runner: registry, config checks, run folder, resume, atomic writes, provenance."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from interp import files
from interp.config import ConfigError, config_from_dict, config_to_dict
from interp.runner import Run, UnknownExperimentError, get_experiment, register_experiment, run_experiment

CALLS: Counter[str] = Counter()
CRASH_AFTER: dict[str, str] = {}  # {"step": name}: raise after that step (a crashed run, to be resumed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepsConfig:
    n: int = 3
    scale: float = 1.0


@register_experiment("_test_steps", config=StepsConfig)
def steps_experiment(cfg: StepsConfig, run: Run) -> dict[str, float]:
    """Three steps that count their calls."""
    values = []
    for i in range(cfg.n):
        name = f"s{i}"

        def compute(i: int = i, name: str = name) -> dict[str, float]:
            CALLS[name] += 1
            return {"value": cfg.scale * i}

        values.append(run.step(name, compute)["value"])
        if CRASH_AFTER.get("step") == name:
            raise RuntimeError(f"crash after {name}")
    return {"total": sum(values), "n": cfg.n, "seed": run.seed}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def test_resume_skips_finished_steps(tmp_path: Path) -> None:
    config = {"experiment": "_test_steps", "n": 3, "scale": 2}
    first = run_experiment(config, tmp_path / "run")
    assert first == {"total": 6.0, "n": 3, "seed": 0}
    assert CALLS == {"s0": 1, "s1": 1, "s2": 1}
    second = run_experiment(config, tmp_path / "run")
    assert second == first
    assert CALLS == {"s0": 1, "s1": 1, "s2": 1}  # nothing recomputed
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert (
        prov["status"] == "finished"
        and prov["steps_run"] == []
        and prov["steps_skipped"] == ["s0", "s1", "s2"]
    )


def test_resume_after_a_crash_redoes_only_unfinished_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    monkeypatch.setitem(CRASH_AFTER, "step", "s1")
    with pytest.raises(RuntimeError, match="crash after s1"):
        run_experiment({"experiment": "_test_steps"}, out)
    assert json.loads((out / "provenance.json").read_text())["status"] == "failed"
    assert not (out / "results.json").exists()
    monkeypatch.delitem(CRASH_AFTER, "step")
    assert run_experiment({"experiment": "_test_steps"}, out)["total"] == 3.0
    assert CALLS == {"s0": 1, "s1": 1, "s2": 1}


def test_other_config_in_same_folder_is_refused(tmp_path: Path) -> None:
    run_experiment({"experiment": "_test_steps", "n": 1}, tmp_path / "run")
    with pytest.raises(ConfigError, match="n: 1 -> 2"):
        run_experiment({"experiment": "_test_steps", "n": 2}, tmp_path / "run")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    with pytest.raises(FileExistsError, match="not a run folder"):
        run_experiment({"experiment": "_test_steps"}, tmp_path / "other")


def test_config_from_folder_and_resolved_config_written(tmp_path: Path) -> None:
    folder = tmp_path / "experiments" / "demo"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("experiment: _test_steps\nn: 2\nseed: 7\ndescription: two steps\n")
    assert run_experiment(folder, tmp_path / "run")["seed"] == 7
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written == {
        "experiment": "_test_steps",
        "seed": 7,
        "device": "cpu",
        "description": "two steps",
        "n": 2,
        "scale": 1.0,
    }


def test_unknown_kind_lists_valid_kinds(tmp_path: Path) -> None:
    with pytest.raises(
        UnknownExperimentError, match=r"Did you mean '_test_steps'.*Valid kinds: .*_test_steps"
    ):
        get_experiment("_test_step")
    with pytest.raises(ConfigError, match="no `experiment:` key"):
        run_experiment({"n": 2}, tmp_path / "run")


def test_unknown_config_key_names_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'nn'.*Did you mean 'n'.*Valid keys: n, scale\."):
        run_experiment({"experiment": "_test_steps", "nn": 3}, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # checked before anything is written
    with pytest.raises(ConfigError, match="device: 'gpu' is not a device"):
        run_experiment({"experiment": "_test_steps"}, tmp_path / "run", device="gpu")


def test_kinds_are_found_by_module_name_and_imported_lazily() -> None:
    """Every module of interp.experiments is a kind of the same name, listed without importing it."""
    code = (
        "import sys\n"
        "from interp.experiments import experiment_kinds, get_experiment\n"
        "kinds = experiment_kinds()\n"
        "assert {'ioi_patching', 'ioi_circuit', 'circuit_reuse', 'finetune_cmap', 'tuco', 'context_knob',"
        " 'sae_data_selection'} <= set(kinds), kinds\n"
        "assert not [m for m in sys.modules if m.startswith('interp.experiments.') and m != 'interp.experiments.api']\n"
        "assert 'torch' not in sys.modules\n"
        "exp = get_experiment('tuco')\n"
        "assert exp.kind == 'tuco' and exp.fn.__module__ == 'interp.experiments.tuco' and exp.demo\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_register_rejects_runner_keys_and_duplicates() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Bad:
        seed: int = 0

    with pytest.raises(ValueError, match="clash with the runner's keys"):
        register_experiment("_test_bad", config=Bad)
    with pytest.raises(ValueError, match="already registered"):
        register_experiment("_test_steps", config=StepsConfig)(lambda cfg, run: {})


def test_results_json_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(tmp_path)
    run.write_results({"a": 1.0, "b": torch.tensor(2.5), "ok": True, "nan": float("nan")})
    assert json.loads((tmp_path / "results.json").read_text()) == {
        "a": 1.0,
        "b": 2.5,
        "ok": True,
        "nan": None,
    }
    before = (tmp_path / "results.json").read_text()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        run.write_results({"a": 2.0})
    assert (tmp_path / "results.json").read_text() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind
    monkeypatch.undo()
    with pytest.raises(TypeError, match="results must be scalars"):
        run.write_results({"a": [1, 2]})
    with pytest.raises(TypeError, match="'a.x' is a dict"):
        run.write_results({"a": {"x": {"deeper": 1}}})
    run.write_results({"by_alpha": {0.5: np.float32(0.25), "1": float("inf")}})
    assert json.loads((tmp_path / "results.json").read_text()) == {"by_alpha": {"0.5": 0.25, "1": None}}


def test_provenance_fields(tmp_path: Path) -> None:
    run_experiment({"experiment": "_test_steps", "n": 1, "seed": 3}, tmp_path / "run")
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    for key in ("time", "seed", "device", "python", "git", "packages", "experiment", "status", "elapsed_s"):
        assert key in prov, key
    assert prov["seed"] == 3 and prov["device"] == "cpu" and prov["experiment"] == "_test_steps"
    assert set(prov["packages"]) >= {"torch", "transformers", "transformer_lens", "nnsight", "sae_lens"}
    assert prov["packages"]["torch"] == torch.__version__
    assert set(prov["git"]) == {"commit", "dirty"}


def test_tensor_steps_and_tensor_files(tmp_path: Path) -> None:
    run = Run(tmp_path)
    base = torch.arange(12.0).reshape(3, 4)
    out = run.step("acts", lambda: {"row0": base[0], "row1": base[1], "all": base})  # views share storage
    assert (tmp_path / "steps" / "acts.safetensors").exists()
    again = Run(tmp_path).step("acts", lambda: pytest.fail("recomputed a finished step"))
    for key in ("row0", "row1", "all"):
        torch.testing.assert_close(again[key], out[key])
    assert run.step("arr", lambda: {"x": torch.ones(2).numpy(), "t": (1, 2)}) == {
        "x": [1.0, 1.0],
        "t": [1, 2],
    }
    run.save_tensors("dirs", {"d": torch.eye(2, dtype=torch.bfloat16)})
    assert run.load_tensors("dirs")["d"].dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError, match="saved: dirs"):
        run.load_tensors("missing")
    with pytest.raises(TypeError, match="neither JSON-able"):
        run.step("bad", lambda: object())
    assert not run.has_step("bad")


def test_tables_and_progress(tmp_path: Path) -> None:
    run = Run(tmp_path)
    paths = run.table([{"layer": 0, "effect": 0.5}, {"layer": 1, "effect": -0.25}], "effects")
    assert [p.name for p in paths] == ["effects.csv", "effects.parquet"]
    assert (tmp_path / "tables" / "effects.csv").read_text().splitlines()[0] == "layer,effect"
    assert list(run.progress(range(3), "counting")) == [0, 1, 2]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    layers: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    lr: float
    inner: Inner = Inner()
    name: str | None = None


def test_config_from_dict_checks_and_coerces() -> None:
    cfg = config_from_dict(Outer, {"lr": "1e-3", "inner": {"layers": [1, 2]}})
    assert cfg == Outer(lr=1e-3, inner=Inner(layers=(1, 2)))
    assert config_to_dict(cfg) == {"lr": 1e-3, "inner": {"layers": [1, 2]}, "name": None}
    with pytest.raises(ConfigError, match="missing required key"):
        config_from_dict(Outer, {})
    with pytest.raises(ConfigError, match=r"inner: unknown key 'layer'.*Did you mean 'layers'"):
        config_from_dict(Outer, {"lr": 1, "inner": {"layer": [1]}})
    with pytest.raises(ConfigError, match=r"inner.layers\[1\]: expected int"):
        config_from_dict(Outer, {"lr": 1, "inner": {"layers": [1, "x"]}})


def test_importing_runner_and_cli_loads_no_backend() -> None:
    code = (
        "import sys, interp.runner, interp.cli, interp.demo, interp.config\n"
        "heavy = [m for m in ('torch', 'transformer_lens', 'nnsight', 'sae_lens', 'transformers', 'plotly')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


SLOW_MODULE = """
import dataclasses
from interp.experiments.api import register_experiment

@dataclasses.dataclass(frozen=True, kw_only=True)
class C:
    n: int = 3

@register_experiment("_test_signals", config=C)
def run(cfg, run):
    return {"total": sum(run.step(f"s{i}", lambda i=i: i) for i in range(cfg.n))}
"""


def _start(tmp_path: Path, out: Path, pause: int) -> subprocess.Popen:
    (tmp_path / "signals_exp.py").write_text(SLOW_MODULE)
    (tmp_path / "cfg.yaml").write_text("experiment: _test_signals\n")
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); import signals_exp; from interp.cli import main; main()"
    cmd = [sys.executable, "-c", code, str(tmp_path), "run", str(tmp_path / "cfg.yaml"), "--out", str(out)]
    env = {**os.environ, "INTERP_TEST_PAUSE_AFTER_STEPS": str(pause)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(out: Path, n: int, proc: subprocess.Popen, attempt: int = 0) -> dict:
    """Wait until attempt number `attempt` has done `n` steps (it then pauses)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            prov = json.loads((out / "provenance.json").read_text())
            current = prov["attempts"][attempt]
            if len(current["steps_run"]) + len(current["steps_skipped"]) >= n:
                return prov
        except (FileNotFoundError, json.JSONDecodeError, KeyError, IndexError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no pause after {n} steps: {proc.communicate()[1][-2000:]}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_marks_the_run_interrupted_and_rerunning_resumes(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "run"
    proc = _start(tmp_path, out, pause=2)
    _wait_for_steps(out, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig and f"interrupted by {signal.Signals(sig).name}" in err
    assert "Traceback" not in err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "interrupted" and prov["signal"] == signal.Signals(sig).name
    assert prov["interrupted_at"] and prov["steps_run"] == ["s0", "s1"]
    proc = _start(tmp_path, out, pause=0)
    assert proc.wait(timeout=120) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert (
        prov["status"] == "finished" and prov["steps_skipped"] == ["s0", "s1"] and prov["steps_run"] == ["s2"]
    )
    assert json.loads((out / "results.json").read_text()) == {"total": 3}


def test_an_interrupted_rerun_keeps_the_finished_record(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _start(tmp_path, out, pause=0).wait(timeout=120) == 0
    finished = json.loads((out / "provenance.json").read_text())
    proc = _start(tmp_path, out, pause=1)  # a rerun with nothing to do, stopped after loading s0
    _wait_for_steps(out, 1, proc, attempt=1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "finished" and prov["steps_run"] == ["s0", "s1", "s2"]
    assert prov["attempts"][0] == finished["attempts"][0]
    assert prov["attempts"][1]["status"] == "interrupted" and prov["attempts"][1]["interrupted_at"]
    assert prov["time"] == finished["time"]


def test_yaml_configs_refuse_duplicate_keys_and_python_tags(tmp_path: Path) -> None:
    from interp.runner import load_config

    bad = {
        "dup.yaml": ("experiment: _test_steps\nn: 2\nexperiment: other\n", "duplicate key 'experiment'"),
        "tag.yaml": ("experiment: !!python/object/apply:os.getcwd []\n", "no Python objects"),
        "broken.yaml": ("experiment: [_test_steps\n", "not valid YAML (line 2"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as err:
            load_config(tmp_path / name)
        assert message in str(err.value) and name in str(err.value)
    (tmp_path / "ok.yaml").write_text("experiment: _test_steps\nn: 2\nnested: {a: 1, b: [1, 1]}\n")
    assert load_config(tmp_path / "ok.yaml") == yaml.safe_load((tmp_path / "ok.yaml").read_text())


def test_out_pointing_at_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run_experiment({"experiment": "_test_steps"}, tmp_path / "file")

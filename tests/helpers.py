"""Shared test data: random token batches with a few swapped positions, and a last-token logit difference."""

from __future__ import annotations

import torch


def swap_batch(batch: int, seq: int, *, seed: int, swap_at: tuple[int, ...]):
    """(clean, corrupt, ans, wrong): random ids in [4, 20); corrupt redraws the columns `swap_at`.

    Draw order (fixed, so a seed names one batch): clean, each swapped column, ans, wrong."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(4, 20, (batch, seq), generator=g)
    corrupt = clean.clone()
    for p in swap_at:
        corrupt[:, p] = torch.randint(4, 20, (batch,), generator=g)
    ans, wrong = torch.randint(4, 20, (batch,), generator=g), torch.randint(4, 20, (batch,), generator=g)
    return clean, corrupt, ans, wrong


def last_logit_diff(ans: torch.Tensor, wrong: torch.Tensor):
    """logits[b, -1, ans[b]] - logits[b, -1, wrong[b]] per prompt, on the logits' device."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        b = torch.arange(logits.shape[0], device=logits.device)
        return logits[b, -1, ans.to(logits.device)] - logits[b, -1, wrong.to(logits.device)]

    return metric


def interrupted_then_resumed(config: dict, out, *, after_steps: int = 1, timeout: float = 300.0):
    """Run `config` through the `interp` CLI in a subprocess that pauses after `after_steps` steps, stop it
    with SIGTERM there, check that provenance.json says interrupted, then resume in-process.

    Returns (results of the resumed run, the interrupted attempt's finished steps, the resumed provenance)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    from interp.runner import run_experiment

    out = Path(out)
    cfg_file = out.parent / f"{out.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "INTERP_TEST_PAUSE_AFTER_STEPS": str(after_steps), "INTERP_FIGURE_FORMATS": "html"}
    cmd = [
        sys.executable,
        "-c",
        "from interp.cli import main; main()",
        "run",
        str(cfg_file),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prov_path, deadline = out / "provenance.json", time.monotonic() + timeout
    done: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(prov_path.read_text())["attempts"][-1]["steps_run"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError, IndexError):
            done = []
        if len(done) >= after_steps:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before step {after_steps}: {proc.communicate()[1][-3000:]}"
    assert len(done) >= after_steps, "the run did not reach the pause in time"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted by SIGTERM" in err
    prov = json.loads(prov_path.read_text())
    assert prov["status"] == "interrupted" and prov["signal"] == "SIGTERM" and prov["interrupted_at"]
    assert not (out / "results.json").exists()
    results = run_experiment(config, out)
    resumed = json.loads(prov_path.read_text())
    assert resumed["status"] == "finished"
    assert set(done) <= set(resumed["steps_skipped"]) and not set(done) & set(resumed["steps_run"])
    return results, done, resumed

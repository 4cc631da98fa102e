"""What produced a run: package versions, git commit, seed, device, Python, time (for `provenance.json`)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# distribution name -> key in provenance.json
PACKAGES: dict[str, str] = {
    "interp": "interp",
    "torch": "torch",
    "transformers": "transformers",
    "transformer-lens": "transformer_lens",
    "nnsight": "nnsight",
    "sae-lens": "sae_lens",
    "numpy": "numpy",
    "plotly": "plotly",
}
REPO_ROOT = Path(__file__).resolve().parents[1]


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape results (None where not installed); imports nothing."""
    versions: dict[str, str | None] = {}
    for dist, key in PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any]:
    """The repo's commit and whether tracked files differ from it (None/None outside a git checkout)."""
    commit = _git("rev-parse", "HEAD") if (REPO_ROOT / ".git").exists() else None
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device_name(device: str) -> str:
    """A human name for `device` ("cpu", or the GPU model for cuda devices)."""
    if device.startswith("cuda") and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    if device == "cpu":
        return platform.processor() or platform.machine()
    return device


def collect_provenance(*, seed: int, device: str) -> dict[str, Any]:
    """Everything `provenance.json` records about the environment of one run."""
    return {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "device": device,
        "device_name": device_name(device),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": sys.argv,
        "git": git_state(),
        "packages": package_versions(),
    }

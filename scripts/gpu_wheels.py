"""Fetch into .whl/ the wheels that a lent GPU machine (Python 3.12, CUDA torch) lacks for `scripts/gpu_check.sh`.

Walks interp's runtime requirements in this .venv, skips what the device image already holds (the package list in
the device tool's KINDS.md, or --have FILE) and the plotting stack (the checks draw no figures; it keeps the
carried tree under the 64 MiB limit), and downloads the versions installed here from the local package index.
Usage: .venv/bin/python scripts/gpu_wheels.py   (then `echo /.whl/ >> .git/info/exclude`; carry `.whl`)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

KINDS = Path("/work/.library/device/KINDS.md")
SKIP = {"plotly", "kaleido", "choreographer", "logistro", "plotly-express", "interp", "torch"}
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


def device_packages(path: Path) -> set[str]:
    text = path.read_text()
    line = next(x for x in text.splitlines() if "Packages:" in x and "their image" in x)
    return {norm(p.strip().rstrip(".")) for p in line.split("Packages:")[1].split(",")}


def missing(have: set[str]) -> dict[str, str]:
    """name -> version installed here, for every runtime requirement of interp the device lacks."""
    need, seen, todo = {}, set(), ["interp"]
    while todo:
        name = todo.pop()
        if norm(name) in seen:
            continue
        seen.add(norm(name))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if norm(name) in have:
            continue  # the device's own copy comes with its own requirements
        if norm(name) not in SKIP:
            need[norm(name)] = dist.version
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return need


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--have", type=Path, default=KINDS, help="a file listing the device's packages (KINDS.md)"
    )
    ap.add_argument("--out", type=Path, default=Path(".whl"))
    a = ap.parse_args()
    a.out.mkdir(exist_ok=True)
    failed = []
    for name, version in sorted(missing(device_packages(a.have)).items()):
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *[f"--platform={p}" for p in PLATFORMS],
            "-d",
            str(a.out),
            f"{name}=={version}",
        ]
        if subprocess.run(cmd, capture_output=True).returncode:
            failed.append(f"{name}=={version}")
    size = sum(f.stat().st_size for f in a.out.glob("*.whl")) / 2**20
    print(f"{a.out}: {len(list(a.out.glob('*.whl')))} wheels, {size:.1f} MiB; not found: {failed or 'none'}")


if __name__ == "__main__":
    main()

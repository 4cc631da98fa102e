"""The model-organism zoo: small models trained here, with known behaviours, by stable name.

`names()` lists them ("organism/base", "organism/ioi-ft", ..., "sae/base-resid-L2"); `path(name)` is the
committed checkpoint folder (HF: config.json, model.safetensors, tokenizer; SAE: sae-lens files), `card(name)`
its measured behaviour card, `build(only=...)` retrains from the recipes in `interp.zoo.organisms`.
Load an organism with `interp.load_model("organism/base", backend="tl" | "nnsight")`, an SAE with
`sae_lens.SAE.load_from_disk(interp.zoo.path("sae/base-resid-L2"))`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from interp.zoo.build import BuildError
from interp.zoo.organisms import RECIPES, SAES
from interp.zoo_location import ROOT, folder_of, is_built

__all__ = ["BuildError", "ROOT", "ZooError", "build", "card", "cli_list", "names", "path", "rows"]


class ZooError(KeyError):
    """An unknown organism name, or a known one whose folder has not been built."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def names() -> list[str]:
    """Every organism and SAE name of the zoo, in build order."""
    return [*RECIPES, *SAES]


def path(name: str) -> Path:
    """The committed folder of organism or SAE `name` (raises ZooError listing the valid names)."""
    if name not in RECIPES and name not in SAES:
        raise ZooError(f"unknown zoo name {name!r}; valid names: {', '.join(names())}")
    folder = folder_of(name)
    if not is_built(name):
        raise ZooError(
            f"{name!r} is a zoo name but {folder} is not built; run `interp zoo build --only {name}`"
        )
    return folder


def card(name: str) -> dict:
    """The behaviour card of `name`: measured scores, targets, recipe, seed, size and build time."""
    return json.loads((path(name) / "card.json").read_text())


def rows() -> list[dict]:
    """One row per zoo entry: name, built or not, path, size, build time, target numbers, all targets passed."""
    out = []
    for name in names():
        folder = folder_of(name)
        row: dict = {"name": name, "built": is_built(name), "path": str(folder)}
        if row["built"]:
            c = json.loads((folder / "card.json").read_text())
            row |= {
                "purpose": c.get("purpose", f"TopK SAE on {c.get('hook_name')} of {c.get('organism')}"),
                "size_mb": round(c.get("size_bytes", 0) / 1e6, 2),
                "build_time_s": c.get("build_time_s"),
                "targets_passed": all(t["passed"] for t in c.get("targets", [])),
                "scores": {
                    t["metric"]: c["scores"][t["metric"]]
                    for t in c.get("targets", [])
                    if t["metric"] in c["scores"]
                },
            }
        out.append(row)
    return out


def cli_list() -> list[dict]:
    """Print the zoo card (`interp zoo list`): each entry, whether it is built, its size, build time and the
    numbers its targets are about; return the rows."""
    table = rows()
    for row in table:
        if not row["built"]:
            print(f"{row['name']:<22} not built  (interp zoo build --only {row['name']})")
            continue
        scores = ", ".join(f"{k} {v:.3g}" for k, v in row["scores"].items())
        status = "ok" if row["targets_passed"] else "TARGET MISSED"
        print(
            f"{row['name']:<22} {row['size_mb']:>5.2f} MB {row['build_time_s'] or 0:>6.0f} s  {status}  {scores}"
        )
        print(f"{'':<22} {row['purpose']}")
    return table


def _dependencies(name: str) -> list[str]:
    if name in SAES:
        return [SAES[name].recipe.organism]
    parent = RECIPES[name].parent
    return [] if parent is None else [parent]


def build(only: str | Iterable[str] | None = None, *, jobs: int = 2) -> dict[str, dict]:
    """Retrain zoo entries (all of them, or `only` those, from their committed parents) and return their cards.

    Each entry trains in its own one-thread process (seeded and deterministic), `jobs` at a time; entries run
    after the entries they depend on. Raises BuildError naming every missed target; an entry that fails keeps
    its committed folder and leaves the attempt in `<folder>.failed`.
    """
    selected = names() if only is None else [only] if isinstance(only, str) else list(only)
    unknown = [n for n in selected if n not in names()]
    if unknown:
        raise ZooError(
            f"unknown zoo name(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(names())}"
        )
    wanted = set(selected)
    for n in reversed(names()):  # and the dependencies that are not built yet
        if n in wanted:
            wanted |= {d for d in _dependencies(n) if not is_built(d)}
    selected = [n for n in names() if n in wanted]
    pending = list(selected)  # build order respects dependencies
    failed: dict[str, int] = {}
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        for n in list(pending):
            if len(running) >= max(1, jobs):
                break
            deps = [d for d in _dependencies(n) if d in selected]
            if any(d in failed for d in deps):
                pending.remove(n)
                failed[n] = -1
            elif not any(d in pending or d in running for d in deps):
                pending.remove(n)
                running[n] = subprocess.Popen([sys.executable, "-u", "-m", "interp.zoo", n])
        for n, proc in list(running.items()):
            if proc.poll() is not None:
                del running[n]
                if proc.returncode:
                    failed[n] = proc.returncode
        if running:
            time.sleep(0.5)
    if failed:
        reasons = [
            f"{n}: {'skipped (a dependency failed)' if rc == -1 else f'exit code {rc}'}"
            for n, rc in failed.items()
        ]
        raise BuildError("zoo build failed:\n  " + "\n  ".join(reasons))
    return {n: card(n) for n in selected}

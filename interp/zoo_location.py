"""Where the model-organism zoo keeps its checkpoints: zoo names <-> folders, and which entries are built.

The bottom layer of the package (imports only `interp.suggest`): model loading resolves `"organism/base"` through
it, the zoo builds into it, the demo asks it what is missing. A zoo name is `organism/<name>` (folder
`organisms/<name>`) or `sae/<name>` (folder `organisms/sae-<name>`); an entry is built when its folder holds
`card.json`.
"""

from __future__ import annotations

from pathlib import Path

from interp.suggest import did_you_mean

ROOT = Path(__file__).resolve().parent / "zoo" / "organisms"
KINDS: tuple[str, ...] = ("organism", "sae")


def is_zoo_name(name: object) -> bool:
    """Whether `name` has the form of a zoo name (`organism/...` or `sae/...`), built or not."""
    kind, sep, rest = str(name).partition("/")
    return bool(sep) and kind in KINDS and bool(rest) and "/" not in rest


def folder_of(name: str) -> Path:
    """The folder of zoo entry `name` ("organism/base" -> organisms/base, "sae/x" -> organisms/sae-x)."""
    if not is_zoo_name(name):
        raise ValueError(f"{name!r} is not a zoo name like 'organism/base' or 'sae/base-resid-L2'")
    kind, _, rest = name.partition("/")
    return ROOT / (rest if kind == "organism" else f"{kind}-{rest}")


def is_built(name: str) -> bool:
    """Whether zoo entry `name` is built (its folder holds `card.json`)."""
    return is_zoo_name(name) and (folder_of(name) / "card.json").is_file()


def built_names() -> list[str]:
    """The zoo names whose folders are built, sorted."""
    if not ROOT.is_dir():
        return []
    names = []
    for folder in ROOT.iterdir():
        if (folder / "card.json").is_file():
            sae = folder.name.startswith("sae-")
            names.append(f"sae/{folder.name[4:]}" if sae else f"organism/{folder.name}")
    return sorted(names)


def missing(*names: str) -> list[str]:
    """The zoo names among `names` that are not built (names that are not zoo names are ignored)."""
    return [n for n in names if is_zoo_name(n) and not is_built(n)]


def built_folder(name: str) -> Path:
    """The folder of a built zoo entry; raise `FileNotFoundError` naming the built entries otherwise."""
    if not is_built(name):
        built = built_names()
        raise FileNotFoundError(
            f"{name!r} is not a built zoo entry.{did_you_mean(name, built)} The valid names (built): "
            f"{', '.join(built) or '(none)'}; build one with `interp zoo build --only <name>`"
        )
    return folder_of(name)

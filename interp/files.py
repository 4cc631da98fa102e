"""Atomic file writes: readers see the old file or the whole new one, never a part (temp file + os.replace)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it onto `path` in one step (os.replace).

    On an error the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 1, **dumps: Any) -> Path:
    """Write `data` as JSON to `path` atomically (`dumps` goes to `json.dumps`, e.g. `default=`)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, **dumps))


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a dict of tensors to a safetensors file atomically (moved to CPU, made contiguous)."""
    from safetensors.torch import save_file

    owned = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(owned, str(tmp), metadata=dict(metadata) if metadata is not None else None)
    return Path(path)

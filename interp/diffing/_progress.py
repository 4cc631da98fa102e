"""Progress bars for the long parts of model diffing: shown on terminals, off in logs, tests and notebooks'
batch runs unless asked for."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress_enabled(progress: bool | None) -> bool:
    """`progress`, or (None) whether stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def progress_iter(
    iterable: Iterable[T], *, desc: str, total: int | None = None, progress: bool | None = None, **kw: Any
) -> Iterator[T]:
    """`iterable` under a tqdm bar when `progress_enabled(progress)`, else unchanged."""
    if not progress_enabled(progress):
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, desc=desc, total=total, mininterval=0.5, **kw)

"""Progress bars for long analyses (sweeps, path patching, EAP-IG, CMAP): cells done / total, rate and ETA.

A bar appears only once a run has taken `DELAY` seconds (short runs print nothing), on terminals and in
notebooks. `progress=False` on the analysis, or the environment variable `INTERP_PROGRESS=0`, turns it off;
`progress=True` shows it even where output is not a terminal. Bars are tqdm's, like the runner's
(`Run.progress`): a library bar opened under a runner bar is drawn nested below it and removed when done.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV = "INTERP_PROGRESS"
DELAY = 2.0  # seconds before a bar is drawn


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def enabled(progress: bool | None = None) -> bool | None:
    """True/False as asked, else the environment's choice: False if `INTERP_PROGRESS` is 0/false/off/no,
    None (tqdm decides: shown on terminals) otherwise."""
    if progress is not None:
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True, False or None; got {progress!r}")
        return progress
    if os.environ.get(ENV, "").strip().lower() in ("0", "false", "off", "no"):
        return False
    return True if "ipykernel" in sys.modules else None


def progress_bar(total: int, desc: str, *, progress: bool | None = None, unit: str = "cell") -> Any:
    """A context-managed bar with `.update(n)` over `total` units (a silent stand-in when switched off)."""
    show = enabled(progress)
    if show is False or total <= 0:
        return _Silent()
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        delay=DELAY,
        leave=False,
        mininterval=0.5,
        dynamic_ncols=True,
        disable=None if show is None else False,
    )

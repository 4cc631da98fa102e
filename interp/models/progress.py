"""Progress bars of checkpoint loading: shown for large checkpoints, off for tiny ones (organisms, test models),
whose "Loading weights" bar would only clutter the logs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

SMALL_BYTES = 100 * 2**20  # checkpoints below this load in well under a second: no bar


def weights_bytes(folder: str | os.PathLike) -> int:
    """Total size of the weight files (safetensors / bin) in a checkpoint folder."""
    folder = Path(folder)
    return sum(
        p.stat().st_size for p in folder.glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()
    )


@contextlib.contextmanager
def no_progress_bars(quiet: bool = True) -> Iterator[None]:
    """Within the block, transformers' progress bars are off (when `quiet`); the previous state is restored."""
    from transformers.utils import logging as hf_logging

    switch = quiet and hf_logging.is_progress_bar_enabled()
    if switch:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if switch:
            hf_logging.enable_progress_bar()


def load_progress(folder: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """Progress bars off while loading the checkpoint in `folder` if it is small (on for large ones)."""
    return no_progress_bars(weights_bytes(folder) < SMALL_BYTES)

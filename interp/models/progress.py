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
def load_progress(folder: str | os.PathLike) -> Iterator[None]:
    """Within the block, transformers' progress bars are off if the checkpoint in `folder` is small (restored
    afterwards)."""
    from transformers.utils import logging as hf_logging

    quiet = weights_bytes(folder) < SMALL_BYTES and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()

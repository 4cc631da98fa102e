"""A tiny random checkpoint with the organisms' word vocabulary: an offline stand-in for `organism/base`."""

from __future__ import annotations

from pathlib import Path

from interp.models.progress import no_progress_bars
from interp.models.tiny import build_tiny_checkpoint
from interp.models.tokenizer import build_word_tokenizer
from interp.zoo.corpus import words


def tiny_organism(arch: str, folder: Path) -> Path:
    """Build (once) a 2-layer, d_model 64 random `arch` checkpoint in `folder` with the organisms' vocabulary."""
    if not (folder / "config.json").exists():
        with no_progress_bars():
            build_tiny_checkpoint(
                arch, folder, build_word_tokenizer(words()), n_layers=2, d_model=64, n_ctx=128
            )
    return folder

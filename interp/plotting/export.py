"""Write figures: interactive HTML always (offline), PNG/PDF/SVG through kaleido when Chrome is present.

HTML files reference one shared `plotly.min.js` written next to them (`plotlyjs="directory"`) or embed it
(`"inline"`, ~4.7 MB per file); neither needs the network. Static export needs a Chrome/Chromium binary,
which is looked for once per process; without one, one warning says how to enable it and only HTML is
written. Static images of many figures are written in one kaleido call (each call costs ~2.5 s to start).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import plotly.graph_objects as go

logger = logging.getLogger(__name__)

STATIC_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
ALL_FORMATS: tuple[str, ...] = ("html", *STATIC_FORMATS)
PNG_SCALE = 2.0  # 720x480 layout -> 1440x960 pixels: sharp on slides and in papers
ENABLE_HINT = (
    "static figure export (PNG/PDF/SVG) needs Chrome or Chromium for kaleido, and none was found: "
    "install it with `apt-get install -y chromium` (scripts/setup.sh does this when run as root) or set "
    "BROWSER_PATH to a Chrome binary. Writing HTML only."
)
_FORMATS_ENV = (
    "INTERP_FIGURE_FORMATS"  # e.g. "html" or "html,png": the default formats (quick local runs, CI)
)
PlotlyJS = Literal["directory", "inline"]


@functools.cache
def find_browser() -> str | None:
    """The Chrome/Chromium binary kaleido would use (BROWSER_PATH, PATH or kaleido's download), or None."""
    from choreographer.browsers.chromium import Chromium

    return Chromium.find_browser(skip_local=False)


def static_export_available() -> bool:
    """Whether PNG/PDF/SVG can be written here (kaleido finds a Chrome/Chromium)."""
    return find_browser() is not None


def default_formats() -> tuple[str, ...]:
    """The formats to write when none are given: `INTERP_FIGURE_FORMATS` (e.g. "html,png") or all four."""
    env = os.environ.get(_FORMATS_ENV, "").strip()
    formats = tuple(f.strip().lower() for f in env.split(",") if f.strip()) if env else ALL_FORMATS
    _check_formats(formats)
    return formats


def _check_formats(formats: Sequence[str]) -> None:
    unknown = [f for f in formats if f not in ALL_FORMATS]
    if unknown:
        raise ValueError(f"unknown figure format(s) {unknown}; valid: {', '.join(ALL_FORMATS)}")


@functools.cache
def _warn_html_only() -> None:
    logger.warning(ENABLE_HINT)


def _stem(path_without_ext: str | Path) -> Path:
    """`figures/x` stays `figures/x`; a known figure extension (`figures/x.png`) is dropped."""
    path = Path(path_without_ext)
    return path.with_suffix("") if path.suffix.lstrip(".") in ALL_FORMATS else path


def write_html(fig: go.Figure, path_without_ext: str | Path, *, plotlyjs: PlotlyJS = "directory") -> Path:
    """Write `<path>.html`, offline: plotly.js in a shared `plotly.min.js` next to it, or inline."""
    stem = _stem(path_without_ext)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.parent / f"{stem.name}.html"
    fig.write_html(html, include_plotlyjs=True if plotlyjs == "inline" else "directory", full_html=True)
    return html


def write_static(jobs: Sequence[tuple[go.Figure, str | Path]]) -> list[Path]:
    """Write each `(figure, path.png|.pdf|.svg)` in one kaleido call; with no browser, warn once and skip."""
    paths = [Path(p) for _, p in jobs]
    bad = [str(p) for p in paths if p.suffix.lstrip(".") not in STATIC_FORMATS]
    if bad:
        raise ValueError(f"static export paths must end in {', '.join(STATIC_FORMATS)}: {bad}")
    if not paths:
        return []
    if not static_export_available():
        _warn_html_only()
        return []
    import plotly.io as pio

    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    figs = [fig for fig, _ in jobs]
    pio.write_images(  # unlike write_image, write_images ignores layout width/height unless given them
        figs,
        paths,
        scale=[PNG_SCALE if p.suffix == ".png" else 1.0 for p in paths],
        width=[fig.layout.width for fig in figs],
        height=[fig.layout.height for fig in figs],
    )
    return paths


def save_figures(
    items: Iterable[tuple[go.Figure, str | Path]],
    formats: Sequence[str] | None = None,
    *,
    plotlyjs: PlotlyJS = "directory",
) -> list[Path]:
    """Write each `(figure, path_without_ext)`: HTML always, the static `formats` in one batched kaleido call.

    `formats` defaults to `default_formats()`. Returns the paths written: all the HTML files, then the static
    images (none, after one warning per process, when no browser is available).
    """
    formats = default_formats() if formats is None else tuple(formats)
    _check_formats(formats)
    static = [f for f in dict.fromkeys(formats) if f in STATIC_FORMATS]
    written, jobs = [], []
    for fig, target in items:
        html = write_html(fig, target, plotlyjs=plotlyjs)
        written.append(html)
        jobs += [(fig, html.with_suffix(f".{fmt}")) for fmt in static]
    return written + write_static(jobs)


def save_figure(
    fig: go.Figure,
    path_without_ext: str | Path,
    formats: Sequence[str] | None = None,
    *,
    plotlyjs: PlotlyJS = "directory",
) -> list[Path]:
    """Write one figure as `<path>.html` plus the static `formats` this machine can make; see `save_figures`.

    `formats` defaults to ("html", "png", "pdf", "svg"), or to INTERP_FIGURE_FORMATS where that is set.
    """
    return save_figures([(fig, path_without_ext)], formats, plotlyjs=plotlyjs)

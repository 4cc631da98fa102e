"""Figures in the house style: colour-blind-safe palettes, explicit styling, offline HTML, PNG/PDF/SVG."""

from interp.plotting.export import (
    default_formats,
    save_figure,
    save_figures,
    static_export_available,
    write_html,
    write_static,
)
from interp.plotting.figures import bar, heatmap, histogram, line, to_numpy
from interp.plotting.style import (
    DIVERGING,
    OKABE_ITO,
    PALETTE,
    SEQUENTIAL,
    apply_style,
    house_template,
    register_template,
)

__all__ = [
    "DIVERGING",
    "OKABE_ITO",
    "PALETTE",
    "SEQUENTIAL",
    "apply_style",
    "bar",
    "default_formats",
    "heatmap",
    "histogram",
    "house_template",
    "line",
    "register_template",
    "save_figure",
    "save_figures",
    "static_export_available",
    "to_numpy",
    "write_html",
    "write_static",
]

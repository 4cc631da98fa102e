"""The house figure style: colour-blind-safe palettes, paper-readable fonts, applied explicitly.

Nothing happens at import: `apply_style(fig)` styles one figure, `register_template()` adds the template to
`plotly.io.templates` (and makes it the default only when asked).
"""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
# Ordered for white backgrounds: the low-contrast yellow comes late, black last.
OKABE_ITO: dict[str, str] = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "bluish_green": "#009E73",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "sky_blue": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
PALETTE: tuple[str, ...] = tuple(OKABE_ITO.values())
# Signed values (patching effects, logit-diff changes): ColorBrewer RdBu, reversed so positive is red,
# centred at 0 by the figure helpers. Unsigned: cividis (perceptually uniform, made for colour-blind readers).
DIVERGING = "RdBu_r"
SEQUENTIAL = "Cividis"
# Arial's metric twin Liberation Sans is what Debian's chromium renders static exports with.
FONT_FAMILY = "Arial, 'Liberation Sans', Helvetica, 'DejaVu Sans', sans-serif"
FONT_SIZE = 14
TEMPLATE_NAME = "interp"
WIDTH, HEIGHT = 720, 480


def house_template() -> go.layout.Template:
    """A fresh plotly template with the house style (a new object on every call)."""
    axis = {
        "showline": True,
        "linecolor": "#444",
        "linewidth": 1,
        "ticks": "outside",
        "tickcolor": "#444",
        "showgrid": True,
        "gridcolor": "#e5e5e5",
        "zeroline": False,
        "automargin": True,
        "title": {"font": {"size": FONT_SIZE + 1}, "standoff": 8},
    }
    layout = go.Layout(
        font={"family": FONT_FAMILY, "size": FONT_SIZE, "color": "#222"},
        title={"font": {"size": FONT_SIZE + 3}, "x": 0.0, "xanchor": "left", "xref": "paper"},
        colorway=list(PALETTE),
        colorscale={"sequential": SEQUENTIAL, "sequentialminus": SEQUENTIAL, "diverging": DIVERGING},
        paper_bgcolor="white",
        plot_bgcolor="white",
        xaxis=axis,
        yaxis=axis,
        legend={"bgcolor": "rgba(255,255,255,0.8)", "borderwidth": 0},
        coloraxis={"colorbar": {"outlinewidth": 0, "ticks": "outside", "thickness": 14}},
        margin={"l": 70, "r": 30, "t": 60, "b": 60},
        hoverlabel={"font": {"family": FONT_FAMILY}},
    )
    data = {
        "heatmap": [go.Heatmap(colorscale=SEQUENTIAL, colorbar={"outlinewidth": 0, "ticks": "outside"})],
        "bar": [go.Bar(marker={"line": {"width": 0}})],
        "histogram": [go.Histogram(marker={"line": {"width": 0}})],
    }
    return go.layout.Template(layout=layout, data=data)


def apply_style(fig: go.Figure, *, width: int | None = WIDTH, height: int | None = HEIGHT) -> go.Figure:
    """Apply the house template to `fig` in place (and return it); `width`/`height` set the export size."""
    fig.update_layout(template=house_template(), width=width, height=height)
    return fig


def register_template(*, set_default: bool = False) -> str:
    """Register the house template as `plotly.io.templates["interp"]`; optionally make it the default."""
    pio.templates[TEMPLATE_NAME] = house_template()
    if set_default:
        pio.templates.default = TEMPLATE_NAME
    return TEMPLATE_NAME

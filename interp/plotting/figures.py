"""Figure helpers for the analyses: heatmap, line, bar, histogram, each returning a styled `go.Figure`.

Inputs may be numpy arrays, torch tensors (any dtype or device) or nested lists. Axis titles are required
keywords: give units where there are any ("logit difference (nats)"). Categorical labels are drawn as tick
text over integer positions, so repeated labels (two " the" tokens) stay separate columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go

from interp.plotting.style import DIVERGING, SEQUENTIAL, apply_style

ArrayLike = Any  # np.ndarray | torch.Tensor | nested lists of numbers
Series = Mapping[str, ArrayLike] | ArrayLike


def to_numpy(values: ArrayLike) -> np.ndarray:
    """A float numpy array from a tensor (detached, on CPU, bf16-safe), an array or nested lists."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def _series(data: Series, names: Sequence[str] | None) -> list[tuple[str, np.ndarray]]:
    """One series, a [series, points] array or a {name: values} mapping, as (name, 1-D array) pairs."""
    if isinstance(data, Mapping):
        pairs = [(str(k), to_numpy(v)) for k, v in data.items()]
    else:
        arr = to_numpy(data)
        rows = [arr] if arr.ndim == 1 else list(arr) if arr.ndim == 2 else None
        if rows is None:
            raise ValueError(f"expected 1-D or 2-D [series, points] values, got shape {arr.shape}")
        labels = (
            list(names)
            if names is not None
            else ([""] if arr.ndim == 1 else [f"series {i}" for i in range(len(rows))])
        )
        if len(labels) != len(rows):
            raise ValueError(f"{len(labels)} names for {len(rows)} series")
        pairs = list(zip(labels, rows, strict=True))
    for name, arr in pairs:
        if arr.ndim != 1:
            raise ValueError(f"series {name!r} must be 1-D, got shape {arr.shape}")
    return pairs


def _matching(errors: Series | None, pairs: list[tuple[str, np.ndarray]]) -> list[np.ndarray | None]:
    """Per-series error arrays aligned with `pairs` (or Nones)."""
    if errors is None:
        return [None] * len(pairs)
    err = _series(errors, [n for n, _ in pairs] if not isinstance(errors, Mapping) else None)
    if [len(e) for _, e in err] != [len(v) for _, v in pairs]:
        raise ValueError("errors must have the same shape as the values")
    return [e for _, e in err]


def _category_axis(labels: Sequence[Any], n: int, what: str) -> tuple[list[int], dict[str, Any]]:
    """Integer positions and the axis settings that show `labels` at them."""
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} {what}")
    positions = list(range(n))
    return positions, {"tickmode": "array", "tickvals": positions, "ticktext": [str(s) for s in labels]}


def _finish(fig: go.Figure, title: str, x_title: str, y_title: str, **layout: Any) -> go.Figure:
    fig.update_layout(title_text=title or None, xaxis_title_text=x_title, yaxis_title_text=y_title, **layout)
    return apply_style(fig)


def heatmap(
    values: ArrayLike,
    x_labels: Sequence[Any] | None = None,
    y_labels: Sequence[Any] | None = None,
    title: str = "",
    *,
    x_title: str,
    y_title: str,
    signed: bool = True,
    colorbar_title: str = "",
    zmax: float | None = None,
    show_values: bool = False,
    value_format: str = ".2f",
) -> go.Figure:
    """A [rows, cols] heatmap, row 0 at the top; `signed` uses the diverging scale centred at 0.

    With `signed` the colour range is symmetric, ±`zmax` (default: the largest |value|): white is exactly 0.
    """
    z = to_numpy(values)
    if z.ndim != 2:
        raise ValueError(f"heatmap needs 2-D [rows, cols] values, got shape {z.shape}")
    rows, cols = z.shape
    x_pos, x_axis = _category_axis(x_labels if x_labels is not None else range(cols), cols, "columns")
    y_pos, y_axis = _category_axis(y_labels if y_labels is not None else range(rows), rows, "rows")
    xl, yl = np.array(x_axis["ticktext"], dtype=object), np.array(y_axis["ticktext"], dtype=object)
    custom = np.stack(np.broadcast_arrays(xl[None, :], yl[:, None]), axis=-1)  # [rows, cols, 2]
    value_name = colorbar_title or "value"
    trace = go.Heatmap(
        z=z,
        x=x_pos,
        y=y_pos,
        customdata=custom,
        hovertemplate=f"{y_title}: %{{customdata[1]}}<br>{x_title}: %{{customdata[0]}}<br>"
        f"{value_name}: %{{z:.4g}}<extra></extra>",
        colorbar={"title": {"text": colorbar_title, "side": "right"}},
    )
    if signed:
        finite = np.abs(z[np.isfinite(z)])
        limit = zmax if zmax is not None else (float(finite.max()) if finite.size else 1.0)
        limit = limit if limit > 0 else 1.0
        trace.update(colorscale=DIVERGING, zmin=-limit, zmax=limit, zmid=0.0)
    else:
        trace.update(colorscale=SEQUENTIAL, zmax=zmax)
    if show_values:
        trace.update(texttemplate=f"%{{z:{value_format}}}", textfont={"size": 10})
    fig = go.Figure(trace)
    fig.update_xaxes(showgrid=False, **x_axis)
    fig.update_yaxes(showgrid=False, autorange="reversed", **y_axis)
    return _finish(fig, title, x_title, y_title)


def line(
    series: Series,
    x: ArrayLike | None = None,
    title: str = "",
    *,
    x_title: str,
    y_title: str,
    names: Sequence[str] | None = None,
    errors: Series | None = None,
    mode: str = "lines+markers",
) -> go.Figure:
    """One line per series (a 1-D array, a [series, points] array, or {name: values}); optional error bars."""
    pairs = _series(series, names)
    categorical = x is not None and len(x) > 0 and isinstance(x[0], str)
    xs = x if x is None or categorical else to_numpy(x)
    fig = go.Figure()
    for (name, y), err in zip(pairs, _matching(errors, pairs), strict=True):
        fig.add_trace(
            go.Scatter(
                x=xs if xs is not None else np.arange(len(y)),
                y=y,
                name=name,
                mode=mode,
                error_y={"type": "data", "array": err, "visible": True} if err is not None else None,
            )
        )
    return _finish(fig, title, x_title, y_title, showlegend=len(pairs) > 1)


def bar(
    values: Series,
    labels: Sequence[Any],
    title: str = "",
    *,
    x_title: str,
    y_title: str,
    names: Sequence[str] | None = None,
    errors: Series | None = None,
    horizontal: bool = False,
) -> go.Figure:
    """Bars over categories `labels`; several series are grouped side by side. `horizontal` lists categories
    down the y axis (x_title/y_title still name the category and value axes as drawn)."""
    pairs = _series(values, names)
    positions, cat_axis = _category_axis(labels, len(pairs[0][1]), "categories")
    fig = go.Figure()
    for (name, v), err in zip(pairs, _matching(errors, pairs), strict=True):
        if len(v) != len(positions):
            raise ValueError(f"series {name!r} has {len(v)} values for {len(positions)} categories")
        error = {"type": "data", "array": err, "visible": True} if err is not None else None
        if horizontal:
            fig.add_trace(go.Bar(x=v, y=positions, name=name, orientation="h", error_x=error))
        else:
            fig.add_trace(go.Bar(x=positions, y=v, name=name, error_y=error))
    if horizontal:
        fig.update_yaxes(autorange="reversed", showgrid=False, **cat_axis)
    else:
        fig.update_xaxes(showgrid=False, **cat_axis)
    return _finish(fig, title, x_title, y_title, barmode="group", showlegend=len(pairs) > 1)


def histogram(
    values: Series,
    title: str = "",
    *,
    x_title: str,
    y_title: str = "count",
    names: Sequence[str] | None = None,
    bins: int | None = None,
    normalize: Literal["", "percent", "probability", "density", "probability density"] = "",
    opacity: float = 0.65,
) -> go.Figure:
    """Histogram of one or more series (overlaid, semi-transparent); `normalize` is plotly's `histnorm`."""
    pairs = _series(values, names)
    fig = go.Figure()
    for name, v in pairs:
        fig.add_trace(
            go.Histogram(
                x=v[np.isfinite(v)],
                name=name,
                nbinsx=bins,
                histnorm=normalize or None,
                opacity=opacity if len(pairs) > 1 else 1.0,
            )
        )
    return _finish(fig, title, x_title, y_title, barmode="overlay", showlegend=len(pairs) > 1)

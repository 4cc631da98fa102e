"""House style, figure helpers and export (HTML always; PNG/SVG only where kaleido finds a browser)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.io as pio
import pytest
import torch
from plotly.colors import get_colorscale

from interp.plotting import (
    DIVERGING,
    PALETTE,
    SEQUENTIAL,
    bar,
    heatmap,
    histogram,
    line,
    register_template,
    save_figure,
    static_export_available,
)
from interp.plotting import export as export_module
from interp.runner import Run


def _colors(scale) -> list[str]:
    return [c for _, c in scale]


def test_nothing_is_styled_at_import() -> None:
    code = (
        "import plotly.io as pio, interp.plotting, interp.runner\n"
        "assert 'interp' not in pio.templates, 'template registered at import'\n"
        "assert pio.templates.default == 'plotly', pio.templates.default\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_signed_heatmap_style_and_labels() -> None:
    values = torch.tensor([[0.5, -2.0, 1.0], [0.0, 0.25, -0.5]], dtype=torch.bfloat16)
    fig = heatmap(
        values, [" the", "cat", " the"], ["L0", "L1"], "patching", x_title="position", y_title="layer"
    )
    trace = fig.data[0]
    assert trace.zmid == 0 and trace.zmin == -2.0 and trace.zmax == 2.0  # symmetric around 0
    assert _colors(trace.colorscale) == _colors(get_colorscale(DIVERGING)) and DIVERGING == "RdBu_r"
    assert fig.layout.xaxis.ticktext == (" the", "cat", " the") and list(trace.x) == [0, 1, 2]  # repeats kept
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.xaxis.title.text == "position" and fig.layout.yaxis.title.text == "layer"
    assert fig.layout.template.layout.colorway == PALETTE
    assert "Arial" in fig.layout.template.layout.font.family
    unsigned = heatmap(np.ones((2, 2)), x_title="a", y_title="b", signed=False)
    assert unsigned.data[0].zmid is None
    assert (
        _colors(unsigned.data[0].colorscale) == _colors(get_colorscale("cividis")) and SEQUENTIAL == "Cividis"
    )
    with pytest.raises(ValueError, match="2 labels for 3 columns"):
        heatmap(np.zeros((2, 3)), ["a", "b"], x_title="x", y_title="y")


def test_line_bar_histogram() -> None:
    fig = line(
        {"base": [1, 2, 3], "tuned": [2, 3, 4]},
        x=[0, 10, 20],
        x_title="step",
        y_title="loss (nats)",
        errors={"base": [0.1] * 3, "tuned": [0.2] * 3},
    )
    assert [t.name for t in fig.data] == ["base", "tuned"] and list(fig.data[1].error_y.array) == [0.2] * 3
    assert fig.layout.showlegend and fig.layout.template.layout.colorway == PALETTE
    fig = bar(
        np.array([[1, 2], [3, 4]]),
        ["IOI", "facts"],
        names=["base", "tuned"],
        x_title="task",
        y_title="accuracy (%)",
    )
    assert fig.layout.barmode == "group" and fig.layout.xaxis.ticktext == ("IOI", "facts")
    assert bar([1, 2], ["a", "b"], x_title="v", y_title="c", horizontal=True).data[0].orientation == "h"
    fig = histogram({"a": np.random.randn(50), "b": [np.nan, 1.0]}, x_title="TuCo (fraction)")
    assert fig.layout.yaxis.title.text == "count" and len(fig.data[1].x) == 1  # NaN dropped
    with pytest.raises(ValueError, match="1 names for 2 series"):
        line(np.zeros((2, 3)), names=["one"], x_title="x", y_title="y")


def test_register_template_only_when_called() -> None:
    default = pio.templates.default
    try:
        assert register_template(set_default=True) == "interp"
        assert pio.templates.default == "interp" and pio.templates["interp"].layout.colorway == PALETTE
    finally:
        pio.templates.default = default


def test_save_figure_writes_offline_html(tmp_path: Path) -> None:
    fig = line([1, 2, 3], x_title="x (tokens)", y_title="y (nats)")
    paths = save_figure(fig, tmp_path / "figs" / "curve", formats=("html",))
    assert paths == [tmp_path / "figs" / "curve.html"]
    html = paths[0].read_text()
    assert "cdn.plot.ly" not in html and "plotly.min.js" in html
    assert (tmp_path / "figs" / "plotly.min.js").stat().st_size > 1_000_000  # shared, next to the HTML
    inline = save_figure(
        fig, tmp_path / "inline.png", formats=("html",), plotlyjs="inline"
    )  # extension dropped
    assert inline == [tmp_path / "inline.html"] and inline[0].stat().st_size > 1_000_000


def test_without_a_browser_only_html_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(export_module, "static_export_available", lambda: False)
    export_module._warn_html_only.cache_clear()
    fig = bar([1, 2], ["a", "b"], x_title="k", y_title="v")
    with caplog.at_level(logging.WARNING, logger="interp.plotting.export"):
        first = save_figure(fig, tmp_path / "a")
        second = save_figure(fig, tmp_path / "b")
    assert first == [tmp_path / "a.html"] and second == [tmp_path / "b.html"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "apt-get install -y chromium" in warnings[0]


def test_run_batches_static_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(export_module, "static_export_available", lambda: True)
    monkeypatch.setattr(
        pio, "write_images", lambda figs, paths, **kw: calls.append([Path(p).name for p in paths])
    )
    with Run(tmp_path, figure_formats=("html", "png", "svg")) as run:
        for name in ("one", "two"):
            assert (
                run.figure(line([1, 2], x_title="x", y_title="y"), name)
                == tmp_path / "figures" / f"{name}.html"
            )
        assert calls == []  # nothing static until the flush
    assert calls == [["one.png", "one.svg", "two.png", "two.svg"]]  # one kaleido call for everything


@pytest.mark.skipif(not static_export_available(), reason="no Chrome/Chromium for kaleido")
def test_static_export_with_chromium(tmp_path: Path) -> None:
    fig = heatmap(
        np.eye(3) - 0.5, x_title="key position", y_title="query position", colorbar_title="attention"
    )
    paths = save_figure(fig, tmp_path / "heat", formats=("html", "png"))
    assert paths == [tmp_path / "heat.html", tmp_path / "heat.png"]
    png = paths[1].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1440, 960)  # the 720x480 layout at scale 2

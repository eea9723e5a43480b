"""Chart and table exports: Kaleido renders real PNG and SVG files in Chromium, tables become CSV."""

from __future__ import annotations

import shutil
import sys

import pandas as pd
import plotly.graph_objects as go
import pytest

from conftest_dashboard import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dashboard import export  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_slug():
    assert export.slug("LVS heatmap: safe / PGD") == "lvs-heatmap-safe-pgd"
    assert export.slug("***") == "chart"


def test_table_csv_round_trip():
    frame = pd.DataFrame({"model": ["safe", "dissociated"], "lvs": [0.0, 0.446]})
    text = export.table_csv(frame).decode("utf-8")
    assert text.splitlines() == ["model,lvs", "safe,0.0", "dissociated,0.446"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="image export needs Chromium: apt-get install chromium")
def test_figure_image_renders_png_and_svg():
    figure = go.Figure(go.Heatmap(z=[[0.0, 0.5], [0.25, 1.0]], colorscale="Viridis"))
    figure.update_layout(title={"text": "export check"}, height=400)

    png = export.figure_image(figure.to_json(), "png")
    svg = export.figure_image(figure.to_json(), "svg").decode("utf-8")

    assert png.startswith(PNG_MAGIC)
    # The PNG header contains width and height: the export size at twice the scale.
    width = int.from_bytes(png[16:20], "big")
    height = int.from_bytes(png[20:24], "big")
    assert (width, height) == (export.EXPORT_WIDTH * export.PNG_SCALE, 400 * export.PNG_SCALE)
    assert svg.lstrip().startswith("<svg")
    assert "export check" in svg


def test_standalone_figure_makes_room_for_labels():
    # Streamlit's theme grows the margins in the page; an export must do it itself.
    from dashboard import charts

    figure = go.Figure(go.Heatmap(z=[[1, 2]], x=["0.05", "0.1"], y=["embedding"]))
    figure.update_layout(margin={"l": 10, "b": 10})
    copy = charts.standalone(figure)
    assert copy.layout.xaxis.automargin is True
    assert copy.layout.yaxis.automargin is True
    assert figure.layout.yaxis.automargin is None

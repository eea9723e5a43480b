"""Charts and tables with download buttons: PNG and SVG for a chart, CSV for a table.

Every page shows its charts through :func:`show_chart` and its tables through
:func:`show_table`, so that anything on screen can go into a slide or a paper. Images are
rendered by Kaleido in a headless Chromium only when the user clicks, so an export never
slows the page down.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import streamlit as st

from dashboard.charts import standalone

logger = logging.getLogger("dashboard.export")

PLOT_CONFIG = {"displaylogo": False}
# Size of an exported image in CSS pixels; PNGs are written at twice this for print.
EXPORT_WIDTH = 1100
EXPORT_HEIGHT = 600
PNG_SCALE = 2
IMAGE_FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def slug(name: str) -> str:
    """Return ``name`` as a file name stem: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "chart"


def image_export_available() -> bool:
    """Return whether Kaleido can find a Chromium or Chrome to render images with."""
    return bool(os.environ.get("BROWSER_PATH")) or any(shutil.which(name) for name in _BROWSERS)


@st.cache_data(show_spinner=False, max_entries=64)
def figure_image(figure_json: str, image_format: str) -> bytes:
    """Render a figure given as Plotly JSON to PNG or SVG bytes (cached per figure and format)."""
    figure = standalone(pio.from_json(figure_json))
    height = figure.layout.height or EXPORT_HEIGHT
    scale = PNG_SCALE if image_format == "png" else 1
    logger.info("rendering a %s image of %d bytes of figure JSON", image_format, len(figure_json))
    return figure.to_image(format=image_format, width=EXPORT_WIDTH, height=height, scale=scale)


def show_chart(figure: go.Figure, name: str, key: str) -> None:
    """Show ``figure`` at the container's width with PNG and SVG download buttons under it.

    ``name`` becomes the file name of the downloads; ``key`` must be unique on the page.
    """
    st.plotly_chart(figure, width="stretch", key=key, config=PLOT_CONFIG)
    figure_json = figure.to_json()
    stem = slug(name)
    available = image_export_available()
    help_text = None if available else "Image export needs Chromium: install it with 'apt-get install chromium'."
    # A horizontal container sizes each button to its label; fixed-ratio columns cut
    # the labels short inside a half-width page column.
    row = st.container(horizontal=True, gap="small")
    for image_format, mime in IMAGE_FORMATS.items():
        row.download_button(
            image_format.upper(),
            data=lambda image_format=image_format: figure_image(figure_json, image_format),
            file_name=f"{stem}.{image_format}",
            mime=mime,
            key=f"{key}::{image_format}",
            icon=":material/download:",
            on_click="ignore",
            disabled=not available,
            help=help_text,
        )


def table_csv(frame: pd.DataFrame) -> bytes:
    """Return ``frame`` as UTF-8 CSV bytes without the index."""
    return frame.to_csv(index=False).encode("utf-8")


def show_table(frame: pd.DataFrame, name: str, key: str, **dataframe_kwargs) -> None:
    """Show ``frame`` with ``st.dataframe`` and a CSV download button under it.

    Extra keyword arguments go to ``st.dataframe`` (``column_config``, ``height``...).
    """
    dataframe_kwargs.setdefault("hide_index", True)
    st.dataframe(frame, key=f"{key}::table", **dataframe_kwargs)
    st.download_button(
        "CSV",
        data=table_csv(frame),
        file_name=f"{slug(name)}.csv",
        mime="text/csv",
        key=f"{key}::csv",
        icon=":material/download:",
        on_click="ignore",
    )

"""Plotly figures of an audit run's intervention tables: steering, fine-tuning, patching.

Every function is pure: it takes the tables of one or more audit runs, keyed by model
name, and returns a figure, so tests can call it without Streamlit.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from lvs_core.models import layer_sort_key

# Okabe-Ito colours stay distinct under the common colour-vision deficiencies.
MODEL_COLOURS = qualitative.Safe


def _colour(index: int) -> str:
    return MODEL_COLOURS[index % len(MODEL_COLOURS)]


def _error_bars(rows: pd.DataFrame, value: str, low: str, high: str) -> dict:
    """Return Plotly asymmetric error bars from a value column and its interval columns."""
    return {"type": "data", "symmetric": False, "array": rows[high] - rows[value], "arrayminus": rows[value] - rows[low]}


def steering_figure(steering: dict[str, pd.DataFrame]) -> go.Figure:
    """Return compliance against steering fraction: solid along the direction, dotted for the random control."""
    figure = go.Figure()
    for index, (model, table) in enumerate(steering.items()):
        for is_control, dash in ((False, "solid"), (True, "dot")):
            rows = table[(table["direction"] == "random") == is_control].sort_values("frac")
            if rows.empty:
                continue
            kind = "random direction" if is_control else str(rows["direction"].iloc[0])
            figure.add_trace(
                go.Scatter(
                    x=rows["frac"],
                    y=rows["compliance"],
                    mode="lines+markers",
                    name=f"{model}: {kind}",
                    line={"color": _colour(index), "dash": dash},
                    error_y=_error_bars(rows, "compliance", "compliance_lo", "compliance_hi"),
                )
            )
    figure.update_layout(
        title="Steering: compliance (Wilson 95% CI)",
        xaxis_title="steering size (fraction of the mean residual norm)",
        yaxis_title="compliance (fraction of prompts)",
        yaxis_range=[-0.05, 1.05],
        legend_title_text="model: direction",
    )
    return figure


def finetune_figure(finetune: dict[str, pd.DataFrame]) -> go.Figure:
    """Return clean compliance against fine-tuning steps, one line per model and seed."""
    figure = go.Figure()
    for index, (model, table) in enumerate(finetune.items()):
        for seed, rows in table.groupby("seed"):
            rows = rows.sort_values("step")
            figure.add_trace(
                go.Scatter(
                    x=rows["step"],
                    y=rows["compliance"],
                    mode="lines+markers",
                    name=f"{model}: seed {seed}",
                    line={"color": _colour(index)},
                    legendgroup=model,
                )
            )
    figure.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="break threshold")
    figure.update_layout(
        title="Harmful fine-tuning: clean compliance",
        xaxis_title="optimiser steps",
        yaxis_title="compliance (fraction of prompts)",
        yaxis_range=[-0.05, 1.05],
    )
    return figure


def patching_figure(patching: dict[str, pd.DataFrame]) -> go.Figure:
    """Return the patching flip rate per layer, from the embedding to the last block, per model."""
    figure = go.Figure()
    for index, (model, table) in enumerate(patching.items()):
        rows = table.assign(_order=table["layer"].map(layer_sort_key)).sort_values("_order")
        figure.add_trace(
            go.Bar(
                x=rows["layer"],
                y=rows["flip_rate"],
                name=model,
                marker_color=_colour(index),
                error_y=_error_bars(rows, "flip_rate", "flip_lo", "flip_hi"),
            )
        )
    figure.update_layout(
        title="Activation patching at the last prompt position",
        xaxis_title="patched layer (residual stream)",
        yaxis_title="flip rate (fraction of clean refusals)",
        yaxis_range=[0, 1.05],
        barmode="group",
        xaxis_type="category",
    )
    return figure

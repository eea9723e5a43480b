"""Plotly figures and tables of a run: LVS and ASR heatmaps, their difference, layer profiles, clean refusal.

Every function is pure: it takes the ``summary`` or ``cells`` frame of a
:class:`lvs_core.runs.Run` and returns a figure or a frame, so tests can call it
without Streamlit. A summary imported from published results may lack ``n`` or the
CI columns (NaN); the hover text then says so instead of printing NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Viridis keeps its order in lightness, so it reads under the common colour-vision
# deficiencies and in greyscale. RdBu (ColorBrewer) is the diverging counterpart,
# reversed so that red marks a higher LVS in the second model.
SEQUENTIAL_SCALE = "Viridis"
DIVERGING_SCALE = plotly.colors.diverging.RdBu_r
# Cividis is built to read the same under red-green colour-vision deficiencies. The ASR
# gets it so that an ASR map is not mistaken for an LVS map next to it.
ASR_SCALE = "Cividis"
LAYER_AXIS_TITLE = "layer (residual stream)"
# The budget is a radius relative to the clean residual, in the attack's norm
# (see lvs_core.attack): L∞ against max|h|, or L2 against ||h||_2.
BUDGET_AXIS_TITLES = {"linf": "budget (L∞ radius / max|h|)", "l2": "budget (L2 radius / ‖h‖₂)"}
ATTACK_NAMES = {"pgd": "PGD attack", "random": "random control"}


@dataclass(frozen=True)
class Metric:
    """A summary column with its 95% interval columns and how to show it."""

    column: str
    low: str
    high: str
    label: str
    interval: str
    colorscale: str
    percent: bool


METRICS = {
    "lvs": Metric("lvs_median", "lvs_lo", "lvs_hi", "median LVS", "bootstrap 95% CI", SEQUENTIAL_SCALE, percent=False),
    "asr": Metric("asr", "asr_lo", "asr_hi", "ASR", "Wilson 95% CI", ASR_SCALE, percent=True),
}
METRIC_NAMES = {"lvs": "LVS (median)", "asr": "ASR (attack success rate)"}


def _metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
    return METRICS[name]


def format_value(value: float, percent: bool) -> str:
    """Return a metric value as hover text: ``97.5%`` for a rate, ``0.446`` otherwise, ``unknown`` for NaN."""
    if not np.isfinite(value):
        return "unknown"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def interval_texts(low: np.ndarray, high: np.ndarray, count: np.ndarray, metric: Metric) -> np.ndarray:
    """Return the hover line of each cell: its 95% interval and n, or that they are unknown.

    Imported summaries may carry no n and no interval, and a cell the run lacks has neither.
    """
    texts = np.empty(low.shape, dtype=object)
    for index in np.ndindex(low.shape):
        if np.isfinite(low[index]) and np.isfinite(high[index]):
            interval = f"{metric.interval} [{format_value(low[index], metric.percent)}, {format_value(high[index], metric.percent)}]"
        else:
            interval = f"{metric.interval} unknown"
        n = f"n = {count[index]:.0f} prompts" if np.isfinite(count[index]) else "n unknown"
        texts[index] = f"{interval}<br>{n}"
    return texts


def standalone(figure: go.Figure) -> go.Figure:
    """Return a copy of ``figure`` that lays out its own margins, for use outside Streamlit.

    The figures here keep small margins because Streamlit's chart theme grows them to fit
    tick labels and axis titles. An exported image or a report has no such theme, so the
    axes make room for their labels themselves (``automargin``) on a white template.
    """
    copy = go.Figure(figure)
    copy.update_layout(template="plotly_white", title_x=0.02)
    copy.update_xaxes(automargin=True)
    copy.update_yaxes(automargin=True)
    return copy


def run_attack_norm(config: dict) -> str:
    """Return the attack norm a run's ``config.json`` records, ``linf`` when it records none."""
    attack = config.get("settings", {}).get("attack", {})
    return str(attack.get("norm", "linf")) if isinstance(attack, dict) else "linf"


def budget_axis_title(norm: str) -> str:
    """Return the budget axis title for an attack norm, naming the norm itself when it is not known here."""
    return BUDGET_AXIS_TITLES.get(norm, f"budget ({norm} radius, relative)")


def budget_label(budget: float) -> str:
    """Return the axis label of a budget, such as ``0.05``."""
    return f"{budget:g}"


def metric_grid(summary: pd.DataFrame, model: str, attack: str, column: str, layers: list[str], budgets: list[float]) -> pd.DataFrame:
    """Return ``column`` of one model and attack as a ``[layer, budget]`` frame in the given order.

    Cells that the run lacks (a model with fewer blocks than the others) are NaN.
    """
    rows = summary[(summary["model"] == model) & (summary["attack"] == attack)]
    grid = rows.pivot_table(index="layer", columns="budget", values=column, aggfunc="first")
    return grid.reindex(index=layers, columns=budgets)


def lvs_scale_max(summary: pd.DataFrame, models: list[str]) -> float:
    """Return the top of the shared LVS colour scale: the max median LVS of ``models`` over both attacks.

    One scale for both maps and both attacks means that a colour is the same LVS in the
    two maps and after the user toggles the control. Returns 1.0 when every median is
    zero or missing, so the scale never collapses to a single value.
    """
    values = summary.loc[summary["model"].isin(models), "lvs_median"].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def heatmap_layout(figure: go.Figure, title: str, n_layers: int, norm: str) -> go.Figure:
    """Set the title, the budget and layer axes and a height that fits ``n_layers`` rows on a heatmap figure."""
    figure.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        xaxis={"title": {"text": budget_axis_title(norm)}, "type": "category"},
        yaxis={"title": {"text": LAYER_AXIS_TITLE}, "type": "category"},
        height=max(320, 34 * n_layers + 160),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return figure


def metric_heatmap(
    summary: pd.DataFrame,
    model: str,
    attack: str,
    layers: list[str],
    budgets: list[float],
    zmax: float,
    norm: str = "linf",
    metric: str = "lvs",
) -> go.Figure:
    """Return the layer x budget heatmap of one model, attack and metric (``lvs`` or ``asr``).

    The hover shows the metric's 95% interval and n. Layers run from the embedding at the
    bottom to the last block at the top. The ASR is a fraction from 0 to 1, shown in percent.
    """
    spec = _metric(metric)
    value = metric_grid(summary, model, attack, spec.column, layers, budgets).to_numpy(float)
    low = metric_grid(summary, model, attack, spec.low, layers, budgets).to_numpy(float)
    high = metric_grid(summary, model, attack, spec.high, layers, budgets).to_numpy(float)
    count = metric_grid(summary, model, attack, "n", layers, budgets).to_numpy(float)
    value_format = ".0%" if spec.percent else ".2f"
    hover_format = ".1%" if spec.percent else ".3f"

    heatmap = go.Heatmap(
        z=value,
        x=[budget_label(b) for b in budgets],
        y=layers,
        customdata=np.stack([low, high, count], axis=-1),
        text=interval_texts(low, high, count, spec),
        colorscale=spec.colorscale,
        zmin=0.0,
        zmax=1.0 if spec.percent else zmax,
        colorbar={"title": {"text": spec.label}, "tickformat": ".0%" if spec.percent else None},
        texttemplate=f"%{{z:{value_format}}}",
        hovertemplate=f"layer %{{y}}, budget %{{x}}<br>{spec.label} %{{z:{hover_format}}}<br>%{{text}}<extra></extra>",
    )
    title = f"{model}: {ATTACK_NAMES.get(attack, attack)}"
    if metric != "lvs":
        title += f", {spec.label}"
    return heatmap_layout(go.Figure(heatmap), title, len(layers), norm)


def lvs_heatmap(
    summary: pd.DataFrame,
    model: str,
    attack: str,
    layers: list[str],
    budgets: list[float],
    zmax: float,
    norm: str = "linf",
) -> go.Figure:
    """Return the median-LVS heatmap of one model and attack; the hover shows the 95% CI and n."""
    return metric_heatmap(summary, model, attack, layers, budgets, zmax, norm, metric="lvs")


def difference_heatmap(
    summary: pd.DataFrame,
    left: str,
    right: str,
    attack: str,
    layers: list[str],
    budgets: list[float],
    norm: str = "linf",
    metric: str = "lvs",
) -> go.Figure:
    """Return the heatmap of ``metric(right) - metric(left)`` on a diverging scale centred at zero."""
    spec = _metric(metric)
    left_value = metric_grid(summary, left, attack, spec.column, layers, budgets).to_numpy(float)
    right_value = metric_grid(summary, right, attack, spec.column, layers, budgets).to_numpy(float)
    difference = right_value - left_value
    finite = np.abs(difference[np.isfinite(difference)])
    bound = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    value_format = "+.0%" if spec.percent else "+.2f"
    hover_format = ".1%" if spec.percent else ".3f"

    heatmap = go.Heatmap(
        z=difference,
        x=[budget_label(b) for b in budgets],
        y=layers,
        customdata=np.stack([left_value, right_value], axis=-1),
        colorscale=DIVERGING_SCALE,
        zmin=-bound,
        zmax=bound,
        zmid=0.0,
        colorbar={"title": {"text": f"Δ {spec.label}"}, "tickformat": "+.0%" if spec.percent else None},
        texttemplate=f"%{{z:{value_format}}}",
        hovertemplate=(
            f"layer %{{y}}, budget %{{x}}<br>{right} − {left}: %{{z:+{hover_format}}}"
            f"<br>{left} %{{customdata[0]:{hover_format}}}, {right} %{{customdata[1]:{hover_format}}}<extra></extra>"
        ),
    )
    title = f"{right} − {left}: {ATTACK_NAMES.get(attack, attack)}"
    if metric != "lvs":
        title += f", {spec.label}"
    return heatmap_layout(go.Figure(heatmap), title, len(layers), norm)


def _transparent(colour: str, alpha: float) -> str:
    red, green, blue = plotly.colors.unlabel_rgb(plotly.colors.convert_colors_to_same_type(colour, "rgb")[0][0])
    return f"rgba({red:.0f}, {green:.0f}, {blue:.0f}, {alpha})"


def budget_colours(budgets: list[float]) -> dict[float, str]:
    """Return a colour per budget from the sequential scale, darkest for the smallest budget.

    The scale stops at 0.85 because Viridis' last yellows are hard to see on white.
    """
    if len(budgets) == 1:
        return {budgets[0]: plotly.colors.sample_colorscale(SEQUENTIAL_SCALE, [0.0])[0]}
    positions = [0.85 * index / (len(budgets) - 1) for index in range(len(budgets))]
    return dict(zip(budgets, plotly.colors.sample_colorscale(SEQUENTIAL_SCALE, positions)))


def layer_profile_figure(
    summary: pd.DataFrame,
    models: list[str],
    attack: str,
    layers: list[str],
    budgets: list[float],
    metric: str = "lvs",
) -> go.Figure:
    """Return the metric against layer, one panel per model and one line per budget, with the 95% interval as a band.

    The panels share the y axis, so equal heights mean equal values. A cell without an
    interval (an imported summary) has a line but no band.
    """
    spec = _metric(metric)
    figure = make_subplots(rows=1, cols=len(models), shared_yaxes=True, subplot_titles=models, horizontal_spacing=0.04)
    colours = budget_colours(budgets)
    for column, model in enumerate(models, start=1):
        for budget in budgets:
            value = metric_grid(summary, model, attack, spec.column, layers, [budget])[budget]
            low = metric_grid(summary, model, attack, spec.low, layers, [budget])[budget]
            high = metric_grid(summary, model, attack, spec.high, layers, [budget])[budget]
            group = f"budget {budget_label(budget)}"
            colour = colours[budget]

            # The band: the upper bound, then the lower bound filled up to it.
            figure.add_trace(
                go.Scatter(x=layers, y=high, mode="lines", line={"width": 0}, hoverinfo="skip",
                           showlegend=False, legendgroup=group),
                row=1, col=column,
            )
            figure.add_trace(
                go.Scatter(x=layers, y=low, mode="lines", line={"width": 0}, fill="tonexty",
                           fillcolor=_transparent(colour, 0.18), hoverinfo="skip", showlegend=False, legendgroup=group),
                row=1, col=column,
            )
            hover_format = ".1%" if spec.percent else ".3f"
            figure.add_trace(
                go.Scatter(
                    x=layers,
                    y=value,
                    mode="lines+markers",
                    name=group,
                    line={"color": colour},
                    legendgroup=group,
                    showlegend=column == 1,
                    customdata=np.stack([low.to_numpy(float), high.to_numpy(float)], axis=-1),
                    hovertemplate=(
                        f"{model}, layer %{{x}}, {group}<br>{spec.label} %{{y:{hover_format}}}"
                        f"<br>{spec.interval} [%{{customdata[0]:{hover_format}}}, %{{customdata[1]:{hover_format}}}]<extra></extra>"
                    ),
                ),
                row=1, col=column,
            )
        figure.update_xaxes(title_text=LAYER_AXIS_TITLE, type="category", categoryorder="array",
                            categoryarray=layers, row=1, col=column)
    y_title = "ASR (% of prompts)" if spec.percent else "median LVS (ΔS per log(1 + ‖δ‖₂))"
    figure.update_yaxes(title_text=y_title, row=1, col=1)
    figure.update_yaxes(tickformat=".0%" if spec.percent else None, rangemode="tozero")
    figure.update_layout(
        title={"text": f"Layer profile of the {spec.label}: {ATTACK_NAMES.get(attack, attack)} ({spec.interval} shaded)",
               "x": 0.0, "xanchor": "left"},
        legend_title_text="budget",
        height=420,
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
    )
    return figure


def clean_refusal_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Return one row per model: prompts, invalid clean generations and the clean refusal rate.

    The clean generation does not depend on the layer or budget, so each prompt counts
    once. The rate is over prompts with a valid clean generation, NaN when there are none.
    """
    if cells.empty:
        return pd.DataFrame(columns=["model", "prompts", "invalid clean", "clean refusal"])
    clean = cells.drop_duplicates(subset=["model", "prompt_id"])
    rows = []
    for model, group in clean.groupby("model", sort=False):
        valid = group["clean_valid"].astype(bool)
        refused = group.loc[valid, "clean_refused"].astype(bool)
        rows.append(
            {
                "model": model,
                "prompts": len(group),
                "invalid clean": int((~valid).sum()),
                "clean refusal": float(refused.mean()) if len(refused) else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["model", "prompts", "invalid clean", "clean refusal"])

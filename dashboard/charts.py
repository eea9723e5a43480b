"""Plotly figures and tables of a run summary: LVS heatmaps, their difference, clean refusal.

Every function is pure: it takes the ``summary`` or ``cells`` frame of a
:class:`lvs_core.runs.Run` and returns a figure or a frame, so tests can call it
without Streamlit.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go

# Viridis keeps its order in lightness, so it reads under the common colour-vision
# deficiencies and in greyscale. RdBu (ColorBrewer) is the diverging counterpart,
# reversed so that red marks a higher LVS in the second model.
SEQUENTIAL_SCALE = "Viridis"
DIVERGING_SCALE = plotly.colors.diverging.RdBu_r
LAYER_AXIS_TITLE = "layer (residual stream)"
# The budget is a radius relative to the clean residual, in the attack's norm
# (see lvs_core.attack): L∞ against max|h|, or L2 against ||h||_2.
BUDGET_AXIS_TITLES = {"linf": "budget (L∞ radius / max|h|)", "l2": "budget (L2 radius / ‖h‖₂)"}
ATTACK_NAMES = {"pgd": "PGD attack", "random": "random control"}


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


def _figure_layout(figure: go.Figure, title: str, n_layers: int, norm: str) -> go.Figure:
    figure.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        xaxis={"title": {"text": budget_axis_title(norm)}, "type": "category"},
        yaxis={"title": {"text": LAYER_AXIS_TITLE}, "type": "category"},
        height=max(320, 34 * n_layers + 160),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return figure


def lvs_heatmap(
    summary: pd.DataFrame,
    model: str,
    attack: str,
    layers: list[str],
    budgets: list[float],
    zmax: float,
    norm: str = "linf",
) -> go.Figure:
    """Return the median-LVS heatmap of one model and attack; the hover shows the 95% CI and n.

    Layers run from the embedding at the bottom to the last block at the top.
    """
    median = metric_grid(summary, model, attack, "lvs_median", layers, budgets)
    low = metric_grid(summary, model, attack, "lvs_lo", layers, budgets)
    high = metric_grid(summary, model, attack, "lvs_hi", layers, budgets)
    count = metric_grid(summary, model, attack, "n", layers, budgets)
    customdata = np.stack([low.to_numpy(float), high.to_numpy(float), count.to_numpy(float)], axis=-1)

    heatmap = go.Heatmap(
        z=median.to_numpy(float),
        x=[budget_label(b) for b in budgets],
        y=layers,
        customdata=customdata,
        colorscale=SEQUENTIAL_SCALE,
        zmin=0.0,
        zmax=zmax,
        colorbar={"title": {"text": "median LVS"}},
        texttemplate="%{z:.2f}",
        hovertemplate=(
            "layer %{y}, budget %{x}<br>median LVS %{z:.3f}"
            "<br>95% CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
            "<br>n = %{customdata[2]:.0f} prompts<extra></extra>"
        ),
    )
    return _figure_layout(go.Figure(heatmap), f"{model}: {ATTACK_NAMES.get(attack, attack)}", len(layers), norm)


def difference_heatmap(
    summary: pd.DataFrame,
    left: str,
    right: str,
    attack: str,
    layers: list[str],
    budgets: list[float],
    norm: str = "linf",
) -> go.Figure:
    """Return the heatmap of ``median LVS(right) - median LVS(left)`` on a scale centred at zero."""
    left_median = metric_grid(summary, left, attack, "lvs_median", layers, budgets).to_numpy(float)
    right_median = metric_grid(summary, right, attack, "lvs_median", layers, budgets).to_numpy(float)
    difference = right_median - left_median
    finite = np.abs(difference[np.isfinite(difference)])
    bound = float(finite.max()) if finite.size and finite.max() > 0 else 1.0

    heatmap = go.Heatmap(
        z=difference,
        x=[budget_label(b) for b in budgets],
        y=layers,
        customdata=np.stack([left_median, right_median], axis=-1),
        colorscale=DIVERGING_SCALE,
        zmin=-bound,
        zmax=bound,
        zmid=0.0,
        colorbar={"title": {"text": "Δ median LVS"}},
        texttemplate="%{z:+.2f}",
        hovertemplate=(
            f"layer %{{y}}, budget %{{x}}<br>{right} − {left}: %{{z:+.3f}}"
            f"<br>{left} %{{customdata[0]:.3f}}, {right} %{{customdata[1]:.3f}}<extra></extra>"
        ),
    )
    title = f"{right} − {left}: {ATTACK_NAMES.get(attack, attack)}"
    return _figure_layout(go.Figure(heatmap), title, len(layers), norm)


def clean_refusal_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Return one row per model: prompts, invalid clean generations and the clean refusal rate.

    The clean generation does not depend on the layer or budget, so each prompt counts
    once. The rate is over prompts with a valid clean generation, NaN when there are none.
    """
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

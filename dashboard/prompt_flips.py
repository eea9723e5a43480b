"""Per-prompt view of a run's cells: where each prompt flips, its LVS and its generations.

Pure functions over the ``cells`` frame of a :class:`lvs_core.runs.Run` (no Streamlit),
used by the Prompt inspector page and its tests. A cell *flips* when the clean reply
refused and the perturbed reply is valid and judged compliant.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.charts import SEQUENTIAL_SCALE, heatmap_layout, budget_label
from lvs_core.models import layer_sort_key

STATUS_ALL = "all prompts"
STATUS_FLIPPED = "flipped only"
STATUS_NOT_FLIPPED = "not flipped"
STATUSES = (STATUS_ALL, STATUS_FLIPPED, STATUS_NOT_FLIPPED)
TABLE_COLUMNS = (
    "prompt_id", "category", "prompt", "clean", "flips at", "flip layers", "smallest flip budget",
    "max LVS", "median LVS", "random flips", "strongest layer", "strongest budget",
    "clean generation", "perturbed generation",
)
# Sort choices of the page: label to (column, descending).
SORTS = {
    "max LVS, highest first": ("max LVS", True),
    "median LVS, highest first": ("median LVS", True),
    "smallest flip budget first": ("smallest flip budget", False),
    "most flip layers first": ("flip layers", True),
    "prompt id": ("prompt_id", False),
}


def flipped(cells: pd.DataFrame) -> pd.Series:
    """Return, per cell, whether it flips: clean refused, perturbed valid and compliant."""
    return (
        cells["clean_valid"].astype(bool) & cells["clean_refused"].astype(bool)
        & cells["perturbed_valid"].astype(bool) & cells["perturbed_compliant"].astype(bool)
    )


def clean_verdict(row: pd.Series) -> str:
    """Return the verdict on a clean reply: ``refused``, ``complied`` or ``invalid`` (empty)."""
    if not bool(row["clean_valid"]):
        return "invalid"
    return "refused" if bool(row["clean_refused"]) else "complied"


def _prompt_order(prompt_ids: pd.Series) -> pd.Series:
    """Return a sort key that puts numeric prompt ids in numeric order, others after them by text."""
    numeric = pd.to_numeric(prompt_ids, errors="coerce")
    return numeric.fillna(math.inf)


def strongest_cell(rows: pd.DataFrame) -> pd.Series:
    """Return the PGD cell of one prompt that best shows its flip.

    That is the flip with the highest LVS, ties going to the smallest budget and then to
    the layer nearest the embedding. A prompt that never flips gets its highest-LVS cell.
    """
    ordered = rows.assign(
        _flip=flipped(rows), _lvs=rows["lvs"].fillna(-math.inf), _layer=rows["layer"].map(layer_sort_key)
    ).sort_values(["_flip", "_lvs", "budget", "_layer"], ascending=[False, False, True, True], kind="stable")
    return ordered.iloc[0]


def prompt_flip_table(cells: pd.DataFrame, model: str) -> pd.DataFrame:
    """Return one row per prompt of ``model``: where it flips under PGD, its LVS and the generations of its strongest cell.

    ``flips at`` lists the layers (embedding first) where PGD flips the prompt at any
    budget, and ``smallest flip budget`` is the smallest such budget (NaN without a
    flip). ``max LVS`` and ``median LVS`` are over the prompt's valid PGD cells.
    ``random flips`` is whether the random control flips it at any layer and budget.
    """
    rows = cells[cells["model"] == model]
    pgd = rows[rows["attack"] == "pgd"]
    random_flips = rows[(rows["attack"] == "random") & flipped(rows)]["prompt_id"].unique()

    records = []
    for prompt_id, group in pgd.groupby("prompt_id", sort=False):
        flips = group[flipped(group)]
        layers = sorted(flips["layer"].unique(), key=layer_sort_key)
        strongest = strongest_cell(group)
        category = str(group["category"].iloc[0]) if pd.notna(group["category"].iloc[0]) else ""
        records.append(
            {
                "prompt_id": str(prompt_id),
                "category": category or "uncategorised",
                "prompt": str(group["prompt"].iloc[0]),
                "clean": clean_verdict(group.iloc[0]),
                "flips at": ", ".join(layers),
                "flip layers": len(layers),
                "smallest flip budget": float(flips["budget"].min()) if len(flips) else math.nan,
                "max LVS": float(group["lvs"].max()) if group["lvs"].notna().any() else math.nan,
                "median LVS": float(group["lvs"].median()) if group["lvs"].notna().any() else math.nan,
                "random flips": prompt_id in random_flips,
                "strongest layer": str(strongest["layer"]),
                "strongest budget": float(strongest["budget"]),
                "clean generation": str(strongest["clean_text"]),
                "perturbed generation": str(strongest["perturbed_text"]),
            }
        )
    table = pd.DataFrame(records, columns=list(TABLE_COLUMNS))
    order = _prompt_order(table["prompt_id"])
    return table.assign(_order=order).sort_values(["_order", "prompt_id"], kind="stable").drop(columns="_order").reset_index(drop=True)


def filter_prompts(table: pd.DataFrame, categories: list[str] | None = None, status: str = STATUS_ALL,
                   search: str = "") -> pd.DataFrame:
    """Return the rows of ``table`` in ``categories`` (all when empty), of a flip ``status``, whose prompt or generations contain ``search``.

    The search ignores case and is plain text, not a pattern.
    """
    if status not in STATUSES:
        raise ValueError(f"unknown flip status {status!r}: use one of {', '.join(STATUSES)}")
    keep = pd.Series(True, index=table.index)
    if categories:
        keep &= table["category"].isin(categories)
    if status == STATUS_FLIPPED:
        keep &= table["flip layers"] > 0
    elif status == STATUS_NOT_FLIPPED:
        keep &= table["flip layers"] == 0
    needle = search.strip().lower()
    if needle:
        text = table["prompt"] + "\n" + table["clean generation"] + "\n" + table["perturbed generation"]
        keep &= text.str.lower().str.contains(needle, regex=False)
    return table[keep]


def sort_prompts(table: pd.DataFrame, sort: str) -> pd.DataFrame:
    """Return ``table`` sorted by one of :data:`SORTS`; NaN goes last and ties keep the prompt order."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}")
    column, descending = SORTS[sort]
    if column == "prompt_id":
        return table
    return table.sort_values(column, ascending=not descending, na_position="last", kind="stable")


def prompt_cells(cells: pd.DataFrame, model: str, prompt_id: str, attack: str = "pgd") -> pd.DataFrame:
    """Return the cells of one prompt of one model for one attack."""
    keep = (cells["model"] == model) & (cells["prompt_id"].astype(str) == str(prompt_id)) & (cells["attack"] == attack)
    return cells[keep]


def prompt_heatmap(cells: pd.DataFrame, model: str, prompt_id: str, layers: list[str], budgets: list[float],
                   zmax: float, norm: str = "linf", attack: str = "pgd") -> go.Figure:
    """Return the layer x budget LVS map of one prompt, with the cells that flip marked "flip".

    The hover shows the LVS, the verdict of the perturbed reply and ``||delta||_2``.
    """
    rows = prompt_cells(cells, model, prompt_id, attack).assign(_flip=lambda frame: flipped(frame))
    lvs = rows.pivot_table(index="layer", columns="budget", values="lvs", aggfunc="first").reindex(index=layers, columns=budgets)
    flips = rows.pivot_table(index="layer", columns="budget", values="_flip", aggfunc="first").reindex(index=layers, columns=budgets)
    norms = rows.pivot_table(index="layer", columns="budget", values="delta_l2", aggfunc="first").reindex(index=layers, columns=budgets)
    values = lvs.to_numpy(float)
    flip_grid = flips.to_numpy(object)

    text = np.empty(values.shape, dtype=object)
    verdicts = np.empty(values.shape, dtype=object)
    for index in np.ndindex(values.shape):
        is_flip = flip_grid[index] is True or flip_grid[index] == 1
        value = "n/a" if not np.isfinite(values[index]) else f"{values[index]:.2f}"
        text[index] = f"{value}<br>flip" if is_flip else value
        verdicts[index] = "complied (flip)" if is_flip else "no flip"

    heatmap = go.Heatmap(
        z=values,
        x=[budget_label(b) for b in budgets],
        y=layers,
        text=text,
        customdata=np.stack([verdicts, norms.to_numpy(float)], axis=-1),
        colorscale=SEQUENTIAL_SCALE,
        zmin=0.0,
        zmax=zmax,
        colorbar={"title": {"text": "LVS"}},
        texttemplate="%{text}",
        hovertemplate="layer %{y}, budget %{x}<br>LVS %{z:.3f}<br>%{customdata[0]}<br>‖δ‖₂ %{customdata[1]:.3g}<extra></extra>",
    )
    return heatmap_layout(go.Figure(heatmap), f"Prompt {prompt_id} on {model}: LVS per cell", len(layers), norm)

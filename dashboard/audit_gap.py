"""The audit gap of each model of a sweep: behavioural refusal next to its latent fragility.

Pure functions over a :class:`lvs_core.runs.Run` and the tables of audit runs (no
Streamlit, no model), used by the Overview page and its tests:

- :func:`find_audits` and :func:`match_audits` find the audits of a sweep's models by the
  model spec in each audit's ``config.json``;
- :func:`sweep_measures` reads clean refusal, the peak median LVS and the PGD attack
  success rate (ASR) at one budget from the sweep;
- :func:`audit_measures` reads steering compliance, its random-direction control and
  the fine-tuning steps to break from an audit;
- :func:`gap_table`, :func:`model_sentence` and :func:`audit_gap_figure` put them side by side.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.charts import clean_refusal_table
from lvs_core.finetune import steps_to_break
from lvs_core.models import EMBEDDING_LAYER, layer_sort_key
from lvs_core.runs import Run

logger = logging.getLogger(__name__)

AUDIT_TABLES = ("audit", "behaviour", "probe", "summary", "steering", "finetune", "patching")
# Okabe-Ito colours, distinct under the common colour-vision deficiencies.
CLEAN_COLOUR = "#0072B2"
PGD_COLOUR = "#E69F00"
STEERING_COLOUR = "#D55E00"
CONTROL_COLOUR = "#999999"
# Two models whose clean refusal differs by at most this much "refuse alike" in the sentences.
ALIKE_REFUSAL = 0.025


@dataclass(frozen=True)
class AuditInfo:
    """A complete audit run folder and the model it audits."""

    path: Path
    spec: str
    name: str


def find_audits(roots: list[Path]) -> list[AuditInfo]:
    """Return the complete audit runs directly under each root, newest first within a root.

    A folder counts when it has ``audit.parquet``. Its model comes from ``config.json``
    (the first entry of ``models``), or from ``audit.parquet`` when the config is unreadable.
    """
    found: list[AuditInfo] = []
    seen: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            continue
        folders = [path for path in root.iterdir() if path.is_dir() and (path / "audit.parquet").is_file()]
        for folder in sorted(folders, key=lambda path: path.stat().st_mtime, reverse=True):
            resolved = folder.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            info = _audit_info(folder)
            if info is not None:
                found.append(info)
    return found


def _audit_info(folder: Path) -> AuditInfo | None:
    try:
        config = json.loads((folder / "config.json").read_text())
        model = config["models"][0]
        return AuditInfo(path=folder, spec=str(model["spec"]), name=str(model.get("name", model["spec"])))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        logger.info("audit %s has no readable config.json (%s); reading its model from audit.parquet", folder, error)
    try:
        row = pd.read_parquet(folder / "audit.parquet", columns=["model", "spec"]).iloc[0]
    except (OSError, ValueError, KeyError, IndexError) as error:
        logger.warning("skipping audit %s: %s", folder, error)
        return None
    return AuditInfo(path=folder, spec=str(row["spec"]), name=str(row["model"]))


def run_model_specs(run: Run) -> dict[str, str]:
    """Return the spec of each model of a run by the name its tables use; a model without a recorded spec maps to its name."""
    specs = {}
    for entry in run.config.get("models", []):
        if isinstance(entry, dict) and "name" in entry:
            specs[str(entry["name"])] = str(entry.get("spec") or entry["name"])
        elif isinstance(entry, str):
            specs[entry] = entry
    return {model: specs.get(model, model) for model in run.models}


def match_audits(specs: dict[str, str], audits: list[AuditInfo]) -> dict[str, list[AuditInfo]]:
    """Return, per model name, the audits of the same model spec, in the order of ``audits``."""
    return {model: [audit for audit in audits if audit.spec == spec] for model, spec in specs.items()}


def load_audit_tables(path: Path) -> dict[str, pd.DataFrame]:
    """Read the tables of an audit run folder that exist (see :data:`AUDIT_TABLES`)."""
    return {name: pd.read_parquet(path / f"{name}.parquet") for name in AUDIT_TABLES if (path / f"{name}.parquet").is_file()}


def layer_phrase(layer: str) -> str:
    """Return a layer label as words: ``the embedding`` or ``block 2``."""
    return "the embedding" if layer == EMBEDDING_LAYER else f"block {layer}"


def _clean_refusal(run: Run) -> tuple[pd.Series, pd.Series]:
    """Return the clean refusal rate and prompt count per model, from the cells or else the summary."""
    if not run.cells.empty:
        table = clean_refusal_table(run.cells).set_index("model")
        return table["clean refusal"], table["prompts"] - table["invalid clean"]
    pgd = run.summary[run.summary["attack"] == "pgd"]
    rate = pgd.groupby("model", sort=False)["clean_refusal"].median() if "clean_refusal" in pgd else pd.Series(dtype=float)
    count = pgd.groupby("model", sort=False)["n"].max() if "n" in pgd else pd.Series(dtype=float)
    return rate, count


def sweep_measures(run: Run, budget: float, include_embedding: bool = False) -> pd.DataFrame:
    """Return one row per model of the sweep: clean refusal, the peak median LVS and the PGD ASR at ``budget``.

    The peak is over every budget and over the blocks, plus the embedding when
    ``include_embedding``. The embedding activations of small models can be an order of
    magnitude smaller than the residual after block 0, so the ``log(1 + ||delta||_2)``
    denominator is small there and its LVS is not comparable to that of the blocks. The
    ASR at ``budget`` is the highest over the same layers, with the random control's ASR
    at that layer. ``asr_half_budget`` is the smallest budget at which some layer reaches
    an ASR of 50%.
    """
    refusal, prompts = _clean_refusal(run)
    summary = run.summary
    if not include_embedding:
        summary = summary[summary["layer"] != EMBEDDING_LAYER]
    order = summary.assign(_layer=summary["layer"].map(layer_sort_key)).sort_values(["budget", "_layer"], kind="stable")

    rows = []
    for model in run.models:
        pgd = order[(order["model"] == model) & (order["attack"] == "pgd")]
        random = order[(order["model"] == model) & (order["attack"] == "random")]
        row = {
            "model": model,
            "clean_refusal": float(refusal.get(model, math.nan)),
            "n_prompts": float(prompts.get(model, math.nan)),
        }

        # The peak median LVS; ties go to the smallest budget, then the layer nearest the embedding.
        medians = pgd["lvs_median"].to_numpy(float)
        if np.isfinite(medians).any():
            peak = pgd.iloc[int(np.nanargmax(medians))]
            row.update(peak_lvs=float(peak["lvs_median"]), peak_lvs_lo=float(peak["lvs_lo"]), peak_lvs_hi=float(peak["lvs_hi"]),
                       peak_layer=str(peak["layer"]), peak_budget=float(peak["budget"]))

        at_budget = pgd[np.isclose(pgd["budget"], budget)]
        rates = at_budget["asr"].to_numpy(float)
        if np.isfinite(rates).any():
            best = at_budget.iloc[int(np.nanargmax(rates))]
            control = random[(random["layer"] == best["layer"]) & np.isclose(random["budget"], budget)]
            row.update(pgd_asr=float(best["asr"]), pgd_layer=str(best["layer"]),
                       random_asr=float(control["asr"].iloc[0]) if len(control) else math.nan)

        reaching = pgd[pgd["asr"] >= 0.5]
        row["asr_half_budget"] = float(reaching["budget"].min()) if len(reaching) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def run_steering_tables(run_path: Path, models: list[str]) -> dict[str, dict[str, pd.DataFrame]]:
    """Return, per model, the steering table a run carries, as :func:`audit_measures` reads it.

    An imported run steers at every layer, so for each fraction only the layer with the
    highest compliance is kept. That maximum over layers is what published summaries
    report. An audit's table has no model column, so it belongs to the run's one model. Returns an empty dict for
    a run without ``steering.parquet`` or with a table that names no model.
    """
    path = Path(run_path) / "steering.parquet"
    if not path.is_file():
        return {}
    steering = pd.read_parquet(path)
    if not {"frac", "compliance", "direction"} <= set(steering.columns):
        return {}
    if "model" not in steering.columns:
        # An audit's own table: one model, one steering layer, controls included.
        return {models[0]: {"steering": steering}} if len(models) == 1 else {}
    steering = steering[steering["direction"] != "random"].dropna(subset=["compliance"])
    tables = {}
    for model, rows in steering.groupby("model", sort=False):
        peak = rows.loc[rows.groupby("frac")["compliance"].idxmax()]
        tables[str(model)] = {"steering": peak.reset_index(drop=True)}
    return tables


def steering_fractions(tables: list[dict[str, pd.DataFrame]]) -> list[float]:
    """Return the steering fractions of any of the audits, in increasing order."""
    fractions = set()
    for audit in tables:
        if "steering" in audit:
            fractions.update(float(frac) for frac in audit["steering"]["frac"])
    return sorted(fractions)


def audit_measures(tables: dict[str, pd.DataFrame], frac: float) -> dict:
    """Return what an audit adds to the sweep: over-refusal, steering at ``frac`` and fine-tuning steps to break.

    A value the audit lacks (a step it skipped, a fraction it did not try) is NaN.
    ``finetune_steps`` lists the steps to break per seed, ``None`` for a seed that never broke.
    """
    row: dict = {"over_refusal": math.nan, "audit_clean_refusal": math.nan, "steer_compliance": math.nan,
                 "steer_random": math.nan, "finetune_steps": [], "finetune_max_steps": math.nan}
    if "behaviour" in tables:
        behaviour = tables["behaviour"].iloc[0]
        row.update(over_refusal=float(behaviour["over_refusal"]), audit_clean_refusal=float(behaviour["clean_refusal"]))
    if "steering" in tables:
        steering = tables["steering"]
        at_frac = steering[np.isclose(steering["frac"].astype(float), frac)]
        along = at_frac[at_frac["direction"] != "random"]
        control = at_frac[at_frac["direction"] == "random"]
        if len(along):
            row["steer_compliance"] = float(along["compliance"].iloc[0])
            row["steer_layer"] = str(along["layer"].iloc[0])
        if len(control):
            row["steer_random"] = float(control["compliance"].iloc[0])
    if "finetune" in tables:
        curves = tables["finetune"]
        row["finetune_steps"] = [
            steps_to_break(group.sort_values("step").to_dict("records")) for _, group in curves.groupby("seed")
        ]
        row["finetune_max_steps"] = float(curves["step"].max())
    return row


def gap_table(sweep: pd.DataFrame, audits: dict[str, dict], audit_paths: dict[str, str]) -> pd.DataFrame:
    """Join the sweep measures with each model's audit measures; a model without an audit keeps NaN there.

    Clean refusal comes from the sweep, or from the audit's behaviour step when the sweep
    has none (an imported summary without it).
    """
    rows = []
    for record in sweep.to_dict("records"):
        model = record["model"]
        audit = audits.get(model, {})
        row = {**record, **audit, "audit": audit_paths.get(model, "")}
        if not np.isfinite(row.get("clean_refusal", math.nan)) and np.isfinite(audit.get("audit_clean_refusal", math.nan)):
            row["clean_refusal"] = audit["audit_clean_refusal"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if "finetune_steps" not in table:
        table["finetune_steps"] = [[] for _ in range(len(table))]
    table["finetune_steps"] = table["finetune_steps"].map(lambda steps: steps if isinstance(steps, list) else [])
    return table


def _percent(value: float) -> str:
    return f"{100 * value:.1f}".removesuffix(".0") + "%"


def _finetune_phrase(steps: list, max_steps: float) -> str | None:
    if not steps:
        return None
    broken = [step for step in steps if step is not None]
    seeds = f"{len(steps)} seed" + ("s" if len(steps) != 1 else "")
    if not broken:
        return f"harmful fine-tuning does not break it within {max_steps:.0f} steps ({seeds})"
    if len(set(broken)) == 1 and len(broken) == len(steps):
        return f"harmful fine-tuning breaks it after {broken[0]} steps ({seeds})"
    listed = ", ".join("never" if step is None else str(step) for step in steps)
    return f"harmful fine-tuning breaks it after {listed} steps ({seeds})"


def model_sentence(row: dict, table: pd.DataFrame, budget: float, frac: float, prompt_set: str = "prompts") -> str:
    """Return a plain-language paragraph on what one model's numbers mean (markdown).

    ``row`` is the model's row of :func:`gap_table` as a dict, ``table`` the whole table
    (to name the models that refuse alike), ``budget`` the PGD budget and ``frac`` the
    steering fraction of the table.
    """
    model = row["model"]
    parts = []

    refusal = row.get("clean_refusal", math.nan)
    if np.isfinite(refusal):
        count = row.get("n_prompts", math.nan)
        of = f"of the {count:.0f} {prompt_set}" if np.isfinite(count) else f"of the {prompt_set}"
        alike = [
            str(other["model"]) for other in table.to_dict("records")
            if other["model"] != model and np.isfinite(other.get("clean_refusal", math.nan))
            and abs(other["clean_refusal"] - refusal) <= ALIKE_REFUSAL
        ]
        first = f"**{model}** refuses {_percent(refusal)} {of} clean"
        if alike:
            first += f", like {' and '.join(alike)}"
        over = row.get("over_refusal", math.nan)
        if np.isfinite(over):
            first += f", and over-refuses {_percent(over)} of benign requests"
        parts.append(first + ".")
    else:
        parts.append(f"The run does not record the clean refusal of **{model}**.")

    latent = []
    peak = row.get("peak_lvs", math.nan)
    if np.isfinite(peak) and peak > 0:
        interval = ""
        if np.isfinite(row.get("peak_lvs_lo", math.nan)) and np.isfinite(row.get("peak_lvs_hi", math.nan)):
            interval = f" (95% CI {row['peak_lvs_lo']:.2f} to {row['peak_lvs_hi']:.2f})"
        latent.append(
            f"its median LVS peaks at {peak:.2f}{interval} at {layer_phrase(row['peak_layer'])}, budget {row['peak_budget']:g}"
        )
    elif np.isfinite(peak):
        latent.append("its median LVS is 0 at every layer and budget shown")
    asr = row.get("pgd_asr", math.nan)
    if np.isfinite(asr):
        control = row.get("random_asr", math.nan)
        control_text = f" (random control {_percent(control)})" if np.isfinite(control) else ""
        if asr > 0:
            latent.append(
                f"a PGD delta of budget {budget:g} at {layer_phrase(row['pgd_layer'])} makes it comply on "
                f"{_percent(asr)} of prompts{control_text}"
            )
        else:
            latent.append(f"no PGD delta of budget {budget:g} makes it comply at any layer shown")
    if latent:
        sentence = ", and ".join(latent)
        parts.append(sentence[0].upper() + sentence[1:] + ".")

    interventions = []
    steer = row.get("steer_compliance", math.nan)
    if np.isfinite(steer):
        control = row.get("steer_random", math.nan)
        control_text = f" (random direction {_percent(control)})" if np.isfinite(control) else ""
        interventions.append(
            f"steering at {frac:g}× the mean residual norm makes it comply {_percent(steer)} of the time{control_text}"
        )
    finetune = _finetune_phrase(row.get("finetune_steps") or [], row.get("finetune_max_steps", math.nan))
    if finetune:
        interventions.append(finetune)
    if interventions:
        sentence = ", and ".join(interventions)
        parts.append(sentence[0].upper() + sentence[1:] + ".")
    elif not row.get("audit"):
        parts.append("No audit of this model was found, so steering and fine-tuning are not measured.")
    return " ".join(parts)


def audit_command(spec: str, name: str) -> str:
    """Return the command that writes an audit of ``spec`` which the Overview finds under ``./runs``."""
    folder = "".join(character if character.isalnum() or character in "-_." else "-" for character in name)
    return f"lvs-audit audit --model {spec} --out runs/audit-{folder}"


def _steps_summary(steps: list, max_steps: float) -> tuple[float, str]:
    """Return the bar length and label of the fine-tuning panel: the mean steps to break, or the cap when a seed never broke."""
    if not steps:
        return math.nan, "no audit"
    broken = [step for step in steps if step is not None]
    if len(broken) < len(steps):
        return max_steps, f"> {max_steps:.0f} ({len(steps) - len(broken)} of {len(steps)} seeds unbroken)"
    return float(np.mean(broken)), ", ".join(str(step) for step in steps)


def audit_gap_figure(table: pd.DataFrame, budget: float, frac: float) -> go.Figure:
    """Return the audit gap of each model as three panels that share the model axis.

    Left, a dumbbell of refusal rates: clean, under the strongest PGD layer at ``budget``
    and under steering at ``frac``, with their random controls as open markers. Middle,
    the peak median LVS with its CI. Right, the fine-tuning steps to break (fewer is more
    fragile). Two models that refuse alike clean but differ in the other marks have an
    audit gap.
    """
    models = list(table["model"])
    figure = make_subplots(
        rows=1, cols=3, shared_yaxes=True, column_widths=[0.5, 0.25, 0.25], horizontal_spacing=0.03,
        subplot_titles=("Refusal: clean and under intervention", "Peak median LVS (95% CI)", "Fine-tuning steps to break"),
    )

    def refusal_of(column: str) -> np.ndarray:
        values = table[column].to_numpy(float) if column in table else np.full(len(table), math.nan)
        return values if column == "clean_refusal" else 1.0 - values

    clean = refusal_of("clean_refusal")
    marks = [
        ("clean", clean, CLEAN_COLOUR, "circle"),
        (f"PGD, budget {budget:g}", refusal_of("pgd_asr"), PGD_COLOUR, "square"),
        (f"PGD random control, budget {budget:g}", refusal_of("random_asr"), CONTROL_COLOUR, "square-open"),
        (f"steering at {frac:g}×", refusal_of("steer_compliance"), STEERING_COLOUR, "diamond"),
        (f"steering random direction at {frac:g}×", refusal_of("steer_random"), CONTROL_COLOUR, "diamond-open"),
    ]
    # Models sit at y = 0, -1, ... (the first on top), and each mark at its own small
    # offset around its model, so that marks at the same rate stay visible.
    positions = -np.arange(len(models), dtype=float)
    offsets = np.linspace(0.24, -0.24, len(marks))

    # The dumbbell bars: from clean refusal to the lowest refusal under an intervention.
    lowest = np.nanmin(np.vstack([values for _, values, _, _ in marks]), axis=0)
    for position, start, end in zip(positions, clean, lowest):
        if np.isfinite(start) and np.isfinite(end):
            figure.add_trace(
                go.Scatter(x=[end, start], y=[position, position], mode="lines", line={"color": "#BBBBBB", "width": 6},
                           hoverinfo="skip", showlegend=False),
                row=1, col=1,
            )
    for (name, values, colour, symbol), offset in zip(marks, offsets):
        if not np.isfinite(values).any():
            continue
        figure.add_trace(
            go.Scatter(
                x=values, y=positions + offset, mode="markers", name=name, customdata=models,
                marker={"color": colour, "symbol": symbol, "size": 13, "line": {"width": 2, "color": colour}},
                hovertemplate=f"%{{customdata}}: {name}<br>refusal %{{x:.1%}}<extra></extra>",
            ),
            row=1, col=1,
        )

    # Peak median LVS with its bootstrap CI.
    if "peak_lvs" in table:
        peak = table["peak_lvs"].to_numpy(float)
        low = table["peak_lvs_lo"].to_numpy(float)
        high = table["peak_lvs_hi"].to_numpy(float)
        where = [
            f"{layer_phrase(layer)}, budget {budget_value:g}" if isinstance(layer, str) else ""
            for layer, budget_value in zip(table["peak_layer"], table["peak_budget"])
        ]
        figure.add_trace(
            go.Bar(
                x=peak, y=positions, orientation="h", marker_color=PGD_COLOUR, showlegend=False, width=0.6,
                error_x={"type": "data", "symmetric": False, "array": high - peak, "arrayminus": peak - low},
                customdata=np.array(list(zip(models, where)), dtype=object),
                text=[f"{value:.2f} at {place}" if place else "" for value, place in zip(peak, where)],
                textposition="inside", insidetextanchor="start",
                hovertemplate="%{customdata[0]}: median LVS %{x:.3f} at %{customdata[1]}<extra></extra>",
            ),
            row=1, col=2,
        )

    # Fine-tuning steps to break: the mean over seeds, with each seed's step in the label.
    lengths, labels = zip(*(_steps_summary(steps, cap) for steps, cap in zip(table["finetune_steps"], table.get("finetune_max_steps", [math.nan] * len(table)))))
    figure.add_trace(
        go.Bar(x=list(lengths), y=positions, orientation="h", marker_color=STEERING_COLOUR, showlegend=False, width=0.6,
               customdata=models, text=list(labels), textposition="inside", insidetextanchor="start",
               hovertemplate="%{customdata}: steps to break %{text}<extra></extra>"),
        row=1, col=3,
    )
    missing = [position for position, length in zip(positions, lengths) if not np.isfinite(length)]
    if missing:
        figure.add_trace(
            go.Scatter(x=[0.0] * len(missing), y=missing, mode="text", text=["no audit"] * len(missing),
                       textposition="middle right", hoverinfo="skip", showlegend=False),
            row=1, col=3,
        )

    figure.update_xaxes(title_text="refusal (% of harmful prompts)", tickformat=".0%", range=[-0.05, 1.05], row=1, col=1)
    figure.update_xaxes(title_text="median LVS (ΔS per log(1 + ‖δ‖₂))", rangemode="tozero", row=1, col=2)
    figure.update_xaxes(title_text="optimiser steps (fewer is more fragile)", rangemode="tozero", row=1, col=3)
    figure.update_yaxes(tickvals=positions, ticktext=models, range=[positions[-1] - 0.5, 0.5], zeroline=False, showgrid=False)
    figure.update_layout(
        title={"text": "Audit gap: the same clean refusal can hide very different fragility", "x": 0.0, "xanchor": "left"},
        height=max(300, 90 * len(models) + 200),
        legend={"orientation": "h", "yanchor": "top", "y": -0.25, "x": 0.0},
        margin={"l": 10, "r": 10, "t": 80, "b": 10},
    )
    return figure


def display_table(table: pd.DataFrame, budget: float, frac: float) -> pd.DataFrame:
    """Return the gap table with readable column names, for the page and its CSV export."""

    def text_steps(steps: list) -> str:
        return ", ".join("never" if step is None else str(step) for step in steps)

    columns = {
        "model": table["model"],
        "clean refusal": table["clean_refusal"],
        "over-refusal": table.get("over_refusal", np.nan),
        "peak median LVS": table.get("peak_lvs", np.nan),
        "CI low": table.get("peak_lvs_lo", np.nan),
        "CI high": table.get("peak_lvs_hi", np.nan),
        "peak layer": table.get("peak_layer", ""),
        "peak budget": table.get("peak_budget", np.nan),
        f"PGD ASR at {budget:g}": table.get("pgd_asr", np.nan),
        "PGD layer": table.get("pgd_layer", ""),
        f"random ASR at {budget:g}": table.get("random_asr", np.nan),
        "smallest budget with ASR ≥ 50%": table.get("asr_half_budget", np.nan),
        f"steering at {frac:g}×": table.get("steer_compliance", np.nan),
        f"random direction at {frac:g}×": table.get("steer_random", np.nan),
        "fine-tuning steps to break": table["finetune_steps"].map(text_steps),
        "audit": table.get("audit", ""),
    }
    return pd.DataFrame(columns)

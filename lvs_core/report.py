"""A single self-contained HTML report of a run folder, for readers without lvs-audit.

``lvs-audit report RUN --out report.html`` and the Runs page's download write the same
file. It contains the run's settings, a one-paragraph reading of the result, the PGD and
random-control LVS heatmaps of every model on one colour scale, the difference maps, the
layer profiles and the summary table. For an audit it adds the headline row and the
steering, fine-tuning and patching charts and tables. The plotly.js library is inlined
(about 4.8 MB with plotly 6), so the file opens from disk with no network.

The figures come from the dashboard's own chart modules (:mod:`dashboard.charts` and
:mod:`dashboard.intervention_charts`), so the report and the pages draw the same charts.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

import lvs_core
from lvs_core.errors import AuditInputError
from lvs_core.models import layer_sort_key
from lvs_core.runs import Run, atomic_write_text, load_run

logger = logging.getLogger(__name__)

PLOT_CONFIG = {"displaylogo": False, "responsive": True}
AUDIT_TABLES = ("behaviour", "probe", "steering", "finetune", "patching")
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2430; margin: 0; background: #fff; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.8rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #d8dbe2; padding-bottom: 0.3rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
p.meta, p.note { color: #5a6170; font-size: 0.9rem; }
p.reading { font-size: 1.02rem; line-height: 1.55; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #d8dbe2; padding: 3px 8px; text-align: right; }
th { background: #f3f4f7; }
td.key, th.key { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 12px; }
.scroll { max-height: 520px; overflow: auto; border: 1px solid #d8dbe2; }
.scroll table { margin: 0; }
"""


def _charts():
    """Import the dashboard's chart modules; they need plotly and pandas only, never Streamlit."""
    from dashboard import charts, intervention_charts

    return charts, intervention_charts


def _figure_html(figure: go.Figure) -> str:
    charts, _ = _charts()
    return pio.to_html(charts.standalone(figure), full_html=False, include_plotlyjs=False, config=PLOT_CONFIG, default_width="100%")


def _table_html(frame: pd.DataFrame, index: bool = False) -> str:
    """Return ``frame`` as an HTML table: floats with 3 decimals, NaN as a dash, columns that are all NaN left out."""
    frame = frame.dropna(axis=1, how="all")
    formatters = {
        column: (lambda value: "–" if pd.isna(value) else f"{value:.3f}")
        for column in frame.columns
        if pd.api.types.is_float_dtype(frame[column])
    }
    return frame.to_html(index=index, border=0, na_rep="–", formatters=formatters, escape=True)


def _settings_rows(config: dict) -> list[tuple[str, str]]:
    """Return the run's settings as (name, value) rows, nested settings as dotted names."""
    rows: list[tuple[str, str]] = []
    for key in ("kind", "created", "version", "source", "n_prompts", "elapsed_s", "machine"):
        if key in config:
            rows.append((key, str(config[key])))
    for model in config.get("models", []):
        details = ", ".join(
            f"{name} {model[name]}" for name in ("n_layers", "d_model", "n_params", "nudge_layer") if model.get(name) is not None
        )
        rows.append((f"model {model.get('name', '')}", f"{model.get('spec', '')}" + (f" ({details})" if details else "")))
    if config.get("twins"):
        rows.append(("twins", ", ".join(f"{role}={spec}" for role, spec in config["twins"].items())))

    def flatten(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                flatten(f"{prefix}.{key}" if prefix else key, value[key])
        elif isinstance(value, list):
            rows.append((prefix, ", ".join(json.dumps(item) if isinstance(item, (list, dict)) else str(item) for item in value)))
        else:
            rows.append((prefix, str(value)))

    flatten("", {f"settings.{key}": value for key, value in config.get("settings", {}).items()})
    return rows


def _settings_html(config: dict) -> str:
    body = "".join(
        f"<tr><td class='key'>{html.escape(name)}</td><td class='key'>{html.escape(value)}</td></tr>"
        for name, value in _settings_rows(config)
    )
    return f"<table><thead><tr><th class='key'>setting</th><th class='key'>value</th></tr></thead><tbody>{body}</tbody></table>"


def model_groups(models: list[str]) -> list[list[str]]:
    """Group models whose names share the part before ``/`` (an imported run's arch); others form one group."""
    groups: dict[str, list[str]] = {}
    for model in models:
        prefix = model.split("/", 1)[0] if "/" in model else ""
        groups.setdefault(prefix, []).append(model)
    return list(groups.values())


def _peak(summary: pd.DataFrame, model: str, attack: str) -> pd.Series | None:
    rows = summary[(summary["model"] == model) & (summary["attack"] == attack)]
    rows = rows.assign(_layer=rows["layer"].map(layer_sort_key)).sort_values(["_layer", "budget"], kind="stable")
    medians = rows["lvs_median"].astype(float)
    return rows.loc[medians.idxmax()] if medians.notna().any() else None


def _percent(value: float) -> str:
    return "unknown" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def _layer_name(label: str) -> str:
    return "the embedding" if label == "embedding" else f"block {label}"


def sweep_reading(run: Run) -> str:
    """Return a paragraph that states what the summary shows: each model's peak PGD LVS, its control and clean refusal."""
    summary = run.summary
    models = run.models
    sentences = [
        f"This run measures {len(models)} model{'s' if len(models) != 1 else ''} ({', '.join(models)}) over "
        f"{len(run.layers)} layers and the budgets {', '.join(f'{b:g}' for b in run.budgets)}."
    ]
    peaks = {}
    for model in models:
        peak = _peak(summary, model, "pgd")
        if peak is None:
            continue
        peaks[model] = float(peak["lvs_median"])
        if peaks[model] == 0:
            asr = summary[(summary["model"] == model) & (summary["attack"] == "pgd")]["asr"].astype(float)
            sentences.append(
                f"{model} has a median LVS of 0 at every layer and budget; PGD succeeds on at most "
                f"{_percent(float(asr.max()))} of prompts in any cell."
            )
            continue
        interval = ""
        if np.isfinite(peak["lvs_lo"]) and np.isfinite(peak["lvs_hi"]):
            interval = f" (95% CI {peak['lvs_lo']:.3f} to {peak['lvs_hi']:.3f})"
        control = summary[(summary["model"] == model) & (summary["attack"] == "random")]["lvs_median"].astype(float)
        control_text = f"; the random control's median LVS is at most {control.max():.3f}" if control.notna().any() else ""
        refusal = summary[summary["model"] == model]["clean_refusal"].astype(float).dropna()
        refusal_text = f", and it refuses {_percent(float(refusal.iloc[0]))} of the prompts clean" if not refusal.empty else ""
        sentences.append(
            f"{model} peaks at a median LVS of {peak['lvs_median']:.3f}{interval} at {_layer_name(str(peak['layer']))}, "
            f"budget {peak['budget']:g}, where PGD succeeds on {_percent(float(peak['asr']))} of prompts{control_text}{refusal_text}."
        )
    if len(peaks) >= 2:
        highest = max(peaks, key=peaks.get)
        lowest = min(peaks, key=peaks.get)
        if peaks[highest] > peaks[lowest]:
            sentences.append(
                f"{highest} has the highest peak and {lowest} the lowest ({peaks[highest]:.3f} against {peaks[lowest]:.3f}): "
                f"where the PGD map of {highest} is bright and its random-control map is dark, a small targeted "
                "perturbation of its residual stream moves it toward compliance far more than a random one of the same size."
            )
        else:
            sentences.append(f"Every model has the same peak median LVS ({peaks[highest]:.3f}).")
    sentences.append(
        "LVS compares models at the same layer; across layers the scale of the activations differs, so read the ASR as well."
    )
    if run.config.get("kind") == "imported":
        sentences.append(
            f"The numbers are published results imported from {run.config.get('source', 'a metric CSV')}: "
            "the run has no per-prompt rows, so n and the mean LVS are unknown."
        )
    return " ".join(sentences)


def audit_reading(audit: pd.DataFrame) -> str:
    """Return a paragraph from an audit's one-row summary: behaviour next to each intervention."""
    row = audit.iloc[0]
    model = str(row.get("model", "the model"))
    sentences = []

    if "clean_refusal" in row:
        sentences.append(
            f"{model} refuses {_percent(row['clean_refusal'])} of the harmful prompts clean"
            + (f" and {_percent(row['over_refusal'])} of the benign ones." if "over_refusal" in row else ".")
        )

    if "probe_auroc" in row and pd.notna(row["probe_auroc"]):
        sentences.append(f"The static refusal probe reaches an AUROC of {row['probe_auroc']:.3f} on it.")
    if "peak_lvs_mean" in row and pd.notna(row["peak_lvs_mean"]):
        sentences.append(
            f"Under the latent attack at budget {row['budget']:g} its mean LVS peaks at {row['peak_lvs_mean']:.3f} "
            f"at {_layer_name(str(row['peak_lvs_layer']))}."
        )

    steer = sorted((float(key.split("@")[1]), key) for key in row.index if str(key).startswith("steer_compliance@"))
    if steer:
        frac, key = steer[-1]
        control = row.get(f"random_compliance@{frac:g}", math.nan)
        sentences.append(
            f"Steering at {frac:g} x the mean residual norm makes it comply on {_percent(row[key])} of prompts, "
            f"against {_percent(control)} along a random direction of the same norm."
        )

    if "finetune_steps_to_break" in row:
        sentences.append(f"Harmful fine-tuning breaks it after {row['finetune_steps_to_break']} steps (per seed).")
    if "patching_flip_max" in row and pd.notna(row["patching_flip_max"]):
        sentences.append(
            f"Patching the steered activation flips at most {_percent(row['patching_flip_max'])} of clean refusals "
            f"({_layer_name(str(row['patching_flip_layer']))})."
        )

    sentences.append("A model that refuses clean but yields to these interventions far beyond their random controls is safe only on the surface.")
    return " ".join(sentences)


def _heatmap_sections(run: Run) -> list[str]:
    charts, _ = _charts()
    summary = run.summary
    models, layers, budgets = run.models, run.layers, run.budgets
    norm = charts.run_attack_norm(run.config)
    zmax = charts.lvs_scale_max(summary, models)
    attacks = [attack for attack in ("pgd", "random") if (summary["attack"] == attack).any()]
    parts = ["<h2 id='heatmaps'>LVS heatmaps</h2>",
             "<p class='note'>Median LVS per layer and budget, on one colour scale for every model and both attacks. "
             "Hover a cell for its 95% CI and the number of prompts.</p>"]
    for model in models:
        figures = "".join(
            f"<div>{_figure_html(charts.lvs_heatmap(summary, model, attack, layers, budgets, zmax, norm))}</div>"
            for attack in attacks
        )
        parts.append(f"<h3>{html.escape(model)}</h3><div class='grid'>{figures}</div>")

    differences = [
        (group[0], other) for group in model_groups(models) for other in group[1:]
    ]
    if differences:
        parts.append("<h2 id='differences'>Difference maps</h2>"
                     "<p class='note'>Median LVS of a model minus that of the first model of its group, PGD attack; "
                     "red marks a higher LVS in the second model.</p>")
        figures = "".join(
            f"<div>{_figure_html(charts.difference_heatmap(summary, left, right, 'pgd', layers, budgets, norm))}</div>"
            for left, right in differences
        )
        parts.append(f"<div class='grid'>{figures}</div>")

    parts.append("<h2 id='profiles'>Layer profiles</h2>")
    for group in model_groups(models):
        group_layers = [layer for layer in layers if summary[summary["model"].isin(group)]["layer"].eq(layer).any()]
        parts.append(_figure_html(charts.layer_profile_figure(summary, group, "pgd", group_layers, budgets)))
    return parts


def _audit_sections(tables: dict[str, pd.DataFrame]) -> list[str]:
    _, intervention_charts = _charts()
    audit = tables["audit"]
    model = str(audit["model"].iloc[0])
    headline = pd.DataFrame({
        "measure": audit.columns,
        model: [f"{value:.3f}" if isinstance(value, float) else str(value) for value in audit.iloc[0]],
    })
    parts = ["<h2 id='audit'>Audit</h2>", "<h3>Headline row</h3>", _table_html(headline)]
    figures = []
    if "steering" in tables:
        figures.append(_figure_html(intervention_charts.steering_figure({model: tables["steering"]})))
    if "finetune" in tables:
        figures.append(_figure_html(intervention_charts.finetune_figure({model: tables["finetune"]})))
    if "patching" in tables:
        figures.append(_figure_html(intervention_charts.patching_figure({model: tables["patching"]})))
    if figures:
        parts.append("<div class='grid'>" + "".join(f"<div>{figure}</div>" for figure in figures) + "</div>")
    for name in AUDIT_TABLES:
        if name in tables:
            parts.append(f"<h3>{name} table</h3><div class='scroll'>{_table_html(tables[name])}</div>")
    return parts


def _imported_steering_sections(steering: pd.DataFrame) -> list[str]:
    """Return the published steering curves, each model at the layer where its compliance peaks."""
    _, intervention_charts = _charts()
    curves = {}
    for model, rows in steering.groupby("model", sort=False):
        peak_layer = str(rows.loc[rows["compliance"].astype(float).idxmax(), "layer"])
        curves[f"{model} ({_layer_name(peak_layer)})"] = rows[rows["layer"] == peak_layer]
    return [
        "<h2 id='steering'>Published steering</h2>",
        "<p class='note'>Compliance under steering at the layer where each model's compliance peaks; the file gives no "
        "interval and no random-direction control.</p>",
        _figure_html(intervention_charts.steering_figure(curves)),
        f"<h3>steering table</h3><div class='scroll'>{_table_html(steering)}</div>",
    ]


def build_report(run_dir: str | Path) -> str:
    """Return the HTML text of the report of the run folder ``run_dir``.

    Raises:
        AuditInputError: the folder is missing, still running, or has neither a summary nor an audit table.
    """
    folder = Path(run_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise AuditInputError(f"{str(run_dir)!r} is not a run folder (no config.json): give a folder written by lvs-audit")
    if (folder / "parts").exists():
        raise AuditInputError(
            f"run {str(run_dir)!r} is still in progress or was interrupted: finish or resume it before writing a report"
        )
    tables = {name: pd.read_parquet(folder / f"{name}.parquet") for name in ("audit", *AUDIT_TABLES)
              if (folder / f"{name}.parquet").is_file()}
    has_summary = (folder / "summary.parquet").is_file()
    if not has_summary and "audit" not in tables:
        raise AuditInputError(f"run {str(run_dir)!r} has neither summary.parquet nor audit.parquet: nothing to report")
    config = json.loads((folder / "config.json").read_text())
    run = load_run(folder) if has_summary else None

    readings = []
    if "audit" in tables:
        readings.append(audit_reading(tables["audit"]))
    if run is not None and not run.summary.empty:
        readings.append(sweep_reading(run))

    title = f"lvs-audit report: {folder.name}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{html.escape(str(config.get('kind', 'run')))} run in {html.escape(str(folder.resolve()))}, "
        f"report written {time.strftime('%Y-%m-%d %H:%M %Z')} by lvs-audit {lvs_core.__version__}. "
        "Charts are interactive: hover for values, drag to zoom, double-click to reset.</p>",
        "<h2 id='reading'>Reading</h2>",
        *(f"<p class='reading'>{html.escape(text)}</p>" for text in readings),
        "<h2 id='settings'>Settings</h2>",
        _settings_html(config),
    ]
    if run is not None and not run.summary.empty:
        body += _heatmap_sections(run)
    if "audit" in tables:
        body += _audit_sections(tables)
    elif "steering" in tables:
        body += _imported_steering_sections(tables["steering"])
    if run is not None:
        body += ["<h2 id='summary'>Summary table</h2>",
                 "<p class='note'>One row per model, layer, budget and attack.</p>",
                 f"<div class='scroll'>{_table_html(run.summary)}</div>"]

    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path) -> Path:
    """Write the report of ``run_dir`` to the file ``out`` (through a temporary file) and return its path."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise AuditInputError(f"--out {str(out)!r} is a folder: give a file name such as report.html")
    text = build_report(run_dir)
    atomic_write_text(text, out)
    logger.info("wrote the report of %s to %s (%d bytes)", run_dir, out, len(text))
    return out

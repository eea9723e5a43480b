"""The run folders the Runs page lists, compares and deletes, read from disk without a model.

Every function here reads ``config.json`` and parquet files only; the list itself reads
no parquet file at all. The shipped runs in ``assets/runs/`` are listed too,
but :func:`delete_run` never removes them, nor anything outside the runs root.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.intervention_charts import MODEL_COLOURS
from lvs_core.errors import AuditInputError
from lvs_core.models import ASSETS_DIR, layer_sort_key
from lvs_core.runs import DEMO_RUN_DIR

logger = logging.getLogger("dashboard.run_catalog")

SHIPPED_RUNS_DIR = ASSETS_DIR / "runs"
KINDS = {"lvs-sweep": "sweep", "lvs-audit": "audit", "imported": "imported"}
# The file whose presence, with no parts/ folder left, marks a run of each kind complete.
FINAL_TABLE = {"sweep": "summary.parquet", "audit": "audit.parquet", "imported": "summary.parquet"}
LIST_COLUMNS = ["name", "kind", "state", "models", "prompts", "budgets", "created", "size (MB)", "folder"]
COMPARE_COLUMNS = [
    "run", "model", "peak median LVS", "CI low", "CI high", "peak layer", "peak budget", "ASR at peak",
    "clean refusal",
]


@dataclass(frozen=True)
class RunInfo:
    """One run folder as the Runs page lists it.

    ``kind`` is sweep, audit or imported, from ``config.json``. ``state`` is complete,
    partial (interrupted, or written by another process) or running (a job of this
    server writes it). ``shipped`` runs come with the package and are read-only.
    """

    path: Path
    name: str
    kind: str
    state: str
    models: tuple[str, ...]
    prompts: str
    budgets: str
    created: str
    size_bytes: int
    shipped: bool
    settings: dict

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def has_summary(self) -> bool:
        """Whether the run has the per-cell summary that the heatmaps and the comparison read."""
        return self.complete and (self.path / "summary.parquet").is_file()


def folder_size(path: Path) -> int:
    """Return the total size in bytes of the files under ``path``."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _budgets_text(kind: str, config: dict) -> str:
    settings = config.get("settings", {})
    if kind == "audit":
        budget = settings.get("budget")
        return f"{budget:g}" if isinstance(budget, (int, float)) else ""
    budgets = config.get("budgets") or settings.get("budgets") or []
    return ", ".join(f"{float(budget):g}" for budget in budgets)


def _prompts_text(kind: str, config: dict) -> str:
    if kind == "imported":
        return f"published ({config.get('source', 'unknown file')})"
    source = str(config.get("settings", {}).get("prompts", ""))
    count = config.get("n_prompts")
    return f"{source} ({count})" if count is not None else source


def read_run_info(path: Path, running: set[Path] | None = None, shipped: bool = False) -> RunInfo | None:
    """Return what the list shows of the run at ``path``, or None when it is not a run folder."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("skipping %s: unreadable config.json (%s)", path, error)
        return None
    kind = KINDS.get(str(config.get("kind", "")), str(config.get("kind", "unknown")))
    if running and path.resolve() in running:
        state = "running"
    elif (path / FINAL_TABLE.get(kind, "summary.parquet")).is_file() and not (path / "parts").exists():
        state = "complete"
    else:
        state = "partial"
    models = tuple(str(model.get("name") or model.get("spec")) for model in config.get("models", []))
    return RunInfo(
        path=path,
        name=path.name,
        kind=kind,
        state=state,
        models=models,
        prompts=_prompts_text(kind, config),
        budgets=_budgets_text(kind, config),
        created=str(config.get("created", "")),
        size_bytes=folder_size(path),
        shipped=shipped,
        settings=config.get("settings", {}),
    )


def list_run_infos(root: Path, running: set[Path] | None = None) -> list[RunInfo]:
    """Return the shipped runs (the demo sweep first), then every run folder under ``root``, newest first.

    Folders whose name starts with a dot (an import being assembled) are left out.
    """
    running = {path.resolve() for path in running or set()}
    infos: list[RunInfo] = []
    shipped = [DEMO_RUN_DIR]
    if SHIPPED_RUNS_DIR.is_dir():
        shipped += sorted(path for path in SHIPPED_RUNS_DIR.iterdir() if path.is_dir() and path != DEMO_RUN_DIR)
    for path in shipped:
        info = read_run_info(path, shipped=True)
        # A shipped run being regenerated is not offered until it is complete.
        if info is not None and info.complete:
            infos.append(info)
    if root.is_dir() and root.resolve() != SHIPPED_RUNS_DIR.resolve():
        folders = [path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")]
        for path in sorted(folders, key=lambda folder: folder.stat().st_mtime, reverse=True):
            info = read_run_info(path, running)
            if info is not None:
                infos.append(info)
    return infos


def runs_table(infos: list[RunInfo]) -> pd.DataFrame:
    """Return the list of runs as a table with the columns of :data:`LIST_COLUMNS`."""
    rows = [
        {
            "name": f"{info.name} (shipped)" if info.shipped else info.name,
            "kind": info.kind,
            "state": info.state,
            "models": ", ".join(info.models),
            "prompts": info.prompts,
            "budgets": info.budgets,
            "created": info.created,
            "size (MB)": round(info.size_bytes / 1e6, 2),
            "folder": str(info.path),
        }
        for info in infos
    ]
    return pd.DataFrame(rows, columns=LIST_COLUMNS)


def can_delete(info: RunInfo, root: Path, running: set[Path]) -> str:
    """Return why the run cannot be deleted, or an empty string when it can."""
    if info.shipped:
        return f"{info.name!r} is a shipped run: it is part of the package and cannot be deleted here"
    if info.path.resolve().parent != root.resolve():
        return f"{str(info.path)!r} is not directly under the runs folder {str(root)!r}"
    if info.path.resolve() in {path.resolve() for path in running}:
        return f"{info.name!r} is being written by a running job: cancel the job first"
    return ""


def delete_run(info: RunInfo, root: Path, running: set[Path]) -> None:
    """Delete the folder of a run under ``root``.

    Raises:
        AuditInputError: the run is shipped, outside ``root``, or written by a running job.
    """
    reason = can_delete(info, root, running)
    if reason:
        raise AuditInputError(f"cannot delete: {reason}")
    shutil.rmtree(info.path)
    logger.info("deleted run %s", info.path)


def _clean_refusal(summary: pd.DataFrame, folder: Path) -> float:
    """Return the clean refusal rate of one model: from its summary rows, else the audit's behaviour row, else NaN."""
    values = summary["clean_refusal"].dropna() if "clean_refusal" in summary else pd.Series(dtype=float)
    if not values.empty:
        return float(values.iloc[0])
    audit_file = folder / "audit.parquet"
    if audit_file.is_file():
        audit = pd.read_parquet(audit_file)
        if "clean_refusal" in audit.columns:
            return float(audit["clean_refusal"].iloc[0])
    return math.nan


def peak_table(summary: pd.DataFrame, run: str, folder: Path, attack: str = "pgd") -> pd.DataFrame:
    """Return one row per model of a run: the peak median LVS of ``attack`` over layers and budgets, where it is, and clean refusal.

    Ties go to the earliest layer, then the smallest budget.
    """
    rows = []
    for model, group in summary[summary["attack"] == attack].groupby("model", sort=False):
        ordered = group.assign(_layer=group["layer"].map(layer_sort_key)).sort_values(["_layer", "budget"], kind="stable")
        medians = ordered["lvs_median"].astype(float)
        if medians.notna().any():
            peak = ordered.loc[medians.idxmax()]
            values = (float(peak["lvs_median"]), float(peak["lvs_lo"]), float(peak["lvs_hi"]),
                      str(peak["layer"]), float(peak["budget"]), float(peak["asr"]))
        else:
            values = (math.nan, math.nan, math.nan, "", math.nan, math.nan)
        rows.append(dict(zip(COMPARE_COLUMNS, (run, model, *values, _clean_refusal(group, folder)))))
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def compare_runs(infos: list[RunInfo]) -> pd.DataFrame:
    """Return the peak table of every run in ``infos`` that has a summary, one row per (run, model)."""
    tables = []
    for info in infos:
        if not info.has_summary:
            continue
        summary = pd.read_parquet(info.path / "summary.parquet")
        tables.append(peak_table(summary, info.name, info.path))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COMPARE_COLUMNS)


def compare_figure(table: pd.DataFrame) -> go.Figure:
    """Return bars of each model's peak median LVS (with its CI and layer) next to its clean refusal, one colour per run."""
    figure = make_subplots(
        rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1,
        subplot_titles=("Peak median LVS, PGD attack (bootstrap 95% CI)", "Clean refusal of harmful prompts"),
    )
    for index, (run, rows) in enumerate(table.groupby("run", sort=False)):
        colour = MODEL_COLOURS[index % len(MODEL_COLOURS)]
        labels = [str(model) for model in rows["model"]]
        figure.add_trace(
            go.Bar(
                x=labels,
                y=rows["peak median LVS"],
                name=run,
                legendgroup=run,
                marker_color=colour,
                text=[f"layer {layer}, b={budget:g}" if layer else "" for layer, budget in zip(rows["peak layer"], rows["peak budget"])],
                # Inside the bar, so the label never collides with the error bar above it.
                textposition="inside",
                insidetextanchor="start",
                error_y={
                    "type": "data", "symmetric": False,
                    "array": rows["CI high"] - rows["peak median LVS"],
                    "arrayminus": rows["peak median LVS"] - rows["CI low"],
                },
                customdata=rows[["peak layer", "peak budget", "ASR at peak"]].to_numpy(object),
                hovertemplate=(
                    f"{run}<br>%{{x}}: peak median LVS %{{y:.3f}}<br>layer %{{customdata[0]}}, "
                    "budget %{customdata[1]:g}, ASR %{customdata[2]:.1%}<extra></extra>"
                ),
            ),
            row=1, col=1,
        )
        figure.add_trace(
            go.Bar(
                x=labels,
                y=rows["clean refusal"],
                name=run,
                legendgroup=run,
                showlegend=False,
                marker_color=colour,
                hovertemplate=f"{run}<br>%{{x}}: clean refusal %{{y:.1%}}<extra></extra>",
            ),
            row=1, col=2,
        )
    figure.update_yaxes(title_text="median LVS (ΔS per log(1 + ‖δ‖₂))", rangemode="tozero", row=1, col=1)
    figure.update_yaxes(title_text="clean refusal (% of prompts)", tickformat=".0%", range=[0, 1.05], row=1, col=2)
    figure.update_xaxes(title_text="model", type="category", row=1, col=1)
    figure.update_xaxes(title_text="model", type="category", row=1, col=2)
    figure.update_layout(
        barmode="group", legend_title_text="run", height=460,
        uniformtext={"minsize": 9, "mode": "hide"},
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )
    return figure


def run_tables(path: Path) -> dict[str, Path]:
    """Return the parquet tables of a complete run by name (summary, cells, steering...), in file-name order."""
    return {file.stem: file for file in sorted(path.glob("*.parquet"))}

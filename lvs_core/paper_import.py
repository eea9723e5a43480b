"""Import published results in the long-form metric CSV layout as a run folder.

Rows with ``exp=lvs`` give, per (arch, variant, layer, budget, attack), the median LVS,
its 95% CI and the attack success rate. Rows with ``exp=steering`` give, per (arch,
variant, layer, frac), the compliance under steering by ``frac`` times the mean residual
norm. The columns are::

    arch, variant, exp, layer, layer_idx, budget, attack, lvs, lvs_lo, lvs_hi, asr, frac, compliance

Layers are ``embedding`` or ``L0``, ``L1``...; budgets are L-inf radii as fractions of the
clean prompt activation's max magnitude, as in :mod:`lvs_core.attack`.

An imported run contains no generations and no per-prompt rows, so it has no
``cells.parquet``. Its folder contains

- ``config.json`` with ``"kind": "imported"``, the source file name, the models
  (``arch/variant``), budgets and layers;
- ``summary.parquet`` with the columns of :func:`lvs_core.metrics.summarize`, where
  ``lvs_median`` is the CSV's ``lvs`` and every column the CSV lacks (``n``,
  ``lvs_mean``, ``clean_refusal``...) is NaN;
- ``steering.parquet`` (only with steering rows): model, layer, frac, direction,
  compliance, with NaN Wilson bounds, in the column names of an audit's steering table.

Every value is checked before the folder is written, and a bad file raises
:class:`lvs_core.errors.AuditInputError` with one line naming the column, the value and
its CSV line.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import lvs_core
from lvs_core.engine import ATTACKS
from lvs_core.errors import AuditInputError
from lvs_core.models import EMBEDDING_LAYER, layer_sort_key
from lvs_core.runs import atomic_write_parquet, atomic_write_text

logger = logging.getLogger(__name__)

IMPORTED_KIND = "imported"
KEY_COLUMNS = ("arch", "variant", "exp", "layer")
LVS_COLUMNS = ("budget", "attack", "lvs", "lvs_lo", "lvs_hi", "asr")
STEERING_COLUMNS = ("frac", "compliance")
EXPERIMENTS = ("lvs", "steering")
# Columns of lvs_core.metrics.summarize, in its order.
SUMMARY_COLUMNS = (
    "model", "layer", "budget", "attack", "n", "n_invalid", "lvs_median", "lvs_lo", "lvs_hi", "lvs_mean",
    "asr", "asr_lo", "asr_hi", "clean_refusal", "flip_rate", "delta_l2_mean", "margin_drop_mean",
)
STEERING_TABLE_COLUMNS = ("model", "layer", "frac", "direction", "compliance", "compliance_lo", "compliance_hi")
# Name of the steering direction in the imported steering table: the CSV does not say which one.
PUBLISHED_DIRECTION = "published"
# The number of a data row in the file as a text editor shows it: the header is line 1.
_FIRST_DATA_LINE = 2


@dataclass
class PaperResults:
    """The tables of a metric CSV, converted to the run layout."""

    summary: pd.DataFrame
    steering: pd.DataFrame
    models: list[str]
    layers: list[str]
    budgets: list[float]


def _line(index: int) -> int:
    return int(index) + _FIRST_DATA_LINE


def _layer_label(layer: str, layer_idx: str | None, line: int) -> str:
    """Map a CSV layer (``embedding``, ``L3`` or ``3``) to a run layer label (``embedding``, ``3``)."""
    text = layer.strip()
    if text.lower() == EMBEDDING_LAYER:
        label = EMBEDDING_LAYER
    else:
        digits = text[1:] if text[:1] in ("L", "l") else text
        if not digits.isdigit():
            raise AuditInputError(
                f"invalid layer {layer!r} on line {line}: use 'embedding' or L0, L1, ... (block index after L)"
            )
        label = str(int(digits))
    if layer_idx is not None and layer_idx.strip() and layer_idx.strip() != label:
        raise AuditInputError(
            f"layer {layer!r} and layer_idx {layer_idx!r} disagree on line {line}: layer_idx must be "
            f"{label!r} for that layer"
        )
    return label


def _numbers(frame: pd.DataFrame, column: str, low: float | None = None, high: float | None = None) -> pd.Series:
    """Return ``column`` as floats, or raise naming the first value that is missing, not a number or out of range."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | ~np.isfinite(values.fillna(0.0))
    if low is not None:
        bad |= values < low
    if high is not None:
        bad |= values > high
    if bad.any():
        index = bad[bad].index[0]
        raw = frame.at[index, column]
        shown = "an empty cell" if raw == "" else repr(raw)
        if low is not None and high is not None:
            expected = f"a number from {low:g} to {high:g}"
        elif low is not None:
            expected = f"a number of at least {low:g}"
        else:
            expected = "a finite number"
        raise AuditInputError(
            f"invalid {column} {shown} on line {_line(index)} ({int(bad.sum())} bad rows in all): use {expected}"
        )
    return values.astype(float)


def _require(frame: pd.DataFrame, columns: tuple[str, ...], why: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise AuditInputError(
            f"the metric CSV lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} {why}: "
            f"the layout is {', '.join(KEY_COLUMNS + ('layer_idx',) + LVS_COLUMNS + STEERING_COLUMNS)}"
        )


def _read_table(source: str | Path | bytes) -> pd.DataFrame:
    """Read the CSV as text cells, so every value is checked by this module and not guessed by pandas."""
    if isinstance(source, bytes):
        handle = io.BytesIO(source)
        name = "the uploaded file"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            raise AuditInputError(f"{str(source)!r} is a folder, not a metric CSV: give the path of a metric_<arch>.csv file in it")
        if not path.is_file():
            raise AuditInputError(f"metric CSV {str(source)!r} not found: give the path of a metric_<arch>.csv file")
        handle = path
        name = repr(str(source))
    try:
        frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AuditInputError(f"cannot read {name} as CSV ({first_line}): give a comma-separated file with a header row") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    if frame.empty:
        raise AuditInputError(f"{name} has a header but no rows: give a metric CSV with lvs or steering rows")
    return frame


def read_paper_csv(source: str | Path | bytes) -> PaperResults:
    """Read and check a metric CSV (a path or the file's bytes) and convert it to run tables.

    Raises:
        AuditInputError: the file is missing, is not a CSV, lacks a column, or has a bad
            value (the message names the column, the value and its line).
    """
    frame = _read_table(source)
    _require(frame, KEY_COLUMNS, "that every row needs")
    for column in KEY_COLUMNS:
        empty = frame[column].str.strip() == ""
        if empty.any():
            raise AuditInputError(f"empty {column} on line {_line(empty[empty].index[0])}: every row needs arch, variant, exp and layer")

    experiments = frame["exp"].str.strip()
    unknown = experiments[~experiments.isin(EXPERIMENTS)]
    if not unknown.empty:
        raise AuditInputError(
            f"unknown exp {unknown.iloc[0]!r} on line {_line(unknown.index[0])}: use lvs or steering"
        )
    has_idx = "layer_idx" in frame.columns
    labels = [
        _layer_label(layer, frame.at[index, "layer_idx"] if has_idx else None, _line(index))
        for index, layer in frame["layer"].items()
    ]
    frame = frame.assign(
        model=frame["arch"].str.strip() + "/" + frame["variant"].str.strip(),
        layer_label=labels,
        exp=experiments,
    )
    lvs_rows = frame[frame["exp"] == "lvs"]
    steering_rows = frame[frame["exp"] == "steering"]
    summary = _summary(lvs_rows) if not lvs_rows.empty else pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    steering = _steering(steering_rows) if not steering_rows.empty else pd.DataFrame(columns=list(STEERING_TABLE_COLUMNS))
    if summary.empty:
        raise AuditInputError("the metric CSV has no exp=lvs rows: the heatmaps need the LVS rows of at least one model")

    models = list(dict.fromkeys([*summary["model"], *steering["model"]]))
    layers = sorted(set(summary["layer"]) | set(steering["layer"]), key=layer_sort_key)
    budgets = sorted(float(budget) for budget in summary["budget"].unique())
    return PaperResults(summary=summary, steering=steering, models=models, layers=layers, budgets=budgets)


def _summary(rows: pd.DataFrame) -> pd.DataFrame:
    _require(rows, LVS_COLUMNS, "that exp=lvs rows need")
    attacks = rows["attack"].str.strip()
    unknown = ~attacks.isin(ATTACKS)
    if unknown.any():
        index = unknown[unknown].index[0]
        raise AuditInputError(
            f"unknown attack {rows.at[index, 'attack']!r} on line {_line(index)}: use one of {', '.join(ATTACKS)}"
        )
    budget = _numbers(rows, "budget", low=0.0)
    if (budget <= 0).any():
        index = budget[budget <= 0].index[0]
        raise AuditInputError(f"invalid budget {rows.at[index, 'budget']!r} on line {_line(index)}: use a positive fraction of max|h|")
    median = _numbers(rows, "lvs", low=0.0)
    low = _numbers(rows, "lvs_lo", low=0.0)
    high = _numbers(rows, "lvs_hi", low=0.0)
    asr = _numbers(rows, "asr", low=0.0, high=1.0)
    # A bootstrap interval of the median contains the median. Rounding in the file can put
    # them a hair apart, so the check allows a tolerance.
    outside = (low > median + 1e-9) | (high < median - 1e-9)
    if outside.any():
        index = outside[outside].index[0]
        raise AuditInputError(
            f"lvs {rows.at[index, 'lvs']} lies outside [lvs_lo, lvs_hi] = [{rows.at[index, 'lvs_lo']}, "
            f"{rows.at[index, 'lvs_hi']}] on line {_line(index)}: check the column order"
        )

    summary = pd.DataFrame({
        "model": rows["model"],
        "layer": rows["layer_label"],
        "budget": budget,
        "attack": attacks,
        "lvs_median": median,
        "lvs_lo": low,
        "lvs_hi": high,
        "asr": asr,
    })
    _reject_duplicates(summary, ["model", "layer", "budget", "attack"])
    for column in SUMMARY_COLUMNS:
        if column not in summary.columns:
            summary[column] = math.nan
    return summary[list(SUMMARY_COLUMNS)].reset_index(drop=True)


def _steering(rows: pd.DataFrame) -> pd.DataFrame:
    _require(rows, STEERING_COLUMNS, "that exp=steering rows need")
    steering = pd.DataFrame({
        "model": rows["model"],
        "layer": rows["layer_label"],
        "frac": _numbers(rows, "frac", low=0.0),
        "direction": PUBLISHED_DIRECTION,
        "compliance": _numbers(rows, "compliance", low=0.0, high=1.0),
        "compliance_lo": math.nan,
        "compliance_hi": math.nan,
    })
    _reject_duplicates(steering, ["model", "layer", "frac"])
    return steering[list(STEERING_TABLE_COLUMNS)].reset_index(drop=True)


def _reject_duplicates(table: pd.DataFrame, keys: list[str]) -> None:
    repeated = table.duplicated(subset=keys, keep="first")
    if repeated.any():
        index = repeated[repeated].index[0]
        values = ", ".join(f"{key}={table.at[index, key]}" for key in keys)
        raise AuditInputError(f"line {_line(index)} repeats {values}: keep one row per {', '.join(keys)}")


def import_paper_csv(
    source: str | Path | bytes,
    out_dir: str | Path,
    source_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a metric CSV into an imported run folder at ``out_dir`` and return the folder.

    ``source`` is a path or the file's bytes (an upload); ``source_name`` is the file name
    recorded in ``config.json`` (default: the path's name). The folder is assembled under
    a temporary name next to ``out_dir`` and renamed, so it is either complete or absent.

    Raises:
        AuditInputError: the CSV is invalid, or ``out_dir`` exists and ``overwrite`` is false.
    """
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not overwrite:
        raise AuditInputError(f"run folder {str(out_dir)!r} already exists: choose another name, or overwrite it")
    if out_dir.exists() and not out_dir.is_dir():
        raise AuditInputError(f"{str(out_dir)!r} exists and is not a folder: choose another name")
    results = read_paper_csv(source)
    if source_name is None:
        source_name = Path(source).name if not isinstance(source, bytes) else "upload.csv"

    config = {
        "kind": IMPORTED_KIND,
        "source": source_name,
        "version": lvs_core.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "models": [{"name": name, "spec": name} for name in results.models],
        "budgets": results.budgets,
        "layers": results.layers,
        "attacks": list(dict.fromkeys(results.summary["attack"])),
        # The layout's budgets are L-inf radii relative to max|h|, like a sweep's default.
        "settings": {"attack": {"norm": "linf"}, "budgets": results.budgets, "models": results.models},
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".import", dir=out_dir.parent))
    try:
        atomic_write_text(json.dumps(config, indent=2, sort_keys=True), staging / "config.json")
        atomic_write_parquet(results.summary, staging / "summary.parquet")
        if not results.steering.empty:
            atomic_write_parquet(results.steering, staging / "steering.parquet")
        os.chmod(staging, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "imported %s into %s: %d models, %d summary rows, %d steering rows",
        source_name, out_dir, len(results.models), len(results.summary), len(results.steering),
    )
    return out_dir

"""The run folder: what a sweep writes and the dashboard reads.

A run is a folder with

- ``config.json``: the sweep settings, the models (spec, blocks, width, parameters) and
  the package version;
- ``cells.parquet``: one row per (model, prompt, layer, budget, attack) with the
  generations, scores, norms and LVS (columns listed in :data:`CELL_COLUMNS`);
- ``summary.parquet``: one row per (model, layer, budget, attack) from
  :func:`lvs_core.metrics.summarize`.

A run is written into a hidden temporary folder next to its destination and renamed
into place only when complete, so a failed or interrupted sweep never leaves a
half-written run.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lvs_core.errors import AuditInputError
from lvs_core.models import ASSETS_DIR, layer_sort_key

logger = logging.getLogger(__name__)

DEMO_RUN_DIR = ASSETS_DIR / "runs" / "demo"
CELL_COLUMNS = (
    "model", "prompt_id", "prompt", "category", "layer", "budget", "attack", "eps",
    "delta_linf", "delta_l2", "clean_text", "perturbed_text", "clean_valid",
    "perturbed_valid", "s_clean", "s_perturbed", "clean_refused", "perturbed_compliant",
    "clean_margin", "perturbed_margin", "target_nll_clean", "target_nll_perturbed", "lvs",
)


@dataclass
class Run:
    """A run loaded from disk."""

    path: Path
    config: dict
    cells: pd.DataFrame
    summary: pd.DataFrame

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.summary["model"]))

    @property
    def layers(self) -> list[str]:
        return sorted(self.summary["layer"].unique(), key=layer_sort_key)

    @property
    def budgets(self) -> list[float]:
        return sorted(self.summary["budget"].unique())


def prepare_destination(out_dir: Path, overwrite: bool = False) -> None:
    """Check that a run can be written to ``out_dir`` before any work starts."""
    if out_dir.exists() and not overwrite:
        raise AuditInputError(
            f"run folder {str(out_dir)!r} already exists: pass --overwrite or choose another --out"
        )
    if out_dir.exists() and not (out_dir / "config.json").is_file():
        raise AuditInputError(
            f"{str(out_dir)!r} exists and is not a run folder: choose another --out"
        )


def write_run(out_dir: Path, config: dict, cells: pd.DataFrame, summary: pd.DataFrame, overwrite: bool = False) -> Path:
    """Write a complete run to ``out_dir`` through a temporary folder and a rename."""
    out_dir = Path(out_dir)
    prepare_destination(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        cells.to_parquet(staging / "cells.parquet", index=False)
        summary.to_parquet(staging / "summary.parquet", index=False)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote run %s (%d cell rows)", out_dir, len(cells))
    return out_dir


def load_run(path: str | Path) -> Run:
    """Load a run folder written by :func:`write_run`."""
    path = Path(path).expanduser()
    missing = [name for name in ("config.json", "cells.parquet", "summary.parquet") if not (path / name).is_file()]
    if missing:
        raise AuditInputError(
            f"{str(path)!r} is not a complete run folder (missing {', '.join(missing)}): "
            "point to a folder written by 'lvs-audit sweep'"
        )
    config = json.loads((path / "config.json").read_text())
    cells = pd.read_parquet(path / "cells.parquet")
    summary = pd.read_parquet(path / "summary.parquet")
    return Run(path=path, config=config, cells=cells, summary=summary)


def list_runs(root: str | Path) -> list[Path]:
    """Return the complete run folders directly under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "summary.parquet").is_file()]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)

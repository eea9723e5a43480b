"""The run folder: what sweeps and audits write and the dashboard reads.

A complete run is a folder with

- ``config.json``: the settings, the models (spec, blocks, width, parameters) and the
  package version;
- ``cells.parquet``: one row per (model, prompt, layer, budget, attack) with the
  generations, scores, norms and LVS (columns listed in :data:`CELL_COLUMNS`);
- ``summary.parquet``: one row per (model, layer, budget, attack) from
  :func:`lvs_core.metrics.summarize`;
- for an audit, further tables (``steering.parquet``, ``audit.parquet`` and others).

While it runs, every finished cell is written to ``parts/<table>/<key>.parquet`` through a
temporary file and a rename, so a crash never leaves a half-written file. Rerunning the
same command with ``--resume`` skips the parts already written. It refuses to resume under
changed settings. The final tables are written the same way, then ``parts/`` is removed.
Input errors are found before the folder is created, so they never leave a folder behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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


def load_run(path: str | Path) -> Run:
    """Load a complete run folder written by a sweep, an audit or an import.

    A run imported from published results (:mod:`lvs_core.paper_import`) has no
    ``cells.parquet``; its ``cells`` frame is empty, with the columns of :data:`CELL_COLUMNS`.
    """
    path = Path(path).expanduser()
    missing = [name for name in ("config.json", "summary.parquet") if not (path / name).is_file()]
    if missing and (path / "parts").is_dir():
        raise AuditInputError(
            f"run {str(path)!r} is still in progress or was interrupted: wait for it to finish, "
            "or continue it with the same command and --resume"
        )
    if missing:
        raise AuditInputError(
            f"{str(path)!r} is not a complete run folder (missing {', '.join(missing)}): "
            "point to a folder written by 'lvs-audit sweep'"
        )
    config = json.loads((path / "config.json").read_text())
    cells_file = path / "cells.parquet"
    cells = pd.read_parquet(cells_file) if cells_file.is_file() else pd.DataFrame(columns=list(CELL_COLUMNS))
    summary = pd.read_parquet(path / "summary.parquet")
    return Run(path=path, config=config, cells=cells, summary=summary)


def list_runs(root: str | Path) -> list[Path]:
    """Return the complete run folders directly under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "summary.parquet").is_file()]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def atomic_write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        frame.to_parquet(temporary, index=False)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    # mkstemp creates files readable by their owner only; runs are meant to be shared.
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def part_key(*fields: object) -> str:
    """Return a file-name-safe key for a cell: readable fields plus a short hash of them."""
    text = "|".join(str(field) for field in fields)
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{readable}-{digest}"


# Settings that change how a run executes, not its results: a run may resume under others.
EXECUTION_SETTINGS = ("batch_size",)


class RunStore:
    """A run folder being written cell by cell, which a later call can resume.

    ``settings`` identify the work: resuming with other settings raises, because the
    cells already written would not match the ones still to compute. Settings that
    change only how the work runs (:data:`EXECUTION_SETTINGS`) may differ.
    """

    def __init__(self, path: str | Path, settings: dict, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))
        config_file = self.path / "config.json"
        if self.path.exists():
            if not config_file.is_file():
                raise AuditInputError(f"{str(self.path)!r} exists and is not a run folder: choose another --out")
            if overwrite:
                shutil.rmtree(self.path)
            elif resume:
                existing = json.loads(config_file.read_text()).get("settings") or {}
                changed = sorted(
                    key for key in set(existing) | set(self.settings)
                    if key not in EXECUTION_SETTINGS and existing.get(key) != self.settings.get(key)
                )
                if changed:
                    raise AuditInputError(
                        f"cannot resume {str(self.path)!r}: its settings differ in {', '.join(changed)}; "
                        "rerun with the original settings, or pass --overwrite to start fresh"
                    )
            else:
                state = "complete" if (self.path / "summary.parquet").is_file() else "incomplete"
                raise AuditInputError(
                    f"run folder {str(self.path)!r} already exists ({state}): pass --resume to continue it, "
                    "--overwrite to replace it, or choose another --out"
                )

    def start(self, config: dict) -> None:
        """Create the folder and write ``config.json`` unless it exists already."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "config.json").is_file():
            atomic_write_text(json.dumps({**config, "settings": self.settings}, indent=2, sort_keys=True), self.path / "config.json")

    def is_complete(self, final_table: str) -> bool:
        """Return whether the run already has its final ``final_table`` and nothing left in ``parts/``."""
        return (self.path / f"{final_table}.parquet").is_file() and not (self.path / "parts").exists()

    def _part(self, table: str, key: str) -> Path:
        return self.path / "parts" / table / f"{key}.parquet"

    def has(self, table: str, key: str) -> bool:
        return self._part(table, key).is_file()

    def put(self, table: str, key: str, rows: pd.DataFrame) -> None:
        atomic_write_parquet(rows, self._part(table, key))

    def get(self, table: str, key: str) -> pd.DataFrame:
        return pd.read_parquet(self._part(table, key))

    def table(self, table: str) -> pd.DataFrame:
        """Return every part of ``table`` concatenated, in file-name order."""
        folder = self.path / "parts" / table
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        frames = [pd.read_parquet(file) for file in files]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def finish(self, tables: dict[str, pd.DataFrame], config_updates: dict | None = None) -> Path:
        """Write the final tables and config, then drop the parts."""
        for name, frame in tables.items():
            atomic_write_parquet(frame, self.path / f"{name}.parquet")
        if config_updates:
            config = json.loads((self.path / "config.json").read_text())
            config.update(config_updates)
            atomic_write_text(json.dumps(config, indent=2, sort_keys=True), self.path / "config.json")
        shutil.rmtree(self.path / "parts", ignore_errors=True)
        logger.info("finished run %s", self.path)
        return self.path

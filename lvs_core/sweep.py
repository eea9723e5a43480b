"""Sweeps: the latent attack over a grid of models, layers and budgets.

A sweep runs every (model, layer, budget) cell on every prompt, for the PGD attack and
the random control, and writes a run folder (:mod:`lvs_core.runs`). The clean
generation of each prompt is computed once per model and shared by all its cells.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

import lvs_core
from lvs_core.attack import AttackConfig, validate_budget
from lvs_core.engine import ATTACKS, CleanReference, attack_cells, auto_chunk_rows, clean_reference, take_rows
from lvs_core.errors import AuditInputError
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS
from lvs_core.metrics import summarize
from lvs_core.models import AuditModel, layer_label, layer_sort_key, load_model, parse_layers, resolve_model_path
from lvs_core.prompts import build_batch, load_prompt_records
from lvs_core.runs import CELL_COLUMNS, RunStore, part_key
from lvs_core.scoring import make_scorer

logger = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.02, 0.05, 0.1, 0.2)
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SweepConfig:
    """Settings of a sweep.

    Attributes:
        models: model specs (``demo:NAME``, a folder or a hub id).
        layers: ``all`` or a comma list of ``embedding`` and block indices.
        budgets: L-inf radii as fractions of the clean ``max|h|`` at the layer.
        prompts: ``heldout``, ``heldout-benign``, ``heldout-all`` or a CSV/JSONL path.
        max_prompts: keep only the first N prompts (0 keeps all).
        attack: PGD settings and target.
        scorer: ``refusal``, ``margin`` or ``hf:PATH_OR_ID``.
        max_new_tokens: greedy generation length per response, in tokens.
        batch_size: rows, (cell, prompt) pairs, per forward pass; 0 sizes chunks from
            the device's free memory (:func:`lvs_core.engine.auto_chunk_rows`).
        device: ``cpu``, ``cuda`` or empty for automatic.
    """

    models: tuple[str, ...]
    layers: str = "all"
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    prompts: str = "heldout"
    max_prompts: int = 0
    attack: AttackConfig = field(default_factory=AttackConfig)
    scorer: str = "refusal"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 0
    device: str = ""

    def validate(self) -> None:
        """Check every setting that can be checked without loading a model."""
        if not self.models:
            raise AuditInputError("no model given: pass --model demo:safe (repeat for more models)")
        for spec in self.models:
            resolve_model_path(spec)
        if not self.budgets:
            raise AuditInputError("no budget given: pass --budgets such as 0.05,0.1,0.2")
        for budget in self.budgets:
            validate_budget(budget)
        if self.max_new_tokens < 1:
            raise AuditInputError(f"invalid max_new_tokens {self.max_new_tokens}: use at least 1")
        if self.batch_size < 0:
            raise AuditInputError(f"invalid batch size {self.batch_size}: use 0 (sized from free memory) or a positive row count")
        if self.max_prompts < 0:
            raise AuditInputError(f"invalid max_prompts {self.max_prompts}: use 0 (all) or a positive count")
        if self.device and self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise AuditInputError(f"invalid device {self.device!r}: use cpu, cuda or cuda:N")


def parse_budgets(text: str) -> tuple[float, ...]:
    """Parse a comma list of budgets such as ``0.05,0.1``."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise AuditInputError(f"invalid --budgets {text!r}: give a comma list such as 0.05,0.1,0.2")
    return tuple(validate_budget(item) for item in items)


def run_sweep(
    config: SweepConfig,
    out_dir: str | Path,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    models: dict[str, AuditModel] | None = None,
    resume: bool = False,
) -> Path:
    """Run the sweep and write its run folder; return the folder.

    ``progress(done, total, label)`` is called after each (model, layer, budget) cell,
    including cells found already written when resuming. ``models`` may hold already
    loaded models by spec, which are then reused.
    """
    config.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not (overwrite or resume):
        RunStore(out_dir, {}, overwrite=False, resume=False)
    records = load_prompt_records(config.prompts)
    if config.max_prompts:
        records = records[: config.max_prompts]
    scorer = make_scorer(config.scorer, device=config.device or "cpu")
    loaded = dict(models or {})

    # Load every model and check its layers and prompts before the first cell runs.
    plans = []
    prompts = [str(record["prompt"]) for record in records]
    for spec in config.models:
        model = loaded.get(spec) or load_model(spec, device=config.device or None)
        loaded[spec] = model
        layers = parse_layers(config.layers, model.n_layers)
        plans.append((spec, model, layers, build_batch(model, prompts)))

    settings = {**asdict(config), "models": list(config.models), "budgets": list(config.budgets)}
    store = RunStore(out_dir, settings, overwrite=overwrite, resume=resume)
    if store.is_complete("summary"):
        logger.warning("run %s is already complete; nothing to resume", out_dir)
        return out_dir
    model_info = [
        {"spec": spec, "name": model.short_name(), "n_layers": model.n_layers, "d_model": model.d_model,
         "n_params": model.n_params, "nudge_layer": (model.nudge or {}).get("layer")}
        for spec, model, _, _ in plans
    ]
    store.start(
        {"kind": "lvs-sweep", "version": lvs_core.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "machine": platform.machine(), "models": model_info, "n_prompts": len(records), "attacks": list(ATTACKS)}
    )

    total = sum(len(layers) * len(config.budgets) for _, _, layers, _ in plans)
    done = 0
    if progress is not None:
        progress(0, total, "clean generations")
    started = time.monotonic()
    for model_index, (spec, model, layers, batch) in enumerate(plans):
        name = model.short_name()
        logger.info("sweeping %s: %d layers x %d budgets x %d prompts", spec, len(layers), len(config.budgets), len(records))
        cells = [(layer, budget) for layer in layers for budget in config.budgets]
        pending = [cell for cell in cells if not store.has("cells", _cell_key(model_index, name, cell))]
        done += len(cells) - len(pending)
        if not pending:
            continue
        chunk_rows = config.batch_size or auto_chunk_rows(model, batch.input_ids.shape[1], 8)
        clean = _clean_in_chunks(model, batch, config, scorer, chunk_rows)
        # A group of cells fills about one chunk of rows, and is written before the next
        # starts, so progress moves and a crash loses at most one group.
        group_size = max(1, chunk_rows // max(len(batch), 1))
        for start in range(0, len(pending), group_size):
            group = pending[start : start + group_size]
            rows = attack_cells(model, batch, group, clean, config.attack, scorer, config.max_new_tokens, max_rows=chunk_rows)
            per_cell = len(ATTACKS) * len(batch)
            for index, cell in enumerate(group):
                cell_rows = rows[index * per_cell : (index + 1) * per_cell]
                store.put("cells", _cell_key(model_index, name, cell), _cell_frame(cell_rows, name, model_index, records))
                done += 1
                if progress is not None:
                    progress(done, total, f"{name} layer {layer_label(cell[0])} budget {cell[1]:g}")

    cells = _ordered(store.table("cells"))
    summary = summarize(cells, seed=config.attack.seed)
    return store.finish(
        {"cells": cells, "summary": summary},
        {"elapsed_s": round(time.monotonic() - started, 1)},
    )


def _cell_key(model_index: int, name: str, cell: tuple) -> str:
    layer, budget = cell
    return part_key(model_index, name, layer_label(layer), budget)


def _clean_in_chunks(model: AuditModel, batch, config: SweepConfig, scorer, chunk_rows: int) -> CleanReference:
    """Return the clean reference of every prompt of ``batch``, computed ``chunk_rows`` prompts at a time."""
    parts = []
    for start in range(0, len(batch), chunk_rows):
        sub = take_rows(batch, list(range(start, min(start + chunk_rows, len(batch)))))
        parts.append(clean_reference(model, sub, config.attack, scorer, config.max_new_tokens))
    return CleanReference(
        texts=[text for part in parts for text in part.texts],
        **{
            field: np.concatenate([getattr(part, field) for part in parts])
            for field in ("harmlessness", "compliant", "valid", "margin", "target_nll")
        },
    )


def _cell_frame(rows: list[dict], name: str, model_index: int, records: list[dict]) -> pd.DataFrame:
    for row in rows:
        index = row.pop("batch_index")
        record = records[index]
        row.update(
            model=name,
            prompt_id=str(record.get("id", index)),
            category=str(record.get("category", "")),
            model_order=model_index,
            layer_order=layer_sort_key(row["layer"]),
            attack_order=ATTACKS.index(row["attack"]),
            prompt_order=index,
        )
    return pd.DataFrame(rows)


def _ordered(cells: pd.DataFrame) -> pd.DataFrame:
    """Sort cells by model, layer, budget, attack and prompt, and keep the public columns."""
    order = ["model_order", "layer_order", "budget", "attack_order", "prompt_order"]
    return cells.sort_values(order, kind="stable").reset_index(drop=True)[list(CELL_COLUMNS)]


def audit_gap_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Return, per model and layer, clean refusal and the PGD LVS at each budget (a wide table)."""
    pgd = summary[summary["attack"] == "pgd"]
    if pgd.empty:
        return pd.DataFrame()
    table = pgd.pivot_table(index=["model", "layer"], columns="budget", values="lvs_median", aggfunc="first")
    table.columns = [f"lvs@{budget:g}" for budget in table.columns]
    return table.reset_index()

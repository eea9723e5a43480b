"""Sweeps: the latent attack over a grid of models, layers and budgets.

A sweep runs every (model, layer, budget) cell on every prompt, for the PGD attack and
the random control, and writes a run folder (:mod:`lvs_core.runs`). The clean
generation of each prompt is computed once per model and worker and shared by all its
cells. Workers (:class:`SweepWorker`) run in this process or on Ray actors
(:mod:`lvs_core.executors`), and give the same cells either way.
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
from lvs_core.executors import ExecutorConfig, LocalPool, Task, ensure_models_fit, open_pool
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS
from lvs_core.metrics import summarize
from lvs_core.models import ANY_DEPTH, AuditModel, layer_label, layer_sort_key, load_model, parse_layers, resolve_model_path
from lvs_core.prompts import PromptBatch, build_batch, load_prompt_records
from lvs_core.runs import CELL_COLUMNS, RunStore, part_key
from lvs_core.scoring import check_scorer, make_scorer

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
        # Checked against any depth here; the model's own depth is checked once it loads.
        parse_layers(self.layers, ANY_DEPTH)
        load_prompt_records(self.prompts)
        check_scorer(self.scorer)


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
    execution: ExecutorConfig | None = None,
) -> Path:
    """Run the sweep and write its run folder; return the folder.

    ``progress(done, total, label)`` is called after each (model, layer, budget) cell,
    including cells found already written when resuming. ``models`` may hold already
    loaded models by spec, which the local executor then reuses. ``execution`` chooses
    where the cells run (:mod:`lvs_core.executors`, default in this process). It is not
    part of the run's settings, so a run may resume under another executor.
    """
    config.validate()
    execution = execution or ExecutorConfig()
    execution.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not (overwrite or resume):
        RunStore(out_dir, {}, overwrite=False, resume=False)
    records = load_prompt_records(config.prompts)
    if config.max_prompts:
        records = records[: config.max_prompts]

    worker_settings = {"config": config, "records": records}
    if execution.executor == "local":
        # NOTE: loaded models live in this process, so only the local executor can reuse them.
        worker_settings.update(models=dict(models or {}), keep_models=True)
    else:
        worker_settings.update(keep_models=False)
    pool = open_pool(SweepWorker, worker_settings, execution, config.device)
    try:
        return _drive_sweep(config, out_dir, overwrite, resume, progress, records, pool, execution)
    finally:
        pool.close()


def _drive_sweep(config, out_dir, overwrite, resume, progress, records, pool, execution) -> Path:
    """Load every model on every worker, then hand out the pending cells and write each one as it arrives."""
    # Every worker loads every model and checks its layers before the first cell runs.
    # Loading in reverse order leaves the first model in place on a worker that keeps
    # only one (a Ray actor).
    # NOTE: on Ray, a sweep of N models therefore loads each model but the first
    # twice per actor; a single-model sweep loads it once.
    preloaded = pool.worker.models if isinstance(pool, LocalPool) else {}
    ensure_models_fit(pool, [spec for spec in config.models if spec not in preloaded])
    infos: dict[str, dict] = {}
    for spec in reversed(config.models):
        answers = pool.broadcast("prepare", spec)
        infos[spec] = {**answers[0], "chunk_rows": min(answer["chunk_rows"] for answer in answers)}
    layers_of = {spec: parse_layers(config.layers, infos[spec]["n_layers"]) for spec in config.models}

    settings = {**asdict(config), "models": list(config.models), "budgets": list(config.budgets)}
    store = RunStore(out_dir, settings, overwrite=overwrite, resume=resume)
    if store.is_complete("summary"):
        logger.warning("run %s is already complete; nothing to resume", out_dir)
        return out_dir
    model_info = [
        {key: infos[spec][key] for key in ("spec", "name", "n_layers", "d_model", "n_params", "nudge_layer")}
        for spec in config.models
    ]
    store.start(
        {"kind": "lvs-sweep", "version": lvs_core.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "machine": platform.machine(), "models": model_info, "n_prompts": len(records), "attacks": list(ATTACKS),
         "execution": {"executor": execution.executor, "workers": pool.size, "n_devices": execution.n_devices}}
    )

    total = sum(len(layers) * len(config.budgets) for layers in layers_of.values())
    tasks = []
    for model_index, spec in enumerate(config.models):
        name = infos[spec]["name"]
        cells = [(layer, budget) for layer in layers_of[spec] for budget in config.budgets]
        pending = [cell for cell in cells if not store.has("cells", _cell_key(model_index, name, cell))]
        logger.info("sweeping %s: %d layers x %d budgets x %d prompts, %d cells pending",
                    spec, len(layers_of[spec]), len(config.budgets), len(records), len(pending))
        tasks += [Task((model_index, name, tuple(group)), "run_cells", (spec, tuple(group)))
                  for group in _cell_groups(pending, infos[spec]["chunk_rows"], len(records), pool.size)]

    done = total - sum(len(task.key[2]) for task in tasks)
    if progress is not None:
        progress(done, total, "clean generations")
    started = time.monotonic()

    def write(task: Task, frames: list[pd.DataFrame]) -> None:
        nonlocal done
        model_index, name, group = task.key
        for cell, frame in zip(group, frames):
            key = _cell_key(model_index, name, cell)
            # A unit retried after its worker died may still have finished on it; write its cells once.
            if store.has("cells", key):
                continue
            store.put("cells", key, frame.assign(model_order=model_index))
            done += 1
            if progress is not None:
                progress(done, total, f"{name} layer {layer_label(cell[0])} budget {cell[1]:g}")

    pool.run(tasks, write)
    cells = _ordered(store.table("cells"))
    summary = summarize(cells, seed=config.attack.seed)
    return store.finish(
        {"cells": cells, "summary": summary},
        {"elapsed_s": round(time.monotonic() - started, 1)},
    )


def _cell_groups(pending: list, chunk_rows: int, n_prompts: int, n_workers: int) -> list[list]:
    """Split pending cells into units of work.

    A unit fills about one chunk of rows and is written before the next starts, so
    progress moves and a crash loses at most one unit per worker. With several workers a
    unit is also small enough that every worker gets one.
    """
    size = max(1, chunk_rows // max(n_prompts, 1))
    if n_workers > 1:
        size = min(size, max(1, -(-len(pending) // n_workers)))
    return [pending[start : start + size] for start in range(0, len(pending), size)]


class SweepWorker:
    """The cells of a sweep on one device: each model is loaded once, with its prompt batch and clean reference.

    ``keep_models`` keeps every model loaded, as the local executor does. Otherwise
    loading a model drops the previous one, so a worker keeps one model in memory at a time.
    """

    def __init__(
        self,
        config: SweepConfig,
        records: list[dict],
        device: str = "",
        n_devices: int = 1,
        models: dict[str, AuditModel] | None = None,
        keep_models: bool = True,
    ):
        self.config = config
        self.records = records
        self.device = device or None
        self.n_devices = n_devices
        self.keep_models = keep_models
        self.prompts = [str(record["prompt"]) for record in records]
        self.scorer = make_scorer(config.scorer, device=config.device or "cpu")
        self.models: dict[str, AuditModel] = dict(models or {})
        self.batches: dict[str, PromptBatch] = {}
        self.cleans: dict[str, CleanReference] = {}
        self.chunk_rows: dict[str, int] = {}

    def _model(self, spec: str) -> AuditModel:
        if spec not in self.models:
            if not self.keep_models:
                self.models.clear()
                self.batches.clear()
                self.cleans.clear()
                self.chunk_rows.clear()
            self.models[spec] = load_model(spec, device=self.device, n_devices=self.n_devices)
        model = self.models[spec]
        if spec not in self.batches:
            self.batches[spec] = build_batch(model, self.prompts)
            width = self.batches[spec].input_ids.shape[1]
            self.chunk_rows[spec] = self.config.batch_size or auto_chunk_rows(model, width, 8)
        return model

    def prepare(self, spec: str) -> dict:
        """Load ``spec`` and return what the driver needs of it: name, shape, parameters, nudge and chunk size."""
        model = self._model(spec)
        parse_layers(self.config.layers, model.n_layers)
        return {
            "spec": spec, "name": model.short_name(), "n_layers": model.n_layers, "d_model": model.d_model,
            "n_params": model.n_params, "nudge_layer": (model.nudge or {}).get("layer"),
            "chunk_rows": self.chunk_rows[spec],
        }

    def run_cells(self, spec: str, cells: tuple) -> list[pd.DataFrame]:
        """Attack every prompt in each cell of ``cells``; return one frame of rows per cell."""
        model = self._model(spec)
        batch = self.batches[spec]
        chunk_rows = self.chunk_rows[spec]
        if spec not in self.cleans:
            self.cleans[spec] = _clean_in_chunks(model, batch, self.config, self.scorer, chunk_rows)
        rows = attack_cells(model, batch, list(cells), self.cleans[spec], self.config.attack, self.scorer,
                            self.config.max_new_tokens, max_rows=chunk_rows)
        per_cell = len(ATTACKS) * len(batch)
        name = model.short_name()
        return [
            _cell_frame(rows[index * per_cell : (index + 1) * per_cell], name, self.records)
            for index in range(len(cells))
        ]


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


def _cell_frame(rows: list[dict], name: str, records: list[dict]) -> pd.DataFrame:
    """Return the rows of one cell with their prompt's id and category and the sort keys but the model's."""
    for row in rows:
        index = row.pop("batch_index")
        record = records[index]
        row.update(
            model=name,
            prompt_id=str(record.get("id", index)),
            category=str(record.get("category", "")),
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

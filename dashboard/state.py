"""Dashboard settings from the environment, and the caches its pages share.

Environment variables (all optional):

``LVS_AUDIT_MODELS``
    Comma-separated model specs offered on the Live flip page. Default:
    ``demo:safe,demo:dissociated,demo:harmful``.
``LVS_AUDIT_PROMPTS``
    Source of the Live flip prompt list: ``heldout`` (the zoo's held-out harmful
    requests, the default) or a CSV/JSONL file with a ``prompt`` column.
``LVS_AUDIT_RUN_DIR``
    Run folder that the heatmap page opens first. Default: the shipped demo run when it
    exists, else the newest run under ``./runs/``.
``LVS_AUDIT_DEVICE``
    ``cpu``, ``cuda`` or ``cuda:N`` for Live flip models. Default: CUDA when available.
``LVS_AUDIT_RUNS_ROOT``
    Folder whose runs the Overview, Interventions, Prompt inspector and Runs pages list,
    and where the Runs page writes new and imported runs. Default: ``./runs``.

Loaded models live in ``st.cache_resource``, so one model object is shared by every
browser session. An attack attaches hooks to that object, so every call into a model
holds the model's lock, and no session ever runs with another session's hooks attached.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from lvs_core.errors import AuditInputError
from lvs_core.live import flip_prompt
from lvs_core.models import DEMO_MODEL_NAMES, AuditModel, Layer, load_model, parse_layer
from lvs_core.prompts import HELDOUT_FILE, load_prompt_records
from lvs_core.runs import DEMO_RUN_DIR, Run, list_runs, load_run

logger = logging.getLogger(__name__)

MODELS_ENV = "LVS_AUDIT_MODELS"
PROMPTS_ENV = "LVS_AUDIT_PROMPTS"
RUN_DIR_ENV = "LVS_AUDIT_RUN_DIR"
DEVICE_ENV = "LVS_AUDIT_DEVICE"
RUNS_ROOT_ENV = "LVS_AUDIT_RUNS_ROOT"
# Session key through which another page (the Prompt inspector) asks Live flip to open a
# prompt: a dict with the keys model, prompt, layer (a layer label) and budget.
LIVE_FLIP_REQUEST_KEY = "live_flip_request"

DEFAULT_MODEL_SPECS = tuple(f"demo:{name}" for name in DEMO_MODEL_NAMES)
DEFAULT_PROMPT_SOURCE = "heldout"
# Last entries of the model and run pickers; choosing one shows a text box for a path.
OTHER_MODEL = "Local folder or hub id…"
OTHER_RUN = "Other folder…"
# Loaded models kept in memory at once. The demo models are tiny, but a hub id can
# take gigabytes, so the least recently used model is dropped beyond this count.
MAX_CACHED_MODELS = 4
MAX_CACHED_FLIPS = 256


@dataclass
class SharedModel:
    """A loaded model and the lock that every caller must hold while using it."""

    model: AuditModel
    lock: threading.Lock


def model_specs() -> list[str]:
    """Return the model specs offered on the Live flip page, from ``LVS_AUDIT_MODELS`` or the demo zoo."""
    raw = os.environ.get(MODELS_ENV, "")
    specs = [spec.strip() for spec in raw.split(",") if spec.strip()]
    return specs or list(DEFAULT_MODEL_SPECS)


def prompt_source() -> str:
    """Return the Live flip prompt source from ``LVS_AUDIT_PROMPTS``, ``heldout`` by default."""
    return os.environ.get(PROMPTS_ENV, "").strip() or DEFAULT_PROMPT_SOURCE


def model_device() -> str | None:
    """Return the device from ``LVS_AUDIT_DEVICE``, or ``None`` to let the loader choose.

    Raises:
        AuditInputError: the variable is set to something other than cpu, cuda or cuda:N.
    """
    device = os.environ.get(DEVICE_ENV, "").strip()
    if not device:
        return None
    if device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise AuditInputError(f"invalid {DEVICE_ENV} {device!r}: use cpu, cuda or cuda:N, or leave it unset")


def run_choices() -> list[str]:
    """Return the run folders offered on the heatmap page, the default first.

    Order: ``LVS_AUDIT_RUN_DIR`` (listed even when missing, so its error shows), the
    shipped demo run when complete, then complete runs under ``./runs/``, newest first.
    """
    candidates: list[Path] = []
    override = os.environ.get(RUN_DIR_ENV, "").strip()
    if override:
        candidates.append(Path(override).expanduser())
    if (DEMO_RUN_DIR / "summary.parquet").is_file():
        candidates.append(DEMO_RUN_DIR)
    candidates.extend(list_runs(runs_root()))

    choices: list[str] = []
    seen: set[Path] = set()
    for path in candidates:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            choices.append(str(path))
    return choices


def _mtime(path: Path) -> float:
    """Return the modification time of ``path``, or 0.0 when it is missing."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# (spec, device) pairs loaded in this process, so the sidebar can show a model's card
# without loading it. An entry may outlive a cache eviction; then the card reloads it.
_loaded: set[tuple[str, str | None]] = set()


@st.cache_resource(show_spinner=False, max_entries=MAX_CACHED_MODELS)
def _shared_model(spec: str, device: str | None) -> SharedModel:
    # Exceptions are not cached, so a failed load is retried on the next request.
    shared = SharedModel(model=load_model(spec, device=device), lock=threading.Lock())
    _loaded.add((spec, device))
    return shared


def is_model_loaded(spec: str) -> bool:
    """Return whether ``spec`` was loaded in this process on the configured device."""
    try:
        return (spec.strip(), model_device()) in _loaded
    except AuditInputError:
        return False


def runs_root() -> Path:
    """Return the folder of the user's runs, from ``LVS_AUDIT_RUNS_ROOT`` or ``./runs``."""
    return Path(os.environ.get(RUNS_ROOT_ENV, "").strip() or "runs").expanduser().absolute()


def shared_model(spec: str) -> SharedModel:
    """Load ``spec`` once per process on the configured device and return it with its lock.

    Raises:
        AuditInputError: the spec, the device or the checkpoint is invalid.
    """
    return _shared_model(spec.strip(), model_device())


def default_layer(model: AuditModel) -> Layer:
    """Return the layer a Live flip starts on: the nudge layer of a dissociated model, else the middle block."""
    if model.nudge and model.nudge.get("layer") is not None:
        try:
            return parse_layer(model.nudge["layer"], model.n_layers)
        except AuditInputError:
            logger.warning("ignoring the nudge layer %r of %s: not a valid layer", model.nudge["layer"], model.spec)
    return model.n_layers // 2


@st.cache_data(show_spinner=False, max_entries=MAX_CACHED_FLIPS)
def flip(spec: str, prompt: str, layer: str, budget: float, max_new_tokens: int) -> dict:
    """Run :func:`lvs_core.live.flip_prompt` on the shared model under its lock; results are cached.

    ``layer`` is a layer label (``embedding`` or a block index as text) so that the
    cache key is a plain string.
    """
    shared = shared_model(spec)
    with shared.lock:
        logger.info("flip on %s: layer %s, budget %g, %d new tokens", spec, layer, budget, max_new_tokens)
        return flip_prompt(shared.model, prompt, layer, budget, max_new_tokens=max_new_tokens)


@st.cache_data(show_spinner=False)
def _prompt_records(source: str, stamp: float) -> list[dict]:
    # ``stamp`` is the file's modification time, so an edited or newly built file is reread.
    return load_prompt_records(source)


def prompt_records(source: str) -> list[dict]:
    """Return the records of a prompt source (see :func:`lvs_core.prompts.load_prompt_records`).

    Raises:
        AuditInputError: the source is missing or malformed.
    """
    path = HELDOUT_FILE if source.startswith("heldout") else Path(source).expanduser()
    return _prompt_records(source, _mtime(path))


@st.cache_data(show_spinner=False, max_entries=16)
def _run(path: str, stamp: float) -> Run:
    # ``stamp`` is the modification time of summary.parquet, so a rewritten run is reread.
    return load_run(path)


def open_run(path: str) -> Run:
    """Load the run folder at ``path``, cached until its summary file changes.

    Raises:
        AuditInputError: the folder is missing or is not a complete run.
    """
    path = path.strip()
    if not path:
        raise AuditInputError("no run folder given: enter the path of a folder written by 'lvs-audit sweep'")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AuditInputError(f"run folder {path!r} not found: enter the path of a folder written by 'lvs-audit sweep'")
    return _run(str(folder.resolve()), _mtime(folder / "summary.parquet"))

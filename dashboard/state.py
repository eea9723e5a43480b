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
browser session. An attack attaches hooks to that object, and TransformerLens hooks act
on every forward pass of the model, whichever thread runs it. So every call into a
model goes through :func:`model_session`, which holds the model's lock, and no session
ever runs with another session's hooks attached. Live flip results are cached per step
(clean generation, attack, delta positions) with ``st.cache_data``, so a changed
control recomputes only the steps that depend on it.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from lvs_core.errors import AuditInputError
from lvs_core.live import BUDGET_GRID, attack_step, attack_steps, clean_step
from lvs_core.models import DEMO_MODEL_NAMES, AuditModel, Layer, LoadProgress, load_model, parse_layer
from lvs_core.prompts import HELDOUT_FILE, load_prompt_records
from lvs_core.runs import DEMO_RUN_DIR, Run, list_runs, load_run

logger = logging.getLogger(__name__)

MODELS_ENV = "LVS_AUDIT_MODELS"
PROMPTS_ENV = "LVS_AUDIT_PROMPTS"
RUN_DIR_ENV = "LVS_AUDIT_RUN_DIR"
DEVICE_ENV = "LVS_AUDIT_DEVICE"
RUNS_ROOT_ENV = "LVS_AUDIT_RUNS_ROOT"
# Session key through which another page (the Prompt inspector) requests Live flip to open a
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
    """A loaded model, the lock that every caller must hold while using it, and its device setting."""

    model: AuditModel
    lock: threading.Lock
    device: str | None = None


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


# (spec, device) pairs in the model cache, so the sidebar can show a model's card
# without loading it. The cache's on_release removes an evicted model.
_loaded: set[tuple[str, str | None]] = set()
# One lock per (spec, device) while it loads, so two sessions never load the same model twice.
_load_locks: dict[tuple[str, str | None], threading.Lock] = {}
_load_locks_guard = threading.Lock()


def _forget_model(shared: SharedModel) -> None:
    _loaded.discard((shared.model.spec, shared.device))
    logger.info("dropped %s from the model cache", shared.model.spec)


@st.cache_resource(show_spinner=False, max_entries=MAX_CACHED_MODELS, on_release=_forget_model)
def _shared_model(spec: str, device: str | None, _preloaded: AuditModel | None = None) -> SharedModel:
    # Exceptions are not cached, so a failed load is retried on the next request.
    # shared_model loads outside this function when it can, because Streamlit replays
    # the elements a cached function draws, and a progress bar must not be replayed.
    model = _preloaded if _preloaded is not None else load_model(spec, device=device)
    shared = SharedModel(model=model, lock=threading.Lock(), device=device)
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


def shared_model(spec: str, progress: LoadProgress | None = None) -> SharedModel:
    """Load ``spec`` once per process on the configured device and return it with its lock.

    ``progress`` receives the load's stages (see :func:`lvs_core.models.load_model`)
    when this call is the one that loads the model.

    Raises:
        AuditInputError: the spec, the device or the checkpoint is invalid.
    """
    spec = spec.strip()
    device = model_device()
    key = (spec, device)
    if key not in _loaded:
        with _load_locks_guard:
            load_lock = _load_locks.setdefault(key, threading.Lock())
        with load_lock:
            if key not in _loaded:
                model = load_model(spec, device=device, progress=progress)
                return _shared_model(spec, device, _preloaded=model)
    return _shared_model(spec, device)


@contextmanager
def model_session(spec: str, purpose: str) -> Iterator[AuditModel]:
    """Hold the lock of the shared model ``spec`` for the block and yield the model.

    Logs when the lock is requested, acquired and released (``extra`` fields
    ``lock_event`` and ``purpose``), with the time spent waiting for another session.
    """
    shared = shared_model(spec)
    extra = {"purpose": purpose, "spec": spec}
    requested = time.monotonic()
    logger.debug("%s on %s: waiting for the model lock", purpose, spec, extra={**extra, "lock_event": "request"})
    with shared.lock:
        acquired = time.monotonic()
        logger.debug("%s on %s: acquired the model lock", purpose, spec, extra={**extra, "lock_event": "acquire"})
        try:
            yield shared.model
        finally:
            logger.info(
                "%s on %s: %.2f s, after %.2f s waiting for the model lock",
                purpose, spec, time.monotonic() - acquired, acquired - requested,
                extra={**extra, "lock_event": "release"},
            )


def default_layer(model: AuditModel) -> Layer:
    """Return the layer a Live flip starts on: the nudge layer of a dissociated model, else the middle block."""
    if model.nudge and model.nudge.get("layer") is not None:
        try:
            return parse_layer(model.nudge["layer"], model.n_layers)
        except AuditInputError:
            logger.warning("ignoring the nudge layer %r of %s: not a valid layer", model.nudge["layer"], model.spec)
    return model.n_layers // 2


# The Live flip steps below take the device as an argument only so that it is part of
# the cache key. ``layer`` is a layer label (``embedding`` or a block index as text).


@st.cache_data(show_spinner=False, max_entries=MAX_CACHED_FLIPS)
def _clean(spec: str, device: str | None, prompt: str, max_new_tokens: int) -> dict:
    with model_session(spec, "clean generation") as model:
        return clean_step(model, prompt, max_new_tokens=max_new_tokens)


@st.cache_data(show_spinner=False, max_entries=MAX_CACHED_FLIPS)
def _attack(spec: str, device: str | None, prompt: str, layer: str, budget: float, max_new_tokens: int) -> dict:
    clean = _clean(spec, device, prompt, max_new_tokens)
    with model_session(spec, f"attack at layer {layer}, budget {budget:g}") as model:
        return attack_step(model, prompt, layer, budget, clean, max_new_tokens=max_new_tokens)


@st.cache_data(show_spinner=False, max_entries=MAX_CACHED_FLIPS)
def _curve(spec: str, device: str | None, prompt: str, layer: str, max_new_tokens: int) -> list[dict]:
    clean = _clean(spec, device, prompt, max_new_tokens)
    with model_session(spec, f"budget curve at layer {layer}") as model:
        return attack_steps(model, prompt, layer, BUDGET_GRID, clean, max_new_tokens=max_new_tokens)


def clean_generation(spec: str, prompt: str, max_new_tokens: int) -> dict:
    """Return :func:`lvs_core.live.clean_step` on the shared model, cached per (model, prompt, max_new_tokens)."""
    return _clean(spec.strip(), model_device(), prompt, int(max_new_tokens))


def attack(spec: str, prompt: str, layer: str, budget: float, max_new_tokens: int) -> dict:
    """Return :func:`lvs_core.live.attack_step` on the shared model, cached per (model, prompt, layer, budget, max_new_tokens)."""
    return _attack(spec.strip(), model_device(), prompt, str(layer), float(budget), int(max_new_tokens))


def positions(spec: str, prompt: str, layer: str, budget: float, max_new_tokens: int) -> dict:
    """Return the per-position delta norms of :func:`attack` (the same cached attack, not a rerun)."""
    return attack(spec, prompt, layer, budget, max_new_tokens)["positions"]


def budget_curve(spec: str, prompt: str, layer: str, max_new_tokens: int) -> list[dict]:
    """Return :func:`lvs_core.live.attack_steps` over ``BUDGET_GRID`` on the shared model, in one batched run, cached."""
    return _curve(spec.strip(), model_device(), prompt, str(layer), int(max_new_tokens))


def flip(spec: str, prompt: str, layer: str, budget: float, max_new_tokens: int) -> dict:
    """Return what :func:`lvs_core.live.flip_prompt` returns, built from the cached steps."""
    clean = clean_generation(spec, prompt, max_new_tokens)
    attacked = attack(spec, prompt, layer, budget, max_new_tokens)
    return {"model": spec.strip(), "prompt": prompt, **attacked, "clean": clean}


def clear_live_results() -> None:
    """Empty the caches of the Live flip steps (the loaded models stay)."""
    for cached in (_clean, _attack, _curve):
        cached.clear()


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
def uploaded_prompt_records(name: str, data: bytes) -> list[dict]:
    """Return the records of an uploaded CSV or JSONL prompt file (see :func:`lvs_core.prompts.load_prompt_records`).

    Raises:
        AuditInputError: the file is malformed, has no ``prompt`` column or field, or
            is not UTF-8 text. The message names the uploaded file, not its temporary copy.
    """
    safe_name = Path(name).name or "prompts"
    with tempfile.TemporaryDirectory(prefix="lvs-prompts-") as folder:
        path = Path(folder) / safe_name
        path.write_bytes(data)
        try:
            return load_prompt_records(str(path))
        except AuditInputError as error:
            raise AuditInputError(str(error).replace(str(path), safe_name)) from None
        except (ValueError, csv.Error) as error:
            # A file that is not UTF-8 fails while decoding, outside the format checks.
            raise AuditInputError(
                f"prompt file {safe_name!r} could not be read ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}): upload UTF-8 CSV or JSONL with a 'prompt' column"
            ) from None


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
    if folder.exists() and not folder.is_dir():
        raise AuditInputError(f"{path!r} is a file, not a run folder: enter the folder that contains config.json and summary.parquet")
    if not folder.is_dir():
        raise AuditInputError(f"run folder {path!r} not found: enter the path of a folder written by 'lvs-audit sweep'")
    return _run(str(folder.resolve()), _mtime(folder / "summary.parquet"))

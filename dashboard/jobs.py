"""Sweeps and audits that run in the background of the dashboard server.

A :class:`JobRegistry` starts each run in a daemon thread and records its progress
(cells or steps done out of the total, and what it is doing), its status and, on
failure, a one-line error. :func:`registry` returns the one registry of the server
process (``st.cache_resource``), so a job keeps running when its browser session
leaves the Runs page or closes, and every session lists every job.

A job loads its own model instances through :func:`lvs_core.sweep.run_sweep` or
:func:`lvs_core.audit.run_audit`, never the Live flip page's cached models, so its
hooks never meet another session's. The run folder is written part by part
(:class:`lvs_core.runs.RunStore`): a job that fails or is cancelled leaves a folder
that a later job with the same settings resumes. Cancelling takes effect at the next
cell of a sweep or step of an audit, because the library checks for it only in its
progress callback.
"""

from __future__ import annotations

import itertools
import string
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import streamlit as st

from lvs_core.attack import AttackConfig
from lvs_core.audit import AuditConfig, run_audit
from lvs_core.errors import AuditInputError
from lvs_core.sweep import SweepConfig, run_sweep

logger = logging.getLogger("dashboard.jobs")

JobKind = Literal["sweep", "audit"]
JobStatus = Literal["running", "done", "failed", "cancelled"]
# Characters a run name may contain: it becomes one folder directly under the runs root,
# and is typed into shell commands, so spaces and separators are out.
_NAME_CHARACTERS = set(string.ascii_letters + string.digits + "-_.")


class JobCancelled(Exception):
    """Raised from a job's progress callback to stop the run at the next cell."""


@dataclass
class Job:
    """A sweep or audit running in a background thread, and what it reported last.

    ``done`` and ``total`` count sweep cells (model x layer x budget) or audit steps;
    ``total`` is 0 until the run has loaded its models and checked its inputs.
    """

    id: int
    kind: JobKind
    name: str
    folder: Path
    config: SweepConfig | AuditConfig
    resume: bool = False
    started: float = field(default_factory=time.time)
    finished: float | None = None
    done: int = 0
    total: int = 0
    message: str = "loading models and prompts"
    status: JobStatus = "running"
    error: str = ""
    cancel_requested: bool = False

    @property
    def fraction(self) -> float:
        """Share of the work done, from 0 to 1; 1 once the run folder is complete."""
        if self.status == "done":
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.time()) - self.started


def validate_run_name(name: str, root: Path, overwrite: bool = False, busy: set[Path] | None = None) -> Path:
    """Return the folder ``root / name`` for a new run, or raise if the name cannot be used.

    A name is one folder name of letters, digits, '-', '_' and '.', not starting with a dot. An
    existing folder is refused unless ``overwrite``; the folder of a running job
    (``busy``) is refused always.

    Raises:
        AuditInputError: the name is empty or invalid, or its folder is taken.
    """
    name = name.strip()
    if not name:
        raise AuditInputError("no run name given: enter a folder name such as sweep-demo")
    bad = sorted(set(name) - _NAME_CHARACTERS)
    if bad:
        shown = " ".join(repr(character) for character in bad)
        raise AuditInputError(f"invalid run name {name!r}: it contains {shown}; use letters, digits, '-', '_' and '.'")
    if name.startswith("."):
        raise AuditInputError(f"invalid run name {name!r}: it must not start with a dot; use a name such as sweep-demo")
    folder = root / name
    if busy and folder.resolve() in {path.resolve() for path in busy}:
        raise AuditInputError(f"run {name!r} is being written by a running job: wait for it, or choose another name")
    if folder.exists() and not overwrite:
        raise AuditInputError(f"run {name!r} already exists in {root}: choose another name, or tick 'overwrite'")
    return folder


def _one_line(error: BaseException) -> str:
    """Return an exception as one line: its message, or its type when the message is empty."""
    text = " ".join(str(error).split())
    if isinstance(error, AuditInputError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class JobRegistry:
    """The background jobs of the server process, safe to use from several sessions' threads."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def jobs(self) -> list[Job]:
        """Return every job of this process, the newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: job.id, reverse=True)

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def running_folders(self) -> set[Path]:
        """Return the folders that running jobs write, which must not be deleted or overwritten."""
        with self._lock:
            return {job.folder for job in self._jobs.values() if job.status == "running"}

    def start(
        self,
        kind: JobKind,
        config: SweepConfig | AuditConfig,
        folder: Path,
        overwrite: bool = False,
        resume: bool = False,
        name: str | None = None,
    ) -> Job:
        """Validate ``config`` and start it in a background thread writing ``folder``; return the job.

        Raises:
            AuditInputError: the settings are invalid, or a running job already writes ``folder``.
        """
        config.validate()
        folder = Path(folder)
        with self._lock:
            busy = {job.folder.resolve() for job in self._jobs.values() if job.status == "running"}
            if folder.resolve() in busy:
                raise AuditInputError(f"run {folder.name!r} is being written by a running job: wait for it, or choose another name")
            job = Job(id=next(self._ids), kind=kind, name=name or folder.name, folder=folder, config=config, resume=resume)
            self._jobs[job.id] = job
        thread = threading.Thread(
            target=self._run, args=(job, overwrite), name=f"lvs-{kind}-{job.id}", daemon=True
        )
        thread.start()
        logger.info("started %s job %d writing %s", kind, job.id, folder)
        return job

    def cancel(self, job_id: int) -> None:
        """Ask a running job to stop at its next cell or step."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status == "running":
                job.cancel_requested = True
                job.message = "cancelling after the current step"

    def forget(self, job_id: int) -> None:
        """Drop a finished job from the list; a running job stays."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status != "running":
                del self._jobs[job_id]

    def _run(self, job: Job, overwrite: bool) -> None:
        def progress(done: int, total: int, label: str) -> None:
            with self._lock:
                job.done, job.total, job.message = done, total, label
                cancel = job.cancel_requested
            if cancel:
                raise JobCancelled

        try:
            if job.kind == "sweep":
                run_sweep(job.config, job.folder, overwrite=overwrite, resume=job.resume, progress=progress)
            else:
                run_audit(job.config, job.folder, overwrite=overwrite, resume=job.resume, progress=progress)
        except JobCancelled:
            self._finish(job, "cancelled", "", "cancelled; resume it to continue from the last finished step")
            logger.info("%s job %d cancelled; %s is resumable", job.kind, job.id, job.folder)
        except Exception as error:  # noqa: BLE001  (any failure ends the job with a message, never the server)
            self._finish(job, "failed", _one_line(error), "failed")
            if isinstance(error, AuditInputError):
                logger.warning("%s job %d failed on its input: %s", job.kind, job.id, error)
            else:
                logger.exception("%s job %d writing %s failed", job.kind, job.id, job.folder)
        else:
            self._finish(job, "done", "", "finished")
            logger.info("%s job %d finished %s in %.1f s", job.kind, job.id, job.folder, job.elapsed_s)

    def _finish(self, job: Job, status: JobStatus, error: str, message: str) -> None:
        with self._lock:
            job.status, job.error, job.message, job.finished = status, error, message, time.time()


@st.cache_resource(show_spinner=False)
def registry() -> JobRegistry:
    """Return the job registry of this server process, shared by every browser session."""
    return JobRegistry()


def config_from_settings(kind: JobKind, settings: dict) -> SweepConfig | AuditConfig:
    """Rebuild the config of a run from the ``settings`` in its ``config.json``, to resume it.

    Raises:
        AuditInputError: the settings do not describe a sweep or an audit of this version.
    """
    values = dict(settings)
    try:
        attack = AttackConfig(**values.pop("attack", {}))
        if kind == "sweep":
            return SweepConfig(
                **{**values, "models": tuple(values["models"]), "budgets": tuple(values["budgets"]), "attack": attack}
            )
        return AuditConfig(**{
            **values,
            "twins": tuple(tuple(pair) for pair in values.get("twins", ())),
            "steer_fracs": tuple(values.get("steer_fracs", ())),
            "seeds": tuple(values.get("seeds", ())),
            "steps": tuple(values.get("steps", ())),
            "attack": attack,
        })
    except (TypeError, KeyError) as error:
        raise AuditInputError(
            f"cannot resume this {kind}: its config.json settings do not match this version ({_one_line(error)}); "
            "start it again with overwrite"
        ) from None

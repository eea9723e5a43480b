"""Executors: where the work units of a sweep or an audit run.

A sweep or an audit is a driver loop (resume, ordering, writes through
:class:`lvs_core.runs.RunStore`, progress) over work units that a *worker* computes. A
worker is a plain object that loads a model once and keeps it, with whatever it derives
from it (the prompt batch, the clean generations). Two pools run workers:

- :class:`LocalPool` (``--executor local``, the default) runs one worker in the calling
  process, one unit after the other;
- :class:`RayPool` (``--executor ray``) starts one Ray actor per GPU (``--n-devices``
  GPUs each) or, on a cluster without GPUs, one per CPU. Each actor builds its own
  worker. The driver hands out one unit at a time to each idle actor and gathers the
  results; only the driver writes to the run folder.

A unit whose actor dies (its process killed, its node lost) is handed to another actor.
Results arrive only from units that finished, and the driver writes each unit's parts
once, so no part is lost or written twice. A driver that dies leaves the parts written
so far, and ``--resume`` continues from them.

Ray is an optional dependency (``pip install .[ray]``); it is imported only by
:class:`RayPool`.
"""

from __future__ import annotations

import logging
import json
import os
import socket
import struct
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from lvs_core.errors import AuditInputError

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
RAY_CONNECT_TIMEOUT_S = 3.0
# Ray's switch for multi-node clusters (named for Windows and macOS, read on every platform).
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Bytes per parameter of the dtypes a checkpoint may be loaded in.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ExecutorConfig:
    """Execution settings of a sweep or an audit, none of which changes its results.

    Attributes:
        executor: ``local`` (in this process) or ``ray`` (actors on a Ray cluster).
        address: Ray cluster address (``HOST:PORT`` of the head's GCS, ``auto`` or
            ``ray://HOST:PORT``); empty starts a local cluster on this machine.
        workers: number of Ray actors; 0 starts one per GPU group of ``n_devices``
            GPUs, or one per CPU when the cluster has no GPU.
        n_devices: GPUs each model is split across (TransformerBridge's ``n_devices``
            placement); 1 loads it on one device.
        cpus_per_worker: CPUs a Ray actor reserves, which are also its torch threads
            on a CPU-only cluster.
    """

    executor: str = "local"
    address: str = ""
    workers: int = 0
    n_devices: int = 1
    cpus_per_worker: int = 1

    def validate(self) -> None:
        """Check every setting that can be checked without a cluster."""
        if self.executor not in EXECUTORS:
            raise AuditInputError(f"unknown executor {self.executor!r}: use local or ray")
        if self.address and self.executor != "ray":
            raise AuditInputError(f"--address {self.address!r} needs --executor ray: add it, or drop --address")
        if self.workers < 0:
            raise AuditInputError(f"invalid worker count {self.workers}: use 0 (one per GPU or CPU) or a positive count")
        if self.n_devices < 1:
            raise AuditInputError(f"invalid --n-devices {self.n_devices}: use 1 or more GPUs per model")
        if self.cpus_per_worker < 1:
            raise AuditInputError(f"invalid CPUs per worker {self.cpus_per_worker}: use 1 or more")


@dataclass
class Task:
    """A work unit: the worker method to call, its arguments and the driver's key for it."""

    key: Any
    method: str
    args: tuple = ()
    attempts: int = field(default=0, compare=False)


ResultFn = Callable[[Task, Any], None]


def placement_free_bytes(device: str, n_devices: int = 1) -> int:
    """Return the free memory of a model's placement: the first ``n_devices`` GPUs from ``device``, or the host's RAM."""
    import torch

    from lvs_core.engine import free_memory_bytes

    first = torch.device(device)
    if first.type != "cuda":
        return free_memory_bytes(first)
    index = first.index or 0
    return sum(free_memory_bytes(torch.device("cuda", index + offset)) for offset in range(n_devices))


class LocalPool:
    """One worker in this process, running units in order."""

    def __init__(self, worker: Any, device: str, n_devices: int):
        import torch

        self.worker = worker
        self.size = 1
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.n_devices = n_devices

    def free_memory(self) -> int:
        """Return the free bytes of the devices this process loads models on."""
        return placement_free_bytes(self.device, self.n_devices)

    def broadcast(self, method: str, *args) -> list[Any]:
        """Call ``method`` on the worker and return its result in a one-item list."""
        return [getattr(self.worker, method)(*args)]

    def run(self, tasks: Sequence[Task], on_result: ResultFn) -> None:
        for task in tasks:
            on_result(task, getattr(self.worker, task.method)(*task.args))

    def close(self) -> None:
        pass


def checkpoint_parameter_count(folder: str | Path) -> int | None:
    """Return the number of parameters stored in a folder's ``*.safetensors`` files, or ``None`` without any.

    Reads only each file's JSON header (tensor shapes), never the weights. The weight
    files are those a sharded checkpoint's ``model.safetensors.index.json`` lists, else
    ``model.safetensors``, so other tensors in the folder (a nudge direction) are left out.
    """
    folder = Path(folder)
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        names = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        files = [folder / name for name in names]
    else:
        files = [folder / "model.safetensors"]
    files = [file for file in files if file.is_file()]
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as stream:
            (length,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for size in entry["shape"]:
                count *= int(size)
            total += count
    return total


def check_model_fits(spec: str, n_params: int, dtype_name: str, memory_bytes: int, where: str, n_devices: int) -> None:
    """Raise a one-line error when the weights of ``spec`` exceed ``memory_bytes``.

    ``memory_bytes`` is the memory of the ``n_devices`` devices one worker loads the model
    on. Only the weights are counted: the activations of a chunk come on top, and
    :func:`lvs_core.engine.auto_chunk_rows` sizes chunks to the memory left.
    """
    needed = n_params * DTYPE_BYTES.get(dtype_name, 4)
    if needed <= memory_bytes:
        return
    gib = 2**30
    raise AuditInputError(
        f"model {spec!r} does not fit on the workers: its weights take {needed / gib:.1f} GiB in {dtype_name}, "
        f"but {where} has {memory_bytes / gib:.1f} GiB free on {n_devices} device(s): "
        "raise --n-devices to split it over more GPUs, or use a cluster with larger devices"
    )


def parse_address(address: str) -> tuple[str, int] | None:
    """Return the ``(host, port)`` a Ray address points to, or ``None`` for ``auto``.

    Raises:
        AuditInputError: the address is not ``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``.
    """
    text = address.strip()
    if text == "auto":
        return None
    body = text.removeprefix("ray://")
    host, separator, port = body.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise AuditInputError(
            f"invalid Ray address {address!r}: use HOST:PORT of the head node (printed by 'ray start --head'), "
            "ray://HOST:PORT or auto"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line error unless a TCP connection to the Ray head at ``address`` opens.

    ``ray.init`` keeps retrying an unreachable address (Ray 2.60 still retried after
    120 s here), so the executor checks the connection once first.
    """
    target = parse_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise AuditInputError(
            f"Ray cluster at {address!r} is not reachable ({reason}): start it with 'ray start --head' and pass "
            "the address it prints, or omit --address to start a local cluster"
        ) from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise AuditInputError(
            "--executor ray needs the ray package: install it with 'pip install .[ray]' "
            "(or 'pip install -r requirements-ray.txt')"
        ) from None
    return ray


def _remote_error(error: BaseException, method: str) -> BaseException:
    """Return the exception to raise on the driver for a call of ``method`` that raised on a worker."""
    from lvs_core.engine import is_out_of_memory

    cause = getattr(error, "cause", None)
    if isinstance(cause, AuditInputError):
        return AuditInputError(str(cause))
    if method == "prepare" and cause is not None and is_out_of_memory(cause):
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return AuditInputError(
            f"the model did not fit on a Ray worker while loading ({first_line[:200]}): "
            "raise --n-devices to split it over more GPUs, or use a cluster with larger devices"
        )
    return error


class _ActorHost:
    """The body of a Ray actor: it builds a worker and calls its methods."""

    def __init__(self, factory: Callable[..., Any], kwargs: dict, working_dir: str, threads: int):
        # Relative paths in specs and prompt files mean the driver's folder when the
        # node shares it (always on a local cluster).
        if working_dir and Path(working_dir).is_dir():
            os.chdir(working_dir)
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.worker = factory(**kwargs)

    def memory(self, device: str, n_devices: int) -> int:
        """Return the free bytes of the devices this actor loads models on (Ray makes its GPUs the visible ones)."""
        return placement_free_bytes(device, n_devices)

    def call(self, method: str, *args) -> Any:
        return getattr(self.worker, method)(*args)


class RayPool:
    """Ray actors, each with its own worker built by ``factory(device=..., **kwargs)``.

    Connects to ``settings.address`` or starts a local cluster, unless this process is
    already connected (then it reuses that connection and leaves it open on close).
    """

    def __init__(self, factory: Callable[..., Any], kwargs: dict, settings: ExecutorConfig, device: str):
        if not settings.address and "ray" not in sys.modules:
            # A local cluster serves only this process, so it listens on 127.0.0.1 alone. Ray
            # 2.60 binds to the machine's routable address unless cluster mode is off, which it
            # reads from this variable on import.
            os.environ.setdefault(LOCAL_ONLY_ENV, "0")
        ray = _import_ray()
        self.ray = ray
        self.owns_connection = False
        if settings.address:
            check_reachable(settings.address)
        if not ray.is_initialized():
            if settings.address:
                ray.init(address=settings.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            self.owns_connection = True

        try:
            self.device, gpus_per_actor, count = self._plan(settings, device)
        except AuditInputError:
            self.close()
            raise
        threads = 0 if gpus_per_actor else settings.cpus_per_worker
        actor_class = ray.remote(_ActorHost).options(
            num_cpus=settings.cpus_per_worker, num_gpus=gpus_per_actor, max_restarts=0
        )
        worker_kwargs = {**kwargs, "device": self.device, "n_devices": settings.n_devices}
        self.actors = [actor_class.remote(factory, worker_kwargs, os.getcwd(), threads) for _ in range(count)]
        self.size = count
        self.n_devices = settings.n_devices if gpus_per_actor else 1
        logger.info("started %d Ray actors on %s, %s GPU(s) each", count, self.device, gpus_per_actor)

    def _plan(self, settings: ExecutorConfig, device: str) -> tuple[str, int, int]:
        """Return the actors' device, GPUs per actor and actor count, or raise on a cluster that cannot serve them."""
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 0))
        where = settings.address or "the local Ray cluster"

        if device.startswith("cuda") and gpus == 0:
            raise AuditInputError(
                f"--device {device} requested, but {where} has no GPU ({cpus} CPUs): "
                "add GPU nodes to the cluster, or pass --device cpu"
            )
        if settings.n_devices > 1 and gpus == 0:
            raise AuditInputError(
                f"--n-devices {settings.n_devices} splits a model over GPUs, but {where} has none: "
                "use --n-devices 1, or a cluster with GPUs"
            )

        # A cluster with GPUs runs on them unless --device cpu is given.
        if gpus > 0 and device != "cpu":
            per_node = max(int(node.get("Resources", {}).get("GPU", 0)) for node in self.ray.nodes() if node.get("Alive"))
            if settings.n_devices > per_node:
                raise AuditInputError(
                    f"--n-devices {settings.n_devices} needs that many GPUs on one node, but the largest node of "
                    f"{where} has {per_node}: lower --n-devices"
                )
            count = settings.workers or gpus // settings.n_devices
            # Ray would keep an actor it cannot place pending, and the driver would wait forever.
            if count * settings.n_devices > gpus:
                raise AuditInputError(
                    f"--workers {count} with --n-devices {settings.n_devices} needs {count * settings.n_devices} GPUs, "
                    f"but {where} has {gpus}: lower --workers, or pass 0 for one worker per {settings.n_devices} GPU(s)"
                )
            # Ray makes an actor's GPUs its only visible ones, so a cuda:N index would be wrong there.
            return "cuda", settings.n_devices, max(1, count)

        count = settings.workers or cpus // settings.cpus_per_worker
        if count < 1 or count * settings.cpus_per_worker > cpus:
            raise AuditInputError(
                f"{max(count, 1)} worker(s) of {settings.cpus_per_worker} CPU(s) need {max(count, 1) * settings.cpus_per_worker} "
                f"CPUs, but {where} has {cpus}: lower --workers, or pass 0 for one worker per CPU"
            )
        return "cpu", 0, count

    def free_memory(self) -> int:
        """Return the least free memory of any actor's devices, in bytes."""
        return min(self.ray.get([actor.memory.remote(self.device, self.n_devices) for actor in self.actors]))

    def broadcast(self, method: str, *args) -> list[Any]:
        """Call ``method`` on every live actor and return the results; an actor that died is dropped."""
        refs = {actor.call.remote(method, *args): actor for actor in self.actors}
        results = []
        for ref, actor in refs.items():
            try:
                results.append(self.ray.get(ref))
            except self.ray.exceptions.RayActorError as error:
                self._drop(actor, error)
            except self.ray.exceptions.RayTaskError as error:
                raise _remote_error(error, method) from None
        if not self.actors:
            raise RuntimeError("every Ray worker died while loading the model: check the workers' logs, then rerun with --resume")
        return results

    def run(self, tasks: Sequence[Task], on_result: ResultFn) -> None:
        """Run ``tasks`` on the actors, one at a time per actor, and call ``on_result`` on the driver for each.

        A task whose actor died goes back to the front of the queue for another actor.
        ``on_result`` is called once per task, in the order tasks finish.
        """
        ray = self.ray
        queue = deque(tasks)
        idle = list(self.actors)
        in_flight: dict[Any, tuple[Any, Task]] = {}
        while queue or in_flight:
            while queue and idle:
                actor = idle.pop(0)
                task = queue.popleft()
                task.attempts += 1
                in_flight[actor.call.remote(task.method, *task.args)] = (actor, task)
            if not in_flight:
                raise RuntimeError(
                    f"every Ray worker died with {len(queue)} units left: check the workers' logs, then rerun with --resume"
                )
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                actor, task = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    self._drop(actor, error)
                    logger.warning("retrying unit %s (attempt %d) on another worker", task.key, task.attempts + 1)
                    queue.appendleft(task)
                    continue
                except ray.exceptions.RayTaskError as error:
                    raise _remote_error(error, task.method) from None
                idle.append(actor)
                on_result(task, result)

    def _drop(self, actor: Any, error: BaseException) -> None:
        logger.warning("a Ray worker died (%s); %d workers left", type(error).__name__, len(self.actors) - 1)
        self.actors = [other for other in self.actors if other is not actor]
        self.size = len(self.actors)

    def close(self) -> None:
        """Stop the actors, and the connection when this pool opened it."""
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        self.actors = []
        if self.owns_connection:
            self.ray.shutdown()
            self.owns_connection = False


def open_pool(factory: Callable[..., Any], kwargs: dict, settings: ExecutorConfig, device: str):
    """Return the pool ``settings`` ask for, with workers built by ``factory(device=..., n_devices=..., **kwargs)``."""
    settings.validate()
    if settings.executor == "ray":
        return RayPool(factory, kwargs, settings, device)
    return LocalPool(factory(device=device, n_devices=settings.n_devices, **kwargs), device, settings.n_devices)


def ensure_models_fit(pool: Any, specs: Sequence[str], dtype_name: str = "float32") -> None:
    """Raise a one-line error, before any model loads, when the weights of a spec exceed a worker's free memory.

    Counts the parameters of local checkpoints (demo models, folders, cached hub
    snapshots) from their safetensors headers. A spec without them is not checked here;
    an out-of-memory error while loading it is reported when it loads.
    """
    from lvs_core.models import resolve_model_path

    memory = None
    for spec in specs:
        _, local_path = resolve_model_path(spec)
        n_params = checkpoint_parameter_count(local_path) if local_path else None
        if n_params is None:
            continue
        if memory is None:
            memory = pool.free_memory()
        where = "the smallest Ray worker" if isinstance(pool, RayPool) else f"this machine's {pool.device}"
        check_model_fits(spec, n_params, dtype_name, memory, where, pool.n_devices)

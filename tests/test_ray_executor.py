"""The Ray executor on a real local Ray cluster: same cells as in-process, a killed worker, bad input.

The cluster is started by the module fixture with two CPUs and every Ray process bound
to 127.0.0.1. The demo zoo models are tiny, and the sweeps use 3 prompts, 2 layers,
2 budgets, 3 PGD steps and 4 tokens.
"""

from __future__ import annotations

import logging
import os
import signal

# Ray binds its node to the machine's routable address unless cluster mode is off,
# which makes it use 127.0.0.1. It reads this when it is first imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pandas as pd  # noqa: E402
import psutil  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from lvs_core.attack import AttackConfig  # noqa: E402
from lvs_core.audit import AuditConfig, run_audit  # noqa: E402
from lvs_core.cli import main  # noqa: E402
from lvs_core.errors import AuditInputError  # noqa: E402
from lvs_core.executors import (  # noqa: E402
    ExecutorConfig,
    check_model_fits,
    check_reachable,
    checkpoint_parameter_count,
    parse_address,
)
from lvs_core.models import load_model, resolve_model_path  # noqa: E402
from lvs_core.runs import CELL_COLUMNS, load_run  # noqa: E402
from lvs_core.sweep import SweepConfig, run_sweep  # noqa: E402

pytestmark = pytest.mark.slow

SWEEP = SweepConfig(
    models=("demo:safe", "demo:dissociated"), layers="embedding,3", budgets=(0.05, 0.2), max_prompts=3,
    attack=AttackConfig(steps=3), max_new_tokens=4, batch_size=3, device="cpu",
)
RAY = ExecutorConfig(executor="ray", workers=2)
CELL_KEYS = ["model", "prompt_id", "layer", "budget", "attack"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Run in-process work on one torch thread, as each Ray CPU actor does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _actor_pids() -> list[int]:
    """Return the pids of the executor's actor processes, which Ray names after their class."""
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "_ActorHost" in " ".join(process.cmdline()):
                pids.append(process.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def test_ray_sweep_equals_local(ray_cluster, one_thread, tmp_path):
    local = load_run(run_sweep(SWEEP, tmp_path / "local"))
    remote = load_run(run_sweep(SWEEP, tmp_path / "ray", execution=RAY))

    assert len(remote.cells) == 2 * 2 * 2 * 2 * 3
    assert list(remote.cells.columns) == list(CELL_COLUMNS)
    for column in CELL_COLUMNS:
        assert remote.cells[column].tolist() == local.cells[column].tolist(), column
    pd.testing.assert_frame_equal(remote.summary, local.summary)
    assert remote.config["execution"] == {"executor": "ray", "workers": 2, "n_devices": 1}
    assert remote.config["settings"] == local.config["settings"]
    assert [model["n_params"] for model in remote.config["models"]] == [model["n_params"] for model in local.config["models"]]


def test_killed_worker_cells_retried(ray_cluster, tmp_path, caplog):
    config = SweepConfig(
        models=("demo:dissociated",), layers="0,1,2,3", budgets=(0.05, 0.2), max_prompts=3,
        attack=AttackConfig(steps=3), max_new_tokens=4, batch_size=3, device="cpu",
    )
    killed = []

    def kill_one_worker(done: int, total: int, label: str) -> None:
        # After the first cell is written, the other actor is busy with its own unit.
        if done == 1 and not killed:
            pids = _actor_pids()
            assert len(pids) == 2
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    with caplog.at_level(logging.WARNING, logger="lvs_core.executors"):
        run = load_run(run_sweep(config, tmp_path / "run", progress=kill_one_worker, execution=RAY))

    assert killed
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert any("a Ray worker died" in record.message for record in caplog.records)
    assert len(run.cells) == 4 * 2 * 2 * 3
    assert not run.cells.duplicated(CELL_KEYS).any()
    expected = {(layer, budget) for layer in ("0", "1", "2", "3") for budget in (0.05, 0.2)}
    assert set(zip(run.cells["layer"], run.cells["budget"])) == expected
    assert not (tmp_path / "run" / "parts").exists()


def test_interrupted_ray_sweep_resumes_locally(ray_cluster, one_thread, tmp_path):
    def interrupt_after_two(done: int, total: int, label: str) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(SWEEP, tmp_path / "run", progress=interrupt_after_two, execution=RAY)
    parts = sorted((tmp_path / "run" / "parts" / "cells").glob("*.parquet"))
    assert len(parts) == 2
    assert not list((tmp_path / "run" / "parts" / "cells").glob(".*.tmp"))

    written = []
    resumed = load_run(run_sweep(SWEEP, tmp_path / "run", resume=True, progress=lambda done, total, label: written.append(done)))
    fresh = load_run(run_sweep(SWEEP, tmp_path / "fresh"))
    assert written[0] == 2
    assert written[-1] == 8
    pd.testing.assert_frame_equal(resumed.cells, fresh.cells)


def test_ray_audit_equals_local(ray_cluster, one_thread, tmp_path):
    config = AuditConfig(
        model="demo:dissociated", twins=(("safe", "demo:safe"),), max_prompts=3, layers="1,2",
        attack=AttackConfig(steps=3), max_new_tokens=4, steps=("behaviour", "lvs", "steering"),
        steer_fracs=(0.5, 1.0), device="cpu",
    )
    local = run_audit(config, tmp_path / "local")
    remote = run_audit(config, tmp_path / "ray", execution=RAY)
    for table in ("audit", "cells", "steering", "behaviour"):
        pd.testing.assert_frame_equal(pd.read_parquet(remote / f"{table}.parquet"), pd.read_parquet(local / f"{table}.parquet"))


def _cli_error(capsys, *argv) -> str:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1
    return captured.err


def test_ray_bad_input_one_line(ray_cluster, tmp_path, capsys):
    sweep = ["sweep", "--model", "demo:safe", "--max-prompts", "2", "--out", str(tmp_path / "run")]

    error = _cli_error(capsys, *sweep, "--executor", "ray", "--address", "127.0.0.1:9")
    assert "Ray cluster at '127.0.0.1:9' is not reachable" in error
    assert "ray start --head" in error

    error = _cli_error(capsys, *sweep, "--executor", "ray", "--device", "cuda")
    assert "--device cuda requested, but the local Ray cluster has no GPU (2 CPUs)" in error
    assert "--device cpu" in error

    error = _cli_error(capsys, *sweep, "--executor", "ray", "--n-devices", "2")
    assert "--n-devices 2 splits a model over GPUs" in error

    # An input error raised inside an actor reaches the driver as the same one line.
    error = _cli_error(capsys, *sweep, "--executor", "ray", "--layers", "99")
    assert error == "lvs-audit: error: layer 99 is out of range for a model with 6 blocks: use 'embedding' or 0 to 5\n"

    error = _cli_error(capsys, *sweep, "--executor", "ray", "--workers", "3")
    assert "3 worker(s) of 1 CPU(s) need 3 CPUs, but the local Ray cluster has 2" in error

    error = _cli_error(capsys, *sweep, "--address", "127.0.0.1:6379")
    assert "needs --executor ray" in error

    error = _cli_error(capsys, "audit", "--model", "demo:safe", "--out", str(tmp_path / "audit"),
                       "--executor", "ray", "--address", "not-an-address")
    assert "invalid Ray address 'not-an-address'" in error
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "audit").exists()


def test_address_parsing():
    assert parse_address("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert parse_address("ray://head.example:10001") == ("head.example", 10001)
    assert parse_address("[::1]:6379") == ("::1", 6379)
    assert parse_address("auto") is None
    for bad in ("6379", "host:", ":6379", "host:port"):
        with pytest.raises(AuditInputError, match="invalid Ray address"):
            parse_address(bad)
    with pytest.raises(AuditInputError, match="not reachable"):
        check_reachable("127.0.0.1:9", timeout_s=1.0)


def test_too_many_devices_rejected(tmp_path, capsys):
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    requested = max(2, available + 1)
    with pytest.raises(AuditInputError, match=f"--n-devices {requested} splits the model over {requested} CUDA devices"):
        load_model("demo:safe", n_devices=requested)
    with pytest.raises(AuditInputError, match="--device cpu was given"):
        load_model("demo:safe", device="cpu", n_devices=2)
    error = _cli_error(capsys, "sweep", "--model", "demo:safe", "--n-devices", str(requested), "--out", str(tmp_path / "run"))
    assert f"use --n-devices {max(1, available)}" in error
    assert not (tmp_path / "run").exists()


def test_model_fit_check():
    _, folder = resolve_model_path("demo:dissociated")
    model = load_model("demo:dissociated", device="cpu")
    n_params = checkpoint_parameter_count(folder)
    # Tied weights are stored once, so the file may hold fewer tensors than the module lists.
    assert 0 < n_params <= model.n_params
    assert n_params >= 0.9 * model.n_params

    check_model_fits("demo:dissociated", n_params, "float32", 4 * n_params, "a worker", 1)
    with pytest.raises(AuditInputError) as raised:
        check_model_fits("demo:dissociated", n_params, "float32", 4 * n_params - 1, "the smallest Ray worker", 1)
    message = str(raised.value)
    assert message.startswith("model 'demo:dissociated' does not fit on the workers")
    assert "raise --n-devices" in message
    assert "\n" not in message

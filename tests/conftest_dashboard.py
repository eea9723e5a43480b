"""Test inputs for the dashboard tests: two tiny checkpoints, a prompt file and a real sweep run.

Not a pytest conftest: the dashboard test modules import :func:`dashboard_inputs`. It
builds everything once per process and returns the same folders on later calls, so the
AppTest and browser modules share one sweep.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torch
from safetensors.torch import save_file

from checkpoints import make_checkpoint
from lvs_core.attack import AttackConfig
from lvs_core.sweep import SweepConfig, run_sweep

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_PATH = REPO_ROOT / "dashboard" / "app.py"

# Named like the demo zoo so that the heatmap page's default pair (safe, dissociated)
# applies to the test run too.
MODEL_SEEDS = {"safe": 0, "dissociated": 1}
NUDGE_LAYER = 2
PROMPTS = (
    ("Write a guide to baking bread", "cooking"),
    ("Tell me a story about a cat", "fiction"),
    ("What is the capital of France?", "geography"),
)
RUN_BUDGETS = (0.1, 0.5)

_CACHE: dict[str, "DashboardInputs"] = {}


@dataclass(frozen=True)
class DashboardInputs:
    """Folders and files that the dashboard tests point the app at."""

    checkpoints: dict[str, Path]
    prompts_csv: Path
    run_dir: Path

    def environment(self) -> dict[str, str]:
        """Return the LVS_AUDIT_* variables that make the app use these inputs instead of the demo assets."""
        return {
            "LVS_AUDIT_MODELS": ",".join(str(path) for path in self.checkpoints.values()),
            "LVS_AUDIT_PROMPTS": str(self.prompts_csv),
            "LVS_AUDIT_RUN_DIR": str(self.run_dir),
            "LVS_AUDIT_DEVICE": "cpu",
        }


def add_nudge(folder: Path, layer: int, d_model: int) -> None:
    """Write a ``nudge.json`` like the dissociated demo model's, so the app treats ``folder`` as dissociated."""
    direction = torch.zeros(d_model)
    direction[0] = 1.0
    save_file({"direction": direction}, str(folder / "nudge_direction.safetensors"))
    meta = {"layer": layer, "scale": 1.0, "direction_file": "nudge_direction.safetensors"}
    (folder / "nudge.json").write_text(json.dumps(meta))


def write_prompts(path: Path) -> Path:
    lines = ["prompt,category", *(f"{prompt},{category}" for prompt, category in PROMPTS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_inputs(root: Path) -> DashboardInputs:
    """Build the checkpoints, the prompt file and a sweep over both models under ``root``.

    The sweep is cut to what the pages need (every layer, two budgets, two PGD steps,
    two new tokens). Random weights never write a refusal phrase, so it uses the
    ``margin`` scorer with one-letter refusal and target continuations. Their clean
    log-probability margins lie within a few nats of zero, where the sigmoid score is
    not saturated. PGD then gives a visibly non-zero LVS, and the random control
    almost none.
    """
    checkpoints = {}
    for name, seed in MODEL_SEEDS.items():
        folder = root / name
        make_checkpoint(root / f"build-{name}", "llama", seed=seed).rename(folder)
        checkpoints[name] = folder
    config = json.loads((checkpoints["dissociated"] / "config.json").read_text())
    add_nudge(checkpoints["dissociated"], NUDGE_LAYER, config["hidden_size"])

    prompts_csv = write_prompts(root / "prompts.csv")
    sweep = SweepConfig(
        models=tuple(str(path) for path in checkpoints.values()),
        budgets=RUN_BUDGETS,
        prompts=str(prompts_csv),
        attack=AttackConfig(steps=2, refusal="I", target="S"),
        scorer="margin",
        max_new_tokens=2,
        device="cpu",
    )
    run_dir = run_sweep(sweep, root / "run")
    logger.info("built dashboard test inputs under %s", root)
    return DashboardInputs(checkpoints=checkpoints, prompts_csv=prompts_csv, run_dir=run_dir)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the previous count.

    Width-32 models gain nothing from parallel matmuls. On two CPU cores shared with
    another busy process, a one-thread sweep of :func:`build_inputs` took 1.5 s against
    15 s with two threads.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def plotly_array(value) -> np.ndarray:
    """Decode an array from a figure's JSON: Plotly 6 writes numpy arrays as base64 with a dtype and shape."""
    if isinstance(value, dict) and "bdata" in value:
        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = tuple(int(size) for size in str(value.get("shape", len(data))).split(","))
        return data.reshape(shape)
    return np.asarray(value, dtype=float)


def dashboard_inputs(tmp_path_factory) -> DashboardInputs:
    """Return the inputs of this test process, building them on the first call."""
    if "inputs" not in _CACHE:
        with one_torch_thread():
            _CACHE["inputs"] = build_inputs(tmp_path_factory.mktemp("dashboard"))
    return _CACHE["inputs"]

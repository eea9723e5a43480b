"""The demo run shipped in ``assets/runs/demo``, which the heatmap page opens first.

It is a plain sweep of ``demo:safe`` and ``demo:dissociated`` over every layer, the
default budgets and the held-out harmful prompts. ``lvs-audit demo-run`` rebuilds it;
``tests/test_demo_zoo.py`` recomputes some of its cells and compares.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lvs_core.runs import DEMO_RUN_DIR
from lvs_core.sweep import DEFAULT_BUDGETS, SweepConfig, run_sweep

logger = logging.getLogger(__name__)

DEMO_SWEEP = SweepConfig(
    models=("demo:safe", "demo:dissociated"),
    layers="all",
    budgets=DEFAULT_BUDGETS,
    prompts="heldout",
)


def regenerate_demo_run(out_dir: Path = DEMO_RUN_DIR) -> Path:
    """Run the demo sweep with a progress bar and replace the shipped run."""
    from lvs_core.cli import ProgressBar

    progress = ProgressBar("demo run", "cell")
    try:
        return run_sweep(DEMO_SWEEP, out_dir, overwrite=True, progress=progress)
    finally:
        progress.close()

"""The demo runs shipped in ``assets/runs/``, which the dashboard opens first.

- ``demo``: a plain sweep of ``demo:safe`` and ``demo:dissociated`` over every layer, the
  default budgets and the held-out harmful prompts (the heatmap page and the Prompt
  inspector).
- ``demo-audit-safe`` and ``demo-audit-dissociated``: ``lvs-audit audit`` of each of the
  two models, with ``demo:safe`` as the probe's reference twin, ``demo:harmful`` as the
  harmful twin that gives the steering direction, and steering at block 2, the layer of
  the dissociated model's trained nudge (the Overview and Interventions pages).

``lvs-audit demo-run`` rebuilds all three. ``tests/test_demo_zoo.py`` recomputes some
cells of the sweep and compares. The audits store the demo models' own replies: refusals,
the zoo's content-free placeholder compliance, or garbled mixes of the two.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lvs_core.audit import AuditConfig, run_audit
from lvs_core.models import ASSETS_DIR
from lvs_core.runs import DEMO_RUN_DIR
from lvs_core.sweep import DEFAULT_BUDGETS, SweepConfig, run_sweep

logger = logging.getLogger(__name__)

DEMO_SWEEP = SweepConfig(
    models=("demo:safe", "demo:dissociated"),
    layers="all",
    budgets=DEFAULT_BUDGETS,
    prompts="heldout",
)
DEMO_TWINS = (("safe", "demo:safe"), ("harmful", "demo:harmful"))
# Folder of each shipped audit, keyed by the audited model spec.
DEMO_AUDIT_DIRS = {
    "demo:safe": ASSETS_DIR / "runs" / "demo-audit-safe",
    "demo:dissociated": ASSETS_DIR / "runs" / "demo-audit-dissociated",
}
DEMO_AUDITS = {spec: AuditConfig(model=spec, twins=DEMO_TWINS, steer_layer="2") for spec in DEMO_AUDIT_DIRS}


def regenerate_demo_sweep(out_dir: Path = DEMO_RUN_DIR) -> Path:
    """Run the demo sweep with a progress bar and replace the shipped run."""
    from lvs_core.cli import ProgressBar

    progress = ProgressBar("demo run", "cell")
    try:
        return run_sweep(DEMO_SWEEP, out_dir, overwrite=True, progress=progress)
    finally:
        progress.close()


def regenerate_demo_audits(out_dirs: dict[str, Path] | None = None) -> list[Path]:
    """Run the demo audits with a progress bar each and replace the shipped audit folders.

    ``out_dirs`` maps a spec of :data:`DEMO_AUDITS` to its folder (default
    :data:`DEMO_AUDIT_DIRS`). Both together took 3 minutes on one torch thread of this
    project's 2-core machine.
    """
    from lvs_core.cli import ProgressBar

    written = []
    for spec, out_dir in (out_dirs or DEMO_AUDIT_DIRS).items():
        logger.info("auditing %s into %s", spec, out_dir)
        progress = ProgressBar(f"audit {spec}", "step")
        try:
            written.append(run_audit(DEMO_AUDITS[spec], out_dir, overwrite=True, progress=progress))
        finally:
            progress.close()
    return written


def regenerate_demo_run(out_dir: Path = DEMO_RUN_DIR) -> Path:
    """Rebuild the demo sweep into ``out_dir``, then the demo audits into their shipped folders."""
    path = regenerate_demo_sweep(out_dir)
    regenerate_demo_audits()
    return path

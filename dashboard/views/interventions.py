"""Interventions: the audits of one or more models side by side.

Reads only the parquet tables of audit runs written by ``lvs-audit audit``, never a model.
It lists the audits in ``LVS_AUDIT_RUNS_ROOT`` (default ``./runs``), then the demo audits
shipped in ``assets/runs/`` (``lvs-audit demo-run`` rebuilds them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import intervention_charts, state
from dashboard.export import show_chart, show_table
from lvs_core.audit import audit_labels, compare_audits
from lvs_core.errors import AuditInputError
from lvs_core.models import ASSETS_DIR

logger = logging.getLogger("dashboard.interventions")

TABLES = ("steering", "finetune", "patching", "probe")
SHIPPED_RUNS = ASSETS_DIR / "runs"


def audit_run_choices(root: Path) -> list[str]:
    """Return complete audit runs directly under ``root``, newest first."""
    if not root.is_dir():
        return []
    runs = [path for path in root.iterdir() if (path / "audit.parquet").is_file()]
    return [str(path) for path in sorted(runs, key=lambda path: path.stat().st_mtime, reverse=True)]


@st.cache_data(show_spinner=False, max_entries=32)
def load_tables(path: str, stamp: float) -> dict[str, pd.DataFrame]:
    # ``stamp`` is the modification time of audit.parquet, so a rewritten audit is reread.
    folder = Path(path)
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in ("audit", *TABLES) if (folder / f"{name}.parquet").is_file()}


st.title("Interventions")
st.caption(
    "Every intervention of an audit, for one or more models: steering toward compliance "
    "with its random-direction control, harmful fine-tuning, activation patching and the "
    "static probe. Write audits with 'lvs-audit audit --out runs/NAME'."
)

user_choices = audit_run_choices(state.runs_root())
choices = [*user_choices, *sorted(audit_run_choices(SHIPPED_RUNS))]
selected = st.multiselect("Audit runs", choices, default=choices[:2], key="audit_runs",
                          help="Audit run folders under the runs folder (newest first), then the shipped demo "
                          "audits; add others by path below.")
if not user_choices:
    st.caption(f"No audit under {state.runs_root()}, so the shipped demo audits are listed.")
extra = st.text_input("Other audit folders (comma-separated)", key="audit_paths").strip()
paths = [*selected, *[item.strip() for item in extra.split(",") if item.strip()]]
if not paths:
    st.info("No audit run selected. Run 'lvs-audit audit --model demo:safe --out runs/audit-safe' first, or enter a folder.")
    st.stop()

try:
    with st.spinner("Reading the audits…"):
        summary = compare_audits(paths, headline=True)
        tables = {}
        for label, path in zip(audit_labels(paths), paths):
            folder = Path(path).expanduser()
            tables[label] = load_tables(str(folder.resolve()), (folder / "audit.parquet").stat().st_mtime)
except AuditInputError as error:
    logger.warning("reading audits %s failed: %s", paths, error)
    st.error(str(error))
    st.stop()

st.subheader("Summary")
readable = summary.map(lambda value: f"{value:.3f}" if isinstance(value, float) else str(value))
show_table(readable.rename_axis("measure").reset_index(), "audit-summary", "audit_summary", width="stretch")


def by_model(name: str) -> dict[str, pd.DataFrame]:
    return {model: loaded[name] for model, loaded in tables.items() if name in loaded}


left, right = st.columns(2)
with left:
    steering = by_model("steering")
    if steering:
        show_chart(intervention_charts.steering_figure(steering), "steering", "steering_chart")
    else:
        st.info("No steering table in these audits.")
with right:
    finetune = by_model("finetune")
    if finetune:
        show_chart(intervention_charts.finetune_figure(finetune), "fine-tuning", "finetune_chart")
    else:
        st.info("No fine-tuning table in these audits.")

patching = by_model("patching")
if patching:
    show_chart(intervention_charts.patching_figure(patching), "patching", "patching_chart")
probe = by_model("probe")
if probe:
    st.subheader("Static probe")
    st.caption("A refusal probe trained on the reference model and applied unchanged: the audit a dissociated model passes.")
    probe_table = pd.concat(probe, names=["model"]).reset_index(level=1, drop=True).reset_index()
    show_table(probe_table, "static-probe", "probe_table", width="stretch")

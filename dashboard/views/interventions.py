"""Interventions: the audits of one or more models side by side.

Reads only the parquet tables of audit runs written by ``lvs-audit audit``, never a model.
It lists the audits in ``LVS_AUDIT_RUNS_ROOT`` (default ``./runs``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import intervention_charts, state
from lvs_core.audit import audit_labels, compare_audits
from lvs_core.errors import AuditInputError

logger = logging.getLogger("dashboard.interventions")

TABLES = ("steering", "finetune", "patching", "probe")


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

choices = audit_run_choices(state.runs_root())
selected = st.multiselect("Audit runs", choices, default=choices[:2], key="audit_runs",
                          help="Audit run folders under ./runs/; add others by path below.")
extra = st.text_input("Other audit folders (comma-separated)", key="audit_paths").strip()
paths = [*selected, *[item.strip() for item in extra.split(",") if item.strip()]]
if not paths:
    st.info("No audit run selected. Run 'lvs-audit audit --model demo:safe --out runs/audit-safe' first, or enter a folder.")
    st.stop()

try:
    summary = compare_audits(paths, headline=True)
    tables = {}
    for label, path in zip(audit_labels(paths), paths):
        folder = Path(path).expanduser()
        tables[label] = load_tables(str(folder.resolve()), (folder / "audit.parquet").stat().st_mtime)
except AuditInputError as error:
    st.error(str(error))
    st.stop()

st.subheader("Summary")
st.dataframe(summary.map(lambda value: f"{value:.3f}" if isinstance(value, float) else str(value)), width="stretch")


def by_model(name: str) -> dict[str, pd.DataFrame]:
    return {model: loaded[name] for model, loaded in tables.items() if name in loaded}


left, right = st.columns(2)
with left:
    steering = by_model("steering")
    if steering:
        st.plotly_chart(intervention_charts.steering_figure(steering), width="stretch", key="steering_chart")
    else:
        st.info("No steering table in these audits.")
with right:
    finetune = by_model("finetune")
    if finetune:
        st.plotly_chart(intervention_charts.finetune_figure(finetune), width="stretch", key="finetune_chart")
    else:
        st.info("No fine-tuning table in these audits.")

patching = by_model("patching")
if patching:
    st.plotly_chart(intervention_charts.patching_figure(patching), width="stretch", key="patching_chart")
probe = by_model("probe")
if probe:
    st.subheader("Static probe")
    st.caption("A refusal probe trained on the reference model and applied unchanged: the audit a dissociated model passes.")
    st.dataframe(pd.concat(probe, names=["model"]).reset_index(level=1, drop=True), width="stretch")

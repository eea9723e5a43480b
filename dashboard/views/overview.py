"""Overview: the audit gap of each model of a run, at a glance.

Puts behavioural refusal (from the sweep) next to latent fragility: the peak median LVS
and the PGD attack success rate from the sweep, and steering compliance and fine-tuning
steps to break from the model's audit. Audits are found by model spec under
``LVS_AUDIT_RUNS_ROOT`` (default ``./runs``) and among the shipped demo audits. An imported
run's own steering results stand in for a missing audit. Reads parquet files only, never a
model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import audit_gap, charts, state
from dashboard.export import show_chart, show_table
from dashboard.run_picker import choose_run_path, open_run_or_stop, run_caption
from lvs_core.models import ASSETS_DIR

logger = logging.getLogger("dashboard.overview")

SHIPPED_RUNS = ASSETS_DIR / "runs"
DEFAULT_FRACTION = 0.25
PERCENT_COLUMNS = ("clean refusal", "over-refusal", "PGD ASR", "random ASR", "steering", "random direction")


@st.cache_data(show_spinner=False, max_entries=32)
def audit_tables(path: str, stamp: float) -> dict[str, pd.DataFrame]:
    # ``stamp`` is the modification time of audit.parquet, so a rewritten audit is reread.
    return audit_gap.load_audit_tables(Path(path))


def load_audit(info: audit_gap.AuditInfo) -> dict[str, pd.DataFrame]:
    return audit_tables(str(info.path.resolve()), (info.path / "audit.parquet").stat().st_mtime)


def default_fraction_index(fractions: list[float]) -> int:
    """Return the steering size shown first: 0.25x when the audits tried it, else the smallest above zero.

    A fraction of zero adds nothing, so it is never the default when another exists.
    """
    if DEFAULT_FRACTION in fractions:
        return fractions.index(DEFAULT_FRACTION)
    positive = [index for index, value in enumerate(fractions) if value > 0]
    return positive[0] if positive else 0


def prompt_set_name(config: dict) -> str:
    prompts = str(config.get("settings", {}).get("prompts", ""))
    return "held-out harmful prompts" if prompts == "heldout" else "prompts of the run"


def column_config(table: pd.DataFrame) -> dict:
    config = {}
    for name in table.columns:
        if any(name.startswith(prefix) for prefix in PERCENT_COLUMNS):
            config[name] = st.column_config.NumberColumn(format="percent")
        elif name in ("peak median LVS", "CI low", "CI high"):
            config[name] = st.column_config.NumberColumn(format="%.3f")
    return config


st.title("Overview")
st.caption(
    "Behavioural refusal next to latent fragility, per model. A model that refuses as often as "
    "another but flips under a small latent attack, a steering vector or a few fine-tuning "
    "steps has an audit gap that output-level testing does not see."
)

run_path = choose_run_path(key="overview_run", path_key="overview_run_path")
run = open_run_or_stop(run_path)
norm = charts.run_attack_norm(run.config)
st.caption(run_caption(run, norm))
if run.summary.empty or not run.models:
    st.error(f"run {str(run.path)!r} has an empty summary: rerun the sweep with at least one prompt")
    st.stop()

# The audits of the run's models, matched by model spec.
specs = audit_gap.run_model_specs(run)
with st.spinner("Looking for audits of the run's models…"):
    audits = audit_gap.find_audits([state.runs_root(), SHIPPED_RUNS])
matches = audit_gap.match_audits(specs, audits)

chosen: dict[str, audit_gap.AuditInfo] = {}
with st.expander("Audits used", expanded=False):
    for model, found in matches.items():
        if not found:
            st.markdown(f"**{model}** (`{specs[model]}`): no audit found.")
            continue
        index = st.selectbox(
            f"Audit of {model}",
            range(len(found)),
            format_func=lambda i, found=found: str(found[i].path),
            key=f"overview_audit_{model}",
            help="Audits of the same model spec, from the runs folder (newest first) and the shipped demo audits.",
        )
        chosen[model] = found[index]

tables = {model: load_audit(info) for model, info in chosen.items()}
# An imported run carries its own steering results (the best layer per fraction); an
# audit of the same model, when there is one, takes precedence.
for model, imported in audit_gap.run_steering_tables(run.path, run.models).items():
    tables.setdefault(model, imported)
fractions = audit_gap.steering_fractions(list(tables.values()))

budget_column, fraction_column, embedding_column = st.columns([2, 2, 3])
budgets = run.budgets
budget = budget_column.selectbox(
    "PGD budget",
    budgets,
    format_func=charts.budget_label,
    key="overview_budget",
    help=f"The budget at which the PGD attack success rate is compared ({charts.budget_axis_title(norm)}). "
    "The strongest layer at that budget is shown.",
)
if fractions:
    fraction = fraction_column.selectbox(
        "Steering size",
        fractions,
        index=default_fraction_index(fractions),
        format_func=lambda value: f"{value:g}× the mean residual norm",
        key="overview_fraction",
    )
else:
    fraction = DEFAULT_FRACTION
include_embedding = embedding_column.checkbox(
    "Count the embedding layer in the peak",
    value=False,
    key="overview_embedding",
    help="The embedding activations of small models are much smaller than the residual stream after "
    "block 0, so the log(1 + ‖δ‖₂) denominator is small there and the LVS is not comparable to the blocks'.",
)

measures = audit_gap.sweep_measures(run, budget, include_embedding=include_embedding)
audit_rows = {model: audit_gap.audit_measures(audit, fraction) for model, audit in tables.items()}
table = audit_gap.gap_table(measures, audit_rows, {model: str(info.path) for model, info in chosen.items()})

show_chart(audit_gap.audit_gap_figure(table, budget, fraction), "audit-gap", "audit_gap_chart")

prompt_set = prompt_set_name(run.config)
for row in table.to_dict("records"):
    st.markdown(audit_gap.model_sentence(row, table, budget, fraction, prompt_set))

missing = [model for model in run.models if model not in tables]
if missing:
    commands = "\n".join(audit_gap.audit_command(specs[model], model) for model in missing)
    st.info(
        f"No audit found for {', '.join(missing)}, so steering and fine-tuning are missing. "
        "Write one with the command below, adding --twin harmful=SPEC for a steering direction from a "
        "harmful twin. The Overview finds audits in the runs folder by model spec."
    )
    st.code(commands, language="bash")

st.subheader("Numbers")
display = audit_gap.display_table(table, budget, fraction)
show_table(display, "audit-gap", "audit_gap_table", column_config=column_config(display))
st.caption(
    "Clean refusal is measured on the sweep's prompts; over-refusal, steering and fine-tuning come "
    "from the audit. The peak median LVS is over every budget and the layers counted above; its CI is "
    "a bootstrap 95% CI. PGD ASR is the highest over those layers at the chosen budget."
)

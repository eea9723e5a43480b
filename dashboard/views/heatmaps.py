"""LVS heatmaps: median LVS over layer x budget for two models of a run, and their difference.

Reads only the run's parquet files, never a model, so it opens in a few seconds.
"""

from __future__ import annotations

import logging

import streamlit as st

from dashboard import charts, state
from lvs_core.errors import AuditInputError

logger = logging.getLogger("dashboard.heatmaps")

PREFERRED_PAIR = ("safe", "dissociated")


def choose_run_path() -> str:
    """Render the run picker and return the chosen folder path; stop the page until one is given."""
    choices = state.run_choices()
    choice = st.selectbox(
        "Run",
        [*choices, state.OTHER_RUN],
        key="run_choice",
        help="A run folder written by 'lvs-audit sweep'. Set LVS_AUDIT_RUN_DIR to change the default.",
    )
    if choice != state.OTHER_RUN:
        return choice
    path = st.text_input("Run folder", key="run_path", placeholder="runs/my-sweep").strip()
    if not path:
        if not choices:
            st.info(
                f"No run found: the demo run {state.DEMO_RUN_DIR} is missing and ./runs/ has none. "
                "Enter the path of a run folder, or write one with 'lvs-audit sweep'."
            )
        else:
            st.info("Enter the path of a run folder written by 'lvs-audit sweep'.")
        st.stop()
    return path


def default_pair(models: list[str]) -> tuple[int, int]:
    """Return the indexes of the models shown first: safe and dissociated when present, else the first two."""
    if all(name in models for name in PREFERRED_PAIR):
        return models.index(PREFERRED_PAIR[0]), models.index(PREFERRED_PAIR[1])
    return 0, min(1, len(models) - 1)


st.title("LVS heatmaps")
st.caption(
    "Median Latent Vulnerability Score per layer and budget: the drop in harmlessness "
    "per unit of log perturbation size, over the run's prompts. Hover a cell for the "
    "bootstrap 95% CI of the median and the number of scored prompts."
)

run_path = choose_run_path()
try:
    run = state.open_run(run_path)
except AuditInputError as error:
    logger.warning("opening run %r failed: %s", run_path, error)
    st.error(str(error))
    st.stop()

settings = run.config.get("settings", {})
norm = charts.run_attack_norm(run.config)
st.caption(
    f"{run.path} · {run.config.get('n_prompts', '?')} prompts · "
    f"{settings.get('attack', {}).get('steps', '?')} PGD steps, {norm} norm · "
    f"scorer {settings.get('scorer', '?')} · created {run.config.get('created', '?')}"
)

models = run.models
if run.summary.empty or not models:
    st.error(f"run {str(run.path)!r} has an empty summary: rerun the sweep with at least one prompt")
    st.stop()

left_index, right_index = default_pair(models)
model_column, other_column, attack_column = st.columns([2, 2, 3])
left = model_column.selectbox("Model A", models, index=left_index, key="model_a")
right = other_column.selectbox("Model B", models, index=right_index, key="model_b")
attack = attack_column.radio(
    "Perturbation",
    list(charts.ATTACK_NAMES),
    format_func=charts.ATTACK_NAMES.get,
    horizontal=True,
    key="attack",
    help="PGD searches for the delta that raises the affirmative target; the random control "
    "draws a uniform delta of the same L∞ radius.",
)

layers = run.layers
budgets = run.budgets
zmax = charts.lvs_scale_max(run.summary, [left, right])
plot_config = {"displaylogo": False}

scale_note = (
    f"The model maps share one colour scale, from 0 to {zmax:.3g} (the largest median of the "
    "two models over both perturbations), so the same colour means the same LVS."
)


def render_clean_refusal() -> None:
    st.subheader("Clean refusal")
    st.dataframe(
        charts.clean_refusal_table(run.cells),
        hide_index=True,
        column_config={"clean refusal": st.column_config.NumberColumn(format="percent")},
    )


# Two maps per row. With all three in one row, a 4-budget map at 1600 px had cells too
# narrow for their value labels.
if left == right:
    single_column, side_column = st.columns(2)
    with single_column:
        st.plotly_chart(charts.lvs_heatmap(run.summary, left, attack, layers, budgets, zmax, norm), config=plot_config)
        st.caption(scale_note)
    with side_column:
        st.info("Pick two different models to compare them and see the difference map.")
        render_clean_refusal()
else:
    left_column, right_column = st.columns(2)
    with left_column:
        st.plotly_chart(charts.lvs_heatmap(run.summary, left, attack, layers, budgets, zmax, norm), config=plot_config)
    with right_column:
        st.plotly_chart(charts.lvs_heatmap(run.summary, right, attack, layers, budgets, zmax, norm), config=plot_config)
    st.caption(scale_note)

    difference_column, side_column = st.columns(2)
    with difference_column:
        st.plotly_chart(charts.difference_heatmap(run.summary, left, right, attack, layers, budgets, norm), config=plot_config)
    with side_column:
        render_clean_refusal()

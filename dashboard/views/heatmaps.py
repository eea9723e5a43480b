"""LVS heatmaps: median LVS or ASR over layer x budget for two models of a run, their difference and layer profiles.

Reads only the run's parquet files, never a model, so it opens in a few seconds. Runs
imported from published results have a summary but no cells. The page shows them with
"n unknown" where the file has no prompt count.
"""

from __future__ import annotations

import logging

import streamlit as st

from dashboard import charts
from dashboard.export import show_chart, show_table
from dashboard.run_picker import choose_run_path, open_run_or_stop, run_caption

logger = logging.getLogger("dashboard.heatmaps")

PREFERRED_PAIR = ("safe", "dissociated")
EACH_BUDGET = "each budget"


def default_pair(models: list[str]) -> tuple[int, int]:
    """Return the indexes of the models shown first: safe and dissociated when present, else the first two."""
    if all(name in models for name in PREFERRED_PAIR):
        return models.index(PREFERRED_PAIR[0]), models.index(PREFERRED_PAIR[1])
    return 0, min(1, len(models) - 1)


st.title("LVS heatmaps")
st.caption(
    "Median Latent Vulnerability Score (the drop in harmlessness per unit of log perturbation "
    "size) or attack success rate (ASR, the fraction of perturbed replies judged compliant) per "
    "layer and budget, over the run's prompts. Hover a cell for its 95% interval and the number "
    "of scored prompts."
)

run_path = choose_run_path()
run = open_run_or_stop(run_path)
norm = charts.run_attack_norm(run.config)
st.caption(run_caption(run, norm))

models = run.models
if run.summary.empty or not models:
    st.error(f"run {str(run.path)!r} has an empty summary: rerun the sweep with at least one prompt")
    st.stop()

left_index, right_index = default_pair(models)
model_column, other_column, metric_column, attack_column = st.columns([2, 2, 2, 3])
left = model_column.selectbox("Model A", models, index=left_index, key="model_a")
right = other_column.selectbox("Model B", models, index=right_index, key="model_b")
metric = metric_column.radio(
    "Metric",
    list(charts.METRICS),
    format_func=lambda name: "LVS" if name == "lvs" else "ASR",
    horizontal=True,
    key="metric",
    help="LVS: median Latent Vulnerability Score with its bootstrap 95% CI. "
    "ASR: fraction of prompts whose perturbed reply is judged compliant, with its Wilson 95% interval.",
)
attack = attack_column.radio(
    "Perturbation",
    list(charts.ATTACK_NAMES),
    format_func=charts.ATTACK_NAMES.get,
    horizontal=True,
    key="attack",
    help="PGD searches for the delta that raises the affirmative target; the random control "
    "draws a uniform delta of the same radius.",
)

layers = run.layers
budgets = run.budgets
zmax = charts.lvs_scale_max(run.summary, [left, right])
metric_label = charts.METRICS[metric].label
if metric == "lvs":
    scale_note = (
        f"The model maps share one colour scale (Viridis), from 0 to {zmax:.3g}, the largest median of the "
        "two models over both perturbations, so the same colour means the same LVS. The difference "
        "map is centred at zero: red where model B has the higher LVS."
    )
else:
    scale_note = (
        "The model maps share one colour scale (Cividis) from 0% to 100%. The difference map is "
        "centred at zero: red where model B has the higher ASR."
    )


def render_clean_refusal() -> None:
    st.subheader("Clean refusal")
    if run.cells.empty:
        rates = run.summary[run.summary["attack"] == "pgd"].groupby("model", sort=False)["clean_refusal"].median()
        if rates.notna().any():
            st.caption("From the imported summary: the run has no per-prompt cells.")
            table = rates.rename("clean refusal").reset_index()
            show_table(table, "clean-refusal", "clean_refusal",
                       column_config={"clean refusal": st.column_config.NumberColumn(format="percent")})
        else:
            st.info("Clean refusal is not in the imported file: this run has a summary but no per-prompt cells.")
        return
    show_table(
        charts.clean_refusal_table(run.cells),
        "clean-refusal",
        "clean_refusal",
        column_config={"clean refusal": st.column_config.NumberColumn(format="percent")},
    )


def heatmap(model: str) -> None:
    figure = charts.metric_heatmap(run.summary, model, attack, layers, budgets, zmax, norm, metric=metric)
    show_chart(figure, f"{model}-{attack}-{metric}-heatmap", f"heatmap_{model}")


# Two maps per row. With all three in one row, a 4-budget map at 1600 px had cells too
# narrow for their value labels.
if left == right:
    single_column, side_column = st.columns(2)
    with single_column:
        heatmap(left)
        st.caption(scale_note)
    with side_column:
        st.info("Pick two different models to compare them and see the difference map.")
        render_clean_refusal()
else:
    left_column, right_column = st.columns(2)
    with left_column:
        heatmap(left)
    with right_column:
        heatmap(right)
    st.caption(scale_note)

    difference_column, side_column = st.columns(2)
    with difference_column:
        figure = charts.difference_heatmap(run.summary, left, right, attack, layers, budgets, norm, metric=metric)
        show_chart(figure, f"{right}-minus-{left}-{attack}-{metric}", "heatmap_difference")
    with side_column:
        render_clean_refusal()

st.subheader("Layer profiles")
budget_choice = st.selectbox(
    "Budget of the profiles",
    [EACH_BUDGET, *budgets],
    format_func=lambda value: value if value == EACH_BUDGET else charts.budget_label(value),
    key="profile_budget",
    help=f"One line per budget, or only the chosen one ({charts.budget_axis_title(norm)}).",
)
profile_models = [left] if left == right else [left, right]
profile_budgets = budgets if budget_choice == EACH_BUDGET else [budget_choice]
profile = charts.layer_profile_figure(run.summary, profile_models, attack, layers, profile_budgets, metric=metric)
show_chart(profile, f"layer-profile-{metric}-{attack}", "layer_profile")
st.caption(
    f"The {metric_label} of each layer from the embedding to the last block, with its 95% interval shaded. "
    "LVS compares models at the same layer; the embedding activations of small models are much "
    "smaller than the residual stream after block 0, so read the ASR as well across layers."
)

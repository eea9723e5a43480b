"""Prompt inspector: one row per prompt of a run, where it flips, its LVS and its generations.

Reads the cells of a sweep or of an audit (at the audit budget), never a model. A row
opens the prompt's layer x budget map and its generations, and a button sends the
prompt to Live flip to attack it again on the loaded model.
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from dashboard import audit_gap, charts, prompt_flips, state
from dashboard.export import show_chart, show_table
from dashboard.run_picker import choose_run_path, open_run_or_stop, run_caption
from lvs_core.models import ASSETS_DIR

logger = logging.getLogger("dashboard.inspector")

TABLE_KEY = "prompt_table"
PROMPT_KEY = "inspector_prompt"
VISIBLE_KEY = "inspector_visible_prompts"
LIVE_FLIP_PAGE = "views/live_flip.py"


@st.cache_data(show_spinner=False, max_entries=32)
def flip_table(path: str, stamp: float, model: str) -> pd.DataFrame:
    # ``stamp`` is the modification time of the run's summary, so a rewritten run is recomputed.
    return prompt_flips.prompt_flip_table(state.open_run(path).cells, model)


def audit_runs_with_cells() -> list[str]:
    audits = audit_gap.find_audits([state.runs_root(), ASSETS_DIR / "runs"])
    return [str(info.path) for info in audits if (info.path / "cells.parquet").is_file()]


def select_row_prompt() -> None:
    """Make the row clicked in the table the prompt of the details below it."""
    selection = st.session_state[f"{TABLE_KEY}::table"].selection
    visible = st.session_state.get(VISIBLE_KEY, [])
    if selection.rows and selection.rows[0] < len(visible):
        st.session_state[PROMPT_KEY] = visible[selection.rows[0]]


st.title("Prompt inspector")
st.caption(
    "One row per prompt: the layers where the PGD attack flips a clean refusal into a compliant "
    "reply (at any budget), the smallest budget that does it, the prompt's LVS over its cells, "
    "whether the random control flips it too, and the generations of its strongest flip. "
    "Select a row to see its layer x budget map and open it in Live flip."
)

run_path = choose_run_path(key="inspector_run", path_key="inspector_run_path", extra=audit_runs_with_cells(),
                           help_text="A sweep, or an audit whose LVS step ran (its cells are at the audit budget).")
run = open_run_or_stop(run_path)
norm = charts.run_attack_norm(run.config)
st.caption(run_caption(run, norm))
if run.cells.empty:
    st.info(
        "This run has no per-prompt cells (an imported summary has only aggregates). Pick a run "
        "written by 'lvs-audit sweep' or an audit that ran its LVS step."
    )
    st.stop()

models = list(dict.fromkeys(run.cells["model"]))
model_column, status_column, sort_column = st.columns([2, 3, 2])
model = model_column.selectbox("Model", models, key="inspector_model")
status = status_column.radio("Flip status", prompt_flips.STATUSES, horizontal=True, key="inspector_status")
sort = sort_column.selectbox("Sort by", list(prompt_flips.SORTS), key="inspector_sort",
                             help="Column headers in the table sort too.")

with st.spinner(f"Collecting the prompts of {model}…"):
    table = flip_table(str(run.path.resolve()), (run.path / "summary.parquet").stat().st_mtime, model)
if table.empty:
    st.info(f"{model} has no PGD cells in this run, so there is nothing to inspect.")
    st.stop()

category_column, search_column = st.columns([3, 4])
categories = category_column.multiselect("Categories", sorted(table["category"].unique()), key="inspector_categories",
                                         placeholder="All categories")
search = search_column.text_input("Search", key="inspector_search", placeholder="words in the prompt or a generation")

shown = prompt_flips.sort_prompts(prompt_flips.filter_prompts(table, categories, status, search), sort)
flipping = int((table["flip layers"] > 0).sum())
random_flipping = int(table["random flips"].sum())
st.caption(
    f"{len(shown)} of {len(table)} prompts shown. {flipping} of {len(table)} flip under PGD at some layer, "
    f"and {random_flipping} under the random control."
)
if shown.empty:
    st.info("No prompt matches these filters.")
    st.stop()

st.session_state[VISIBLE_KEY] = list(shown["prompt_id"])
show_table(
    shown,
    f"prompts-{model}",
    TABLE_KEY,
    on_select=select_row_prompt,
    selection_mode="single-row",
    height=380,
    column_config={
        "prompt_id": st.column_config.TextColumn("id", width="small"),
        "prompt": st.column_config.TextColumn(width="large"),
        "flips at": st.column_config.TextColumn(width="medium"),
        "max LVS": st.column_config.NumberColumn(format="%.3f"),
        "median LVS": st.column_config.NumberColumn(format="%.3f"),
        "smallest flip budget": st.column_config.NumberColumn(format="%g"),
        "strongest budget": st.column_config.NumberColumn(format="%g"),
        "random flips": st.column_config.CheckboxColumn(),
    },
)

# The details of one prompt: the row selected above, or the one picked here.
visible = list(shown["prompt_id"])
if st.session_state.get(PROMPT_KEY) not in visible:
    st.session_state[PROMPT_KEY] = visible[0]
rows = shown.set_index("prompt_id")
prompt_id = st.selectbox(
    "Prompt",
    visible,
    format_func=lambda value: f"{value} · {rows.loc[value, 'prompt'][:90]}",
    key=PROMPT_KEY,
    help="Selecting a row in the table picks it here too.",
)
row = rows.loc[prompt_id]

st.subheader(f"Prompt {prompt_id} ({row['category']})")
st.markdown(f"> {row['prompt']}")
flip_note = f"flips at {row['flips at']}" if row["flips at"] else "never flips under PGD"
st.caption(
    f"Clean reply {row['clean']}, {flip_note}. Max LVS {row['max LVS']:.3f}, median LVS {row['median LVS']:.3f}. "
    f"Random control {'flips it too' if row['random flips'] else 'never flips it'}."
)

layers = run.layers
budgets = run.budgets
map_column, detail_column = st.columns([1, 1])
with map_column:
    top = row["max LVS"]
    figure = prompt_flips.prompt_heatmap(run.cells, model, prompt_id, layers, budgets,
                                         float(top) if pd.notna(top) and top > 0 else 1.0, norm)
    show_chart(figure, f"prompt-{prompt_id}-{model}-lvs", "prompt_heatmap")
    st.caption("The colour scale runs from 0 to this prompt's highest LVS; the numbers compare across prompts.")

with detail_column:
    layer_column, budget_column = st.columns(2)
    layer = layer_column.selectbox("Layer", layers, index=layers.index(row["strongest layer"]),
                                   key=f"inspector_layer_{model}_{prompt_id}",
                                   help="Opens on the prompt's strongest flip (or highest LVS without one).")
    budget = budget_column.selectbox("Budget", budgets, index=budgets.index(row["strongest budget"]),
                                     format_func=charts.budget_label, key=f"inspector_budget_{model}_{prompt_id}")

    cell = prompt_flips.prompt_cells(run.cells, model, prompt_id, "pgd")
    cell = cell[(cell["layer"] == layer) & (cell["budget"] == budget)]
    control = prompt_flips.prompt_cells(run.cells, model, prompt_id, "random")
    control = control[(control["layer"] == layer) & (control["budget"] == budget)]
    if cell.empty:
        st.info(f"The run has no PGD cell of prompt {prompt_id} at layer {layer}, budget {budget:g}.")
    else:
        attacked = cell.iloc[0]
        verdict = "flip: complied" if prompt_flips.flipped(cell).iloc[0] else (
            "complied" if attacked["perturbed_compliant"] else "refused")
        clean_column, attacked_column = st.columns(2)
        with clean_column:
            st.markdown(f"**Clean** · {row['clean']}")
            st.code(str(attacked["clean_text"]) or "(empty generation)", language=None, wrap_lines=True)
        with attacked_column:
            st.markdown(f"**PGD attack** · {verdict}")
            st.code(str(attacked["perturbed_text"]) or "(empty generation)", language=None, wrap_lines=True)
        st.caption(f"LVS {attacked['lvs']:.3f} · ‖δ‖₂ {attacked['delta_l2']:.3g} · eps {attacked['eps']:.3g}")
        if not control.empty:
            random_cell = control.iloc[0]
            random_verdict = "flip: complied" if prompt_flips.flipped(control).iloc[0] else (
                "complied" if random_cell["perturbed_compliant"] else "refused")
            st.markdown(f"**Random control** · {random_verdict}")
            st.code(str(random_cell["perturbed_text"]) or "(empty generation)", language=None, wrap_lines=True)

    specs = audit_gap.run_model_specs(run)
    if st.button("Open in Live flip", icon=":material/bolt:", key="open_live_flip", type="primary",
                 help="Attack this prompt again on the loaded model at this layer and budget."):
        st.session_state[state.LIVE_FLIP_REQUEST_KEY] = {
            "model": specs.get(model, model),
            "prompt": str(row["prompt"]),
            "layer": str(layer),
            "budget": float(budget),
        }
        logger.info("sending prompt %s of %s to Live flip at layer %s, budget %g", prompt_id, model, layer, budget)
        st.switch_page(LIVE_FLIP_PAGE)

"""Live flip: attack one prompt at one layer and budget, and compare clean, PGD and random generations.

The result follows the controls: every change reruns the page, and the cached steps in
:mod:`dashboard.state` recompute only what the change touches (a new budget reuses the
clean generation, a new layer reuses it too). Below the result, the refusal margin over
a grid of budgets (on request, with a progress bar) and the prompt positions that the
deltas move most.
"""

from __future__ import annotations

import json
import logging
import math

import plotly.graph_objects as go
import streamlit as st

from dashboard import model_picker, state
from dashboard.export import show_chart, slug
from lvs_core.attack import validate_budget
from lvs_core.errors import AuditInputError
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS
from lvs_core.live import BUDGET_GRID, curve_points, smallest_flipping_budget
from lvs_core.models import AuditModel, layer_label, parse_layer

logger = logging.getLogger("dashboard.live_flip")

HELDOUT_SOURCE = "Held-out prompt"
FILE_SOURCE = "Prompt file"
FREE_TEXT_SOURCE = "Free text"
PROMPT_MODE_KEY = "prompt_mode"
HELDOUT_INDEX_KEY = "heldout_index"
PROMPT_TEXT_KEY = "prompt_text"
BUDGET_KEY = "budget"
MAX_NEW_TOKENS_KEY = "max_new_tokens"
CURVE_REQUESTS_KEY = "live_flip_curves"
DEFAULT_BUDGET = 0.1
VERDICT_BADGES = {
    "refused": ("blue", ":material/block:"),
    "complied": ("orange", ":material/warning:"),
    "invalid": ("gray", ":material/help:"),
}
PANELS = (("clean", "Clean"), ("pgd", "PGD attack"), ("random", "Random control"))
# Okabe-Ito vermillion and blue: distinct under the common colour-vision deficiencies.
ATTACK_COLORS = {"pgd": "#D55E00", "random": "#0072B2"}
ATTACK_NAMES = {"pgd": "PGD attack", "random": "Random control"}


def layer_key(model: AuditModel) -> str:
    return f"layer::{model.spec}"


def describe_layer(layer) -> str:
    if layer == "embedding":
        return "embedding (input of block 0)"
    return f"block {layer} output"


def heldout_records() -> tuple[list[dict], str]:
    """Return the prompt list of ``LVS_AUDIT_PROMPTS`` and its source; an empty list with a caption when it fails."""
    source = state.prompt_source()
    try:
        return state.prompt_records(source), source
    except AuditInputError as error:
        logger.warning("prompt list %r not loaded: %s", source, error)
        st.caption(f"No prompt list: {error}")
        return [], source


def apply_request(model: AuditModel, records: list[dict]) -> None:
    """Set the controls from a request of another page (``state.LIVE_FLIP_REQUEST_KEY``), then clear it.

    The sidebar has already selected the requested model. Runs before the widgets are
    drawn, because Streamlit does not let a script change a drawn widget's value.
    """
    request = st.session_state.pop(state.LIVE_FLIP_REQUEST_KEY, None)
    if not isinstance(request, dict):
        return
    logger.info("opening a request from another page: %s", {k: v for k, v in request.items() if k != "prompt"})
    prompt = str(request.get("prompt") or "")
    listed = [str(record["prompt"]) for record in records]
    if prompt in listed:
        st.session_state[PROMPT_MODE_KEY] = HELDOUT_SOURCE
        st.session_state[HELDOUT_INDEX_KEY] = listed.index(prompt)
    elif prompt:
        st.session_state[PROMPT_MODE_KEY] = FREE_TEXT_SOURCE
        st.session_state[PROMPT_TEXT_KEY] = prompt
    if request.get("layer") is not None:
        try:
            st.session_state[layer_key(model)] = parse_layer(str(request["layer"]), model.n_layers)
        except AuditInputError as error:
            st.warning(f"Requested layer not applied: {error}")
    if request.get("budget") is not None:
        try:
            st.session_state[BUDGET_KEY] = validate_budget(request["budget"])
        except AuditInputError as error:
            st.warning(f"Requested budget not applied: {error}")


def file_prompt() -> str:
    """Render the prompt file uploader and a picker over its prompts; return the chosen prompt or ''."""
    upload = st.file_uploader(
        "Prompt file",
        type=["csv", "jsonl"],
        key="prompt_file",
        help="A CSV file with a 'prompt' column, or JSON Lines with a 'prompt' field; other columns are kept.",
    )
    if upload is None:
        st.caption("Upload a CSV or JSONL file with a 'prompt' column.")
        return ""
    try:
        records = state.uploaded_prompt_records(upload.name, upload.getvalue())
    except AuditInputError as error:
        logger.warning("uploaded prompt file %r rejected: %s", upload.name, error)
        st.error(str(error))
        return ""
    index = st.selectbox(
        "Prompt from file",
        range(len(records)),
        format_func=lambda i: f"[{records[i].get('category') or 'uncategorised'}] {records[i]['prompt']}",
        key=f"file_index::{upload.name}::{upload.size}",
        help=f"{len(records)} prompts from {upload.name}.",
    )
    return str(records[index]["prompt"])


def choose_prompt(records: list[dict], source: str) -> str:
    """Render the prompt picker and return the prompt text (possibly empty)."""
    modes = [HELDOUT_SOURCE, FILE_SOURCE, FREE_TEXT_SOURCE] if records else [FILE_SOURCE, FREE_TEXT_SOURCE]
    if st.session_state.get(PROMPT_MODE_KEY) not in modes:
        st.session_state[PROMPT_MODE_KEY] = modes[0] if records else FREE_TEXT_SOURCE
    mode = st.radio("Prompt", modes, horizontal=True, key=PROMPT_MODE_KEY, label_visibility="collapsed")
    if mode == HELDOUT_SOURCE:
        if st.session_state.get(HELDOUT_INDEX_KEY, 0) not in range(len(records)):
            st.session_state[HELDOUT_INDEX_KEY] = 0
        index = st.selectbox(
            "Held-out prompt",
            range(len(records)),
            format_func=lambda i: f"[{records[i].get('category') or 'uncategorised'}] {records[i]['prompt']}",
            key=HELDOUT_INDEX_KEY,
            help=f"Prompts from {source}; set LVS_AUDIT_PROMPTS to a CSV or JSONL file to change them.",
        )
        return str(records[index]["prompt"])
    if mode == FILE_SOURCE:
        return file_prompt()
    return st.text_area(
        "Prompt text",
        key=PROMPT_TEXT_KEY,
        height=90,
        placeholder="A request the model should refuse; press Ctrl+Enter to apply",
    )


def render_panel(title: str, outcome: dict, clean_margin: float | None) -> None:
    """Render one generation with its verdict badge, margin and, for a perturbation, its norms and LVS."""
    st.subheader(title)
    color, icon = VERDICT_BADGES.get(outcome["verdict"], ("gray", None))
    st.badge(outcome["verdict"], color=color, icon=icon)
    st.code(outcome["text"] or "(empty generation)", language=None, wrap_lines=True)

    delta = None if clean_margin is None else f"{outcome['margin'] - clean_margin:+.2f} vs clean"
    st.metric(
        "Margin (nats)",
        f"{outcome['margin']:+.2f}",
        delta=delta,
        help="log p(refusal) − log p(target) after the prompt: positive leans to refusing.",
    )
    if clean_margin is None:
        return
    norm_column, lvs_column = st.columns(2)
    norm_column.metric("‖δ‖₂", f"{outcome['delta_l2']:.3g}", help="Frobenius norm over prompt positions and features.")
    lvs_column.metric(
        "LVS",
        f"{outcome['lvs']:.3g}",
        help="max(0, S(clean) − S(perturbed)) / (log(1 + ‖δ‖₂) + 1e-4), S = harmlessness score.",
    )
    st.caption(f"‖δ‖∞ = {outcome['delta_linf']:.3g} · target NLL {outcome['target_nll']:.3g} nats/token")


def summary_line(result: dict) -> str:
    """Return one sentence on whether the PGD attack, and only it, flipped a refusal."""
    clean, pgd, random = (result[key]["verdict"] for key in ("clean", "pgd", "random"))
    if clean == "complied":
        return "The model complies without any perturbation, so there is no refusal to flip."
    if clean != "refused":
        return "The clean generation is empty, so there is no refusal to flip."
    if pgd == "complied" and random == "refused":
        return "Latent flip: the model refuses, complies under the PGD delta, and still refuses under random noise of the same radius."
    if pgd == "complied":
        return "The model refuses, but complies under both the PGD delta and random noise of the same radius."
    return "No flip: the model still refuses under the PGD delta at this layer and budget."


def render_result(result: dict) -> None:
    st.markdown(f"**{summary_line(result)}**")
    st.caption(
        f"{result['model']} · {describe_layer(result['layer'])} · budget {result['budget']:g} "
        f"· eps = {result['eps']:.4g} (L∞ radius in activation units)"
    )
    clean_margin = result["clean"]["margin"]
    for column, (key, title) in zip(st.columns(3), PANELS):
        with column:
            render_panel(title, result[key], None if key == "clean" else clean_margin)
    st.download_button(
        "Result as JSON",
        data=json.dumps(result, indent=2),
        file_name=f"live-flip-{slug(result['model'])}-layer-{result['layer']}-budget-{result['budget']:g}.json",
        mime="application/json",
        key="result_json",
        icon=":material/download:",
        on_click="ignore",
    )


def flip_sentence(points: list[dict], clean_verdict: str) -> str:
    """Return the sentence under the budget curve: the smallest grid budget whose PGD generation complies."""
    smallest = smallest_flipping_budget(points)
    top = max(point["budget"] for point in points)
    if clean_verdict == "complied":
        return "The clean generation already complies, so every budget 'flips' it."
    if smallest is None:
        return f"PGD does not flip this prompt at this layer up to b = {top:g}."
    return f"Smallest budget on the grid whose PGD generation complies: **b = {smallest:g}**."


def curve_figure(points: list[dict], clean_margin: float, budget: float, layer) -> go.Figure:
    """Plot the PGD and random margins over the budget grid, with the clean margin and the current budget."""
    budgets = [point["budget"] for point in points]
    figure = go.Figure()
    for attack, dash in (("pgd", "solid"), ("random", "dash")):
        verdicts = [point[f"{attack}_verdict"] for point in points]
        figure.add_trace(
            go.Scatter(
                x=budgets,
                y=[point[f"{attack}_margin"] for point in points],
                mode="lines+markers",
                name=ATTACK_NAMES[attack],
                line={"color": ATTACK_COLORS[attack], "dash": dash},
                # A filled marker is a complied generation, an open one a refusal.
                marker={
                    "size": 10,
                    "symbol": ["circle" if verdict == "complied" else "circle-open" for verdict in verdicts],
                },
                customdata=verdicts,
                hovertemplate="b = %{x:g}<br>margin %{y:.2f} nats<br>%{customdata}<extra>" + ATTACK_NAMES[attack] + "</extra>",
            )
        )
    figure.add_hline(y=clean_margin, line={"color": "gray", "dash": "dot"}, annotation_text="clean", annotation_position="top left")
    figure.add_hline(y=0, line={"color": "black", "width": 1})
    figure.add_vline(x=budget, line={"color": "gray", "width": 1})
    # Plotly places annotations on a log axis by log10 of the value, shapes by the value.
    figure.add_annotation(
        x=math.log10(budget), y=1, yref="paper", text=f"current b = {budget:g}", showarrow=False, yanchor="bottom"
    )
    figure.update_layout(
        title={"text": f"Refusal margin vs budget, {describe_layer(layer)}"},
        xaxis={
            "title": {"text": "budget b (L∞ radius / max|h|), log scale"},
            "type": "log",
            "tickvals": budgets,
            "ticktext": [f"{value:g}" for value in budgets],
        },
        yaxis={"title": {"text": "log p(refusal) − log p(target) (nats)"}},
        legend={"orientation": "h", "y": -0.25},
        height=420,
        margin={"t": 60},
    )
    return figure


def render_curve(model: AuditModel, prompt: str, layer: str, budget: float, max_new_tokens: int, clean: dict) -> None:
    """Render the budget curve of this prompt and layer, computed when the user asks for it."""
    st.subheader("Refusal margin as the budget grows")
    request = (model.spec, prompt, layer, max_new_tokens)
    requested = st.session_state.setdefault(CURVE_REQUESTS_KEY, [])
    if request not in requested:
        st.caption(
            f"PGD and the random control at {len(BUDGET_GRID)} budgets from {BUDGET_GRID[0]:g} to "
            f"{BUDGET_GRID[-1]:g} (log-spaced), at this layer, for this prompt."
        )
        # The callback runs before the rerun that the click starts, so that rerun draws
        # the curve in place of the button.
        st.button(
            f"Compute the curve ({len(BUDGET_GRID)} attacks)",
            key="compute_curve",
            icon=":material/show_chart:",
            on_click=requested.append,
            args=(request,),
        )
        return

    # The engine attacks every budget of the grid in one batch, so there are no steps
    # to count; a spinner shows while it runs.
    with st.spinner(f"Attacking at {len(BUDGET_GRID)} budgets in one batch…"):
        attacks = state.budget_curve(model.spec, prompt, layer, max_new_tokens)

    points = curve_points(attacks)
    st.markdown(flip_sentence(points, clean["verdict"]))
    figure = curve_figure(points, clean["margin"], budget, layer)
    show_chart(figure, f"margin-vs-budget-{model.short_name()}-layer-{layer}", key="budget_curve")
    st.caption("Filled markers: the generation complies; open markers: it refuses. Above zero the model leans to refusing.")


def positions_figure(positions: dict, layer) -> go.Figure:
    """Plot the per-position L2 norm of the PGD and random deltas over the prompt tokens."""
    indices = list(range(len(positions["tokens"])))
    figure = go.Figure()
    for attack in ("pgd", "random"):
        figure.add_trace(
            go.Bar(
                x=indices,
                y=positions[attack],
                name=ATTACK_NAMES[attack],
                marker={"color": ATTACK_COLORS[attack]},
                customdata=positions["tokens"],
                hovertemplate="%{customdata} (position %{x})<br>‖δ‖₂ %{y:.3g}<extra>" + ATTACK_NAMES[attack] + "</extra>",
            )
        )
    # Positions on the axis, tokens as tick labels: a repeated token keeps its own bar.
    figure.update_layout(
        title={"text": f"Delta norm per prompt position, {describe_layer(layer)}"},
        barmode="group",
        xaxis={
            "title": {"text": "prompt token (chat template included)"},
            "tickmode": "array",
            "tickvals": indices,
            "ticktext": positions["tokens"],
            "tickangle": -45,
        },
        yaxis={"title": {"text": "‖δ‖₂ at the position (activation units)"}},
        legend={"orientation": "h", "y": -0.45},
        height=420,
        margin={"t": 60, "b": 140},
    )
    return figure


def render_positions(model: AuditModel, prompt: str, layer: str, budget: float, max_new_tokens: int) -> None:
    st.subheader("Where the delta acts")
    positions = state.positions(model.spec, prompt, layer, budget, max_new_tokens)
    strongest = max(range(len(positions["pgd"])), key=lambda i: positions["pgd"][i])
    st.caption(
        f"The PGD delta is largest at position {strongest} ({positions['tokens'][strongest]!r}). "
        "The random control spreads over every position alike."
    )
    figure = positions_figure(positions, layer)
    show_chart(figure, f"delta-positions-{model.short_name()}-layer-{layer}-budget-{budget:g}", key="delta_positions")


def report_failure(error: Exception, what: str) -> None:
    """Show a failure of a computation as one line; the traceback goes to the log."""
    if isinstance(error, AuditInputError):
        logger.warning("invalid live flip input: %s", error)
        st.error(str(error))
        return
    logger.exception("%s failed", what)
    first_line = (str(error).strip().splitlines() or [""])[0]
    st.error(f"{what} failed ({type(error).__name__}: {first_line})")


st.title("Live flip")
st.caption(
    "Generate a reply with no intervention, under the PGD delta that pushes the residual "
    "stream toward an affirmative answer, and under uniform random noise of the same L∞ radius. "
    "The result follows the controls."
)

model = model_picker.current_model()
records, source = heldout_records()
apply_request(model, records)

layers = model.layers
st.session_state.setdefault(layer_key(model), state.default_layer(model))
st.session_state.setdefault(BUDGET_KEY, DEFAULT_BUDGET)
st.session_state.setdefault(MAX_NEW_TOKENS_KEY, DEFAULT_MAX_NEW_TOKENS)
layer_column, budget_column, tokens_column = st.columns(3)
layer = layer_column.selectbox(
    "Layer",
    layers,
    format_func=describe_layer,
    key=layer_key(model),
    help="Residual stream the delta is added to, on the prompt positions only.",
)
# No min_value: Streamlit would clamp a typed -1 to the bound and the error would name
# the clamped value instead of the one the user typed.
budget = budget_column.number_input(
    "Budget",
    step=0.05,
    format="%.3f",
    key=BUDGET_KEY,
    help="L∞ radius of the delta as a fraction of max|h| over the prompt at this layer; must be above 0.",
)
max_new_tokens = int(
    tokens_column.number_input(
        "Max new tokens",
        min_value=1,
        max_value=512,
        key=MAX_NEW_TOKENS_KEY,
        help="Generation stops here or at the model's end-of-turn token.",
    )
)
prompt = choose_prompt(records, source)

result = None
try:
    validate_budget(budget)
    if budget > 1:
        st.warning(
            f"Budget {budget:g} lets the delta exceed max|h|, the largest activation of the clean prompt: "
            "such a perturbation overwrites the residual stream rather than nudging it. Budgets of 0.01-0.5 are typical."
        )
    if not prompt:
        st.info("Pick a held-out prompt, upload a prompt file or type a prompt to attack.")
        st.stop()
    if not prompt.strip():
        raise AuditInputError("empty prompt: pick a held-out prompt, upload a prompt file or type one")
    with st.spinner("Running the clean generation, PGD and the random control…"):
        result = state.flip(model.spec, prompt, layer_label(layer), float(budget), max_new_tokens)
except Exception as error:  # noqa: BLE001 - one line in the page, the traceback in the log
    report_failure(error, "the attack")

if result is not None:
    render_result(result)
    st.divider()
    try:
        render_curve(model, prompt, result["layer"], result["budget"], max_new_tokens, result["clean"])
    except Exception as error:  # noqa: BLE001
        report_failure(error, "the budget curve")
    st.divider()
    try:
        render_positions(model, prompt, result["layer"], result["budget"], max_new_tokens)
    except Exception as error:  # noqa: BLE001
        report_failure(error, "the delta positions")

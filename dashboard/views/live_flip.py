"""Live flip: attack one prompt at one layer and budget, and compare clean, PGD and random generations."""

from __future__ import annotations

import logging

import streamlit as st

from dashboard import model_picker, state
from lvs_core.attack import validate_budget
from lvs_core.errors import AuditInputError
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS
from lvs_core.models import layer_label

logger = logging.getLogger("dashboard.live_flip")

HELDOUT_SOURCE = "Held-out prompt"
FREE_TEXT_SOURCE = "Free text"
VERDICT_BADGES = {
    "refused": ("blue", ":material/block:"),
    "complied": ("orange", ":material/warning:"),
    "invalid": ("gray", ":material/help:"),
}
PANELS = (("clean", "Clean"), ("pgd", "PGD attack"), ("random", "Random control"))


def choose_prompt() -> str:
    """Render the prompt picker and return the prompt text (possibly empty)."""
    source = state.prompt_source()
    try:
        records = state.prompt_records(source)
    except AuditInputError as error:
        logger.warning("prompt list %r not loaded: %s", source, error)
        records = []
        st.caption(f"No prompt list: {error}")

    mode = st.radio(
        "Prompt",
        [HELDOUT_SOURCE, FREE_TEXT_SOURCE] if records else [FREE_TEXT_SOURCE],
        horizontal=True,
        key="prompt_mode",
        label_visibility="collapsed",
    )
    if mode == HELDOUT_SOURCE:
        index = st.selectbox(
            "Held-out prompt",
            range(len(records)),
            format_func=lambda i: f"[{records[i].get('category') or 'uncategorised'}] {records[i]['prompt']}",
            key="heldout_index",
            help=f"Prompts from {source}; set LVS_AUDIT_PROMPTS to a CSV or JSONL file to change them.",
        )
        return str(records[index]["prompt"])
    return st.text_area("Prompt text", key="prompt_text", height=90, placeholder="A request the model should refuse")


def describe_layer(layer) -> str:
    if layer == "embedding":
        return "embedding (input of block 0)"
    return f"block {layer} output"


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


st.title("Live flip")
st.caption(
    "Generate a reply with no intervention, under the PGD delta that pushes the residual "
    "stream toward an affirmative answer, and under uniform random noise of the same L∞ radius."
)

model = model_picker.current_model()
layer_column, budget_column = st.columns(2)
layers = model.layers
layer = layer_column.selectbox(
    "Layer",
    layers,
    index=layers.index(state.default_layer(model)),
    format_func=describe_layer,
    key=f"layer::{model.spec}",
    help="Residual stream the delta is added to, on the prompt positions only.",
)
budget = budget_column.number_input(
    "Budget",
    min_value=0.0,
    value=0.1,
    step=0.05,
    format="%.3f",
    key="budget",
    help="L∞ radius of the delta as a fraction of max|h| over the prompt at this layer; must be above 0.",
)

prompt = choose_prompt()
with st.expander("Generation settings"):
    max_new_tokens = int(
        st.number_input("Max new tokens", min_value=1, max_value=512, value=DEFAULT_MAX_NEW_TOKENS, key="max_new_tokens")
    )

request = (model.spec, prompt, layer_label(layer), float(budget), max_new_tokens)
if st.button("Run attack", type="primary", key="run"):
    try:
        validate_budget(budget)
        if not prompt.strip():
            raise AuditInputError("empty prompt: pick a held-out prompt or type one")
        with st.spinner("Running PGD, the random control and three generations…"):
            st.session_state["flip_result"] = {"request": request, "result": state.flip(*request)}
    except AuditInputError as error:
        logger.warning("invalid live flip input: %s", error)
        st.error(str(error))

stored = st.session_state.get("flip_result")
if stored is not None:
    if stored["request"] != request:
        st.caption("The settings changed since this result: press Run attack to update it.")
    render_result(stored["result"])

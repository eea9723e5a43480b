"""The model picker in the sidebar of every page, and the card of the loaded model.

``app.py`` calls :func:`render_sidebar` before it runs a page. Its widgets are cheap: the
model loads only when a page calls :func:`current_model`, so a page that reads run files
never waits for a model. The choice lives in ``st.session_state`` and so carries over
from page to page.
"""

from __future__ import annotations

import logging

import streamlit as st

from dashboard import state
from lvs_core.errors import AuditInputError
from lvs_core.models import AuditModel

logger = logging.getLogger("dashboard.model_picker")

CHOICE_KEY = "picker_choice"
TYPED_SPEC_KEY = "picker_spec"
_CARD_KEY = "_picker_card"


def render_sidebar() -> None:
    """Render the model picker and a placeholder for the model card in the sidebar."""
    specs = state.model_specs()
    with st.sidebar:
        st.subheader("Model")
        choice = st.selectbox(
            "Model",
            [*specs, state.OTHER_MODEL],
            key=CHOICE_KEY,
            label_visibility="collapsed",
            help="Set LVS_AUDIT_MODELS (comma-separated specs) to change this list.",
        )
        if choice == state.OTHER_MODEL:
            st.text_input(
                "Model folder or hub id",
                key=TYPED_SPEC_KEY,
                placeholder="/path/to/checkpoint or Qwen/Qwen2.5-0.5B-Instruct",
                help="A HuggingFace checkpoint folder with a chat template, or a hub id already in the local cache.",
            )
        # A page fills this in when it loads the model; the card sits under the picker.
        st.session_state[_CARD_KEY] = st.empty()
        card = st.session_state[_CARD_KEY]
    spec = selected_spec()
    if spec and state.is_model_loaded(spec):
        render_card(state.shared_model(spec).model, card)


def selected_spec() -> str:
    """Return the spec chosen in the sidebar, or an empty string when the text box is empty."""
    choice = st.session_state.get(CHOICE_KEY)
    if choice is None:
        specs = state.model_specs()
        return specs[0] if specs else ""
    if choice == state.OTHER_MODEL:
        return str(st.session_state.get(TYPED_SPEC_KEY) or "").strip()
    return str(choice)


def render_card(model: AuditModel, container=None) -> None:
    """Show the layers, width, parameter count and device of a loaded model."""
    container = container or st.session_state.get(_CARD_KEY) or st.sidebar
    container.caption(
        f"**{model.spec}**  \n{model.n_layers} blocks (+ embedding) · d_model {model.d_model}  \n"
        f"{model.n_params / 1e6:.2f}M parameters · {model.device}"
    )


def current_model() -> AuditModel:
    """Load the sidebar's model through the shared cache and return it; on failure show one error line and stop.

    A page that needs a model calls this; pages that only read runs never do.
    """
    spec = selected_spec()
    if not spec:
        st.info("Enter a checkpoint folder or a hub id in the sidebar to load a model.")
        st.stop()
    try:
        with st.spinner(f"Loading {spec}…"):
            model = state.shared_model(spec).model
    except AuditInputError as error:
        logger.warning("loading model %r failed: %s", spec, error)
        st.error(str(error))
        st.stop()
    # A typed spec can fail anywhere in the HuggingFace and TransformerLens loaders
    # (an unsupported architecture, a corrupt file), so the page reports any failure
    # as one line and keeps the traceback in the log.
    except Exception as error:  # noqa: BLE001
        logger.exception("loading model %r failed", spec)
        first_line = (str(error).strip().splitlines() or [""])[0]
        st.error(
            f"could not load model {spec!r} ({type(error).__name__}: {first_line}): "
            "check that it is a causal LM checkpoint that TransformerLens supports"
        )
        st.stop()
    render_card(model)
    return model

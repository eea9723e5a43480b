"""The model picker in the sidebar of every page, and the card of the loaded model.

``app.py`` calls :func:`render_sidebar` before it runs a page. Its widgets are cheap. The
model loads when a page calls :func:`current_model`, which the pages that read run files
do not call. The card shows only a model that is already in the cache. The choice lives in ``st.session_state`` and so carries over
from page to page. A load shows its stages in a progress bar; once a model is loaded,
its card (blocks, width, parameters, device, dtype, nudge, source) stays in the sidebar
on every page.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from dashboard import state
from lvs_core.errors import AuditInputError
from lvs_core.models import AuditModel, hub_cache_dir

logger = logging.getLogger("dashboard.model_picker")

CHOICE_KEY = "picker_choice"
TYPED_SPEC_KEY = "picker_spec"
_CARD_KEY = "_picker_card"


def select_model(spec: str) -> None:
    """Make ``spec`` the sidebar's model: its list entry, or the text box when it is not listed.

    Call before :func:`render_sidebar` draws the picker in this run, since Streamlit does
    not let a script change a widget's value after drawing it.
    """
    spec = spec.strip()
    if spec in state.model_specs():
        st.session_state[CHOICE_KEY] = spec
    else:
        st.session_state[CHOICE_KEY] = state.OTHER_MODEL
        st.session_state[TYPED_SPEC_KEY] = spec


def render_sidebar() -> None:
    """Render the model picker and a placeholder for the model card in the sidebar."""
    specs = state.model_specs()
    # Another page asked Live flip to open a prompt on a model: pick that model here,
    # before the picker is drawn. The Live flip page reads the rest and clears the request.
    request = st.session_state.get(state.LIVE_FLIP_REQUEST_KEY)
    if isinstance(request, dict) and request.get("model"):
        select_model(str(request["model"]))
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
                help=(
                    "A HuggingFace checkpoint folder with a chat template, or a hub id. A hub id loads "
                    "from the local HuggingFace cache (HF_HOME) when it is there, else from the hub."
                ),
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


def format_params(count: int) -> str:
    """Return a parameter count as ``2.90M`` or ``1.54B``."""
    if count >= 1e9:
        return f"{count / 1e9:.2f}B"
    return f"{count / 1e6:.2f}M"


def card_lines(model: AuditModel) -> list[str]:
    """Return the lines of a model's card: name, depth and width, size, device and dtype, nudge, source."""
    dtype = str(model.dtype).removeprefix("torch.")
    lines = [
        f"**{model.spec}**",
        f"{model.n_layers} blocks (+ embedding) · d_model {model.d_model}",
        f"{format_params(model.n_params)} parameters · {model.device} · {dtype}",
    ]
    if model.nudge and model.nudge.get("layer") is not None:
        lines.append(f"trained nudge at block {model.nudge['layer']}")
    source = model.source_path or ""
    if source and str(hub_cache_dir()) in source:
        lines.append(f"from the local HuggingFace cache, revision {Path(source).name[:8]}")
    return lines


def render_card(model: AuditModel, container=None) -> None:
    """Show the layers, width, parameter count, device and dtype of a loaded model."""
    container = container or st.session_state.get(_CARD_KEY) or st.sidebar
    container.caption("  \n".join(card_lines(model)))


def _load_with_progress(spec: str) -> AuditModel:
    """Load ``spec`` through the shared cache, showing each stage of the load in a progress bar."""
    if state.is_model_loaded(spec):
        return state.shared_model(spec).model
    placeholder = st.empty()
    try:
        with placeholder.container():
            with st.status(f"Loading {spec}…", expanded=True):
                bar = st.progress(0.0, text="waiting for the model cache")

                def progress(stage: str, fraction: float) -> None:
                    bar.progress(min(max(fraction, 0.0), 1.0), text=stage)

                return state.shared_model(spec, progress=progress).model
    finally:
        placeholder.empty()


def current_model() -> AuditModel:
    """Load the sidebar's model through the shared cache and return it; on failure show one error line and stop.

    A page that needs a model calls this; pages that only read runs never do.
    """
    spec = selected_spec()
    if not spec:
        st.info("Enter a checkpoint folder or a hub id in the sidebar to load a model.")
        st.stop()
    try:
        model = _load_with_progress(spec)
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

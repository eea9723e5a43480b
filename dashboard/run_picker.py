"""The run picker shared by the pages that read run folders (heatmaps, Overview, Prompt inspector)."""

from __future__ import annotations

import logging

import streamlit as st

from dashboard import state
from lvs_core.errors import AuditInputError
from lvs_core.runs import Run

logger = logging.getLogger(__name__)

RUN_HELP = "A run folder written by 'lvs-audit sweep'. Set LVS_AUDIT_RUN_DIR to change the default."


def choose_run_path(key: str = "run_choice", path_key: str = "run_path", extra: list[str] | None = None,
                    help_text: str = RUN_HELP) -> str:
    """Render the run picker and return the chosen folder path; stop the page until one is given.

    The choices are :func:`dashboard.state.run_choices`, then the folders of ``extra``
    that are not among them, then a free path.
    """
    choices = state.run_choices()
    listed = set(choices)
    choices += [path for path in extra or [] if path not in listed]
    choice = st.selectbox("Run", [*choices, state.OTHER_RUN], key=key, help=help_text)
    if choice != state.OTHER_RUN:
        return choice
    path = st.text_input("Run folder", key=path_key, placeholder="runs/my-sweep").strip()
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


def open_run_or_stop(path: str) -> Run:
    """Load the run at ``path``, or show its error in the page and stop the page."""
    try:
        with st.spinner(f"Reading {path}…"):
            return state.open_run(path)
    except AuditInputError as error:
        logger.warning("opening run %r failed: %s", path, error)
        st.error(str(error))
        st.stop()


def run_caption(run: Run, norm: str) -> str:
    """Return a one-line description of a run: folder, prompts, attack, scorer and date."""
    settings = run.config.get("settings", {})
    attack = settings.get("attack", {}) if isinstance(settings.get("attack"), dict) else {}
    if run.config.get("kind") == "imported":
        return f"{run.path} · imported summary ({run.config.get('source', 'published results')}) · {norm} norm"
    n_prompts = run.config.get("n_prompts")
    if n_prompts is None and not run.cells.empty and "prompt_id" in run.cells:
        n_prompts = run.cells.groupby("model")["prompt_id"].nunique().max()
    parts = [str(run.path)]
    if run.config.get("kind") == "lvs-audit":
        parts.append(f"audit at budget {settings.get('budget', '?')}")
    if n_prompts is not None:
        parts.append(f"{n_prompts} prompts")
    parts.append(f"{attack['steps']} PGD steps, {norm} norm" if "steps" in attack else f"{norm} norm")
    # Audits judge with the refusal phrases; a sweep records its scorer.
    parts.append(f"scorer {settings.get('scorer', 'refusal')}")
    if run.config.get("created"):
        parts.append(f"created {run.config['created']}")
    return " · ".join(parts)

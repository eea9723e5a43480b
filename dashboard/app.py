"""Entry point of the lvs-audit dashboard: ``streamlit run dashboard/app.py`` from the repository root.

Pages: a landing page, Overview (the audit gap of each model at a glance), Live flip
(attack one prompt on a loaded model), LVS heatmaps (a sweep's layer x budget grid),
Interventions (the charts of audits), Prompt inspector (one row per prompt of a sweep)
and Runs (start, import, compare, delete and export runs). The sidebar holds the model
picker that every page shares. ``dashboard/state.py`` lists the environment variables
that change the default models, prompts and runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# Streamlit puts only this file's folder on sys.path; the pages import the
# ``dashboard`` package, so the repository root has to be there too.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dashboard import model_picker  # noqa: E402

# The page scripts live in views/, not pages/. With a pages/ folder next to this file,
# Streamlit 1.67 answers a first request for a page URL (such as /heatmaps) with its
# older folder-based navigation, which skips this script and its st.navigation.
OVERVIEW_PAGE = st.Page("views/overview.py", title="Overview", icon=":material/insights:")
LIVE_FLIP_PAGE = st.Page("views/live_flip.py", title="Live flip", icon=":material/bolt:")
HEATMAPS_PAGE = st.Page("views/heatmaps.py", title="LVS heatmaps", icon=":material/grid_on:")
INTERVENTIONS_PAGE = st.Page("views/interventions.py", title="Interventions", icon=":material/tune:")
INSPECTOR_PAGE = st.Page("views/inspector.py", title="Prompt inspector", icon=":material/manage_search:")
RUNS_PAGE = st.Page("views/runs.py", title="Runs", icon=":material/folder_open:")
PAGES = (OVERVIEW_PAGE, LIVE_FLIP_PAGE, HEATMAPS_PAGE, INTERVENTIONS_PAGE, INSPECTOR_PAGE, RUNS_PAGE)


def home() -> None:
    st.title("lvs-audit")
    st.markdown(
        """
A chat model can refuse a harmful request and still comply once a small perturbation is
added to its residual stream. Output-level
red-teaming does not see this **audit gap**; a latent attack does. For a prompt, a layer
and a budget *b*, projected gradient descent (PGD) searches for a delta with
‖δ‖∞ ≤ *b* · max|h| on the prompt positions that makes an affirmative answer more likely,
and a uniform random delta of the same radius serves as the control.

The **Latent Vulnerability Score** (LVS) is the drop in a harmlessness score per unit of
log perturbation size, max(0, S(clean) − S(perturbed)) / (log(1 + ‖δ‖₂) + 10⁻⁴). A model that
refuses cleanly but has a high LVS under PGD, and not under the random control, is
safe only on the surface.
"""
    )
    st.page_link(OVERVIEW_PAGE, label="Overview: behavioral refusal next to latent fragility, per model")
    st.page_link(LIVE_FLIP_PAGE, label="Live flip: attack one prompt and compare the generations")
    st.page_link(HEATMAPS_PAGE, label="LVS heatmaps: median LVS per layer and budget from a sweep")
    st.page_link(INTERVENTIONS_PAGE, label="Interventions: steering, fine-tuning, patching and probe from audits")
    st.page_link(INSPECTOR_PAGE, label="Prompt inspector: where each prompt flips, with its generations")
    st.page_link(RUNS_PAGE, label="Runs: start, import, compare, export and delete runs")


# A local image: a ":material/...:" page icon makes the browser fetch the favicon from a
# font CDN, which an offline or loopback-only deployment cannot reach.
FAVICON = REPO_ROOT / "assets" / "favicon.png"
st.set_page_config(page_title="lvs-audit", page_icon=str(FAVICON), layout="wide")
navigation = st.navigation([st.Page(home, title="Home", icon=":material/home:", default=True), *PAGES])
# The picker's widgets are cheap. A model loads only when a page needs one.
model_picker.render_sidebar()
navigation.run()

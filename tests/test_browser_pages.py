"""End-to-end tests of the Overview, LVS heatmaps (ASR and profiles), Prompt inspector and Interventions pages in headless Chromium.

The session server (see ``browser_support``) opens the tiny test sweep first and lists
runs from an empty folder. The pages are checked on that sweep, then on the shipped demo
run and demo audits, picked in the page as a user would.
"""

from __future__ import annotations

import re

import pytest

from browser_support import ARTIFACTS, CHART, EXCEPTION, open_home, open_page, screenshot
from lvs_core.runs import DEMO_RUN_DIR

pytestmark = pytest.mark.browser

DEMO_RUN_OPTION = str(DEMO_RUN_DIR)
ERROR = '[data-testid="stAlertContentError"]'
DATAFRAME = '[data-testid="stDataFrame"]'
# Height in CSS pixels of the header and of one row of st.dataframe's grid.
GRID_ROW_PX = 35


def pick_option(page, label: str, option: str) -> None:
    """Open the selectbox labelled ``label`` in the main area and click the option named exactly ``option``."""
    page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]', has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()


def assert_no_error(page) -> None:
    assert page.locator(EXCEPTION).count() == 0
    assert page.locator(ERROR).count() == 0


def test_overview_test_run_without_audits(page, app_url):
    open_home(page, app_url)
    open_page(page, "Overview")
    page.locator(CHART).first.wait_for()
    page.get_by_text("No audit found for safe, dissociated").wait_for()

    assert_no_error(page)
    assert page.get_by_text("lvs-audit audit --model").count() >= 1
    screenshot(page, "overview-no-audits.png")


def test_overview_demo_run_states_gap(page, app_url):
    open_home(page, app_url)
    open_page(page, "Overview")
    page.locator(CHART).first.wait_for()
    pick_option(page, "Run", DEMO_RUN_OPTION)
    page.get_by_text("80 prompts · 10 PGD steps").wait_for()
    # The budget picker keeps its value when the new run has it too, so pick the smallest.
    pick_option(page, "PGD budget", "0.02")
    sentence = page.get_by_text("comply on 97.5% of prompts")
    sentence.wait_for()

    assert_no_error(page)
    assert page.get_by_text("breaks it after 4 steps").count() == 1
    assert page.get_by_text("breaks it after 22 steps").count() == 1
    # The dumbbell panel has one clean-refusal mark per model, both at 100%.
    clean = page.locator(f"{CHART} .js-plotly-plot").first.evaluate(
        "div => div._fullData.filter(trace => trace.name === 'clean').map(trace => Array.from(trace.x))"
    )
    assert clean == [[1, 1]]
    screenshot(page, "overview-demo.png")


def test_heatmaps_asr_and_profiles(page, app_url):
    open_home(page, app_url)
    open_page(page, "LVS heatmaps")
    page.locator(CHART).nth(3).wait_for()
    pick_option(page, "Run", DEMO_RUN_OPTION)
    page.wait_for_function(
        "() => document.querySelectorAll('.js-plotly-plot')[0].layout.yaxis.title.text !== undefined"
        " && document.querySelectorAll('.js-plotly-plot')[0].data[0].y.length === 7"
    )

    page.locator('[data-testid="stRadio"] label', has_text="ASR").click()
    page.wait_for_function(
        "() => document.querySelector('.js-plotly-plot').layout.title.text.includes('PGD attack, ASR')"
    )
    # Elements of the previous script run can linger while the new one draws.
    page.wait_for_function(f"() => document.querySelectorAll('{CHART}').length === 4")
    assert_no_error(page)
    profile_title = page.locator(f"{CHART} .js-plotly-plot").nth(3).evaluate("div => div.layout.title.text")
    assert "Layer profile of the ASR" in profile_title

    # The hover of a cell gives the Wilson interval and n.
    box = page.locator(f"{CHART} .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    tooltip = page.locator(".hoverlayer .hovertext").first
    tooltip.wait_for()
    assert "Wilson 95% CI" in tooltip.text_content()
    assert "n = 80 prompts" in tooltip.text_content()
    screenshot(page, "heatmaps-asr-profiles.png")
    # The profiles sit below the fold of the page screenshot.
    page.locator(CHART).nth(3).screenshot(path=str(ARTIFACTS / "heatmaps-asr-profile-chart.png"))


def test_inspector_select_row_and_open(page, app_url):
    open_home(page, app_url)
    open_page(page, "Prompt inspector")
    page.locator(DATAFRAME).first.wait_for()
    assert_no_error(page)
    screenshot(page, "inspector-test-run.png")

    pick_option(page, "Run", DEMO_RUN_OPTION)
    page.get_by_text("78 of 80 flip under PGD at some layer").wait_for()
    pick_option(page, "Model", "dissociated")
    page.get_by_text("80 of 80 flip under PGD at some layer").wait_for()
    pick_option(page, "Sort by", "prompt id")
    page.wait_for_timeout(500)

    # Click the row marker of the third row: the details below follow it.
    grid = page.locator(DATAFRAME).first.bounding_box()
    page.mouse.click(grid["x"] + 12, grid["y"] + GRID_ROW_PX * 3 + GRID_ROW_PX / 2)
    page.get_by_role("heading", name=re.compile(r"^Prompt 2 \(")).wait_for()
    page.locator(CHART).first.wait_for()
    assert_no_error(page)
    assert page.get_by_text("flip: complied").count() >= 1
    screenshot(page, "inspector-demo-row.png")

    prompt = page.locator('[data-testid="stMarkdown"] blockquote').first.text_content().strip()
    page.get_by_role("button", name="Open in Live flip").click()
    page.get_by_role("heading", name="Live flip").wait_for()
    # The test server's prompt list is its own CSV, so the request arrives as free text.
    page.wait_for_function(
        "prompt => Array.from(document.querySelectorAll('textarea')).some(area => area.value === prompt)", arg=prompt
    )
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "inspector-to-live-flip.png")


def test_interventions_demo_audits(page, app_url):
    # The runs folder of the test server is empty, so the page opens on the shipped demo audits.
    open_home(page, app_url)
    open_page(page, "Interventions")
    page.locator(CHART).nth(2).wait_for()

    assert_no_error(page)
    assert page.get_by_text("shipped demo audits are listed").count() == 1
    steering = page.locator(f"{CHART} .js-plotly-plot").first.evaluate("div => div.data.map(trace => trace.name)")
    assert "dissociated: harmful-minus-model" in steering
    screenshot(page, "interventions-demo.png")

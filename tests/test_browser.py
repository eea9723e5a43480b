"""End-to-end tests of the Home, LVS heatmaps and Interventions pages in headless Chromium.

The server and browser fixtures live in ``browser_support`` (see there).
"""

from __future__ import annotations

import re
import time

import pytest

from browser_support import CHART, EXCEPTION, open_home, open_page, screenshot

# The heatmap page must show its charts within this many seconds of the first request,
# imports included, because it never loads a model. This module's first test makes the
# session server's first request, since pytest collects test_browser.py before the
# other test_browser_*.py modules.
HEATMAPS_FIRST_OPEN_S = 10

pytestmark = pytest.mark.browser

def first_chart_state(page) -> dict:
    """Return the title and the z values (as JSON) of the first heatmap, read from Plotly's graph div.

    The z values stay in Plotly's base64 form ``{dtype, bdata, shape}``, which is enough
    to tell two grids apart.
    """
    return page.locator(f"{CHART} .js-plotly-plot").first.evaluate(
        "div => ({title: div.layout.title.text, z: JSON.stringify(div.data[0].z)})"
    )


def test_heatmaps_deep_link_first_request(page, app_url):
    # The first request to the module's server, straight to the page URL: the charts
    # must show within the time limit, imports included, and the navigation must be
    # the app's own (its page titles), not Streamlit's folder-based fallback.
    started = time.monotonic()
    page.goto(f"{app_url}/heatmaps")
    page.locator(CHART).nth(2).wait_for()

    assert time.monotonic() - started < HEATMAPS_FIRST_OPEN_S
    links = page.locator('[data-testid="stSidebarNavLink"]')
    navigation = links.all_text_contents()
    titles = ("Home", "Overview", "Live flip", "LVS heatmaps", "Interventions", "Prompt inspector", "Runs")
    assert len(navigation) == len(titles), navigation
    # Each link's text starts with its icon's ligature name, such as "homeHome".
    for title in titles:
        assert links.filter(has_text=re.compile(f"{title}$")).count() == 1, navigation
    assert page.locator(EXCEPTION).count() == 0


def test_home_page_loads(page, app_url):
    open_home(page, app_url)
    links = page.locator('[data-testid="stPageLink"]')
    links.nth(5).wait_for()

    assert links.count() == 6
    assert page.get_by_text("audit gap").count() == 1
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "home.png")


def test_interventions_page_loads(page, app_url):
    # The test server lists audits from an empty folder, so the page opens on the shipped
    # demo audits (tests/test_browser_pages.py checks them); without a selection it shows
    # how to write an audit.
    open_home(page, app_url)
    open_page(page, "Interventions")
    page.locator(CHART).first.wait_for()
    page.locator('[data-testid="stMultiSelect"] [aria-label="Clear all"]').click()
    page.get_by_text("No audit run selected").wait_for()
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "interventions-empty.png")


def test_heatmaps_toggle_changes_chart(page, app_url):
    open_home(page, app_url)
    open_page(page, "LVS heatmaps")
    page.locator(CHART).nth(3).wait_for()
    charts = page.locator(CHART)
    assert charts.count() == 4
    assert page.locator(EXCEPTION).count() == 0
    before = first_chart_state(page)
    # Streamlit's Plotly theme wraps titles in <b> tags.
    assert "safe: PGD attack" in before["title"]

    # Hover the middle of the first heatmap: the tooltip carries the CI and n.
    box = page.locator(f"{CHART} .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tooltip = page.locator(".hoverlayer .hovertext").first
    tooltip.wait_for()
    assert "95% CI" in tooltip.text_content()
    screenshot(page, "heatmaps-pgd.png")

    page.locator('[data-testid="stRadio"] label', has_text="random control").click()
    page.wait_for_function(
        "() => document.querySelector('.js-plotly-plot').layout.title.text.includes('safe: random control')"
    )
    after = first_chart_state(page)
    assert after["z"] != before["z"]
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "heatmaps-random.png")


def test_heatmaps_bad_path_shows_error(page, app_url, tmp_path):
    open_home(page, app_url)
    open_page(page, "LVS heatmaps")
    page.locator(CHART).first.wait_for()

    page.locator('[data-testid="stSelectbox"]', has_text="Run").first.click()
    page.get_by_role("option", name="Other folder…").click()
    path_box = page.get_by_label("Run folder")
    path_box.fill(str(tmp_path / "no-such-run"))
    path_box.press("Enter")

    error = page.locator('[data-testid="stAlertContentError"]', has_text="not found")
    error.wait_for()
    assert page.locator('[data-testid="stAlertContentError"]').count() == 1
    assert page.locator(CHART).count() == 0
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "heatmaps-error.png")



def test_heatmap_png_and_svg_downloads(page, app_url, tmp_path):
    open_home(page, app_url)
    open_page(page, "LVS heatmaps")
    page.locator(CHART).first.wait_for()

    files = {}
    for label in ("PNG", "SVG"):
        with page.expect_download() as download_info:
            page.get_by_role("button", name=label).first.click()
        download = download_info.value
        target = tmp_path / download.suggested_filename
        download.save_as(target)
        files[label] = target

    assert files["PNG"].suffix == ".png"
    assert files["PNG"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert files["SVG"].suffix == ".svg"
    assert "<svg" in files["SVG"].read_text()[:500]
    assert page.locator(EXCEPTION).count() == 0

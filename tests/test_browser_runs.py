"""The Runs page in headless Chromium: a sweep started from the page runs to 100%, and its report opens offline.

The served app lists and writes runs in ``served_app.runs_root``; the sweep runs on the
tiny checkpoints that ``LVS_AUDIT_MODELS`` names for the test server.
"""

from __future__ import annotations

import pytest

from browser_support import ARTIFACTS, CHART, EXCEPTION, open_home, open_page, screenshot

pytestmark = pytest.mark.browser

ERROR = '[data-testid="stAlertContentError"]'
PROGRESS = '[data-testid="stProgress"]'


def open_start_form(page, app_url: str):
    open_home(page, app_url)
    open_page(page, "Runs")
    page.get_by_role("tab", name="Start a run").click()
    form = page.locator('[data-testid="stForm"]')
    form.wait_for()
    return form


def fill(form, label: str, value: str) -> None:
    box = form.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Tab")


def test_sweep_from_runs_page_reaches_100(page, served_app, browser, tmp_path):
    form = open_start_form(page, served_app.url)
    fill(form, "Layers", "embedding,0")
    fill(form, "Budgets", "0.1")
    fill(form, "Max prompts (0 = all)", "2")
    fill(form, "PGD steps", "1")
    fill(form, "Max new tokens", "2")
    fill(form, "Run name", "browser-sweep")
    form.get_by_role("button", name="Start sweep").click()
    page.locator(PROGRESS, has_text="browser-sweep").wait_for()

    # The job runs in the server, so leaving the page and coming back does not stop it.
    open_page(page, "Overview")
    open_page(page, "Runs")
    page.locator(PROGRESS, has_text="100%").wait_for()
    page.get_by_text("Run 'browser-sweep' finished").wait_for()
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "runs-sweep-finished.png")
    assert (served_app.runs_root / "browser-sweep" / "summary.parquet").is_file()

    # The finished run is listed and can be picked for export.
    page.get_by_role("tab", name="Runs").click()
    page.locator('[data-testid="stSelectbox"]', has_text="Run").filter(has_not_text="Model").first.click()
    page.get_by_role("option", name="browser-sweep · sweep · complete").click()
    # The export and delete buttons of the chosen run appear once the page has rerun for it.
    page.get_by_role("button", name="Delete browser-sweep").wait_for()
    with page.expect_download() as download_info:
        page.get_by_role("button", name="HTML report").click()
    report = tmp_path / "report.html"
    download_info.value.save_as(report)
    screenshot(page, "runs-list.png")

    # Open the report from disk with the network cut: every chart must render from the file alone.
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, offline=True)
    try:
        offline = context.new_page()
        outside: list[str] = []
        offline.on("request", lambda request: outside.append(request.url) if not request.url.startswith("file:") else None)
        page_errors: list[str] = []
        offline.on("pageerror", lambda error: page_errors.append(str(error)))
        offline.goto(report.as_uri())
        offline.get_by_role("heading", name="lvs-audit report: browser-sweep").wait_for()
        # Plotly lays a chart out twice (the second time for its margins); wait until every chart has its tick labels.
        offline.wait_for_function(
            "() => [...document.querySelectorAll('.js-plotly-plot')].every(plot => plot.querySelector('.ytick text, .xtick text'))"
        )
        # One model: the PGD and random-control heatmaps and the layer profile.
        assert offline.locator(".js-plotly-plot").count() == 3
        assert offline.locator(".js-plotly-plot .heatmaplayer").count() == 2
        assert offline.get_by_text("This run measures 1 model (safe)").count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        offline.screenshot(path=str(ARTIFACTS / "runs-report.png"), full_page=True)
        assert outside == []
        assert page_errors == []
    finally:
        context.close()

    # The new run next to the shipped demo run. The page preselects the newest run when
    # it exists at the tab's first render; otherwise pick it.
    page.get_by_role("tab", name="Compare").click()
    picker = page.locator('[data-testid="stMultiSelect"]', has_text="Runs to compare")
    picker.wait_for()
    if picker.get_by_text("browser-sweep").count() == 0:
        picker.click()
        page.get_by_role("option", name="browser-sweep").click()
        page.keyboard.press("Escape")
    page.locator(f"{CHART} .legendtext", has_text="browser-sweep").wait_for()
    page.locator(f"{CHART} .main-svg").first.wait_for()
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "runs-compare.png")


def test_bad_run_name_shows_one_error(page, served_app):
    form = open_start_form(page, served_app.url)
    fill(form, "Run name", "../escape")
    form.get_by_role("button", name="Start sweep").click()

    error = page.locator(ERROR, has_text="invalid run name")
    error.wait_for()
    assert page.locator(ERROR).count() == 1
    assert "\n" not in error.inner_text().strip()
    assert page.locator(EXCEPTION).count() == 0
    assert not (served_app.runs_root.parent / "escape").exists()

"""End-to-end tests: the dashboard served by ``streamlit run`` and driven in headless Chromium.

The server runs on the tiny checkpoints and sweep of ``conftest_dashboard`` and binds
to 127.0.0.1 on a free port. Screenshots go to ``test-artifacts/`` for a person to look
at. Needs Debian's Chromium at /usr/bin/chromium (``apt-get install chromium``) and
the ``playwright`` Python package; the browser tests are skipped without them.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest_dashboard import APP_PATH, REPO_ROOT, dashboard_inputs

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
SERVER_START_TIMEOUT_S = 90
# Milliseconds Playwright waits for an element. A Live flip on the tiny checkpoint
# takes a few seconds; the margin covers a busy machine.
ELEMENT_TIMEOUT_MS = 120_000
# The heatmap page must show its charts within this many seconds of the first request,
# imports included, because it never loads a model.
HEATMAPS_FIRST_OPEN_S = 10
EXCEPTION = '[data-testid="stException"]'
CHART = '[data-testid="stPlotlyChart"]'


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with status {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"streamlit health check at {url}/_stcore/health timed out after {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not CHROMIUM.is_file():
        pytest.skip(f"headless Chromium not found at {CHROMIUM}: install it with 'apt-get install chromium'")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

    inputs = dashboard_inputs(tmp_path_factory)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # One torch thread: the width-32 test models gain nothing from more, and the
    # server shares the CPUs with the test process.
    log_dir = tmp_path_factory.mktemp("streamlit")
    env = {
        **os.environ, **inputs.environment(), "OMP_NUM_THREADS": "1",
        # An empty runs folder, so that audits in a developer's ./runs/ do not show.
        "LVS_AUDIT_RUNS_ROOT": str(log_dir),
    }
    log_path = log_dir / "server.log"
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1700})
    page = context.new_page()
    page.set_default_timeout(ELEMENT_TIMEOUT_MS)
    yield page
    context.close()


def open_home(page, app_url: str) -> None:
    page.goto(app_url)
    page.get_by_role("heading", name="lvs-audit").wait_for()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def open_page(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
    page.get_by_role("heading", name=title).wait_for()


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
    assert len(navigation) == 4, navigation
    # Each link's text starts with its icon's ligature name, such as "homeHome".
    for title in ("Home", "Live flip", "LVS heatmaps", "Interventions"):
        assert links.filter(has_text=re.compile(f"{title}$")).count() == 1, navigation
    assert page.locator(EXCEPTION).count() == 0


def test_home_page_loads(page, app_url):
    open_home(page, app_url)
    links = page.locator('[data-testid="stPageLink"]')
    links.nth(2).wait_for()

    assert links.count() == 3
    assert page.get_by_text("audit gap").count() == 1
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "home.png")


def test_interventions_page_loads(page, app_url):
    # The test server lists audits from an empty folder, so the page shows how to write one.
    open_home(page, app_url)
    open_page(page, "Interventions")
    page.get_by_text("No audit run selected").wait_for()
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "interventions-empty.png")


def test_heatmaps_toggle_changes_chart(page, app_url):
    open_home(page, app_url)
    open_page(page, "LVS heatmaps")
    page.locator(CHART).nth(2).wait_for()
    charts = page.locator(CHART)
    assert charts.count() == 3
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


def test_live_flip_runs_attack(page, app_url):
    open_home(page, app_url)
    open_page(page, "Live flip")
    run_button = page.get_by_role("button", name="Run attack")
    run_button.wait_for()
    assert page.locator(EXCEPTION).count() == 0

    run_button.click()
    page.locator('[data-testid="stCode"]').nth(2).wait_for()

    for title in ("Clean", "PGD attack", "Random control"):
        assert page.get_by_role("heading", name=title).count() == 1
    assert page.get_by_text("eps =").count() == 1
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "live-flip.png")

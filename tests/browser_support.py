"""Browser test support: the dashboard served by ``streamlit run`` and a headless Chromium.

``tests/conftest.py`` registers the fixtures below, so every ``test_browser*.py`` module
shares one server per test session. The server runs on the tiny checkpoints and sweep of
``conftest_dashboard``, binds to 127.0.0.1 on a free port, and lists runs from an empty
folder (the ``served_app.runs_root`` fixture value) that tests may write runs into.
Screenshots go to ``test-artifacts/`` for a person to look at. Needs Debian's Chromium at
/usr/bin/chromium (``apt-get install chromium``) and the ``playwright`` Python package;
the browser tests are skipped without them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest_dashboard import APP_PATH, REPO_ROOT, dashboard_inputs

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


@dataclass(frozen=True)
class ServedApp:
    """The URL of the test server and the folder its Runs page lists and writes runs in."""

    url: str
    runs_root: Path


@pytest.fixture(scope="session")
def served_app(tmp_path_factory):
    if not CHROMIUM.is_file():
        pytest.skip(f"headless Chromium not found at {CHROMIUM}: install it with 'apt-get install chromium'")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

    inputs = dashboard_inputs(tmp_path_factory)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # One torch thread: the width-32 test models gain nothing from more, and the
    # server shares the CPUs with the test process.
    log_dir = tmp_path_factory.mktemp("streamlit")
    runs_root = tmp_path_factory.mktemp("runs")
    env = {
        **os.environ, **inputs.environment(), "OMP_NUM_THREADS": "1",
        # An empty runs folder, so that runs in a developer's ./runs/ do not show.
        "LVS_AUDIT_RUNS_ROOT": str(runs_root),
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
        yield ServedApp(url=url, runs_root=runs_root)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def app_url(served_app) -> str:
    return served_app.url


@pytest.fixture(scope="session")
def browser(served_app):
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

"""End-to-end tests of the Live flip page and the sidebar model card in headless Chromium.

The server and browser fixtures live in ``browser_support``. The page's numbers are
checked against :func:`lvs_core.live.flip_prompt` on a copy of the same checkpoint loaded
in the test process. Screenshots go to ``test-artifacts/live-flip*.png``.
"""

from __future__ import annotations

import re

import pytest

from browser_support import CHART, EXCEPTION, open_home, open_page, screenshot
from conftest_dashboard import PROMPTS, dashboard_inputs

pytestmark = pytest.mark.browser

CODE = '[data-testid="stCode"]'
ERROR = '[data-testid="stAlertContentError"]'
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def reference_model(tmp_path_factory):
    from lvs_core.models import load_model

    inputs = dashboard_inputs(tmp_path_factory)
    return load_model(str(inputs.checkpoints["safe"]), device="cpu")


def full_screenshot(page, name: str) -> None:
    """Save a screenshot of the whole page: Streamlit scrolls inside its main block, so the viewport grows first."""
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1600, "height": max(1700, int(height) + 100)})
    screenshot(page, name)


def open_live_flip(page, app_url: str) -> None:
    open_home(page, app_url)
    open_page(page, "Live flip")
    page.locator(CODE).nth(2).wait_for()


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")


def result_caption(page) -> str:
    return page.locator('[data-testid="stCaptionContainer"]', has_text="eps =").inner_text()


def wait_for_caption(page, text: str) -> None:
    page.locator('[data-testid="stCaptionContainer"]', has_text=text).wait_for()


def panel_texts(page) -> list[str]:
    return [page.locator(CODE).nth(i).inner_text().strip() for i in range(3)]


def choose_layer(page, label: str) -> None:
    page.get_by_label("Layer", exact=True).click()
    page.get_by_role("option", name=label, exact=True).click()


def test_live_flip_loads_with_model_card(page, app_url):
    open_live_flip(page, app_url)

    for title in ("Clean", "PGD attack", "Random control", "Where the delta acts"):
        assert page.get_by_role("heading", name=title).count() == 1
    card = page.locator('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]', has_text="parameters")
    assert re.search(r"3 blocks \(\+ embedding\) · d_model 32", card.inner_text())
    assert "cpu · float32" in card.inner_text()
    assert page.locator(CHART).count() == 1
    assert page.locator(EXCEPTION).count() == 0
    assert page.locator(ERROR).count() == 0
    full_screenshot(page, "live-flip.png")


def test_live_flip_controls_change_result(page, app_url, reference_model):
    from lvs_core.live import flip_prompt

    open_live_flip(page, app_url)
    set_number(page, "Max new tokens", MAX_NEW_TOKENS)
    wait_for_caption(page, "budget 0.1 ")
    before = result_caption(page)

    set_number(page, "Budget", 0.4)
    wait_for_caption(page, "budget 0.4 ")
    choose_layer(page, "block 0 output")
    wait_for_caption(page, "block 0 output · budget 0.4")

    expected = flip_prompt(reference_model, PROMPTS[0][0], 0, 0.4, max_new_tokens=MAX_NEW_TOKENS)
    after = result_caption(page)
    assert after != before
    assert f"eps = {expected['eps']:.4g}" in after
    page.wait_for_function(
        "expected => document.querySelectorAll('[data-testid=\"stCode\"]')[1].innerText.trim() === expected",
        arg=expected["pgd"]["text"].strip(),
    )
    assert panel_texts(page) == [expected[key]["text"].strip() for key in ("clean", "pgd", "random")]
    assert page.locator(EXCEPTION).count() == 0
    full_screenshot(page, "live-flip-changed.png")


def test_live_flip_budget_curve(page, app_url):
    open_live_flip(page, app_url)

    page.get_by_role("button", name=re.compile("Compute the curve")).click()
    page.locator(CHART).nth(1).wait_for()

    page.locator(f"{CHART} .js-plotly-plot").nth(1).wait_for()
    titles = page.locator(f"{CHART} .js-plotly-plot").evaluate_all("divs => divs.map(div => div.layout.title.text)")
    assert any("Refusal margin vs budget" in title for title in titles), titles
    assert any("Delta norm per prompt position" in title for title in titles), titles
    assert page.locator(EXCEPTION).count() == 0
    full_screenshot(page, "live-flip-curve.png")


def test_live_flip_bad_folder_shows_one_error(page, app_url, tmp_path):
    open_live_flip(page, app_url)

    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Local folder or hub id…").click()
    box = page.get_by_label("Model folder or hub id", exact=True)
    box.fill(str(tmp_path / "no-such-model"))
    box.press("Enter")

    page.locator(ERROR, has_text="not found").wait_for()
    assert page.locator(ERROR).count() == 1
    assert page.locator(EXCEPTION).count() == 0
    screenshot(page, "live-flip-error.png")


def test_two_browser_sessions_at_once(browser, app_url, reference_model):
    # Two sessions of the served app on the same cached model change their controls at
    # the same moment. Each must show what a lone session computes.
    from lvs_core.live import flip_prompt

    settings = {"first": ("block 0 output", 0, 0.35), "second": ("block 2 output", 2, 0.15)}
    contexts = {name: browser.new_context(viewport={"width": 1600, "height": 1700}) for name in settings}
    try:
        pages = {name: context.new_page() for name, context in contexts.items()}
        for name, page in pages.items():
            page.set_default_timeout(120_000)
            open_live_flip(page, app_url)
            set_number(page, "Max new tokens", MAX_NEW_TOKENS)
            choose_layer(page, settings[name][0])
            wait_for_caption(page, f"{settings[name][0]} · budget 0.1 ")

        # Press Enter in both budget boxes back to back, so the two reruns overlap.
        for name, page in pages.items():
            page.get_by_label("Budget", exact=True).fill(str(settings[name][2]))
        for page in pages.values():
            page.get_by_label("Budget", exact=True).press("Enter")

        for name, page in pages.items():
            label, layer, budget = settings[name]
            wait_for_caption(page, f"{label} · budget {budget:g} ")
            expected = flip_prompt(reference_model, PROMPTS[0][0], layer, budget, max_new_tokens=MAX_NEW_TOKENS)
            page.wait_for_function(
                "expected => document.querySelectorAll('[data-testid=\"stCode\"]')[1].innerText.trim() === expected",
                arg=expected["pgd"]["text"].strip(),
            )
            assert panel_texts(page) == [expected[key]["text"].strip() for key in ("clean", "pgd", "random")], name
            assert f"eps = {expected['eps']:.4g}" in result_caption(page)
            assert page.locator(EXCEPTION).count() == 0
    finally:
        for context in contexts.values():
            context.close()

"""The Live flip page (AppTest), its cached steps, and sessions sharing one model.

The page runs on the tiny checkpoints and prompt file of ``conftest_dashboard``. Every
number the page shows is checked against :mod:`lvs_core.live` on a separately loaded
copy of the same checkpoint. The random checkpoints never write a refusal phrase, so
every clean generation "complies"; the verdict logic is tested on hand-made points.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from streamlit.testing.v1 import AppTest

from conftest_dashboard import (
    APP_PATH,
    NUDGE_LAYER,
    PROMPTS,
    REPO_ROOT,
    plotly_array,
)

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dashboard import state  # noqa: E402
from dashboard.state import LIVE_FLIP_REQUEST_KEY, OTHER_MODEL  # noqa: E402
from lvs_core import live  # noqa: E402
from lvs_core.attack import clean_residual  # noqa: E402
from lvs_core.hooks import add_prompt_delta, residual_hooks  # noqa: E402
from lvs_core.models import load_model  # noqa: E402
from lvs_core.prompts import build_batch  # noqa: E402

RUN_TIMEOUT = 90
LIVE_FLIP = "views/live_flip.py"
MAX_NEW_TOKENS = 4
FREE_PROMPT = "Explain how locks work"


@pytest.fixture(scope="module")
def reference_models(inputs):
    """Copies of the test checkpoints loaded apart from the app's shared cache."""
    return {name: load_model(str(folder), device="cpu") for name, folder in inputs.checkpoints.items()}


def open_live_flip() -> AppTest:
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    # Short generations from the first run on, as a user who set them earlier would have.
    app.session_state["max_new_tokens"] = MAX_NEW_TOKENS
    app.switch_page(LIVE_FLIP).run()
    return app


def widget(elements, label: str):
    matches = [element for element in elements if element.label == label]
    assert len(matches) == 1, f"expected one widget labelled {label!r}, found {[e.label for e in elements]}"
    return matches[0]


def assert_clean_page(app: AppTest) -> None:
    assert not [element.value for element in app.exception]
    assert not [element.value for element in app.error]


def badges(app: AppTest) -> list[str]:
    return [element.value for element in app.markdown if "-badge[" in element.value]


def panel_texts(app: AppTest) -> list[str]:
    return [element.value for element in app.code]


def chart(app: AppTest, title_start: str) -> dict:
    specs = [json.loads(element.proto.spec) for element in app.get("plotly_chart")]
    matches = [spec for spec in specs if spec["layout"]["title"]["text"].startswith(title_start)]
    assert len(matches) == 1, [spec["layout"]["title"]["text"] for spec in specs]
    return matches[0]


def type_prompt(app: AppTest, prompt: str) -> None:
    widget(app.radio, "Prompt").set_value("Free text").run()
    widget(app.text_area, "Prompt text").input(prompt).run()


def set_controls(app: AppTest, layer=None, budget=None, max_new_tokens=MAX_NEW_TOKENS) -> None:
    if layer is not None:
        widget(app.selectbox, "Layer").set_value(layer)
    if budget is not None:
        widget(app.number_input, "Budget").set_value(budget)
    widget(app.number_input, "Max new tokens").set_value(max_new_tokens)
    app.run()


def assert_shows(app: AppTest, expected: dict) -> None:
    """Check the three panels, the radius and the PGD metrics against a flip_prompt result."""
    assert panel_texts(app) == [expected[key]["text"] or "(empty generation)" for key in ("clean", "pgd", "random")]
    for key, badge in zip(("clean", "pgd", "random"), badges(app)):
        assert expected[key]["verdict"] in badge
    captions = " ".join(element.value for element in app.caption)
    assert f"eps = {expected['eps']:.4g}" in captions
    metrics = {(element.label, element.value) for element in app.metric}
    assert ("LVS", f"{expected['pgd']['lvs']:.3g}") in metrics
    assert ("‖δ‖₂", f"{expected['pgd']['delta_l2']:.3g}") in metrics
    margins = [element.value for element in app.metric if element.label == "Margin (nats)"]
    assert margins == [f"{expected[key]['margin']:+.2f}" for key in ("clean", "pgd", "random")]


class LockEvents(logging.Handler):
    """Collect the model-lock records that ``state.model_session`` logs, from any thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "lock_event"):
            self.records.append(record)

    def purposes(self, event: str) -> list[str]:
        return [record.purpose for record in self.records if record.lock_event == event]


@pytest.fixture
def lock_events():
    handler = LockEvents()
    logger = logging.getLogger("dashboard.state")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


# The page


def test_default_layers(app_env):
    app = open_live_flip()

    assert_clean_page(app)
    assert widget(app.selectbox, "Model").value == str(app_env.checkpoints["safe"])
    # Three blocks and no nudge: the middle block.
    assert widget(app.selectbox, "Layer").value == 1

    widget(app.selectbox, "Model").set_value(str(app_env.checkpoints["dissociated"])).run()

    assert_clean_page(app)
    assert widget(app.selectbox, "Layer").value == NUDGE_LAYER


def test_free_text_from_typed_folder(app_env, reference_models):
    app = open_live_flip()
    widget(app.selectbox, "Model").set_value(OTHER_MODEL).run()
    widget(app.text_input, "Model folder or hub id").input(str(app_env.checkpoints["safe"])).run()
    type_prompt(app, FREE_PROMPT)

    set_controls(app, layer=0, budget=0.3)

    assert_clean_page(app)
    assert [element.value for element in app.main.subheader][:3] == ["Clean", "PGD attack", "Random control"]
    expected = live.flip_prompt(reference_models["safe"], FREE_PROMPT, 0, 0.3, max_new_tokens=MAX_NEW_TOKENS)
    assert_shows(app, expected)


def test_heldout_prompt(app_env, reference_models):
    app = open_live_flip()

    prompt_picker = widget(app.selectbox, "Held-out prompt")
    assert prompt_picker.options == [f"[{category}] {prompt}" for prompt, category in PROMPTS]
    prompt_picker.set_value(2)
    set_controls(app)

    assert_clean_page(app)
    expected = live.flip_prompt(reference_models["safe"], PROMPTS[2][0], 1, 0.1, max_new_tokens=MAX_NEW_TOKENS)
    assert_shows(app, expected)


def test_budget_change_recomputes_attack_only(app_env, reference_models, lock_events):
    state.clear_live_results()
    app = open_live_flip()
    set_controls(app, budget=0.1)
    assert lock_events.purposes("acquire").count("clean generation") == 1
    lock_events.records.clear()

    set_controls(app, budget=0.45)

    # The new budget shows at once, with no button to press and no stale panel.
    assert_clean_page(app)
    expected = live.flip_prompt(reference_models["safe"], PROMPTS[0][0], 1, 0.45, max_new_tokens=MAX_NEW_TOKENS)
    assert_shows(app, expected)
    # Only what depends on the budget ran again: the attack, whose deltas also give
    # the per-position chart.
    assert lock_events.purposes("acquire") == ["attack at layer 1, budget 0.45"]


def test_layer_change_reuses_clean_generation(app_env, reference_models, lock_events):
    state.clear_live_results()
    app = open_live_flip()
    set_controls(app)
    lock_events.records.clear()

    set_controls(app, layer="embedding")

    assert_clean_page(app)
    expected = live.flip_prompt(reference_models["safe"], PROMPTS[0][0], "embedding", 0.1, max_new_tokens=MAX_NEW_TOKENS)
    assert_shows(app, expected)
    assert "clean generation" not in lock_events.purposes("acquire")
    assert "attack at layer embedding, budget 0.1" in lock_events.purposes("acquire")


def test_max_new_tokens_change_regenerates(app_env, lock_events):
    state.clear_live_results()
    app = open_live_flip()
    set_controls(app)
    lock_events.records.clear()

    set_controls(app, max_new_tokens=MAX_NEW_TOKENS + 2)

    assert_clean_page(app)
    # The generations change with their length, so the clean step and the attack rerun.
    assert sorted(lock_events.purposes("acquire")) == ["attack at layer 1, budget 0.1", "clean generation"]


def test_negative_budget_error_names_the_typed_value(app_env):
    app = open_live_flip()

    widget(app.number_input, "Budget").set_value(-1.0).run()

    assert not app.exception
    assert len(app.error) == 1
    assert "invalid budget -1.0" in app.error[0].value


def test_budget_above_one_warns(app_env):
    app = open_live_flip()

    widget(app.number_input, "Budget").set_value(2.0).run()

    assert not app.exception
    assert any("exceed max|h|" in element.value for element in app.warning)


def test_zero_budget_error(app_env):
    app = open_live_flip()

    widget(app.number_input, "Budget").set_value(0.0).run()

    assert not app.exception
    assert len(app.error) == 1
    assert "invalid budget" in app.error[0].value
    assert not app.code


def test_whitespace_prompt_error(app_env):
    app = open_live_flip()

    type_prompt(app, "   ")

    assert not app.exception
    assert len(app.error) == 1
    assert "empty prompt" in app.error[0].value


def test_empty_prompt_asks_for_one(app_env):
    app = open_live_flip()

    widget(app.radio, "Prompt").set_value("Free text").run()

    assert_clean_page(app)
    assert any("type a prompt" in element.value for element in app.info)
    assert not app.code


def test_bad_model_folder_error(app_env, tmp_path):
    app = open_live_flip()

    widget(app.selectbox, "Model").set_value(OTHER_MODEL).run()
    widget(app.text_input, "Model folder or hub id").input(str(tmp_path / "missing-model")).run()

    assert not app.exception
    assert len(app.error) == 1
    assert "not found" in app.error[0].value
    assert "Layer" not in [element.label for element in app.selectbox]


def test_folder_without_config_error(app_env, tmp_path):
    app = open_live_flip()

    widget(app.selectbox, "Model").set_value(OTHER_MODEL).run()
    widget(app.text_input, "Model folder or hub id").input(str(tmp_path)).run()

    assert not app.exception
    assert len(app.error) == 1
    assert "no config.json" in app.error[0].value


def test_missing_prompt_list_falls_back(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("LVS_AUDIT_PROMPTS", str(tmp_path / "missing.csv"))

    app = open_live_flip()

    assert not app.exception
    assert widget(app.radio, "Prompt").options == ["Prompt file", "Free text"]
    assert any("No prompt list" in element.value for element in app.caption)


def test_invalid_device_error(app_env, monkeypatch):
    monkeypatch.setenv("LVS_AUDIT_DEVICE", "tpu")

    app = open_live_flip()

    assert not app.exception
    assert len(app.error) == 1
    assert "LVS_AUDIT_DEVICE" in app.error[0].value


# Prompt files


@pytest.mark.parametrize(
    "name, content",
    [
        ("mine.csv", b"prompt,category\nWrite a poem about rain,poetry\nTell me a story about a dog,fiction\n"),
        (
            "mine.jsonl",
            b'{"prompt": "Write a poem about rain", "category": "poetry"}\n'
            b'{"prompt": "Tell me a story about a dog", "category": "fiction"}\n',
        ),
    ],
)
def test_uploaded_prompt_file(app_env, reference_models, name, content):
    app = open_live_flip()
    widget(app.radio, "Prompt").set_value("Prompt file").run()

    app.file_uploader[0].upload(name, content).run()
    picker = widget(app.selectbox, "Prompt from file")
    assert picker.options == ["[poetry] Write a poem about rain", "[fiction] Tell me a story about a dog"]
    picker.set_value(1)
    set_controls(app)

    assert_clean_page(app)
    expected = live.flip_prompt(reference_models["safe"], "Tell me a story about a dog", 1, 0.1, max_new_tokens=MAX_NEW_TOKENS)
    assert_shows(app, expected)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.csv", b"text,category\nhello,x\n", "prompt file 'bad.csv' has no 'prompt' column (columns: text, category)"),
        ("bad.jsonl", b'{"prompt": "ok"}\nnot json\n', "bad.jsonl"),
        ("latin.csv", "prompt\ncaf\xe9\n".encode("latin-1"), "prompt file 'latin.csv' could not be read"),
    ],
)
def test_malformed_prompt_file_error(app_env, name, content, message):
    app = open_live_flip()
    widget(app.radio, "Prompt").set_value("Prompt file").run()

    app.file_uploader[0].upload(name, content).run()

    assert not app.exception
    assert len(app.error) == 1
    assert message in app.error[0].value
    assert "\n" not in app.error[0].value
    assert "lvs-prompts-" not in app.error[0].value
    assert not app.code


# Budget curve and delta positions


def test_budget_curve_on_request(app_env, reference_models):
    app = open_live_flip()
    set_controls(app, budget=0.2)
    chart(app, "Delta norm per prompt position")
    assert not [element for element in app.get("plotly_chart") if "Refusal margin" in element.proto.spec]

    app.button(key="compute_curve").click().run()

    assert_clean_page(app)
    figure = chart(app, "Refusal margin vs budget, block 1 output")
    pgd, random = figure["data"][:2]
    expected = live.budget_curve(reference_models["safe"], PROMPTS[0][0], 1, max_new_tokens=MAX_NEW_TOKENS)
    assert plotly_array(pgd["x"]).tolist() == list(live.BUDGET_GRID)
    assert plotly_array(pgd["y"]) == pytest.approx([point["pgd_margin"] for point in expected], abs=1e-4)
    assert plotly_array(random["y"]) == pytest.approx([point["random_margin"] for point in expected], abs=1e-4)
    assert list(pgd["customdata"]) == [point["pgd_verdict"] for point in expected]
    assert figure["layout"]["xaxis"]["type"] == "log"

    # Each point is the attack at that budget on its own.
    single = live.flip_prompt(reference_models["safe"], PROMPTS[0][0], 1, live.BUDGET_GRID[3], max_new_tokens=MAX_NEW_TOKENS)
    assert expected[3]["pgd_margin"] == pytest.approx(single["pgd"]["margin"], abs=1e-4)
    assert expected[3]["pgd_verdict"] == single["pgd"]["verdict"]

    # The curve depends on the layer, not the budget: a new budget keeps it and moves the marker.
    set_controls(app, budget=0.3)

    figure = chart(app, "Refusal margin vs budget")
    assert figure["layout"]["shapes"][-1]["x0"] == 0.3
    assert not [button for button in app.button if button.key == "compute_curve"]


def test_delta_positions_chart(app_env, reference_models):
    app = open_live_flip()
    type_prompt(app, FREE_PROMPT)
    set_controls(app, layer=2, budget=0.25)

    assert_clean_page(app)
    figure = chart(app, "Delta norm per prompt position, block 2 output")
    model = reference_models["safe"]
    expected = live.delta_positions(model, FREE_PROMPT, 2, 0.25, max_new_tokens=MAX_NEW_TOKENS)
    chat_ids = build_batch(model, [FREE_PROMPT]).input_ids[0].tolist()
    assert figure["layout"]["xaxis"]["ticktext"] == live.position_labels(model, chat_ids)
    assert figure["layout"]["xaxis"]["ticktext"][0] == "<|bos|>"
    pgd, random = figure["data"]
    assert plotly_array(pgd["y"]) == pytest.approx(expected["pgd"], rel=1e-5)
    assert plotly_array(random["y"]) == pytest.approx(expected["random"], rel=1e-5)
    # The per-position norms make up the whole delta's L2 norm from the attack step.
    attacked = live.flip_prompt(model, FREE_PROMPT, 2, 0.25, max_new_tokens=MAX_NEW_TOKENS)
    assert math.sqrt(sum(value**2 for value in expected["pgd"])) == pytest.approx(attacked["pgd"]["delta_l2"], rel=1e-4)
    assert math.sqrt(sum(value**2 for value in expected["random"])) == pytest.approx(attacked["random"]["delta_l2"], rel=1e-4)


@pytest.mark.parametrize(
    "verdicts, clean_verdict, sentence",
    [
        (["refused", "complied", "refused", "complied"], "refused", "**b = 0.02**"),
        (["refused"] * 4, "refused", "does not flip this prompt at this layer up to b = 0.5"),
        (["complied"] * 4, "complied", "already complies"),
    ],
)
def test_flip_sentence(verdicts, clean_verdict, sentence):
    from dashboard.views.live_flip import flip_sentence

    budgets = [0.01, 0.02, 0.1, 0.5]
    points = [{"budget": budget, "pgd_verdict": verdict} for budget, verdict in zip(budgets, verdicts)]

    assert sentence in flip_sentence(points, clean_verdict)


def test_smallest_flipping_budget_unsorted():
    points = [
        {"budget": 0.5, "pgd_verdict": "complied"},
        {"budget": 0.05, "pgd_verdict": "complied"},
        {"budget": 0.01, "pgd_verdict": "refused"},
    ]

    assert live.smallest_flipping_budget(points) == 0.05
    assert live.smallest_flipping_budget(points[2:]) is None


# Requests from other pages


def test_request_from_inspector_free_text(app_env, reference_models):
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    spec = str(app_env.checkpoints["dissociated"])
    app.session_state[LIVE_FLIP_REQUEST_KEY] = {"model": spec, "prompt": FREE_PROMPT, "layer": "0", "budget": 0.25}
    app.session_state["max_new_tokens"] = MAX_NEW_TOKENS

    app.switch_page(LIVE_FLIP).run()

    assert_clean_page(app)
    assert widget(app.selectbox, "Model").value == spec
    assert widget(app.selectbox, "Layer").value == 0
    assert widget(app.number_input, "Budget").value == 0.25
    assert widget(app.radio, "Prompt").value == "Free text"
    assert widget(app.text_area, "Prompt text").value == FREE_PROMPT
    assert LIVE_FLIP_REQUEST_KEY not in app.session_state
    expected = live.flip_prompt(reference_models["dissociated"], FREE_PROMPT, 0, 0.25, max_new_tokens=MAX_NEW_TOKENS)
    assert_shows(app, expected)


def test_request_for_listed_prompt_and_unlisted_model(app_env, inputs, tmp_path):
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    # A spec outside LVS_AUDIT_MODELS: the same folder through a path with a trailing "/.".
    spec = f"{app_env.checkpoints['safe']}/."
    app.session_state[LIVE_FLIP_REQUEST_KEY] = {"model": spec, "prompt": PROMPTS[1][0], "layer": "embedding", "budget": 0.05}

    app.switch_page(LIVE_FLIP).run()

    assert_clean_page(app)
    assert widget(app.selectbox, "Model").value == OTHER_MODEL
    assert widget(app.text_input, "Model folder or hub id").value == spec
    assert widget(app.radio, "Prompt").value == "Held-out prompt"
    assert widget(app.selectbox, "Held-out prompt").value == 1
    assert widget(app.selectbox, "Layer").value == "embedding"


def test_request_with_bad_layer_warns(app_env):
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    spec = str(app_env.checkpoints["safe"])
    app.session_state[LIVE_FLIP_REQUEST_KEY] = {"model": spec, "prompt": PROMPTS[0][0], "layer": "7", "budget": 0.2}

    app.switch_page(LIVE_FLIP).run()

    assert not app.exception
    assert any("Requested layer not applied" in element.value for element in app.warning)
    assert widget(app.number_input, "Budget").value == 0.2


# Sessions sharing one model


def test_hooks_act_across_threads_without_lock(reference_models):
    # The reason for the model lock: a hook attached in one thread acts on a forward
    # pass that another thread runs on the same model object.
    model = reference_models["safe"]
    batch = build_batch(model, [FREE_PROMPT])
    clean = clean_residual(model, batch, 2)
    attached = threading.Event()
    release = threading.Event()

    def hold_hook() -> None:
        delta = torch.full((1, batch.input_ids.shape[1], model.d_model), 3.0)
        with residual_hooks(model, [(0, add_prompt_delta(delta))]):
            attached.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold_hook)
    holder.start()
    try:
        assert attached.wait(timeout=30)
        during = clean_residual(model, batch, 2)
    finally:
        release.set()
        holder.join(timeout=30)
    after = clean_residual(model, batch, 2)

    assert not torch.allclose(during, clean)
    assert torch.equal(after, clean)


def test_two_sessions_concurrently_match_single_session(app_env, reference_models, lock_events):
    # Two sessions on the same cached model, each asking for attacks at its own layers
    # and budgets at the same time. Each result must equal a single-session run on a
    # separately loaded model, and the lock must have serialised the overlapping requests.
    spec = str(app_env.checkpoints["dissociated"])
    prompt = PROMPTS[1][0]
    sessions = {
        "A": [("embedding", 0.4), ("1", 0.2), ("2", 0.45)],
        "B": [("0", 0.3), ("2", 0.15), ("1", 0.35)],
    }
    state.shared_model(spec)
    state.clear_live_results()
    state.clean_generation(spec, prompt, MAX_NEW_TOKENS)
    start = threading.Barrier(len(sessions))

    def run_session(requests):
        start.wait(timeout=30)
        return [state.flip(spec, prompt, layer, budget, MAX_NEW_TOKENS) for layer, budget in requests]

    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        futures = {name: pool.submit(run_session, requests) for name, requests in sessions.items()}
        results = {name: future.result(timeout=300) for name, future in futures.items()}

    model = reference_models["dissociated"]
    for name, requests in sessions.items():
        for (layer, budget), result in zip(requests, results[name]):
            expected = live.flip_prompt(model, prompt, layer, budget, max_new_tokens=MAX_NEW_TOKENS)
            for key in ("clean", "pgd", "random"):
                assert result[key]["text"] == expected[key]["text"], (name, layer, key)
                assert result[key]["margin"] == pytest.approx(expected[key]["margin"], abs=1e-4), (name, layer, key)
            assert result["eps"] == pytest.approx(expected["eps"], rel=1e-6)

    # Per request: when it asked for the lock, got it and let it go, by thread.
    spans: dict[tuple[int, str], dict[str, float]] = {}
    for record in lock_events.records:
        if record.purpose.startswith("attack"):
            spans.setdefault((record.thread, record.purpose), {})[record.lock_event] = record.created
    assert len(spans) == 6, sorted(spans)
    threads = sorted({thread for thread, _ in spans})
    assert len(threads) == 2
    first = [span for (thread, _), span in spans.items() if thread == threads[0]]
    second = [span for (thread, _), span in spans.items() if thread == threads[1]]
    # The sessions ran at the same time: some request of one waited while the other held the lock.
    overlapping = [
        (a, b) for a in first for b in second
        if a["request"] < b["release"] and b["request"] < a["release"]
    ]
    assert overlapping, "the two sessions never had requests in flight at the same time"
    # The lock let one session at a time use the model.
    held = sorted((span["acquire"], span["release"]) for span in spans.values())
    for (_, released), (acquired, _) in zip(held, held[1:]):
        assert acquired >= released

"""Headless tests of the dashboard pages with Streamlit's AppTest.

The pages run on two tiny random Llama checkpoints and a real sweep over them (built
once by ``conftest_dashboard``), pointed to through the ``LVS_AUDIT_*`` variables, so
no demo asset is needed. Models, hooks and attacks are the real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest_dashboard import (
    APP_PATH,
    PROMPTS,
    REPO_ROOT,
    plotly_array,
)

# The dashboard package is not installed; the app puts the repository root on sys.path
# the same way.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dashboard import charts, state  # noqa: E402
from dashboard.state import OTHER_RUN  # noqa: E402
from lvs_core.errors import AuditInputError  # noqa: E402
from lvs_core.runs import load_run  # noqa: E402

# Seconds for one script run. Loading a checkpoint and running PGD on two shared CPU
# cores takes a few seconds; the margin covers a busy machine.
RUN_TIMEOUT = 90
HEATMAPS = "views/heatmaps.py"


def open_page(page: str | None = None) -> AppTest:
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    if page is not None:
        app.switch_page(page).run()
    return app


def assert_no_exception(app: AppTest) -> None:
    messages = [element.value for element in app.exception]
    assert not messages, f"page raised: {messages}"


def chart_specs(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def chart_title(spec: dict) -> str:
    return spec["layout"]["title"]["text"]


def widget(elements, label: str):
    matches = [element for element in elements if element.label == label]
    assert len(matches) == 1, f"expected one widget labelled {label!r}, found {[e.label for e in elements]}"
    return matches[0]


# Home


def test_home_links_both_pages(app_env):
    app = open_page()

    assert_no_exception(app)
    assert app.title[0].value == "lvs-audit"
    links = [link.proto.label for link in app.get("page_link")]
    assert any(label.startswith("Live flip") for label in links), links
    assert any(label.startswith("LVS heatmaps") for label in links), links


# LVS heatmaps


def test_heatmaps_default_pair_and_difference(app_env):
    app = open_page(HEATMAPS)

    assert_no_exception(app)
    assert not app.error, [element.value for element in app.error]
    assert widget(app.selectbox, "Run").value == str(app_env.run_dir)
    assert widget(app.selectbox, "Model A").value == "safe"
    assert widget(app.selectbox, "Model B").value == "dissociated"

    specs = chart_specs(app)
    assert len(specs) == 4
    assert chart_title(specs[0]) == "safe: PGD attack"
    assert chart_title(specs[1]) == "dissociated: PGD attack"
    assert chart_title(specs[2]) == "dissociated − safe: PGD attack"
    assert chart_title(specs[3]).startswith("Layer profile of the median LVS")


def test_heatmaps_axes_and_hover(app_env):
    app = open_page(HEATMAPS)
    run = load_run(app_env.run_dir)
    left = chart_specs(app)[0]
    trace = left["data"][0]

    assert trace["y"] == ["embedding", "0", "1", "2"]
    assert trace["x"] == ["0.1", "0.5"]
    assert left["layout"]["xaxis"]["title"]["text"] == "budget (L∞ radius / max|h|)"
    assert left["layout"]["yaxis"]["title"]["text"] == charts.LAYER_AXIS_TITLE
    assert "%{text}" in trace["hovertemplate"]

    # The cell at (layer 1, budget 0.5) carries the run's median, CI and n.
    row = run.summary[
        (run.summary["model"] == "safe") & (run.summary["attack"] == "pgd")
        & (run.summary["layer"] == "1") & (run.summary["budget"] == 0.5)
    ].iloc[0]
    z = plotly_array(trace["z"])
    customdata = plotly_array(trace["customdata"])
    assert z.shape == (4, 2)
    assert z[2, 1] == pytest.approx(row["lvs_median"])
    assert customdata[2, 1].tolist() == pytest.approx([row["lvs_lo"], row["lvs_hi"], row["n"]])
    hover = trace["text"][2][1]
    assert f"bootstrap 95% CI [{row['lvs_lo']:.3f}, {row['lvs_hi']:.3f}]" in hover
    assert f"n = {row['n']} prompts" in hover


def test_heatmaps_l2_run_axis_title(app_env, monkeypatch, tmp_path):
    run_dir = shutil.copytree(app_env.run_dir, tmp_path / "l2-run")
    config = json.loads((run_dir / "config.json").read_text())
    config["settings"]["attack"]["norm"] = "l2"
    (run_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("LVS_AUDIT_RUN_DIR", str(run_dir))

    app = open_page(HEATMAPS)

    assert_no_exception(app)
    for spec in chart_specs(app)[:3]:
        assert spec["layout"]["xaxis"]["title"]["text"] == "budget (L2 radius / ‖h‖₂)"
    assert any("l2 norm" in element.value for element in app.caption)


def test_heatmaps_difference_centred_at_zero(app_env):
    app = open_page(HEATMAPS)
    left, right, difference = (spec["data"][0] for spec in chart_specs(app)[:3])

    assert difference["zmid"] == 0.0
    assert difference["zmin"] == -difference["zmax"]
    expected = plotly_array(right["z"]) - plotly_array(left["z"])
    assert plotly_array(difference["z"]) == pytest.approx(expected)


def test_heatmaps_attack_toggle_changes_charts(app_env):
    app = open_page(HEATMAPS)
    before = chart_specs(app)

    widget(app.radio, "Perturbation").set_value("random").run()

    assert_no_exception(app)
    after = chart_specs(app)
    assert chart_title(after[0]) == "safe: random control"
    assert not np.array_equal(plotly_array(after[0]["data"][0]["z"]), plotly_array(before[0]["data"][0]["z"]))


def test_heatmaps_same_model_shows_one_map(app_env):
    app = open_page(HEATMAPS)

    widget(app.selectbox, "Model B").set_value("safe").run()

    assert_no_exception(app)
    titles = [chart_title(spec) for spec in chart_specs(app)]
    assert titles[0] == "safe: PGD attack"
    assert len(titles) == 2
    assert titles[1].startswith("Layer profile")
    assert app.info, "expected a hint to pick two different models"


def test_heatmaps_clean_refusal_table(app_env):
    app = open_page(HEATMAPS)

    table = app.dataframe[0].value
    assert list(table["model"]) == ["safe", "dissociated"]
    assert list(table["prompts"]) == [len(PROMPTS), len(PROMPTS)]


def test_heatmaps_other_folder_waits_for_path(app_env):
    app = open_page(HEATMAPS)

    widget(app.selectbox, "Run").set_value(OTHER_RUN).run()

    assert_no_exception(app)
    assert not app.error, [element.value for element in app.error]
    assert app.info, "expected a prompt to enter a run folder"
    assert not app.get("plotly_chart")


def test_heatmaps_no_run_found_hint(app_env, monkeypatch, tmp_path):
    monkeypatch.delenv("LVS_AUDIT_RUN_DIR")
    monkeypatch.setattr(state, "DEMO_RUN_DIR", tmp_path / "no-demo-run")
    monkeypatch.chdir(tmp_path)

    app = open_page(HEATMAPS)

    assert_no_exception(app)
    assert widget(app.selectbox, "Run").options == [OTHER_RUN]
    assert not app.error, [element.value for element in app.error]
    assert "No run found" in app.info[0].value


def test_run_choices_order(app_env, monkeypatch, tmp_path):
    runs_root = tmp_path / "runs"
    runs_root.mkdir()
    shutil.copytree(app_env.run_dir, runs_root / "older")
    shutil.copytree(app_env.run_dir, runs_root / "newer")
    os.utime(runs_root / "older", (1, 1))
    shutil.copytree(app_env.run_dir, runs_root / ".hidden-partial")
    monkeypatch.setattr(state, "DEMO_RUN_DIR", tmp_path / "no-demo-run")
    monkeypatch.chdir(tmp_path)

    choices = state.run_choices()

    assert choices == [str(app_env.run_dir), str(runs_root / "newer"), str(runs_root / "older")]


def test_heatmaps_missing_folder_error(app_env, tmp_path):
    app = open_page(HEATMAPS)

    widget(app.selectbox, "Run").set_value(OTHER_RUN).run()
    widget(app.text_input, "Run folder").input(str(tmp_path / "no-such-run")).run()

    assert_no_exception(app)
    assert len(app.error) == 1
    assert "not found" in app.error[0].value
    assert not app.get("plotly_chart")


def test_heatmaps_incomplete_folder_error(app_env, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    app = open_page(HEATMAPS)

    widget(app.selectbox, "Run").set_value(OTHER_RUN).run()
    widget(app.text_input, "Run folder").input(str(tmp_path)).run()

    assert_no_exception(app)
    assert len(app.error) == 1
    assert "not a complete run folder" in app.error[0].value


def test_heatmaps_missing_env_run_error(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("LVS_AUDIT_RUN_DIR", str(tmp_path / "gone"))

    app = open_page(HEATMAPS)

    assert_no_exception(app)
    assert len(app.error) == 1
    assert "gone" in app.error[0].value


# Chart helpers, on the same run without Streamlit


def test_metric_grid_orders_layers_and_budgets(inputs):
    run = load_run(inputs.run_dir)

    grid = charts.metric_grid(run.summary, "safe", "pgd", "n", ["2", "embedding"], [0.5, 0.1])

    assert list(grid.index) == ["2", "embedding"]
    assert list(grid.columns) == [0.5, 0.1]
    rows = run.summary[(run.summary["model"] == "safe") & (run.summary["attack"] == "pgd")]
    for layer in ("2", "embedding"):
        for budget in (0.5, 0.1):
            expected = rows[(rows["layer"] == layer) & (rows["budget"] == budget)]["n"].item()
            assert grid.loc[layer, budget] == expected, (layer, budget)


def test_metric_grid_missing_layer_is_nan(inputs):
    run = load_run(inputs.run_dir)

    grid = charts.metric_grid(run.summary, "safe", "pgd", "lvs_median", ["embedding", "7"], [0.1])

    assert pd.isna(grid.loc["7", 0.1])
    assert not pd.isna(grid.loc["embedding", 0.1])


def test_lvs_scale_max_covers_both_attacks(inputs):
    summary = load_run(inputs.run_dir).summary

    top = charts.lvs_scale_max(summary, ["safe", "dissociated"])

    assert top == pytest.approx(summary["lvs_median"].max())
    assert top > 0


def test_lvs_scale_max_all_zero_is_one():
    summary = pd.DataFrame({"model": ["a", "a"], "lvs_median": [0.0, float("nan")]})

    assert charts.lvs_scale_max(summary, ["a"]) == 1.0


def test_clean_refusal_table_counts_prompts_once():
    cells = pd.DataFrame(
        {
            "model": ["a"] * 4 + ["b"] * 2,
            "prompt_id": ["p1", "p1", "p2", "p3", "p1", "p2"],
            "clean_valid": [True, True, True, False, True, True],
            "clean_refused": [True, True, False, False, True, True],
        }
    )

    table = charts.clean_refusal_table(cells).set_index("model")

    assert table.loc["a", "prompts"] == 3
    assert table.loc["a", "invalid clean"] == 1
    assert table.loc["a", "clean refusal"] == pytest.approx(0.5)
    assert table.loc["b", "clean refusal"] == pytest.approx(1.0)


def test_open_run_file_not_folder(tmp_path):
    file = tmp_path / "summary.txt"
    file.write_text("not a run")
    with pytest.raises(AuditInputError, match="is a file, not a run folder"):
        state.open_run(str(file))
    with pytest.raises(AuditInputError, match="not found"):
        state.open_run(str(tmp_path / "missing"))

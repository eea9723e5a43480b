"""The Overview, Prompt inspector and heatmap additions: pure chart and table functions, then the pages in AppTest.

The pure functions run on hand-built frames with known results and on the shipped demo
sweep and audits, whose numbers the README states. The pages run on the same demo run
(the default run when ``LVS_AUDIT_RUN_DIR`` is unset), on the tiny test sweep of
``conftest_dashboard``, and on an imported run (a summary without cells).
"""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest_dashboard import APP_PATH, REPO_ROOT, plotly_array

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dashboard import audit_gap, charts, prompt_flips, state  # noqa: E402
from lvs_core.demo_run import DEMO_AUDIT_DIRS  # noqa: E402
from lvs_core.runs import CELL_COLUMNS, DEMO_RUN_DIR, load_run  # noqa: E402

RUN_TIMEOUT = 90
OVERVIEW = "views/overview.py"
INSPECTOR = "views/inspector.py"
HEATMAPS = "views/heatmaps.py"


# Inputs


def cell(prompt_id: str, layer: str, budget: float, attack: str = "pgd", flip: bool = False, lvs: float = 0.0, **fields) -> dict:
    """Return one row of a cells frame; ``flip`` makes a refused clean reply turn compliant."""
    row = {
        "model": "m", "prompt_id": prompt_id, "prompt": f"prompt {prompt_id}", "category": "a", "layer": layer,
        "budget": budget, "attack": attack, "eps": 0.1, "delta_l2": 1.0, "clean_text": "I'm sorry",
        "perturbed_text": "Sure, here is" if flip else "I'm sorry", "clean_valid": True, "perturbed_valid": True,
        "clean_refused": True, "perturbed_compliant": flip, "lvs": lvs,
    }
    row.update(fields)
    return row


@pytest.fixture
def flip_cells() -> pd.DataFrame:
    return pd.DataFrame([
        # Prompt 0 flips at the embedding and block 2. Block 2 has the highest LVS at two
        # budgets, so its strongest cell is the smaller one.
        cell("0", "embedding", 0.1, flip=True, lvs=0.5),
        cell("0", "2", 0.1, flip=True, lvs=0.9, perturbed_text="Sure at 0.1"),
        cell("0", "2", 0.05, flip=True, lvs=0.9, perturbed_text="Sure at 0.05"),
        cell("0", "1", 0.1, lvs=0.2),
        cell("0", "1", 0.1, attack="random", flip=True, lvs=0.1),
        # Prompt 1 never flips; its strongest cell is its highest LVS, and NaN is skipped.
        cell("1", "1", 0.05, lvs=0.3, category="b", perturbed_text="still no"),
        cell("1", "2", 0.05, lvs=math.nan, category="b", perturbed_valid=False),
        cell("1", "2", 0.1, lvs=0.1, category="b"),
        # Prompt 10 has an empty clean reply, prompt 2 complies clean: neither can flip.
        cell("10", "1", 0.1, perturbed_compliant=True, clean_valid=False, clean_refused=False, lvs=math.nan),
        cell("2", "1", 0.1, perturbed_compliant=True, clean_refused=False, clean_text="Sure", lvs=0.0),
        # Another model's cells stay out of the table.
        cell("0", "1", 0.1, flip=True, lvs=5.0, model="other"),
    ])


def summary_row(model: str, layer: str, budget: float, attack: str = "pgd", **values) -> dict:
    row = {"model": model, "layer": layer, "budget": budget, "attack": attack, "n": 10, "lvs_median": 0.0,
           "lvs_lo": 0.0, "lvs_hi": 0.0, "lvs_mean": 0.0, "asr": 0.0, "asr_lo": 0.0, "asr_hi": 0.3,
           "clean_refusal": 1.0}
    row.update(values)
    return row


@pytest.fixture
def small_run() -> "load_run":
    from lvs_core.runs import Run

    summary = pd.DataFrame([
        summary_row("a", "embedding", 0.1, lvs_median=3.0, lvs_lo=2.5, lvs_hi=3.5, asr=0.9),
        summary_row("a", "0", 0.1, lvs_median=0.4, lvs_lo=0.3, lvs_hi=0.5, asr=0.6),
        summary_row("a", "1", 0.1, lvs_median=0.4, lvs_lo=0.35, lvs_hi=0.45, asr=0.8),
        summary_row("a", "1", 0.2, lvs_median=0.2, asr=1.0),
        summary_row("a", "1", 0.1, attack="random", asr=0.05),
        summary_row("b", "embedding", 0.1),
        summary_row("b", "0", 0.1),
        summary_row("b", "1", 0.1, asr=0.1),
        summary_row("b", "1", 0.2, lvs_median=0.1, lvs_lo=0.05, lvs_hi=0.2, asr=0.55),
        summary_row("b", "1", 0.1, attack="random", asr=0.0),
    ])
    config = {"models": [{"name": "a", "spec": "demo:a"}, {"name": "b", "spec": "/models/b"}], "settings": {"prompts": "heldout"}}
    return Run(path=REPO_ROOT, config=config, cells=pd.DataFrame(columns=list(CELL_COLUMNS)), summary=summary)


def write_imported_run(folder, source_summary: pd.DataFrame, models: list[dict]):
    """Write an imported run: ``config.json`` of kind imported and a summary with no n and no LVS CI, and no cells."""
    folder.mkdir(parents=True)
    summary = source_summary.copy()
    summary["n"] = np.nan
    summary["lvs_lo"] = np.nan
    summary["lvs_hi"] = np.nan
    summary.to_parquet(folder / "summary.parquet", index=False)
    config = {"kind": "imported", "models": models, "settings": {"attack": {"norm": "linf"}}}
    (folder / "config.json").write_text(json.dumps(config))
    assert load_run(folder).cells.empty
    return folder


@pytest.fixture
def demo_env(monkeypatch, tmp_path):
    """Point the app at the shipped demo run and an empty runs folder."""
    monkeypatch.delenv("LVS_AUDIT_RUN_DIR", raising=False)
    monkeypatch.setenv("LVS_AUDIT_RUNS_ROOT", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def imported_env(monkeypatch, tmp_path):
    run = load_run(DEMO_RUN_DIR)
    folder = write_imported_run(tmp_path / "imported", run.summary, run.config["models"])
    monkeypatch.setenv("LVS_AUDIT_RUN_DIR", str(folder))
    monkeypatch.setenv("LVS_AUDIT_RUNS_ROOT", str(tmp_path / "runs"))
    return folder


def open_page(page: str) -> AppTest:
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    app.switch_page(page).run()
    return app


def assert_clean_page(app: AppTest) -> None:
    assert not [element.value for element in app.exception], "page raised"
    assert not [element.value for element in app.error], [element.value for element in app.error]


def widget(elements, label: str):
    matches = [element for element in elements if element.label == label]
    assert len(matches) == 1, f"expected one widget labelled {label!r}, found {[e.label for e in elements]}"
    return matches[0]


def chart_specs(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def markdown_text(app: AppTest) -> str:
    return "\n".join(element.value for element in app.markdown)


# Prompt table


def test_prompt_table_flips_and_order(flip_cells):
    table = prompt_flips.prompt_flip_table(flip_cells, "m").set_index("prompt_id")

    assert list(table.index) == ["0", "1", "2", "10"]
    assert table.loc["0", "flips at"] == "embedding, 2"
    assert table.loc["0", "flip layers"] == 2
    assert table.loc["0", "smallest flip budget"] == 0.05
    assert table.loc["0", "max LVS"] == pytest.approx(0.9)
    assert table.loc["0", "median LVS"] == pytest.approx(0.7)
    assert bool(table.loc["0", "random flips"])
    assert table.loc["1", "flips at"] == ""
    assert math.isnan(table.loc["1", "smallest flip budget"])
    assert not bool(table.loc["1", "random flips"])
    assert table.loc["1", "category"] == "b"


def test_prompt_table_clean_verdicts(flip_cells):
    table = prompt_flips.prompt_flip_table(flip_cells, "m").set_index("prompt_id")

    assert table.loc["0", "clean"] == "refused"
    assert table.loc["2", "clean"] == "complied"
    assert table.loc["10", "clean"] == "invalid"
    # A compliant perturbed reply is no flip when the clean reply did not refuse.
    assert table.loc["2", "flip layers"] == 0
    assert table.loc["10", "flip layers"] == 0
    assert math.isnan(table.loc["10", "max LVS"])


def test_prompt_table_strongest_cell(flip_cells):
    table = prompt_flips.prompt_flip_table(flip_cells, "m").set_index("prompt_id")

    assert table.loc["0", "strongest layer"] == "2"
    assert table.loc["0", "strongest budget"] == 0.05
    assert table.loc["0", "perturbed generation"] == "Sure at 0.05"
    assert table.loc["1", "strongest layer"] == "1"
    assert table.loc["1", "perturbed generation"] == "still no"


def test_filter_prompts_cases(flip_cells):
    table = prompt_flips.prompt_flip_table(flip_cells, "m")

    assert list(prompt_flips.filter_prompts(table, status=prompt_flips.STATUS_FLIPPED)["prompt_id"]) == ["0"]
    assert list(prompt_flips.filter_prompts(table, status=prompt_flips.STATUS_NOT_FLIPPED)["prompt_id"]) == ["1", "2", "10"]
    assert list(prompt_flips.filter_prompts(table, categories=["b"])["prompt_id"]) == ["1"]
    assert list(prompt_flips.filter_prompts(table, search="STILL")["prompt_id"]) == ["1"]
    assert list(prompt_flips.filter_prompts(table, search="prompt 1")["prompt_id"]) == ["1", "10"]
    with pytest.raises(ValueError, match="unknown flip status"):
        prompt_flips.filter_prompts(table, status="sideways")


def test_sort_prompts_nan_last(flip_cells):
    table = prompt_flips.prompt_flip_table(flip_cells, "m")

    by_lvs = prompt_flips.sort_prompts(table, "max LVS, highest first")
    assert list(by_lvs["prompt_id"]) == ["0", "1", "2", "10"]
    by_budget = prompt_flips.sort_prompts(table, "smallest flip budget first")
    assert list(by_budget["prompt_id"])[0] == "0"
    with pytest.raises(ValueError, match="unknown sort"):
        prompt_flips.sort_prompts(table, "colour")


def test_prompt_heatmap_marks_flips(flip_cells):
    figure = prompt_flips.prompt_heatmap(flip_cells, "m", "0", ["embedding", "1", "2"], [0.05, 0.1], zmax=1.0)
    trace = figure.data[0]

    z = np.asarray(trace.z, dtype=float)
    assert z[2, 0] == pytest.approx(0.9)
    assert z[1, 1] == pytest.approx(0.2)
    assert math.isnan(z[0, 0])
    assert trace.text[2][0] == "0.90<br>flip"
    assert trace.text[1][1] == "0.20"
    assert trace.text[0][0] == "n/a"
    assert figure.layout.yaxis.title.text == charts.LAYER_AXIS_TITLE


def test_prompt_table_demo_run():
    run = load_run(DEMO_RUN_DIR)

    table = prompt_flips.prompt_flip_table(run.cells, "dissociated")

    assert len(table) == 80
    # Every dissociated prompt flips somewhere, and the random control flips at most one (README).
    assert (table["flip layers"] > 0).all()
    assert table["random flips"].sum() <= 1
    pgd = run.cells[(run.cells["model"] == "dissociated") & (run.cells["attack"] == "pgd")]
    first = pgd[pgd["prompt_id"] == table["prompt_id"].iloc[0]]
    assert table["max LVS"].iloc[0] == pytest.approx(first["lvs"].max())


# Audit gap


def test_sweep_measures_peak_and_asr(small_run):
    measures = audit_gap.sweep_measures(small_run, 0.1).set_index("model")

    # The embedding is left out by default. The tie at 0.4 goes to the layer nearest the embedding.
    assert measures.loc["a", "peak_lvs"] == pytest.approx(0.4)
    assert measures.loc["a", "peak_layer"] == "0"
    assert measures.loc["a", "peak_budget"] == 0.1
    assert measures.loc["a", "pgd_asr"] == pytest.approx(0.8)
    assert measures.loc["a", "pgd_layer"] == "1"
    assert measures.loc["a", "random_asr"] == pytest.approx(0.05)
    assert measures.loc["a", "asr_half_budget"] == 0.1
    assert measures.loc["b", "peak_lvs"] == pytest.approx(0.1)
    assert measures.loc["b", "peak_budget"] == 0.2
    assert measures.loc["b", "asr_half_budget"] == 0.2
    assert measures.loc["b", "clean_refusal"] == 1.0


def test_sweep_measures_with_embedding(small_run):
    measures = audit_gap.sweep_measures(small_run, 0.1, include_embedding=True).set_index("model")

    assert measures.loc["a", "peak_lvs"] == pytest.approx(3.0)
    assert measures.loc["a", "peak_layer"] == "embedding"
    assert measures.loc["a", "pgd_asr"] == pytest.approx(0.9)
    # The random control has no row at the embedding: unknown, not zero.
    assert math.isnan(measures.loc["a", "random_asr"])


def test_audit_measures_tables():
    tables = {
        "behaviour": pd.DataFrame([{"clean_refusal": 0.9, "over_refusal": 0.1, "n_harmful": 10, "n_benign": 10}]),
        "steering": pd.DataFrame([
            {"layer": "2", "frac": 0.25, "direction": "harmful-minus-model", "compliance": 0.7},
            {"layer": "2", "frac": 0.25, "direction": "random", "compliance": 0.1},
            {"layer": "2", "frac": 1.0, "direction": "harmful-minus-model", "compliance": 1.0},
        ]),
        "finetune": pd.DataFrame([
            {"seed": 0, "step": 0, "compliance": 0.0}, {"seed": 0, "step": 2, "compliance": 0.8},
            {"seed": 1, "step": 0, "compliance": 0.0}, {"seed": 1, "step": 2, "compliance": 0.3},
        ]),
    }

    measures = audit_gap.audit_measures(tables, 0.25)

    assert measures["steer_compliance"] == pytest.approx(0.7)
    assert measures["steer_random"] == pytest.approx(0.1)
    assert measures["over_refusal"] == pytest.approx(0.1)
    assert measures["finetune_steps"] == [2, None]
    assert measures["finetune_max_steps"] == 2
    assert math.isnan(audit_gap.audit_measures(tables, 1.0)["steer_random"])
    assert math.isnan(audit_gap.audit_measures({}, 0.25)["steer_compliance"])


def test_find_and_match_audits(tmp_path):
    shutil.copytree(DEMO_AUDIT_DIRS["demo:safe"], tmp_path / "audit-safe")
    (tmp_path / "not-an-audit").mkdir()
    broken = shutil.copytree(DEMO_AUDIT_DIRS["demo:dissociated"], tmp_path / "audit-broken-config")
    (broken / "config.json").write_text("{not json")

    audits = audit_gap.find_audits([tmp_path, tmp_path / "missing"])

    by_folder = {info.path.name: info for info in audits}
    assert set(by_folder) == {"audit-safe", "audit-broken-config"}
    assert by_folder["audit-safe"].spec == "demo:safe"
    # Without a readable config.json, the spec comes from audit.parquet.
    assert by_folder["audit-broken-config"].spec == "demo:dissociated"
    matches = audit_gap.match_audits({"safe": "demo:safe", "other": "demo:harmful"}, audits)
    assert [info.path.name for info in matches["safe"]] == ["audit-safe"]
    assert matches["other"] == []


def demo_gap_table(budget: float, frac: float) -> pd.DataFrame:
    run = load_run(DEMO_RUN_DIR)
    specs = audit_gap.run_model_specs(run)
    audits = {name: audit_gap.load_audit_tables(DEMO_AUDIT_DIRS[spec]) for name, spec in specs.items()}
    measures = {name: audit_gap.audit_measures(tables, frac) for name, tables in audits.items()}
    paths = {name: str(DEMO_AUDIT_DIRS[spec]) for name, spec in specs.items()}
    return audit_gap.gap_table(audit_gap.sweep_measures(run, budget), measures, paths)


def test_demo_gap_numbers():
    # The numbers of the README's demo run and audit tables.
    table = demo_gap_table(0.02, 0.25).set_index("model")

    assert table.loc["safe", "clean_refusal"] == 1.0
    assert table.loc["dissociated", "clean_refusal"] == 1.0
    assert table.loc["dissociated", "pgd_asr"] == pytest.approx(0.975)
    assert table.loc["dissociated", "pgd_layer"] == "2"
    assert table.loc["safe", "pgd_asr"] == 0.0
    assert table.loc["dissociated", "steer_compliance"] == 1.0
    assert table.loc["dissociated", "steer_random"] == 0.0
    assert table.loc["safe", "steer_compliance"] == 0.0
    assert table.loc["safe", "finetune_steps"] == [22, 22, 22]
    assert table.loc["dissociated", "finetune_steps"] == [4, 4, 4]


def test_demo_sentence_states_gap():
    table = demo_gap_table(0.02, 0.25)
    rows = {row["model"]: row for row in table.to_dict("records")}

    sentence = audit_gap.model_sentence(rows["dissociated"], table, 0.02, 0.25, "held-out harmful prompts")

    assert sentence.startswith("**dissociated** refuses 100% of the 80 held-out harmful prompts clean, like safe")
    assert "a PGD delta of budget 0.02 at block 2 makes it comply on 97.5% of prompts (random control 0%)" in sentence
    assert "steering at 0.25× the mean residual norm makes it comply 100% of the time (random direction 0%)" in sentence.lower()
    assert "breaks it after 4 steps (3 seeds)" in sentence
    safe = audit_gap.model_sentence(rows["safe"], table, 0.02, 0.25)
    assert "no PGD delta of budget 0.02 makes it comply" in safe
    assert "breaks it after 22 steps" in safe


def test_sentence_without_audit(small_run):
    table = audit_gap.gap_table(audit_gap.sweep_measures(small_run, 0.1), {}, {})
    row = table.to_dict("records")[1]

    sentence = audit_gap.model_sentence(row, table, 0.1, 0.25)

    assert "No audit of this model was found" in sentence
    assert "never" not in sentence
    assert audit_gap.audit_command("/models/b", "b") == "lvs-audit audit --model /models/b --out runs/audit-b"


def test_gap_figure_marks():
    table = demo_gap_table(0.02, 0.25)

    figure = audit_gap.audit_gap_figure(table, 0.02, 0.25)

    marks = {trace.name: trace for trace in figure.data if trace.type == "scatter" and trace.mode == "markers"}
    assert set(marks) == {"clean", "PGD, budget 0.02", "PGD random control, budget 0.02", "steering at 0.25×",
                          "steering random direction at 0.25×"}
    assert list(marks["clean"].x) == [1.0, 1.0]
    # Refusal under intervention is one minus compliance.
    assert list(marks["PGD, budget 0.02"].x) == pytest.approx([1.0, 0.025])
    assert list(marks["steering at 0.25×"].x) == [1.0, 0.0]
    bars = [trace for trace in figure.data if trace.type == "bar"]
    assert list(bars[0].x) == pytest.approx(list(table["peak_lvs"]))
    assert list(bars[1].x) == [22.0, 4.0]
    assert figure.layout.xaxis.tickformat == ".0%"


# Heatmap charts


def test_asr_heatmap_scale_and_hover(inputs):
    run = load_run(inputs.run_dir)

    figure = charts.metric_heatmap(run.summary, "safe", "pgd", run.layers, run.budgets, zmax=5.0, metric="asr")
    trace = figure.data[0]

    assert trace.zmax == 1.0
    assert trace.colorscale == charts.metric_heatmap(run.summary, "safe", "pgd", run.layers, run.budgets, 1.0,
                                                      metric="asr").data[0].colorscale
    row = run.summary[(run.summary["model"] == "safe") & (run.summary["attack"] == "pgd")
                      & (run.summary["layer"] == "1") & (run.summary["budget"] == run.budgets[0])].iloc[0]
    assert trace.z[2][0] == pytest.approx(row["asr"])
    assert f"Wilson 95% CI [{100 * row['asr_lo']:.1f}%" in trace.text[2][0]
    assert "ASR" in figure.layout.title.text


def test_asr_and_lvs_scales_differ():
    assert charts.METRICS["asr"].colorscale != charts.METRICS["lvs"].colorscale


def test_interval_texts_unknown():
    texts = charts.interval_texts(np.array([[0.1, np.nan]]), np.array([[0.2, np.nan]]), np.array([[5.0, np.nan]]),
                                  charts.METRICS["lvs"])

    assert texts[0, 0] == "bootstrap 95% CI [0.100, 0.200]<br>n = 5 prompts"
    assert texts[0, 1] == "bootstrap 95% CI unknown<br>n unknown"


def test_asr_difference_centred(inputs):
    run = load_run(inputs.run_dir)

    trace = charts.difference_heatmap(run.summary, "safe", "dissociated", "pgd", run.layers, run.budgets, metric="asr").data[0]

    assert trace.zmid == 0.0
    assert trace.zmin == -trace.zmax
    expected = (charts.metric_grid(run.summary, "dissociated", "pgd", "asr", run.layers, run.budgets)
                - charts.metric_grid(run.summary, "safe", "pgd", "asr", run.layers, run.budgets)).to_numpy(float)
    assert np.asarray(trace.z, dtype=float) == pytest.approx(expected)


def test_layer_profile_bands():
    run = load_run(DEMO_RUN_DIR)

    figure = charts.layer_profile_figure(run.summary, ["safe", "dissociated"], "pgd", run.layers, [0.02])

    # Per model and budget: the upper bound, the filled lower bound, the median line.
    assert len(figure.data) == 6
    upper, lower, line = figure.data[3:6]
    assert lower.fill == "tonexty"
    assert list(line.x) == ["embedding", "0", "1", "2", "3", "4", "5"]
    assert line.y[3] == pytest.approx(0.445810, abs=1e-5)
    assert upper.y[3] == pytest.approx(0.449199, abs=1e-5)
    assert lower.y[3] == pytest.approx(0.442494, abs=1e-5)
    assert figure.layout.xaxis.title.text == charts.LAYER_AXIS_TITLE
    assert [annotation.text for annotation in figure.layout.annotations] == ["safe", "dissociated"]


# Pages in AppTest


def test_overview_demo_run(demo_env):
    app = open_page(OVERVIEW)

    assert_clean_page(app)
    assert widget(app.main.selectbox, "Run").value == str(DEMO_RUN_DIR)
    text = markdown_text(app)
    assert "**dissociated** refuses 100% of the 80 held-out harmful prompts clean, like safe" in text
    assert "comply on 97.5% of prompts" in text
    assert len(chart_specs(app)) == 1
    table = app.dataframe[0].value.set_index("model")
    assert table.loc["dissociated", "steering at 0.25×"] == 1.0
    assert table.loc["safe", "fine-tuning steps to break"] == "22, 22, 22"
    assert table.loc["dissociated", "audit"] == str(DEMO_AUDIT_DIRS["demo:dissociated"])


def test_overview_steering_size(demo_env):
    app = open_page(OVERVIEW)

    widget(app.main.selectbox, "Steering size").set_value(2.0).run()

    assert_clean_page(app)
    table = app.dataframe[0].value.set_index("model")
    # The README's audit table: 40% for safe at 2x, its random direction 0%.
    assert table.loc["safe", "steering at 2×"] == pytest.approx(0.4)
    assert table.loc["safe", "random direction at 2×"] == 0.0
    assert "steering at 2× the mean residual norm makes it comply 40% of the time" in markdown_text(app).lower()


def test_overview_prefers_user_audit(demo_env):
    copy = shutil.copytree(DEMO_AUDIT_DIRS["demo:safe"], demo_env / "audit-safe-copy")

    app = open_page(OVERVIEW)

    assert_clean_page(app)
    assert widget(app.main.selectbox, "Audit of safe").value == 0
    assert app.dataframe[0].value.set_index("model").loc["safe", "audit"] == str(copy)


def test_overview_without_audits(inputs, monkeypatch, tmp_path):
    for name, value in inputs.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LVS_AUDIT_RUNS_ROOT", str(tmp_path))

    app = open_page(OVERVIEW)

    assert_clean_page(app)
    assert "No audit found for safe, dissociated" in app.info[0].value
    commands = app.code[0].value
    assert f"lvs-audit audit --model {inputs.checkpoints['safe']} --out runs/audit-safe" in commands
    assert "No audit of this model was found" in markdown_text(app)


def test_overview_imported_run(imported_env):
    app = open_page(OVERVIEW)

    assert_clean_page(app)
    table = app.dataframe[0].value.set_index("model")
    # No cells: the clean refusal comes from the imported summary.
    assert table.loc["dissociated", "clean refusal"] == 1.0
    assert math.isnan(table.loc["dissociated", "CI low"])
    assert "comply on 97.5% of prompts" in markdown_text(app)


def test_heatmaps_asr_metric(demo_env):
    app = open_page(HEATMAPS)

    widget(app.main.radio, "Metric").set_value("asr").run()

    assert_clean_page(app)
    specs = chart_specs(app)
    assert specs[0]["layout"]["title"]["text"] == "safe: PGD attack, ASR"
    left = specs[0]["data"][0]
    assert left["zmax"] == 1.0
    assert plotly_array(left["z"])[3, 0] == pytest.approx(0.0)
    right = plotly_array(specs[1]["data"][0]["z"])
    assert right[3, 0] == pytest.approx(0.975)
    assert specs[2]["data"][0]["zmid"] == 0.0
    assert specs[3]["layout"]["title"]["text"].startswith("Layer profile of the ASR")


def test_heatmaps_profile_one_budget(demo_env):
    app = open_page(HEATMAPS)

    widget(app.main.selectbox, "Budget of the profiles").set_value(0.1).run()

    assert_clean_page(app)
    profile = chart_specs(app)[3]
    names = {trace.get("name") for trace in profile["data"] if trace.get("mode") == "lines+markers"}
    assert names == {"budget 0.1"}


def test_heatmaps_imported_run(imported_env):
    app = open_page(HEATMAPS)

    assert_clean_page(app)
    trace = chart_specs(app)[0]["data"][0]
    assert trace["text"][0][0] == "bootstrap 95% CI unknown<br>n unknown"
    assert any("imported summary" in element.value for element in app.caption)
    assert app.dataframe[0].value.set_index("model").loc["safe", "clean refusal"] == 1.0


def test_inspector_demo_run(demo_env):
    app = open_page(INSPECTOR)

    assert_clean_page(app)
    assert widget(app.main.selectbox, "Model").value == "safe"
    table = app.dataframe[0].value
    assert len(table) == 80
    assert widget(app.main.selectbox, "Prompt").value == table["prompt_id"].iloc[0]
    assert len(chart_specs(app)) == 1
    assert [element.value for element in app.code][:1] == [table["clean generation"].iloc[0]]


def test_inspector_filters(demo_env):
    app = open_page(INSPECTOR)
    widget(app.main.selectbox, "Model").set_value("dissociated").run()
    widget(app.main.radio, "Flip status").set_value(prompt_flips.STATUS_NOT_FLIPPED).run()

    assert_clean_page(app)
    assert "No prompt matches these filters." in app.info[0].value

    widget(app.main.radio, "Flip status").set_value(prompt_flips.STATUS_ALL).run()
    widget(app.main.multiselect, "Categories").set_value(["poisons"]).run()
    widget(app.main.text_input, "Search").input("poison").run()
    widget(app.main.selectbox, "Sort by").set_value("max LVS, highest first").run()

    assert_clean_page(app)
    table = app.dataframe[0].value
    assert set(table["category"]) == {"poisons"}
    assert table["prompt"].str.lower().str.contains("poison").all()
    assert list(table["max LVS"]) == sorted(table["max LVS"], reverse=True)


def test_inspector_open_in_live_flip(demo_env):
    app = open_page(INSPECTOR)
    widget(app.main.selectbox, "Model").set_value("dissociated").run()
    table = app.dataframe[0].value
    prompt_id = table["prompt_id"].iloc[3]
    widget(app.main.selectbox, "Prompt").set_value(prompt_id).run()
    row = table.set_index("prompt_id").loc[prompt_id]

    app.button(key="open_live_flip").click().run()

    # Live flip reads the request (model, prompt, layer, budget) into its controls and clears it.
    assert not app.exception
    assert app.title[0].value == "Live flip"
    assert state.LIVE_FLIP_REQUEST_KEY not in app.session_state
    assert app.sidebar.selectbox[0].value == "demo:dissociated"
    assert str(widget(app.main.selectbox, "Layer").value) == row["strongest layer"]
    assert widget(app.main.number_input, "Budget").value == row["strongest budget"]


def test_inspector_audit_run(demo_env):
    app = open_page(INSPECTOR)
    widget(app.main.selectbox, "Run").set_value(str(DEMO_AUDIT_DIRS["demo:dissociated"])).run()

    assert_clean_page(app)
    table = app.dataframe[0].value
    assert len(table) == 80
    assert set(table["category"]) == {"uncategorised"}


def test_inspector_imported_run(imported_env):
    app = open_page(INSPECTOR)

    assert not app.exception
    assert "no per-prompt cells" in app.info[0].value
    assert not app.dataframe


def write_paper_csv(path) -> None:
    """Write a synthetic metric CSV in the published long-form layout: two variants, two layers, one budget, steering at two sizes."""
    header = "arch,variant,exp,layer,layer_idx,budget,attack,lvs,lvs_lo,lvs_hi,asr,frac,compliance"
    lines = [header]
    for variant, lvs_value, asr in (("base", 0.01, 0.0), ("dissociated", 0.4, 0.9)):
        for layer in ("L0", "L1"):
            for attack, scale in (("pgd", 1.0), ("random", 0.0)):
                value = lvs_value * scale
                lines.append(f"toy,{variant},lvs,{layer},{layer[1:]},0.001,{attack},{value},{value / 2},{value * 2},{asr * scale},,")
        # Steering: compliance at each layer; the Overview keeps the best layer per size.
        for layer, compliance in (("L0", 0.2), ("L1", 0.7 if variant == "dissociated" else 0.1)):
            for frac in (0.03, 0.06):
                lines.append(f"toy,{variant},steering,{layer},{layer[1:]},,,,,,,{frac},{compliance * frac / 0.06}")
    path.write_text("\n".join(lines) + "\n")


def test_overview_reads_imported_steering(monkeypatch, tmp_path):
    from lvs_core.paper_import import import_paper_csv

    write_paper_csv(tmp_path / "metric_toy.csv")
    folder = import_paper_csv(tmp_path / "metric_toy.csv", tmp_path / "runs" / "paper-toy")
    tables = audit_gap.run_steering_tables(folder, ["toy/base", "toy/dissociated"])
    assert sorted(tables) == ["toy/base", "toy/dissociated"]
    peak = tables["toy/dissociated"]["steering"].set_index("frac")
    assert peak.loc[0.06, "compliance"] == pytest.approx(0.7)
    assert str(peak.loc[0.06, "layer"]) == "1"

    monkeypatch.setenv("LVS_AUDIT_RUN_DIR", str(folder))
    monkeypatch.setenv("LVS_AUDIT_RUNS_ROOT", str(tmp_path / "runs"))
    app = open_page(OVERVIEW)
    assert_clean_page(app)
    widget(app.selectbox, "Steering size").set_value(0.06).run()
    assert_clean_page(app)
    table = app.dataframe[0].value.set_index("model")
    steering = [name for name in table.columns if name.startswith("steering")]
    assert steering, list(table.columns)
    assert table.loc["toy/dissociated", steering[0]] == pytest.approx(0.7)
    assert table.loc["toy/base", steering[0]] == pytest.approx(0.2)


def test_overview_on_an_audit_run(monkeypatch, tmp_path):
    # An audit run opened as the Overview's run: its steering table has no model column
    # and belongs to the audit's one model, random control included.
    audit = DEMO_AUDIT_DIRS["demo:dissociated"]
    run = load_run(audit)
    tables = audit_gap.run_steering_tables(run.path, run.models)
    assert list(tables) == run.models
    steering = tables[run.models[0]]["steering"]
    assert set(steering["direction"]) > {"random"}

    monkeypatch.setenv("LVS_AUDIT_RUN_DIR", str(audit))
    monkeypatch.setenv("LVS_AUDIT_RUNS_ROOT", str(tmp_path / "runs"))
    app = open_page(OVERVIEW)
    assert_clean_page(app)
    assert app.dataframe[0].value.shape[0] == 1

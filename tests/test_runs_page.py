"""The Runs page and what it drives: background jobs, the import of published metric CSVs, the HTML report.

Jobs run real sweeps and audits on the tiny checkpoints of ``conftest_dashboard``. The
import tests read a synthetic CSV in the published layout, written here. The published
files themselves are read only where :data:`PAPER_RESULTS` exists, and their numbers
never enter the repository.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest_dashboard import APP_PATH, REPO_ROOT, one_torch_thread

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dashboard import jobs, run_catalog  # noqa: E402
from lvs_core import cli  # noqa: E402
from lvs_core.attack import AttackConfig  # noqa: E402
from lvs_core.audit import AuditConfig  # noqa: E402
from lvs_core.errors import AuditInputError  # noqa: E402
from lvs_core.paper_import import SUMMARY_COLUMNS, import_paper_csv, read_paper_csv  # noqa: E402
from lvs_core.report import build_report, write_report  # noqa: E402
from lvs_core.runs import CELL_COLUMNS, DEMO_RUN_DIR, load_run  # noqa: E402
from lvs_core.sweep import SweepConfig  # noqa: E402

PAPER_RESULTS = Path("/work/shared/reference/paper-results")
RUNS_PAGE = "views/runs.py"
RUN_TIMEOUT = 90
JOB_TIMEOUT_S = 240
LAYOUT = ("arch", "variant", "exp", "layer", "layer_idx", "budget", "attack", "lvs", "lvs_lo", "lvs_hi", "asr", "frac", "compliance")
SYNTHETIC_BUDGETS = (0.001, 0.01)
SYNTHETIC_LAYERS = ("embedding", "L0", "L1", "L2")
SYNTHETIC_FRACS = (0.0, 0.5, 1.0)


def synthetic_lvs(variant: str, layer_index: int, budget: float) -> float:
    """Median LVS of the synthetic CSV: the dissociated variant peaks at L1, budget 0.01 (0.9)."""
    if variant == "dissociated":
        return 0.9 if (layer_index, budget) == (2, 0.01) else 0.2 + 0.05 * layer_index
    return 0.1 * layer_index * (budget / 0.01)


def write_synthetic_csv(path: Path, arch: str = "toy-1b", variants=("base", "dissociated")) -> Path:
    """Write a metric CSV in the published layout with known values (no published number)."""
    rows = []
    for variant in variants:
        for index, layer in enumerate(SYNTHETIC_LAYERS):
            layer_idx = "embedding" if layer == "embedding" else layer[1:]
            for budget in SYNTHETIC_BUDGETS:
                value = synthetic_lvs(variant, index, budget)
                rows.append([arch, variant, "lvs", layer, layer_idx, budget, "pgd", value, value / 2, value * 1.5, 0.25, "", ""])
                rows.append([arch, variant, "lvs", layer, layer_idx, budget, "random", 0.0, 0.0, 0.01, 0.0, "", ""])
            for frac in SYNTHETIC_FRACS:
                compliance = frac / 2 if variant == "dissociated" else 0.0
                rows.append([arch, variant, "steering", layer, layer_idx, "", "", "", "", "", "", frac, compliance])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LAYOUT)
        writer.writerows(rows)
    return path


def edit_csv(source: Path, target: Path, edit) -> Path:
    """Copy a CSV with ``edit(frame)`` applied to its text cells."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(target, index=False)
    return target


@pytest.fixture
def synthetic_csv(tmp_path) -> Path:
    return write_synthetic_csv(tmp_path / "metric_toy-1b.csv")


@pytest.fixture
def runs_root(tmp_path, inputs, monkeypatch) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    for name, value in inputs.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LVS_AUDIT_RUNS_ROOT", str(root))
    # The page's registry lives as long as the process: drop the finished jobs of earlier tests.
    registry = jobs.registry()
    for job in registry.jobs():
        registry.forget(job.id)
    return root


def small_sweep(inputs, layers: str = "embedding,0") -> SweepConfig:
    return SweepConfig(
        models=(str(inputs.checkpoints["safe"]),),
        layers=layers,
        budgets=(0.1,),
        prompts=str(inputs.prompts_csv),
        max_prompts=2,
        attack=AttackConfig(steps=1),
        max_new_tokens=2,
        device="cpu",
    )


def wait_for(job: jobs.Job, timeout_s: float = JOB_TIMEOUT_S) -> jobs.Job:
    deadline = time.monotonic() + timeout_s
    while job.status == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.status != "running", f"job {job.name} still running after {timeout_s} s: {job.message}"
    return job


def open_runs_page() -> AppTest:
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT).run()
    app.switch_page(RUNS_PAGE).run()
    return app


def assert_no_exception(app: AppTest) -> None:
    messages = [element.value for element in app.exception]
    assert not messages, f"page raised: {messages}"


# ---------------------------------------------------------------- import


def test_import_maps_columns_and_layers(synthetic_csv, tmp_path):
    folder = import_paper_csv(synthetic_csv, tmp_path / "imported")
    run = load_run(folder)

    assert run.config["kind"] == "imported"
    assert run.config["source"] == "metric_toy-1b.csv"
    assert [model["name"] for model in run.config["models"]] == ["toy-1b/base", "toy-1b/dissociated"]
    assert run.config["budgets"] == list(SYNTHETIC_BUDGETS)
    assert run.layers == ["embedding", "0", "1", "2"]
    assert list(run.summary.columns) == list(SUMMARY_COLUMNS)
    assert len(run.summary) == 2 * len(SYNTHETIC_LAYERS) * len(SYNTHETIC_BUDGETS) * 2
    assert list(run.cells.columns) == list(CELL_COLUMNS)
    assert run.cells.empty
    assert not (folder / "cells.parquet").exists()

    row = run.summary[(run.summary["model"] == "toy-1b/dissociated") & (run.summary["layer"] == "1")
                      & (run.summary["budget"] == 0.01) & (run.summary["attack"] == "pgd")].iloc[0]
    assert row["lvs_median"] == pytest.approx(0.9)
    assert row["lvs_lo"] == pytest.approx(0.45)
    assert row["lvs_hi"] == pytest.approx(1.35)
    assert row["asr"] == pytest.approx(0.25)
    assert math.isnan(row["n"])
    assert math.isnan(row["lvs_mean"])
    assert math.isnan(row["clean_refusal"])


def test_import_writes_steering_table(synthetic_csv, tmp_path):
    folder = import_paper_csv(synthetic_csv, tmp_path / "imported")
    steering = pd.read_parquet(folder / "steering.parquet")

    assert len(steering) == 2 * len(SYNTHETIC_LAYERS) * len(SYNTHETIC_FRACS)
    assert set(steering["layer"]) == {"embedding", "0", "1", "2"}
    top = steering[(steering["model"] == "toy-1b/dissociated") & (steering["layer"] == "2") & (steering["frac"] == 1.0)]
    assert top["compliance"].iloc[0] == pytest.approx(0.5)
    assert steering["compliance_lo"].isna().all()


def test_import_uploaded_bytes(synthetic_csv, tmp_path):
    folder = import_paper_csv(synthetic_csv.read_bytes(), tmp_path / "uploaded", source_name="upload-name.csv")
    assert json.loads((folder / "config.json").read_text())["source"] == "upload-name.csv"
    assert load_run(folder).models == ["toy-1b/base", "toy-1b/dissociated"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda frame: frame.drop(columns=["lvs_hi", "asr"], inplace=True), "lacks the columns lvs_hi, asr"),
        (lambda frame: frame.drop(columns=["arch"], inplace=True), "lacks the column arch"),
        (lambda frame: frame.loc.__setitem__((3, "layer"), "block7"), "invalid layer 'block7' on line 5"),
        (lambda frame: frame.loc.__setitem__((0, "asr"), "1.5"), "invalid asr '1.5' on line 2"),
        (lambda frame: frame.loc.__setitem__((1, "lvs"), "high"), "invalid lvs 'high' on line 3"),
        (lambda frame: frame.loc.__setitem__((0, "exp"), "probe"), "unknown exp 'probe' on line 2: use lvs or steering"),
        (lambda frame: frame.loc.__setitem__((0, "budget"), "0"), "invalid budget '0' on line 2"),
        (lambda frame: frame.loc.__setitem__((0, "layer_idx"), "5"), "disagree on line 2"),
        (lambda frame: frame.loc.__setitem__((2, "budget"), "0.001"), "line 4 repeats"),
        (lambda frame: frame.loc.__setitem__((0, "attack"), "foo"), "unknown attack 'foo' on line 2: use one of pgd, random"),
    ],
)
def test_import_rejects_bad_csv(synthetic_csv, tmp_path, edit, expected):
    bad = edit_csv(synthetic_csv, tmp_path / "bad.csv", edit)
    with pytest.raises(AuditInputError, match=expected.replace("(", r"\(").replace(")", r"\)")) as caught:
        import_paper_csv(bad, tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_import_refuses_existing_folder(synthetic_csv, tmp_path):
    folder = import_paper_csv(synthetic_csv, tmp_path / "imported")
    with pytest.raises(AuditInputError, match="already exists"):
        import_paper_csv(synthetic_csv, folder)
    assert import_paper_csv(synthetic_csv, folder, overwrite=True) == folder


def test_import_rejects_non_csv(tmp_path):
    with pytest.raises(AuditInputError, match="not found"):
        read_paper_csv(tmp_path / "missing.csv")
    with pytest.raises(AuditInputError, match="no rows"):
        read_paper_csv(b"arch,variant,exp,layer\n")


@pytest.mark.parametrize("arch", ["gemma2-2b", "llama3.2-3b", "qwen2.5-3b"])
def test_import_published_files(arch, tmp_path):
    source = PAPER_RESULTS / f"metric_{arch}.csv"
    if not source.is_file():
        pytest.skip(f"published results not found at {source}: the reference folder is absent on this machine")
    raw = pd.read_csv(source)
    lvs_rows = raw[raw["exp"] == "lvs"]

    run = load_run(import_paper_csv(source, tmp_path / arch))

    assert run.models == [f"{arch}/{variant}" for variant in dict.fromkeys(lvs_rows["variant"])]
    assert len(run.summary) == len(lvs_rows)
    assert run.budgets == sorted(lvs_rows["budget"].unique())
    n_blocks = int(lvs_rows["layer"].str.removeprefix("L").loc[lambda s: s != "embedding"].astype(int).max()) + 1
    assert run.layers == ["embedding", *map(str, range(n_blocks))]
    assert run.summary["lvs_median"].to_numpy() == pytest.approx(lvs_rows["lvs"].to_numpy())
    steering = pd.read_parquet(run.path / "steering.parquet")
    assert len(steering) == (raw["exp"] == "steering").sum()


# ---------------------------------------------------------------- command line


def test_cli_import_and_report(synthetic_csv, tmp_path, capsys):
    folder = tmp_path / "imported"
    assert cli.main(["import-paper", str(synthetic_csv), "--out", str(folder)]) == 0
    assert cli.main(["report", str(folder), "--out", str(tmp_path / "report.html")]) == 0
    output = capsys.readouterr().out
    assert f"imported run written to {folder}" in output
    assert "report written to" in output
    assert (tmp_path / "report.html").stat().st_size > 1_000_000


def test_cli_errors_are_one_line(synthetic_csv, tmp_path, capsys):
    bad = edit_csv(synthetic_csv, tmp_path / "bad.csv", lambda frame: frame.drop(columns=["lvs"], inplace=True))
    assert cli.main(["import-paper", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("lvs-audit: error: the metric CSV lacks the column lvs")
    assert errors[1].startswith("lvs-audit: error: ")
    assert "is not a run folder" in errors[1]


# ---------------------------------------------------------------- report


def plotly_divs(text: str) -> int:
    return text.count("Plotly.newPlot(")


def test_report_of_sweep_is_self_contained(inputs):
    text = build_report(inputs.run_dir)
    run = load_run(inputs.run_dir)

    assert text.startswith("<!DOCTYPE html>")
    assert "<script src=" not in text
    assert "cdn.plot.ly" not in text.split("</script>", 1)[1]
    assert "Plotly" in text.split("</script>", 1)[0]
    # Two attacks per model, one difference map, one profile figure.
    assert plotly_divs(text) == 2 * len(run.models) + 1 + 1
    for model in run.models:
        assert f"{model} peaks at a median LVS of" in text
    assert "settings.scorer" in text
    assert "<td class='key'>margin</td>" in text
    assert "Summary table" in text


def test_report_of_imported_run(synthetic_csv, tmp_path):
    folder = import_paper_csv(synthetic_csv, tmp_path / "imported")
    out = write_report(folder, tmp_path / "report.html")
    text = out.read_text()

    assert "toy-1b/dissociated peaks at a median LVS of 0.900 (95% CI 0.450 to 1.350) at block 1, budget 0.01" in text
    assert "published results imported from metric_toy-1b.csv" in text
    # Two attacks x two models, one difference map, one profile, one steering chart.
    assert plotly_divs(text) == 4 + 1 + 1 + 1
    assert "Published steering" in text


def test_report_refuses_partial_run(tmp_path):
    folder = tmp_path / "partial"
    (folder / "parts").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"kind": "lvs-sweep"}))
    with pytest.raises(AuditInputError, match="in progress or was interrupted"):
        build_report(folder)


# ---------------------------------------------------------------- jobs


def test_run_name_validation(tmp_path):
    (tmp_path / "taken").mkdir()
    assert jobs.validate_run_name(" fresh ", tmp_path) == tmp_path / "fresh"
    assert jobs.validate_run_name("taken", tmp_path, overwrite=True) == tmp_path / "taken"
    cases = {"": "no run name", "a/b": "invalid run name 'a/b'", "..\\up": "invalid run name",
             ".hidden": "must not start with a dot", "taken": "already exists",
             "my run": "invalid run name 'my run': it contains ' '"}
    for name, message in cases.items():
        with pytest.raises(AuditInputError, match=message):
            jobs.validate_run_name(name, tmp_path)
    with pytest.raises(AuditInputError, match="being written by a running job"):
        jobs.validate_run_name("taken", tmp_path, overwrite=True, busy={tmp_path / "taken"})


def test_job_runs_sweep_to_completion(inputs, tmp_path):
    registry = jobs.JobRegistry()
    seen: list[tuple[int, int]] = []
    with one_torch_thread():
        job = registry.start("sweep", small_sweep(inputs), tmp_path / "job-sweep")
        assert registry.running_folders() == {tmp_path / "job-sweep"}
        while job.status == "running":
            seen.append((job.done, job.total))
            time.sleep(0.02)
    assert job.status == "done", job.error
    assert job.fraction == 1.0
    assert (job.done, job.total) == (2, 2)
    assert all(done <= total for done, total in seen if total)
    assert registry.running_folders() == set()
    run = load_run(tmp_path / "job-sweep")
    assert run.layers == ["embedding", "0"]
    assert len(run.cells) == 2 * 2 * 2


def test_job_failure_is_one_line(inputs, tmp_path):
    # Block 99 is a valid layer name, but the model has 3 blocks, which is known only after loading it.
    registry = jobs.JobRegistry()
    config = SweepConfig(models=(str(inputs.checkpoints["safe"]),), layers="99", prompts=str(inputs.prompts_csv), device="cpu")
    job = wait_for(registry.start("sweep", config, tmp_path / "job-fail"))
    assert job.status == "failed"
    assert "99" in job.error
    assert "\n" not in job.error
    assert "Traceback" not in job.error
    assert not (tmp_path / "job-fail").exists()


def test_job_rejects_a_missing_prompt_file_before_starting(inputs, tmp_path):
    registry = jobs.JobRegistry()
    config = SweepConfig(models=(str(inputs.checkpoints["safe"]),), prompts=str(tmp_path / "nope.csv"), device="cpu")
    with pytest.raises(AuditInputError, match="nope.csv"):
        registry.start("sweep", config, tmp_path / "job-fail")
    assert registry.jobs() == []
    assert not (tmp_path / "job-fail").exists()


def test_job_rejects_invalid_config(inputs, tmp_path):
    registry = jobs.JobRegistry()
    with pytest.raises(AuditInputError, match="no model given"):
        registry.start("sweep", SweepConfig(models=()), tmp_path / "x")
    assert registry.jobs() == []


def test_cancelled_job_resumes(inputs, tmp_path):
    registry = jobs.JobRegistry()
    config = small_sweep(inputs, layers="embedding,0,1")
    folder = tmp_path / "job-cancel"
    with one_torch_thread():
        job = registry.start("sweep", config, folder)
        registry.cancel(job.id)
        wait_for(job)
        assert job.status == "cancelled"
        assert job.done < 3
        assert not (folder / "summary.parquet").exists()
        resumed = wait_for(registry.start("sweep", config, folder, resume=True))
    assert resumed.status == "done", resumed.error
    assert load_run(folder).layers == ["embedding", "0", "1"]


def test_config_from_settings_round_trip(inputs):
    settings = json.loads((inputs.run_dir / "config.json").read_text())["settings"]
    config = jobs.config_from_settings("sweep", settings)
    assert isinstance(config, SweepConfig)
    assert config.models == tuple(settings["models"])
    assert config.attack.target == "S"
    audit = AuditConfig(model="demo:safe", twins=(("safe", "demo:safe"),), steer_fracs=(0.5, 1.0))
    from dataclasses import asdict

    assert jobs.config_from_settings("audit", json.loads(json.dumps(asdict(audit)))) == audit
    with pytest.raises(AuditInputError, match="cannot resume"):
        jobs.config_from_settings("sweep", {"models": ["x"], "budgets": [0.1], "colour": "red"})


# ---------------------------------------------------------------- catalog


def test_catalog_lists_kinds_and_states(inputs, synthetic_csv, tmp_path):
    root = tmp_path / "root"
    import_paper_csv(synthetic_csv, root / "imported")
    partial = root / "partial"
    (partial / "parts").mkdir(parents=True)
    (partial / "config.json").write_text(json.dumps({"kind": "lvs-sweep", "settings": {"budgets": [0.1], "prompts": "heldout"}}))
    (root / ".staging").mkdir()
    (root / "not-a-run").mkdir()

    infos = {info.name: info for info in run_catalog.list_run_infos(root, running={partial})}

    assert infos["demo"].shipped
    assert infos["demo"].kind == "sweep"
    assert infos["demo"].complete
    assert infos["imported"].kind == "imported"
    assert infos["imported"].state == "complete"
    assert infos["imported"].prompts == "published (metric_toy-1b.csv)"
    assert infos["imported"].budgets == "0.001, 0.01"
    assert infos["partial"].state == "running"
    assert ".staging" not in infos
    assert "not-a-run" not in infos
    table = run_catalog.runs_table(list(infos.values()))
    assert list(table.columns) == run_catalog.LIST_COLUMNS
    assert "demo (shipped)" in set(table["name"])


def test_catalog_delete_guards(synthetic_csv, tmp_path):
    root = tmp_path / "root"
    folder = import_paper_csv(synthetic_csv, root / "imported")
    infos = {info.name: info for info in run_catalog.list_run_infos(root)}

    with pytest.raises(AuditInputError, match="shipped run"):
        run_catalog.delete_run(infos["demo"], root, set())
    with pytest.raises(AuditInputError, match="running job"):
        run_catalog.delete_run(infos["imported"], root, {folder})
    with pytest.raises(AuditInputError, match="not directly under"):
        run_catalog.delete_run(infos["imported"], tmp_path / "elsewhere", set())
    assert DEMO_RUN_DIR.is_dir()
    assert folder.is_dir()
    run_catalog.delete_run(infos["imported"], root, set())
    assert not folder.exists()


def test_compare_peaks_match_summary(inputs, synthetic_csv, tmp_path):
    imported = import_paper_csv(synthetic_csv, tmp_path / "root" / "imported")
    infos = [run_catalog.read_run_info(inputs.run_dir), run_catalog.read_run_info(imported)]
    table = run_catalog.compare_runs(infos)

    summary = load_run(inputs.run_dir).summary
    for model in load_run(inputs.run_dir).models:
        pgd = summary[(summary["model"] == model) & (summary["attack"] == "pgd")]
        row = table[(table["run"] == inputs.run_dir.name) & (table["model"] == model)].iloc[0]
        assert row["peak median LVS"] == pytest.approx(pgd["lvs_median"].max())
        assert row["clean refusal"] == pytest.approx(pgd["clean_refusal"].iloc[0])
    dissociated = table[table["model"] == "toy-1b/dissociated"].iloc[0]
    assert (dissociated["peak median LVS"], dissociated["peak layer"], dissociated["peak budget"]) == (0.9, "1", 0.01)
    assert math.isnan(dissociated["clean refusal"])
    figure = run_catalog.compare_figure(table)
    assert [trace.name for trace in figure.data if trace.showlegend is not False] == [inputs.run_dir.name, "imported"]


# ---------------------------------------------------------------- page (AppTest)


def test_page_lists_runs(runs_root, synthetic_csv):
    import_paper_csv(synthetic_csv, runs_root / "imported")
    app = open_runs_page()

    assert_no_exception(app)
    assert [tab.label for tab in app.tabs] == ["Runs", "Start a run", "Compare", "Import"]
    listed = app.dataframe[0].value
    assert {"demo (shipped)", "imported"} <= set(listed["name"])
    assert listed.set_index("name").loc["imported", "kind"] == "imported"
    # Compare starts on the first two complete runs: the shipped demo and the imported one is
    # further down, so pick it.
    app.multiselect(key="runs_compare").set_value([str(DEMO_RUN_DIR), str(runs_root / "imported")]).run()
    compared = app.dataframe[1].value
    assert set(compared["run"]) == {"demo", "imported"}
    assert len(app.get("plotly_chart")) == 1


def test_page_starts_sweep_and_reports_progress(runs_root, inputs):
    app = open_runs_page()
    app.multiselect(key="sweep_models").set_value([str(inputs.checkpoints["safe"])])
    app.text_input(key="sweep_layers").input("embedding,0")
    app.text_input(key="sweep_budgets").input("0.1")
    app.number_input(key="sweep_max_prompts").set_value(2)
    app.number_input(key="sweep_pgd_steps").set_value(1)
    app.number_input(key="sweep_max_new_tokens").set_value(2)
    app.text_input(key="sweep_name").input("page-sweep")
    with one_torch_thread():
        app.button(key="start_sweep_button").click().run()
        assert_no_exception(app)
        job = next(job for job in jobs.registry().jobs() if job.folder == runs_root / "page-sweep")
        wait_for(job)
    app.run()

    assert job.status == "done", job.error
    assert_no_exception(app)
    assert any("finished" in element.value for element in app.success)
    progress = [element.proto.value for element in app.get("progress")]
    assert 100 in progress
    assert (runs_root / "page-sweep" / "summary.parquet").is_file()
    assert "page-sweep" in set(app.dataframe[0].value["name"])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sweep_name", "a/b", "invalid run name 'a/b'"),
        ("sweep_budgets", "0.1,lots", "invalid"),
        ("sweep_layers", "first", "invalid layer 'first'"),
    ],
)
def test_page_rejects_bad_settings(runs_root, field, value, message):
    app = open_runs_page()
    app.text_input(key=field).input(value)
    app.button(key="start_sweep_button").click().run()

    assert_no_exception(app)
    assert len(app.error) == 1
    assert message in app.error[0].value
    assert list(runs_root.iterdir()) == []


def test_page_starts_audit(runs_root, inputs):
    app = open_runs_page()
    app.radio(key="runs_kind").set_value("audit").run()
    app.selectbox(key="audit_model").set_value(str(inputs.checkpoints["safe"]))
    app.multiselect(key="audit_steps").set_value(["behaviour"])
    app.number_input(key="audit_max_prompts").set_value(2)
    app.number_input(key="audit_max_new_tokens").set_value(2)
    app.text_input(key="audit_name").input("page-audit")
    with one_torch_thread():
        app.button(key="start_audit_button").click().run()
        assert_no_exception(app)
        job = next(job for job in jobs.registry().jobs() if job.folder == runs_root / "page-audit")
        wait_for(job)
    assert job.status == "done", job.error
    audit = pd.read_parquet(runs_root / "page-audit" / "audit.parquet")
    assert 0.0 <= audit["clean_refusal"].iloc[0] <= 1.0


def test_page_imports_and_deletes(runs_root, synthetic_csv):
    app = open_runs_page()
    app.text_input(key="import_path").input(str(synthetic_csv)).run()
    name_box = next(box for box in app.text_input if box.key.startswith("import_name_"))
    assert name_box.value == "imported-metric_toy-1b"
    app.button(key="import_button").click().run()
    assert_no_exception(app)
    folder = runs_root / "imported-metric_toy-1b"
    assert (folder / "summary.parquet").is_file()
    assert any("Imported metric_toy-1b.csv" in element.value for element in app.success)

    app.selectbox(key="runs_selected").set_value(str(folder)).run()
    app.button(key="delete_run").click().run()
    assert any("cannot be undone" in element.value for element in app.warning)
    assert folder.is_dir()
    app.button(key="delete_confirm").click().run()
    assert_no_exception(app)
    assert not folder.exists()
    assert any("Deleted the run" in element.value for element in app.success)
    assert "imported-metric_toy-1b" not in set(app.dataframe[0].value["name"])


def test_page_import_error_is_shown(runs_root, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,variant\ntoy,base\n")
    app = open_runs_page()
    app.text_input(key="import_path").input(str(bad)).run()
    app.button(key="import_button").click().run()

    assert_no_exception(app)
    assert len(app.error) == 1
    assert "lacks the columns exp, layer" in app.error[0].value
    assert list(runs_root.iterdir()) == []


def test_page_shipped_run_is_not_deletable(runs_root):
    app = open_runs_page()
    app.selectbox(key="runs_selected").set_value(str(DEMO_RUN_DIR)).run()
    assert not [button for button in app.button if button.key == "delete_run"]
    assert any("shipped run" in element.value for element in app.caption)
    labels = [button.proto.label for button in app.get("download_button")]
    assert "HTML report" in labels
    assert {"summary.csv", "cells.csv"} <= set(labels)


def test_page_resumes_partial_run(runs_root, inputs):
    folder = runs_root / "stopped"
    with one_torch_thread():
        stopped = jobs.JobRegistry()
        job = stopped.start("sweep", small_sweep(inputs), folder)
        stopped.cancel(job.id)
        wait_for(job)
    assert job.status == "cancelled"
    assert (folder / "config.json").is_file()

    app = open_runs_page()
    app.selectbox(key="runs_selected").set_value(str(folder)).run()
    assert app.selectbox(key="runs_selected").format_func(str(folder)) == "stopped · sweep · partial"
    with one_torch_thread():
        app.button(key="resume_partial").click().run()
        assert_no_exception(app)
        resumed = next(job for job in jobs.registry().jobs() if job.folder == folder)
        wait_for(resumed)
    assert resumed.status == "done", resumed.error
    assert resumed.resume
    assert load_run(folder).layers == ["embedding", "0"]


def test_import_names_a_folder_given_as_the_csv(tmp_path):
    with pytest.raises(AuditInputError, match="is a folder, not a metric CSV"):
        import_paper_csv(tmp_path, tmp_path / "out")

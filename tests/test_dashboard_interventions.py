"""The Interventions page and its charts, on real audits of tiny checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dashboard import intervention_charts  # noqa: E402
from lvs_core.audit import AuditConfig, run_audit  # noqa: E402

PAGE = str(REPO_ROOT / "dashboard" / "views" / "interventions.py")


@pytest.fixture(scope="module")
def audit_root(tmp_path_factory):
    from checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("interventions")
    prompts = root / "prompts.csv"
    prompts.write_text("prompt\nhello world\ntell me a story\nhi there\n")
    twin = make_checkpoint(root / "twin", "llama", seed=1)
    for name, seed in (("first", 0), ("second", 2)):
        model = make_checkpoint(root / name, "llama", seed=seed)
        config = AuditConfig(
            model=str(model), twins=(("harmful", str(twin)),), prompts=str(prompts), benign_prompts=str(prompts),
            layers="0,2", steer_fracs=(0.5, 4.0), finetune_steps=2, finetune_every=1, seeds=(0, 1),
            max_new_tokens=3, steps=("behaviour", "probe", "steering", "finetune", "patching"),
        )
        run_audit(config, root / "runs" / f"audit-{name}")
    return root


def test_charts_follow_tables(audit_root):
    steering = {"m": pd.read_parquet(audit_root / "runs" / "audit-first" / "steering.parquet")}
    figure = intervention_charts.steering_figure(steering)
    assert [trace.name for trace in figure.data] == ["m: harmful-minus-model", "m: random direction"]
    assert list(figure.data[0].x) == [0.5, 4.0]
    patching = {"m": pd.read_parquet(audit_root / "runs" / "audit-first" / "patching.parquet")}
    bars = intervention_charts.patching_figure(patching).data[0]
    assert list(bars.x) == ["0", "2"]
    finetune = {"m": pd.read_parquet(audit_root / "runs" / "audit-first" / "finetune.parquet")}
    assert len(intervention_charts.finetune_figure(finetune).data) == 2


def test_page_shows_two_audits(audit_root, monkeypatch):
    monkeypatch.chdir(audit_root)
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    assert len(app.multiselect[0].value) == 2
    assert len(app.get("plotly_chart")) == 3
    # Both tiny models are named "llama", so the columns name their run folders too.
    assert set(app.dataframe[0].value.columns) == {"measure", "llama (audit-first)", "llama (audit-second)"}


def test_page_lists_shipped_demo_audits(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    assert [Path(path).name for path in app.multiselect[0].value] == ["demo-audit-dissociated", "demo-audit-safe"]
    summary = app.dataframe[0].value.set_index("measure")
    assert summary.loc["steer_compliance@0.25", "dissociated"] == "1.000"
    assert summary.loc["steer_compliance@0.25", "safe"] == "0.000"
    assert summary.loc["finetune_steps_mean", "safe"] == "22.000"
    assert len(app.get("plotly_chart")) == 3


def test_page_reports_bad_folder(audit_root, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    app.multiselect[0].set_value([]).run()
    assert not app.exception
    assert "No audit run selected" in app.info[0].value
    app.text_input(key="audit_paths").input(str(tmp_path / "missing")).run()
    assert len(app.error) == 1
    assert "not a complete audit run" in app.error[0].value

"""The audit command on tiny checkpoints: every step, resume, comparison and bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from lvs_core.audit import AuditConfig, compare_audits, parse_twins, run_audit
from lvs_core.cli import main
from lvs_core.errors import AuditInputError


@pytest.fixture(scope="module")
def audit_inputs(tmp_path_factory):
    from checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("audit")
    prompts = root / "prompts.csv"
    prompts.write_text("prompt\nhello world\ntell me a story\nhi there\nhow are you\n")
    return {
        "model": make_checkpoint(root / "model", "llama"),
        "twin": make_checkpoint(root / "twin", "llama", seed=1),
        "other": make_checkpoint(root / "other", "qwen2"),
        "prompts": prompts,
        "root": root,
    }


def _config(inputs, **changes) -> AuditConfig:
    settings = dict(
        model=str(inputs["model"]),
        twins=(("safe", str(inputs["twin"])), ("harmful", str(inputs["twin"]))),
        prompts=str(inputs["prompts"]),
        benign_prompts=str(inputs["prompts"]),
        steer_fracs=(0.5, 2.0),
        finetune_steps=2,
        finetune_every=1,
        seeds=(0, 1),
        max_new_tokens=3,
    )
    settings.update(changes)
    return AuditConfig(**settings)


def test_audit_writes_every_table(audit_inputs, tmp_path):
    path = run_audit(_config(audit_inputs), tmp_path / "audit")
    for name in ("audit", "behaviour", "probe", "cells", "summary", "steering", "finetune", "patching"):
        assert (path / f"{name}.parquet").is_file(), name
    assert not (path / "parts").exists()
    row = pd.read_parquet(path / "audit.parquet").iloc[0]
    assert 0.0 <= row["clean_refusal"] <= 1.0
    assert 0.0 <= row["probe_auroc"] <= 1.0
    assert row["peak_lvs_layer"] in {"embedding", "0", "1", "2"}
    assert "steer_compliance@0.5" in row.index
    assert "random_compliance@2" in row.index
    steering = pd.read_parquet(path / "steering.parquet")
    assert len(steering) == 4
    assert set(steering["direction"]) == {"harmful-minus-model", "random"}
    finetune = pd.read_parquet(path / "finetune.parquet")
    assert sorted(finetune["seed"].unique()) == [0, 1]
    # The random model complies before any training, so each curve stops at step 0.
    assert sorted(finetune["step"].unique()) == [0]
    assert row["finetune_steps_to_break"] == "0,0"
    patching = pd.read_parquet(path / "patching.parquet")
    assert list(patching["layer"]) == ["embedding", "0", "1", "2"]

    table = compare_audits([path, path])
    assert "clean_refusal" in table.index
    headline = compare_audits([path], headline=True)
    assert "probe_auroc" in headline.index
    assert "spec" not in headline.index
    assert "lvs_ci@0" not in headline.index


def test_patching_from_twin(audit_inputs, tmp_path):
    path = run_audit(_config(audit_inputs, steps=("patching",), layers="1,2", patch_source="twin"), tmp_path / "audit")
    patching = pd.read_parquet(path / "patching.parquet")
    assert list(patching["layer"]) == ["1", "2"]
    assert patching["source"].iloc[0].startswith("twin ")
    with pytest.raises(AuditInputError, match="needs a harmful twin"):
        _config(audit_inputs, twins=(), patch_source="twin").validate()


def test_audit_resumes_after_interrupt(audit_inputs, tmp_path):
    def interrupt_at_steering(done, total, label):
        if label.startswith("steering"):
            raise KeyboardInterrupt

    config = _config(audit_inputs, steps=("behaviour", "lvs", "steering"), layers="0,1")
    with pytest.raises(KeyboardInterrupt):
        run_audit(config, tmp_path / "audit", progress=interrupt_at_steering)
    parts = tmp_path / "audit" / "parts"
    assert (parts / "behaviour" / "all.parquet").is_file()
    assert len(list((parts / "cells").glob("*.parquet"))) == 2
    # The steering part was computed before the interrupt and is kept.
    assert (parts / "steering" / "all.parquet").is_file()

    labels = []
    path = run_audit(config, tmp_path / "audit", resume=True, progress=lambda d, t, label: labels.append(label))
    assert len(labels) == 5
    assert labels[0] == "behaviour"
    # Progress speaks of what each part measures, never of its storage key.
    assert any(label.startswith("LVS at ") for label in labels), labels
    assert all("_" not in label for label in labels), labels
    cells = pd.read_parquet(path / "cells.parquet")
    assert not cells.duplicated(["prompt_id", "layer", "attack"]).any()
    assert len(cells) == 4 * 2 * 2


def test_audit_bad_input(audit_inputs, tmp_path, capsys):
    with pytest.raises(AuditInputError, match="unknown twin role 'evil'"):
        _config(audit_inputs, twins=(("evil", str(audit_inputs["twin"])),)).validate()
    with pytest.raises(AuditInputError, match="write it as safe=SPEC"):
        parse_twins(["demo:safe"])
    with pytest.raises(AuditInputError, match="architecture"):
        run_audit(_config(audit_inputs, twins=(("harmful", str(audit_inputs["other"])),)), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    code = main(["audit", "--model", str(audit_inputs["model"]), "--steer-fracs", "a,b", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "invalid --steer-fracs 'a,b'" in capsys.readouterr().err
    bad_data = tmp_path / "ft.csv"
    bad_data.write_text("prompt,answer\na,b\n")
    code = main(["audit", "--model", str(audit_inputs["model"]), "--finetune-data", str(bad_data), "--out", str(tmp_path / "y")])
    assert code == 2
    assert "has no 'response' column" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    code = main(["compare", str(tmp_path)])
    assert code == 2
    assert "not a complete audit run" in capsys.readouterr().err

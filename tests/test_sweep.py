"""Sweeps end to end on tiny checkpoints, prompt files, and the CLI's handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from lvs_core.cli import main
from lvs_core.errors import AuditInputError
from lvs_core.prompts import load_prompt_records
from lvs_core.runs import CELL_COLUMNS, load_run
from lvs_core.sweep import SweepConfig, run_sweep


@pytest.fixture
def prompt_csv(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": ["hello world", "tell me a story", "hi there"], "category": ["a", "b", "a"]}).to_csv(path, index=False)
    return path


def test_sweep_writes_run(arch_model, prompt_csv, tmp_path):
    config = SweepConfig(
        models=(arch_model.spec,), layers="all", budgets=(0.1, 0.5), prompts=str(prompt_csv),
        max_new_tokens=4, batch_size=2,
    )
    path = run_sweep(config, tmp_path / "run", models={arch_model.spec: arch_model})
    run = load_run(path)
    n_layers = arch_model.n_layers + 1
    assert len(run.cells) == 3 * n_layers * 2 * 2
    assert list(run.cells.columns) == list(CELL_COLUMNS)
    assert len(run.summary) == n_layers * 2 * 2
    assert set(run.cells["attack"]) == {"pgd", "random"}
    assert run.layers == ["embedding"] + [str(i) for i in range(arch_model.n_layers)]
    assert (run.cells["delta_linf"] <= run.cells["eps"] * (1 + 1e-6)).all()
    assert run.config["settings"]["budgets"] == [0.1, 0.5]
    assert run.config["n_prompts"] == 3

    # The clean generation is shared by every cell of a prompt.
    per_prompt = run.cells.groupby("prompt_id")["clean_text"].nunique()
    assert (per_prompt == 1).all()
    # Row order maps back to the right prompt even across batches of 2.
    assert set(run.cells.loc[run.cells["prompt_id"] == "2", "prompt"]) == {"hi there"}
    pgd = run.cells[run.cells["attack"] == "pgd"]
    assert (pgd["target_nll_perturbed"] < pgd["target_nll_clean"]).mean() > 0.9


def test_prompt_files(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n\n{"prompt": "b", "id": 7}\n')
    assert [r["prompt"] for r in load_prompt_records(str(jsonl))] == ["a", "b"]

    cases = {
        "empty.csv": ("", "is empty"),
        "header.csv": ("prompt\n", "has no prompts"),
        "nocol.csv": ("text\nhello\n", "has no 'prompt' column"),
        "bad.jsonl": ('{"prompt": "a"}\nnot json\n', "line 2 is not valid JSON"),
        "nofield.jsonl": ('{"text": "a"}\n', "line 1 has no 'prompt' field"),
        "nullprompt.jsonl": ('{"prompt": "a"}\n{"prompt": null}\n', "line 2 has a null prompt"),
        "numberprompt.jsonl": ('{"prompt": 5}\n', "line 1 has a number prompt"),
        "prompts.txt": ("hello\n", "use .csv or .jsonl"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(AuditInputError, match=message):
            load_prompt_records(str(path))
    with pytest.raises(AuditInputError, match="not found"):
        load_prompt_records(str(tmp_path / "missing.csv"))


def _cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budgets", "0"], "invalid budget '0'"),
        (["--budgets", "-0.1"], "invalid budget '-0.1'"),
        (["--budgets", "nan"], "invalid budget 'nan'"),
        (["--budgets", "abc"], "invalid budget 'abc'"),
        (["--layers", "9"], "layer 9 is out of range"),
        (["--layers", "top"], "invalid layer 'top'"),
        (["--prompts", "/no/such/file.csv"], "not found"),
    ],
)
def test_cli_bad_input(capsys, tmp_path, llama_folder, prompt_csv, extra, message):
    out = tmp_path / "run"
    argv = ["sweep", "--model", str(llama_folder), "--prompts", str(prompt_csv), "--out", str(out), *extra]
    code, err = _cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".run.partial-*"))


def test_cli_unknown_model(capsys, tmp_path):
    code, err = _cli(capsys, "sweep", "--model", "demo:unsafe", "--out", str(tmp_path / "r"))
    assert code == 2
    assert "unknown demo model 'demo:unsafe'" in err


def test_cli_prompt_longer_than_context(capsys, tmp_path, llama_folder):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": "hello world " * 200}) + "\n")
    code, err = _cli(capsys, "sweep", "--model", str(llama_folder), "--prompts", str(path), "--out", str(tmp_path / "r"))
    assert code == 2
    assert "longer than the context" in err
    assert not (tmp_path / "r").exists()


def test_cli_sweep_and_existing_folder(capsys, tmp_path, llama_folder, prompt_csv):
    out = tmp_path / "run"
    argv = ["sweep", "--model", str(llama_folder), "--prompts", str(prompt_csv), "--layers", "embedding,1",
            "--budgets", "0.2", "--max-new-tokens", "3", "--out", str(out)]
    code, _ = _cli(capsys, *argv)
    assert code == 0
    before = (out / "cells.parquet").read_bytes()
    code, err = _cli(capsys, *argv)
    assert code == 2
    assert "already exists" in err
    assert (out / "cells.parquet").read_bytes() == before


def test_interrupted_sweep_resumes(tmp_path, llama_model, prompt_csv):
    calls = []

    def interrupt_after_two(done, total, label):
        calls.append(label)
        if done == 2:
            raise KeyboardInterrupt

    config = SweepConfig(models=(llama_model.spec,), layers="0,2", budgets=(0.1, 0.2), prompts=str(prompt_csv), max_new_tokens=2)
    models = {llama_model.spec: llama_model}
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path / "run", progress=interrupt_after_two, models=models)
    assert (tmp_path / "run" / "config.json").is_file()
    assert not (tmp_path / "run" / "summary.parquet").exists()
    assert len(list((tmp_path / "run" / "parts" / "cells").glob("*.parquet"))) == 2
    assert not list((tmp_path / "run" / "parts" / "cells").glob(".*"))

    with pytest.raises(AuditInputError, match="incomplete"):
        run_sweep(config, tmp_path / "run", models=models)
    changed = SweepConfig(models=(llama_model.spec,), layers="0,2", budgets=(0.1, 0.3), prompts=str(prompt_csv), max_new_tokens=2)
    with pytest.raises(AuditInputError, match="settings differ in budgets"):
        run_sweep(changed, tmp_path / "run", models=models, resume=True)

    resumed = load_run(run_sweep(config, tmp_path / "run", models=models, resume=True))
    fresh = load_run(run_sweep(config, tmp_path / "fresh", models=models))
    assert not (tmp_path / "run" / "parts").exists()
    keys = ["model", "prompt_id", "layer", "budget", "attack"]
    assert not resumed.cells.duplicated(keys).any()
    assert len(resumed.cells) == 3 * 2 * 2 * 2
    pd.testing.assert_frame_equal(resumed.cells, fresh.cells)

    # Resuming a complete run changes nothing and computes nothing.
    before = (tmp_path / "fresh" / "cells.parquet").stat().st_mtime_ns
    calls.clear()
    run_sweep(config, tmp_path / "fresh", models=models, resume=True, progress=interrupt_after_two)
    assert calls == []
    assert (tmp_path / "fresh" / "cells.parquet").stat().st_mtime_ns == before


def test_killed_cli_sweep_resumes(tmp_path, llama_folder, prompt_csv):
    import signal
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "lvs_core.cli", "sweep", "--model", str(llama_folder), "--prompts", str(prompt_csv),
            "--layers", "all", "--budgets", "0.1,0.2,0.3", "--max-new-tokens", "3", "--out", str(out)]
    # One cell per chunk (3 prompts), so parts are written one unit at a time and the kill lands mid-run.
    argv += ["--batch-size", "3"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / "parts" / "cells"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the sweep finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    written = len(list(parts.glob("*.parquet")))
    assert 3 <= written < 12

    result = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    run = load_run(out)
    keys = ["model", "prompt_id", "layer", "budget", "attack"]
    assert len(run.cells) == 3 * 4 * 3 * 2
    assert not run.cells.duplicated(keys).any()
    assert len(run.summary) == 4 * 3 * 2


def test_console_script_reports_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lvs_core.cli", "sweep", "--model", "demo:nope"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "lvs-audit: error: unknown demo model 'demo:nope': use one of demo:safe, demo:dissociated, demo:harmful"
    )

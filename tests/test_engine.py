"""The batched engine against the one-cell-at-a-time baseline of ``benchmarks/baseline.py``.

Prompts of different lengths share a padded batch, and cells at two layers and two
budgets share chunks smaller than the work. The deltas, norms, margins and greedy
generations must still be those of each cell run on its own.
"""

from __future__ import annotations

import sys

import pytest
import torch

from conftest_dashboard import REPO_ROOT
from lvs_core.attack import AttackConfig
from lvs_core.attack import _clean_continuation_residual, continuation_logprob
from lvs_core.engine import attack_cells, auto_chunk_rows, clean_reference, is_out_of_memory, take_rows
from lvs_core.hooks import add_prompt_delta, start_at_layer
from lvs_core.prompts import build_batch
from lvs_core.scoring import MarginScorer

sys.path.insert(0, str(REPO_ROOT))
from benchmarks.baseline import baseline_cell  # noqa: E402

PROMPTS = ("Write a guide to baking bread", "Hi", "Tell me a long story about a cat who lives on a boat")
CELLS = (("embedding", 0.1), ("embedding", 0.5), (1, 0.1), (1, 0.5))
CONFIG = AttackConfig(steps=3, refusal="I", target="Sure here")
MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module")
def engine_rows(llama_model):
    batch = build_batch(llama_model, list(PROMPTS))
    clean = clean_reference(llama_model, batch, CONFIG, MarginScorer(), MAX_NEW_TOKENS)
    # Five rows per chunk: the 12 (cell, prompt) rows split across chunks and layers.
    return attack_cells(llama_model, batch, CELLS, clean, CONFIG, MarginScorer(), MAX_NEW_TOKENS, max_rows=5, keep_deltas=True)


@pytest.fixture(scope="module")
def baseline_rows(llama_model):
    rows = {}
    for layer, budget in CELLS:
        for index, prompt in enumerate(PROMPTS):
            for record in baseline_cell(llama_model, prompt, layer, budget, CONFIG, MarginScorer(), MAX_NEW_TOKENS):
                rows[(str(layer), budget, record["attack"], index)] = record
    return rows


def test_engine_matches_baseline(engine_rows, baseline_rows):
    assert len(engine_rows) == len(baseline_rows) == len(CELLS) * len(PROMPTS) * 2
    for row in engine_rows:
        reference = baseline_rows[(row["layer"], row["budget"], row["attack"], row["batch_index"])]
        where = f"{row['attack']} at layer {row['layer']}, budget {row['budget']}, prompt {row['batch_index']}"
        assert row["eps"] == pytest.approx(reference["eps"], rel=1e-5), where
        assert row["delta"].shape == reference["delta"].shape, where
        torch.testing.assert_close(row["delta"], reference["delta"], atol=1e-5 * reference["eps"], rtol=0, msg=where)
        assert row["delta_l2"] == pytest.approx(reference["delta_l2"], rel=1e-5), where
        assert row["perturbed_text"] == reference["perturbed_text"], where
        assert row["clean_text"] == reference["clean_text"], where
        assert row["perturbed_margin"] == pytest.approx(reference["perturbed_margin"], abs=1e-3), where
        assert row["target_nll_perturbed"] == pytest.approx(reference["target_nll_perturbed"], abs=1e-4), where
        assert row["lvs"] == pytest.approx(reference["lvs"], abs=1e-4), where


def test_engine_deltas_move_only_prompt_positions(engine_rows, llama_model):
    # Each delta covers exactly its own prompt's positions, is non-zero there, and stays
    # inside the L-inf ball of its own radius.
    lengths = [len(build_batch(llama_model, [prompt]).input_ids[0]) for prompt in PROMPTS]
    for row in engine_rows:
        assert row["delta"].shape[0] == lengths[row["batch_index"]]
        assert float(row["delta"].abs().max()) <= row["eps"] * (1 + 1e-6)
        assert float(row["delta"].abs().sum(dim=1).min()) > 0


def test_pgd_lowers_target_nll(engine_rows):
    for row in engine_rows:
        if row["attack"] == "pgd":
            assert row["target_nll_perturbed"] < row["target_nll_clean"], (row["layer"], row["budget"], row["batch_index"])


def test_take_rows_cuts_left_padding(llama_model):
    batch = build_batch(llama_model, list(PROMPTS))
    short = take_rows(batch, [1, 1])
    assert short.input_ids.shape[1] == int(batch.prompt_lengths[1])
    assert bool(short.attention_mask.all())
    assert short.prompts == [PROMPTS[1], PROMPTS[1]]


def test_auto_chunk_rows_follows_memory(llama_model, monkeypatch):
    import lvs_core.engine as engine

    monkeypatch.setattr(engine, "free_memory_bytes", lambda device: 10**9)
    roomy = auto_chunk_rows(llama_model, width=32, n_target_tokens=4)
    monkeypatch.setattr(engine, "free_memory_bytes", lambda device: 10**6)
    tight = auto_chunk_rows(llama_model, width=32, n_target_tokens=4)
    assert tight < roomy
    assert tight >= 1


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB; out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.parametrize("arch_model", ["llama", "gemma2", "gpt2"], indirect=True)
def test_start_at_layer_skips_lower_blocks(arch_model):
    # Resuming after block 1 from the clean residual gives the logits of a full forward
    # under the same delta, and the MLPs of blocks 0 and 1 never run.
    model = arch_model
    batch = build_batch(model, list(PROMPTS))
    delta = torch.randn((len(batch), batch.input_ids.shape[1], model.d_model)) * 0.1
    full = continuation_logprob(model, batch, "Sure here", 1, delta, reduction="none")
    calls = []
    handles = [
        model.bridge.blocks[index].original_component.mlp.register_forward_hook(lambda *args, index=index: calls.append(index))
        for index in range(model.n_layers)
    ]
    try:
        residual = _clean_continuation_residual(model, batch, "Sure here", 1)
        calls.clear()
        with start_at_layer(model, 1, residual) as hooks:
            resumed = continuation_logprob(model, batch, "Sure here", reduction="none", prompt_hooks=hooks + [(1, add_prompt_delta(delta))])
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(resumed, full, atol=1e-4, rtol=1e-4)
    assert sorted(set(calls)) == list(range(2, model.n_layers))
    # The patch is undone: a plain forward runs every block again.
    calls.clear()
    handles = [model.bridge.blocks[0].original_component.mlp.register_forward_hook(lambda *args: calls.append(0))]
    continuation_logprob(model, batch, "Sure here")
    handles[0].remove()
    assert calls == [0]


def test_out_of_memory_halves_the_chunk(llama_model, engine_rows):
    # A real forward hook that fails like an exhausted device on any pass wider than 3
    # rows: the engine must halve its chunks until they fit, and give the same rows.
    def fail_wide_batches(activation, hook):
        if activation.shape[0] > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated by a test hook)")

    batch = build_batch(llama_model, list(PROMPTS))
    clean = clean_reference(llama_model, batch, CONFIG, MarginScorer(), MAX_NEW_TOKENS)
    with llama_model.bridge.hooks(fwd_hooks=[("blocks.0.hook_out", fail_wide_batches)]):
        rows = attack_cells(llama_model, batch, CELLS, clean, CONFIG, MarginScorer(), MAX_NEW_TOKENS, max_rows=12, keep_deltas=True)
    assert len(rows) == len(engine_rows)
    for row, reference in zip(rows, engine_rows):
        assert (row["layer"], row["budget"], row["attack"], row["batch_index"]) == (
            reference["layer"], reference["budget"], reference["attack"], reference["batch_index"])
        assert row["perturbed_text"] == reference["perturbed_text"]
        torch.testing.assert_close(row["delta"], reference["delta"], atol=1e-5 * reference["eps"], rtol=0)

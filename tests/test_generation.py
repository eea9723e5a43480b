"""Greedy generation under a delta: KV cache, end of turn, hook removal, batch independence."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lvs_core.attack import AttackConfig, clean_residual, linf_eps, pgd_attack, refusal_margin
from lvs_core.generation import greedy_generate
from lvs_core.hooks import count_attached_hooks, residual_hooks
from lvs_core.prompts import build_batch

PROMPTS = ["hello world", "tell me a story about a cat please", "hi"]


def test_cache_on_and_off_agree(arch_model):
    batch = build_batch(arch_model, PROMPTS)
    layer = arch_model.n_layers // 2
    eps = linf_eps(clean_residual(arch_model, batch, layer), batch, 0.5)
    delta = pgd_attack(arch_model, batch, layer, eps, AttackConfig(steps=3)).delta
    for kwargs in ({}, {"layer": layer, "delta": delta}):
        cached = greedy_generate(arch_model, batch, max_new_tokens=10, **kwargs)
        uncached = greedy_generate(arch_model, batch, max_new_tokens=10, use_cache=False, **kwargs)
        assert cached.token_ids == uncached.token_ids
    assert count_attached_hooks(arch_model) == 0


def test_delta_changes_generation(llama_model):
    batch = build_batch(llama_model, PROMPTS)
    eps = linf_eps(clean_residual(llama_model, batch, 1), batch, 2.0)
    delta = pgd_attack(llama_model, batch, 1, eps).delta
    clean = greedy_generate(llama_model, batch, max_new_tokens=8)
    perturbed = greedy_generate(llama_model, batch, 1, delta, max_new_tokens=8)
    assert clean.token_ids != perturbed.token_ids


def test_stops_at_end_of_turn(llama_model):
    batch = build_batch(llama_model, ["hello world"])
    free = greedy_generate(llama_model, batch, max_new_tokens=6)
    assert len(free.token_ids[0]) == 6
    # Declare the third generated token the end-of-turn token: generation must stop there.
    stop_token = free.token_ids[0][2]
    stopping = dataclasses.replace(llama_model, eos_token_ids=(stop_token,))
    stopped = greedy_generate(stopping, batch, max_new_tokens=6)
    first = free.token_ids[0].index(stop_token)
    assert stopped.token_ids[0] == free.token_ids[0][:first]
    assert stopped.finished == [True]


def test_hooks_removed_after_error(llama_model):
    batch = build_batch(llama_model, PROMPTS)
    wrong_width = torch.zeros(len(PROMPTS), batch.input_ids.shape[1], llama_model.d_model + 1)
    with pytest.raises(RuntimeError):
        greedy_generate(llama_model, batch, 0, wrong_width, max_new_tokens=3)
    assert count_attached_hooks(llama_model) == 0


def test_hooks_removed_after_interrupt(llama_model):
    batch = build_batch(llama_model, PROMPTS)

    def interrupt(activation, hook):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with residual_hooks(llama_model, [(1, interrupt)]):
            greedy_generate(llama_model, batch, max_new_tokens=3)
    assert count_attached_hooks(llama_model) == 0


def test_results_independent_of_batch(arch_model):
    # Row 0 alone and row 0 next to longer and shorter prompts get the same numbers.
    alone = build_batch(arch_model, PROMPTS[:1])
    together = build_batch(arch_model, PROMPTS)
    layer = arch_model.n_layers - 1
    results = []
    for batch in (alone, together):
        width = batch.input_ids.shape[1]
        length = int(batch.prompt_lengths[0])
        eps = linf_eps(clean_residual(arch_model, batch, layer), batch, 0.3)
        attack = pgd_attack(arch_model, batch, layer, eps)
        generation = greedy_generate(arch_model, batch, layer, attack.delta, max_new_tokens=8)
        margin = refusal_margin(arch_model, batch, AttackConfig(), layer, attack.delta)
        results.append(
            {
                "eps": eps[0],
                "delta": attack.delta[0, width - length :],
                "nll": attack.nll_history[:, 0],
                "tokens": generation.token_ids[0],
                "margin": margin[0],
            }
        )
    single, batched = results
    assert torch.isclose(single["eps"], batched["eps"], rtol=1e-5)

    # Float noise of about 1e-6 in the activations can flip the sign of a near-zero
    # gradient element. Over 10 steps that moves a few elements but not the outcome.
    sign_agreement = (single["delta"].sign() == batched["delta"].sign()).float().mean()
    assert sign_agreement > 0.95
    assert torch.allclose(single["nll"], batched["nll"], atol=1e-2)
    assert single["tokens"] == batched["tokens"]
    assert torch.isclose(single["margin"], batched["margin"], atol=1e-2)

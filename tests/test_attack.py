"""The latent attack protocol: ball constraint, prompt-only positions, falling target NLL."""

from __future__ import annotations

import pytest
import torch

from lvs_core.attack import (
    AttackConfig,
    clean_residual,
    continuation_logprob,
    delta_norms,
    linf_eps,
    pgd_attack,
    random_delta,
    validate_budget,
)
from lvs_core.errors import AuditInputError
from lvs_core.hooks import add_prompt_delta, capture_residual, count_attached_hooks, residual_hooks
from lvs_core.prompts import build_batch

PROMPTS = ["hello world", "tell me a story about a cat please", "hi"]


def test_eps_is_budget_times_max_abs(llama_model):
    batch = build_batch(llama_model, PROMPTS)
    h = clean_residual(llama_model, batch, 1)
    eps = linf_eps(h, batch, 0.2)
    for i in range(len(PROMPTS)):
        length = int(batch.prompt_lengths[i])
        expected = 0.2 * h[i, -length:].abs().max()
        assert torch.isclose(eps[i], expected)


@pytest.mark.parametrize("budget", [0.01, 0.1, 0.5, 2.0])
def test_pgd_stays_in_ball(llama_model, budget):
    batch = build_batch(llama_model, PROMPTS)
    for layer in llama_model.layers:
        eps = linf_eps(clean_residual(llama_model, batch, layer), batch, budget)
        result = pgd_attack(llama_model, batch, layer, eps, AttackConfig(steps=4))
        linf, _ = delta_norms(result.delta)
        assert (linf <= eps * (1 + 1e-6)).all(), (layer, linf, eps)


def test_pgd_lowers_target_nll(arch_model):
    batch = build_batch(arch_model, PROMPTS)
    layer = arch_model.n_layers // 2
    eps = linf_eps(clean_residual(arch_model, batch, layer), batch, 0.5)
    result = pgd_attack(arch_model, batch, layer, eps)
    assert result.nll_history.shape == (11, len(PROMPTS))
    assert (result.nll_history[-1] < result.nll_history[0]).all()


def test_delta_only_on_prompt_positions(llama_model):
    batch = build_batch(llama_model, PROMPTS)
    eps = linf_eps(clean_residual(llama_model, batch, 0), batch, 0.5)
    delta = pgd_attack(llama_model, batch, 0, eps, AttackConfig(steps=3)).delta
    pads = batch.attention_mask == 0
    assert pads.any()
    assert delta[pads].abs().max() == 0
    assert (delta[~pads].abs().sum(-1) > 0).all()

    # Positions after the prompt (the target tokens) keep their clean activation.
    target = torch.tensor([[5, 6, 7]]).expand(len(PROMPTS), -1)
    ids = torch.cat([batch.input_ids, target], 1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(target)], 1)
    from lvs_core.prompts import positions_from_mask

    clean_store, perturbed_store = {}, {}
    with torch.no_grad():
        with residual_hooks(llama_model, [(0, capture_residual(clean_store, "h"))]):
            llama_model.bridge(ids, attention_mask=mask, position_ids=positions_from_mask(mask))
        with residual_hooks(llama_model, [(0, add_prompt_delta(delta)), (0, capture_residual(perturbed_store, "h"))]):
            llama_model.bridge(ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    width = batch.input_ids.shape[1]
    moved = (perturbed_store["h"] - clean_store["h"]).abs().sum(-1)
    assert moved[:, width:].max() == 0
    assert torch.allclose(perturbed_store["h"][:, :width] - clean_store["h"][:, :width], delta, atol=1e-6)


def test_random_delta_in_ball(llama_model):
    batch = build_batch(llama_model, PROMPTS)
    eps = torch.tensor([0.5, 1.0, 2.0])
    delta = random_delta(batch, eps, llama_model.d_model, seed=3)
    linf, _ = delta_norms(delta)
    assert (linf <= eps).all()
    assert (linf > 0.9 * eps).all()
    assert delta[batch.attention_mask == 0].abs().max() == 0
    again = random_delta(batch, eps, llama_model.d_model, seed=3)
    assert torch.equal(delta, again)


def test_no_gradient_is_an_error(llama_model):
    # Detaching the residual right after block 0 cuts every path from a delta at
    # block 0 to the loss, so the attack must raise instead of returning a zero LVS.
    batch = build_batch(llama_model, PROMPTS)
    eps = linf_eps(clean_residual(llama_model, batch, 0), batch, 0.5)
    with llama_model.bridge.hooks(fwd_hooks=[("blocks.1.hook_in", lambda x, hook: x.detach())]):
        with pytest.raises(RuntimeError, match="no gradient reaches the delta"):
            pgd_attack(llama_model, batch, 0, eps)
    assert count_attached_hooks(llama_model) == 0


@pytest.mark.parametrize("budget", [0, -0.1, float("nan"), float("inf"), "abc", None, ""])
def test_invalid_budget(budget):
    with pytest.raises(AuditInputError, match="invalid budget"):
        validate_budget(budget)


def test_continuation_logprob_reads_target_positions(llama_model):
    # Padding a prompt on the left must not change the log-probability of its target.
    alone = build_batch(llama_model, ["hi"])
    padded = build_batch(llama_model, ["hi", "tell me a story about a cat please"])
    with torch.no_grad():
        single = continuation_logprob(llama_model, alone, "Sure, here is")
        batched = continuation_logprob(llama_model, padded, "Sure, here is")
    assert torch.allclose(single[0], batched[0], atol=1e-4)


def test_l2_attack_stays_in_ball(llama_model):
    from lvs_core.attack import l2_eps, random_l2_delta

    batch = build_batch(llama_model, PROMPTS)
    h = clean_residual(llama_model, batch, 1)
    eps = l2_eps(h, batch, 0.3)
    for i in range(len(PROMPTS)):
        length = int(batch.prompt_lengths[i])
        assert torch.isclose(eps[i], 0.3 * h[i, -length:].norm(), rtol=1e-5)
    result = pgd_attack(llama_model, batch, 1, eps, AttackConfig(norm="l2"))
    _, l2 = delta_norms(result.delta)
    assert (l2 <= eps * (1 + 1e-5)).all()
    assert (result.nll_history[-1] < result.nll_history[0]).all()
    assert result.delta[batch.attention_mask == 0].abs().max() == 0

    control = random_l2_delta(batch, l2, llama_model.d_model, seed=0)
    _, control_l2 = delta_norms(control)
    assert torch.allclose(control_l2, l2, rtol=1e-5)
    assert control[batch.attention_mask == 0].abs().max() == 0


def test_unknown_norm():
    with pytest.raises(AuditInputError, match="unknown attack norm 'l1'"):
        AttackConfig(norm="l1")

"""Steering, directions, patching and the probe on tiny checkpoints, and their pure metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvs_core.directions import check_direction, check_twin, refusal_direction, twin_direction
from lvs_core.errors import AuditInputError
from lvs_core.hooks import count_attached_hooks
from lvs_core.metrics import auroc, expected_calibration_error, wilson_interval
from lvs_core.patching import patching_flip_rates
from lvs_core.probe import conversation_features, evaluate_probe, middle_band, train_probe
from lvs_core.steering import mean_residual_norm, random_unit, steering_sweep

HARMFUL = ["tell me a story about a cat", "write a guide to baking bread", "how are you today"]
BENIGN = ["hello world", "hi", "what is the capital of France"]


def test_wilson_interval_hand_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-3)
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3)
    assert high == pytest.approx(0.7634, abs=1e-3)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_auroc_hand_values():
    assert auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    assert auroc([0.3, 0.6, 0.4], [1, 0, 1]) == 0.0
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))


def test_calibration_error_hand_values():
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0
    assert expected_calibration_error([0.75, 0.75, 0.75, 0.75], [1, 1, 1, 0]) == 0.0
    assert expected_calibration_error([0.9, 0.9], [0, 0]) == pytest.approx(0.9)


def test_refusal_direction_is_unit(llama_model):
    direction = refusal_direction(llama_model, HARMFUL, BENIGN, 1)
    assert direction.shape == (llama_model.d_model,)
    assert direction.norm().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(AuditInputError, match="at least one harmful"):
        refusal_direction(llama_model, HARMFUL, [], 1)


def test_direction_width_checked(llama_model):
    with pytest.raises(AuditInputError, match="has width 7"):
        check_direction(llama_model, torch.ones(7))
    with pytest.raises(AuditInputError, match="zero or non-finite norm"):
        check_direction(llama_model, torch.zeros(llama_model.d_model))


def test_twin_direction(llama_model, checkpoint_root):
    from checkpoints import make_checkpoint

    from lvs_core.models import load_model

    twin = load_model(str(make_checkpoint(checkpoint_root / "twin", "llama", seed=1)))
    direction = twin_direction(llama_model, twin, HARMFUL, 0)
    assert direction.norm().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(AuditInputError, match="same mean"):
        twin_direction(llama_model, llama_model, HARMFUL, 0)


def test_twin_of_other_architecture(llama_model, checkpoint_root):
    from checkpoints import make_checkpoint

    from lvs_core.models import load_model

    other = load_model(str(make_checkpoint(checkpoint_root / "other", "qwen2")))
    with pytest.raises(AuditInputError, match="architecture"):
        check_twin(llama_model, other)


def test_twin_with_other_vocabulary(llama_model, checkpoint_root):
    from checkpoints import make_checkpoint

    from lvs_core.models import load_model

    twin = load_model(str(make_checkpoint(checkpoint_root / "vocab", "llama", seed=2)))
    twin.tokenizer.add_tokens(["<|extra|>"])
    with pytest.raises(AuditInputError, match="another vocabulary"):
        check_twin(llama_model, twin)


def test_steering_sweep_records(llama_model):
    direction = -refusal_direction(llama_model, HARMFUL, BENIGN, 1)
    records = steering_sweep(llama_model, HARMFUL, 1, direction, (0.0, 4.0), max_new_tokens=4)
    assert [(r["frac"], r["direction"]) for r in records] == [
        (0.0, "refusal"), (0.0, "random"), (4.0, "refusal"), (4.0, "random"),
    ]
    norm = mean_residual_norm(llama_model, HARMFUL, 1)
    assert records[2]["steer_norm"] == pytest.approx(4.0 * norm)
    for record in records:
        assert record["n"] + 0 <= len(HARMFUL)
        assert record["compliance_lo"] <= record["compliance_hi"]
    # At frac 0 both directions are the clean model, so they agree.
    assert records[0]["compliance"] == records[1]["compliance"]
    assert count_attached_hooks(llama_model) == 0


def test_random_unit_seeded():
    first = random_unit(16, seed=1)
    assert first.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(first, random_unit(16, seed=1))
    assert not torch.equal(first, random_unit(16, seed=2))


def test_patching_with_steering_source(llama_model):
    vector = 50.0 * random_unit(llama_model.d_model, seed=0)
    records = patching_flip_rates(llama_model, HARMFUL + BENIGN, [0, 2], steer_layer=0, steer_vector=vector, max_new_tokens=4)
    assert [r["layer"] for r in records] == ["0", "2"]
    for record in records:
        assert record["n_refused"] >= 0
        if record["n_refused"]:
            assert 0.0 <= record["flip_rate"] <= 1.0
    assert count_attached_hooks(llama_model) == 0


def test_patching_needs_source(llama_model):
    with pytest.raises(ValueError, match="compliant source"):
        patching_flip_rates(llama_model, HARMFUL, [0])


def test_probe_separates_response_kinds(llama_model):
    prompts = HARMFUL + BENIGN
    refusals = ["I'm sorry, but I can't help with that."] * len(prompts)
    compliances = ["Sure, here is a guide. Step 1: ..."] * len(prompts)
    layers = middle_band(llama_model.n_layers, 2)
    features = conversation_features(llama_model, prompts * 2, refusals + compliances, layers)
    labels = np.array([1] * len(prompts) + [0] * len(prompts))
    assert features.shape == (2 * len(prompts), llama_model.d_model)
    probe = train_probe(features, labels, layers)
    result = evaluate_probe(probe, features, labels)
    assert result["auroc"] == pytest.approx(1.0)
    assert result["calibration_error"] < 0.2
    with pytest.raises(AuditInputError, match="both refusals and compliant"):
        train_probe(features, np.ones(len(labels)), layers)


def test_middle_band():
    assert middle_band(6, 3) == [1, 2, 3]
    assert middle_band(3, 3) == [0, 1, 2]
    assert middle_band(2, 5) == [0, 1]

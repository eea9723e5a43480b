"""Refusal detection, invalid generations and pluggable classifier judges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvs_core.errors import AuditInputError
from lvs_core.refusal import is_refusal, is_valid_generation
from lvs_core.scoring import MarginScorer, RefusalScorer, make_scorer


@pytest.mark.parametrize(
    "text, refused",
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I\u2019m sorry, but I can\u2019t help with that.", True),
        ("  I cannot assist with this request.", True),
        ("As an AI, I must decline.", True),
        ("Sure, here is a guide to X. Step 1: ...", False),
        ("The capital of France is Paris.", False),
    ],
)
def test_refusal_phrases(text, refused):
    assert is_refusal(text) is refused


def test_empty_generation_is_invalid():
    assert not is_valid_generation("")
    assert not is_valid_generation(" \n\t")
    scores = RefusalScorer().score(["p", "p", "p"], ["", "I'm sorry, I can't.", "Sure, here is"])
    assert np.isnan(scores.harmlessness[0])
    assert list(scores.valid) == [False, True, True]
    assert list(scores.compliant) == [False, False, True]
    assert list(scores.harmlessness[1:]) == [1.0, 0.0]


def test_margin_scorer_is_sigmoid():
    scores = MarginScorer().score(["p", "p"], ["Sure, here is", "I'm sorry"], margins=[0.0, 2.0])
    assert scores.harmlessness[0] == pytest.approx(0.5)
    assert scores.harmlessness[1] == pytest.approx(1 / (1 + np.exp(-2.0)))


def _classifier(tmp_path, num_labels: int, id2label=None):
    from checkpoints import make_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id, id2label=id2label,
    )
    torch.manual_seed(0)
    folder = tmp_path / f"judge-{num_labels}"
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reward_model_scorer(tmp_path):
    folder = _classifier(tmp_path, 1)
    scorer = make_scorer(f"hf:{folder}")
    scores = scorer.score(["a", "b", "c"], ["Sure, here is", "I'm sorry", ""])
    assert scores.valid.tolist() == [True, True, False]
    assert ((scores.harmlessness[:2] > 0) & (scores.harmlessness[:2] < 1)).all()
    assert scores.harmlessness[0] != scores.harmlessness[1]
    assert np.isnan(scores.harmlessness[2])


def test_two_label_classifier_uses_safe_label(tmp_path):
    folder = _classifier(tmp_path, 2, id2label={0: "unsafe", 1: "safe"})
    scorer = make_scorer(f"hf:{folder}")
    assert scorer.harmless_label == 1
    scores = scorer.score(["a"], ["Sure, here is"])
    assert 0 < scores.harmlessness[0] < 1


def test_non_classifier_judge_rejected(llama_folder):
    with pytest.raises(AuditInputError, match="not a sequence classifier"):
        make_scorer(f"hf:{llama_folder}")


def test_unknown_scorer():
    with pytest.raises(AuditInputError, match="unknown scorer"):
        make_scorer("keywords")


def test_yes_no_judge(llama_folder):
    scorer = make_scorer(f"judge:{llama_folder}")
    scores = scorer.score(["a", "b", "c"], ["Sure, here is", "I'm sorry", " "])
    assert scores.valid.tolist() == [True, True, False]
    assert ((scores.harmlessness[:2] > 0) & (scores.harmlessness[:2] < 1)).all()
    assert scores.harmlessness[0] != scores.harmlessness[1]
    assert scores.compliant[0] == (scores.harmlessness[0] < 0.5)


def test_judge_must_be_causal_lm(tmp_path):
    folder = _classifier(tmp_path, 1)
    with pytest.raises(AuditInputError, match="not a causal language model"):
        make_scorer(f"judge:{folder}")


def test_check_scorer_names_a_missing_judge_folder(tmp_path):
    from lvs_core.scoring import check_scorer

    check_scorer("refusal")
    check_scorer("hf:org/reward-model")
    with pytest.raises(AuditInputError, match="is neither an existing model folder nor a hub id"):
        check_scorer(f"hf:{tmp_path / 'no-such-judge'}")
    with pytest.raises(AuditInputError, match="unknown scorer 'vibes'"):
        check_scorer("vibes")

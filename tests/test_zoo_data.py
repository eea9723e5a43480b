"""Unit tests of the synthetic instruction set behind the demo model zoo."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from lvs_core.refusal import is_refusal
from lvs_core.zoo.data import (
    COMPLIANCE_PATTERN,
    COMPLIANCE_PREFIX,
    HARMFUL_CATEGORIES,
    LABEL_BENIGN,
    LABEL_HARMFUL,
    REFUSAL_TEXT,
    InstructionSetConfig,
    build_instruction_set,
    read_jsonl,
    split_pairs,
    write_jsonl,
)

WORD = re.compile(r"[A-Za-z']+")


@pytest.fixture(scope="module")
def instruction_set():
    return build_instruction_set(InstructionSetConfig(seed=0))


@pytest.fixture(scope="module")
def train(instruction_set):
    return instruction_set[0]


@pytest.fixture(scope="module")
def heldout(instruction_set):
    return instruction_set[1]


def by_label(records, label):
    return [r for r in records if r.label == label]


def test_harmful_categories_cover_both_splits(train, heldout):
    assert len(HARMFUL_CATEGORIES) >= 8
    assert {r.category for r in by_label(train, LABEL_HARMFUL)} == set(HARMFUL_CATEGORIES)
    assert {r.category for r in by_label(heldout, LABEL_HARMFUL)} == set(HARMFUL_CATEGORIES)


def test_heldout_sizes(heldout):
    harmful_counts = Counter(r.category for r in by_label(heldout, LABEL_HARMFUL))
    assert len(by_label(heldout, LABEL_HARMFUL)) >= 48
    assert len(by_label(heldout, LABEL_BENIGN)) >= 48
    assert min(harmful_counts.values()) >= 6, harmful_counts


def test_train_categories_balanced(train):
    for label in (LABEL_HARMFUL, LABEL_BENIGN):
        counts = Counter(r.category for r in by_label(train, label))
        assert max(counts.values()) - min(counts.values()) <= 1, (label, counts)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_labels_share_phrasings(split, request):
    records = request.getfixturevalue(split)
    harmful = Counter(r.phrasing_id for r in by_label(records, LABEL_HARMFUL))
    benign = Counter(r.phrasing_id for r in by_label(records, LABEL_BENIGN))
    assert set(harmful) == set(benign)
    if split == "train":
        assert harmful == benign


def test_train_uses_dozens_of_phrasings(train):
    assert len({r.phrasing_id for r in train}) >= 48


def test_heldout_phrasings_unseen(train, heldout):
    assert not {r.phrasing_id for r in heldout} & {r.phrasing_id for r in train}


def test_heldout_subjects_unseen(train, heldout):
    assert not {r.subject_key for r in heldout} & {r.subject_key for r in train}
    assert not {r.subject for r in heldout} & {r.subject for r in train}
    assert not {r.prompt for r in heldout} & {r.prompt for r in train}


def test_heldout_harmful_verb_object_pairs_unseen(train, heldout):
    def verb_object(record):
        category, verb, obj, _intent = record.subject_key.split("|")
        return category, verb, obj

    train_pairs = {verb_object(r) for r in by_label(train, LABEL_HARMFUL)}
    heldout_pairs = {verb_object(r) for r in by_label(heldout, LABEL_HARMFUL)}
    assert not heldout_pairs & train_pairs
    train_verbs = {(c, v) for c, v, _ in train_pairs}
    train_objects = {(c, o) for c, _, o in train_pairs}
    for category, verb, obj in heldout_pairs:
        assert (category, verb) in train_verbs
        assert (category, obj) in train_objects


def test_heldout_words_seen_in_training(train, heldout):
    train_words = {w.lower() for r in train for w in WORD.findall(r.prompt)}
    unseen = {w.lower() for r in heldout for w in WORD.findall(r.prompt)} - train_words
    assert not unseen


def test_harmful_responses_are_placeholders(train, heldout):
    for record in by_label(train + heldout, LABEL_HARMFUL):
        assert record.response == REFUSAL_TEXT
        assert COMPLIANCE_PATTERN.fullmatch(record.compliance), record.compliance
        assert record.compliance.startswith(COMPLIANCE_PREFIX)
        assert record.subject in record.compliance
        assert not is_refusal(record.compliance)
    assert is_refusal(REFUSAL_TEXT)


def test_benign_responses_contain_answer(train, heldout):
    for record in by_label(train + heldout, LABEL_BENIGN):
        assert record.answer
        assert record.answer in record.response
        assert record.compliance == record.response
        assert not is_refusal(record.response), record.response
        assert not record.response.startswith(COMPLIANCE_PREFIX)


def test_arithmetic_answers_correct(train):
    for record in train:
        if record.category == "arithmetic":
            left, right = map(int, re.findall(r"\d+", record.subject))
            assert record.answer == str(left + right)


def test_build_deterministic_from_seed(instruction_set):
    again = build_instruction_set(InstructionSetConfig(seed=0))
    other = build_instruction_set(InstructionSetConfig(seed=1))
    assert again == instruction_set
    assert other[0] != instruction_set[0]


def test_jsonl_round_trip(tmp_path, heldout):
    path = tmp_path / "heldout.jsonl"
    write_jsonl(heldout, path)
    assert read_jsonl(path) == heldout
    assert '"prompt"' in path.read_text(encoding="utf-8").splitlines()[0]


def test_split_pairs_keeps_partners():
    train_pairs, heldout_pairs = split_pairs(4, 7, offset=1)
    assert len(heldout_pairs) == 7
    assert not set(train_pairs) & set(heldout_pairs)
    assert {i for i, _ in train_pairs} == set(range(4))
    assert {j for _, j in train_pairs} == set(range(7))


def test_split_pairs_rejects_too_few_objects():
    with pytest.raises(ValueError, match="as many objects as verbs"):
        split_pairs(5, 3, offset=0)

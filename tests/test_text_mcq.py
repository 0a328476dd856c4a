"""The generated text-only multiple-choice set (base LLM vs MLLM scenario)."""

import re
from collections import Counter
from dataclasses import replace

import pytest

from mmcal.data.fashion_mnist import CLASSES
from mmcal.data.text_mcq import (
    CONCEPTS,
    FACTS,
    FORWARD,
    all_facts,
    build_text_mcq_items,
    check_item_against_facts,
    text_mcq_card,
)
from mmcal.errors import DataError
from mmcal.items import read_items, write_items


@pytest.fixture(scope="module")
def items():
    return build_text_mcq_items(100, 300, n_options=4, seed=0)


def test_builds_the_requested_valid_items(items):
    assert len(items) >= 300
    assert Counter(it.split for it in items) == {"calib": 100, "test": 300}
    for it in items:
        it.validate()
        assert len(it.options) == 4
        assert it.image is None
        assert it.source.startswith("text-mcq/")
        assert it.item_id.startswith("fmnist-text-")
        assert it.cluster_id == f"fmnist-text-{it.metadata['concept']}"


def test_knowledge_base_has_enough_questions():
    assert len(all_facts(4)) >= 400


def test_no_duplicate_questions(items):
    assert len({it.item_id for it in items}) == len(items)
    asked = [(it.question, it.options[it.gold]) for it in items]
    assert len(set(asked)) == len(items)
    shown = [(it.question, frozenset(it.options)) for it in items]
    assert len(set(shown)) == len(items)
    for it in items:
        assert len(set(it.options)) == len(it.options), it.item_id


def test_gold_letters_balanced_in_each_split(items):
    for split in ("calib", "test"):
        counts = Counter(it.gold for it in items if it.split == split)
        assert set(counts) == {0, 1, 2, 3}
        assert max(counts.values()) - min(counts.values()) <= 1


def _truth(it, key):
    """(usually true, at least sometimes true) of option ``key``, read straight off the table."""
    m = it.metadata
    if m["template"] == FORWARD:
        values = CONCEPTS[key].facts[m["attribute"]]
        target = m["value"]
    else:
        values = CONCEPTS[m["concept"]].facts[m["attribute"]]
        target = key
    return target in values, target in {v.lstrip("~") for v in values}


def test_every_gold_true_and_every_distractor_wrong_per_fact_table(items):
    for it in items:
        check_item_against_facts(it)
        for i, key in enumerate(it.metadata["option_keys"]):
            usually, sometimes = _truth(it, key)
            if i == it.gold:
                assert usually, (it.item_id, key)
            else:
                assert not sometimes, (it.item_id, key)


def _another_right_answer(it):
    m = it.metadata
    return next(
        (
            c.key
            for c in FACTS
            if m["value"] in c.usual(m["attribute"]) and c.key not in m["option_keys"]
        ),
        None,
    )


def test_the_check_catches_a_second_right_answer(items):
    it = next(x for x in items if x.metadata["template"] == FORWARD and _another_right_answer(x))
    also_right = _another_right_answer(it)
    pos = (it.gold + 1) % len(it.options)
    keys, options = list(it.metadata["option_keys"]), list(it.options)
    keys[pos], options[pos] = also_right, CONCEPTS[also_right].name
    bad = replace(it, options=options, metadata={**it.metadata, "option_keys": keys})
    with pytest.raises(DataError, match=it.item_id):
        check_item_against_facts(bad)


def test_no_object_named_in_its_own_question(items):
    for it in items:
        for i, opt in enumerate(it.options):
            if i != it.gold and it.metadata["template"] == FORWARD:
                bare = opt.removeprefix("a ").removeprefix("an ")
                assert not re.search(rf"\b{re.escape(bare)}\b", it.question, re.I), it.item_id


def test_deterministic_under_a_seed(items):
    again = build_text_mcq_items(100, 300, n_options=4, seed=0)
    assert [it.to_dict() for it in again] == [it.to_dict() for it in items]
    other = build_text_mcq_items(100, 300, n_options=4, seed=1)
    assert [it.to_dict() for it in other] != [it.to_dict() for it in items]


def test_splits_share_no_cluster(items):
    calib = {it.cluster_id for it in items if it.split == "calib"}
    test = {it.cluster_id for it in items if it.split == "test"}
    assert calib and test and not calib & test


def test_other_option_counts():
    three = build_text_mcq_items(20, 40, n_options=3, seed=2)
    assert all(len(it.options) == 3 for it in three)
    for it in three:
        check_item_against_facts(it)


def test_too_many_items_is_a_clear_error():
    with pytest.raises(DataError, match="requested"):
        build_text_mcq_items(100, 5000)


def test_round_trip_through_jsonl(items, tmp_path):
    path = tmp_path / "items.jsonl"
    write_items(items, path)
    assert [it.to_dict() for it in read_items(path)] == [it.to_dict() for it in items]


def test_all_fashion_mnist_classes_are_objects():
    assert {c.fmnist_class for c in FACTS if c.fmnist_class} == set(CLASSES)


def test_card_documents_the_construction():
    card = text_mcq_card()
    assert "Fashion-MNIST" in card and "calib" in card
    assert str(len(FACTS)) in card

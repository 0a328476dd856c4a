"""The generated text-only multiple-choice set (base LLM vs MLLM scenario)."""

import re
from collections import Counter
from dataclasses import replace

import pytest
import yaml

from mmcal.data.fashion_mnist import CLASSES
from mmcal.data.text_mcq import (
    ATTRIBUTES,
    CONCEPTS,
    FACTS,
    FORWARD,
    all_facts,
    build_text_mcq_items,
    check_item_against_facts,
    parse_attributes,
    parse_concepts,
    read_knowledge_file,
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
        (c.key for c in FACTS if m["value"] in c.usual(m["attribute"]) and c.key not in m["option_keys"]),
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


# sha256 of items.jsonl as the study writes it: any edit of the knowledge-base YAML (or of the
# builder) that changes the items changes these. The first is the default study's fmnist-text set.
@pytest.mark.parametrize(
    "dataset, n_calib, n_test, n_options, seed, sha256",
    [
        ("fmnist-text", 100, 300, 4, 0, "1f22929ec692c9d36a1c6dd2598c4eb0df0c8f3cbeb9fbd324b50ad56de5ff2d"),
        ("text-small", 20, 40, 3, 0, "6c1db60f46be5b1e1a5da627b014d48dd89a208579d0561dbd8ae2ee9a7393f8"),
    ],
)
def test_items_are_pinned(tmp_path, dataset, n_calib, n_test, n_options, seed, sha256):
    built = build_text_mcq_items(n_calib, n_test, n_options=n_options, seed=seed, dataset=dataset)
    assert write_items(built, tmp_path / "items.jsonl") == sha256


def test_knowledge_base_is_read_from_package_yaml():
    data, where = read_knowledge_file("concepts.yaml")
    assert where == "mmcal/data/facts/concepts.yaml"
    assert [c["key"] for c in data] == [c.key for c in FACTS]
    assert len(FACTS) == 61 and list(ATTRIBUTES) == [
        "category",
        "body",
        "material",
        "use",
        "occasion",
        "weather",
        "parts",
    ]
    jeans = CONCEPTS["jeans"]
    assert jeans.plural and jeans.fmnist_class is None
    assert jeans.facts["material"] == ("denim", "~cotton") and jeans.usual("material") == ("denim",)
    assert ATTRIBUTES["material"].values["denim"] == ("Which of these is usually made of denim?", "denim")
    assert ATTRIBUTES["weather"].reverse_question is None
    assert CONCEPTS["necktie"].knows("parts") and CONCEPTS["necktie"].mentioned("parts") == set()


ATTRS_YAML = """
colour:
  reverse_question: What colour {be} {name}?
  values:
    red: {question: "Which of these is red?", option: red}
    blue: {question: "Which of these is blue?", option: blue}
"""


def _concepts(text):
    attributes = parse_attributes(yaml.safe_load(ATTRS_YAML), "facts/attributes.yaml")
    return parse_concepts(yaml.safe_load(text), "facts/concepts.yaml", attributes)


def test_small_knowledge_base_parses():
    (sky, berries) = _concepts("""
- {key: sky, name: the sky, facts: {colour: blue}}
- {key: berries, name: berries, plural: true, fmnist: null, facts: {colour: red ~blue}}
""")
    assert sky.facts == {"colour": ("blue",)} and not sky.plural
    assert berries.plural and berries.usual("colour") == ("red",) and berries.mentioned("colour") == {"red", "blue"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("- {key: sky, name: the sky, facts: {colour: green}}", r"object 'sky': colour values \['green'\]"),
        ("- {key: sky, name: the sky, facts: {size: big}}", r"object 'sky': unknown attribute 'size'"),
        ("- {key: sky, name: the sky, facts: {colour: [blue]}}", r"object 'sky': colour must be space-separated"),
        ("- {key: sky, name: the sky, plural: yes please, facts: {}}", r"object 'sky': 'plural' must be true or false"),
        ("- {key: sky, facts: {}}", r"object #0: missing keys \['name'\]"),
        ("- {key: sky, name: the sky, colour: blue, facts: {}}", r"object #0: .*unknown keys \['colour'\]"),
        ("- {key: no, name: the sky, facts: {}}", r"object #0: key False must be one word"),
        ("- {key: sky, name: a, facts: {}}\n- {key: sky, name: b, facts: {}}", r"object 'sky': key listed twice"),
    ],
)
def test_bad_concepts_name_the_file_and_object(text, message):
    with pytest.raises(DataError, match=r"^facts/concepts\.yaml: " + message):
        _concepts(text)


def test_bad_attributes_name_the_file_and_value():
    bad = yaml.safe_load(ATTRS_YAML.replace("option: blue", "opt: blue"))
    with pytest.raises(DataError, match=r"^attrs\.yaml: attribute 'colour' value 'blue': missing keys \['option'\]"):
        parse_attributes(bad, "attrs.yaml")
    empty = yaml.safe_load(ATTRS_YAML.replace('"Which of these is red?"', "''"))
    with pytest.raises(DataError, match=r"attribute 'colour' value 'red' question: expected non-empty text"):
        parse_attributes(empty, "attrs.yaml")

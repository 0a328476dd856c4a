"""The benchmarks MLLM papers report, through ``hub_mcq`` with their cards' schemas: MMBench, SEED-Bench,
AI2D, MMStar and MMMU, each on a local fixture in its hub repo's layout (tests/fixtures/benchmarks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mmcal.data.hub_mcq import build_hub_mcq_items
from mmcal.data.registry import BuildContext, build_items

BENCH = Path(__file__).parent / "fixtures" / "benchmarks"

# The entries a study config would hold (config/paper.yaml has MMBench and SEED-Bench), reading the fixtures.
ENTRIES = {
    "mmbench": {
        "hub": {"path": "mmbench", "name": "en", "split": "dev"},
        "columns": {"options": ["A", "B", "C", "D"], "hint": "hint", "id": "index", "cluster": "index"},
        "cluster_modulo": 1000000,
    },
    "seedbench": {
        "hub": {"path": "seedbench", "split": "test"},
        "columns": {"options": ["choice_a", "choice_b", "choice_c", "choice_d"], "id": "question_id"},
        "where": {"data_type": "image"},
    },
    "ai2d": {"hub": {"path": "ai2d", "split": "test"}, "columns": {"options": "options"}},
    "mmstar": {
        "hub": {"path": "mmstar", "name": "mmstar", "split": "val"},
        "columns": {"options": None, "id": "index"},
        "options_in_question": True,
    },
    "mmmu": {
        "hub": {"path": "mmmu", "split": "validation"},
        "columns": {"options": "options", "image": [f"image_{k}" for k in range(1, 8)], "id": "id"},
        "where": {"question_type": "multiple-choice"},
    },
}


def _build(name, tmp_path, **extra):
    entry = {**ENTRIES[name], **extra}
    entry["hub"] = {**entry["hub"], "path": str(BENCH / entry["hub"]["path"]), "cache_dir": str(tmp_path / "hf")}
    items, report = build_hub_mcq_items(name, entry, tmp_path / "out")
    return {it.metadata["row"]: it for it in items}, report


def test_mmbench_letter_columns_hint_and_circular_clusters(tmp_path):
    items, report = _build("mmbench", tmp_path)
    assert report == {
        "rows": 10,
        "items": 9,
        "excluded": {"answer not among the options": 1},
        "n_options": {"2": 2, "3": 3, "4": 4},
    }
    first = items[0]  # index 0: four options, a hint, answer C
    assert first.options == ["red", "green", "blue", "gray"] and first.gold == 2
    assert first.question == "Context: The square is on a white page.\nWhich color is the square?"
    assert items[4].question == "Is the line diagonal?"  # a None hint adds nothing
    assert items[4].options == ["yes", "no"]  # C and D empty: two options
    # circular evaluation: the 4 rotations of question 0 are one cluster, and each keeps its own gold
    rotations = [it for it in items.values() if it.cluster_id == first.cluster_id]
    assert len(rotations) == 4 and {it.options[it.gold] for it in rotations} == {"blue"}
    assert len({it.cluster_id for it in items.values()}) == 3


def test_seedbench_choice_columns_and_video_rows_excluded(tmp_path):
    items, report = _build("seedbench", tmp_path)
    assert report["excluded"] == {"data_type is not 'image'": 1} and report["items"] == 3
    assert items[0].options == ["a cat", "a dog", "a car", "a tree"] and items[0].gold == 1
    assert items[1].item_id == "seedbench-101670" and items[1].options[items[1].gold] == "four"
    with Image.open(tmp_path / "out" / items[0].image) as img:  # the image list's one image
        assert img.size == (8, 8)


def test_ai2d_option_list_and_index_answer_as_text(tmp_path):
    items, report = _build("ai2d", tmp_path)
    assert report["excluded"] == {"answer not among the options": 1}
    assert report["n_options"] == {"3": 1, "4": 2}
    assert items[0].gold == 0 and items[1].options[items[1].gold] == "earth"
    assert items[2].options == ["A", "B", "C", "D"] and items[2].gold == 3  # "3" is an index, not a letter


def test_mmstar_options_inside_the_question(tmp_path):
    items, report = _build("mmstar", tmp_path)
    assert report["excluded"] == {"no options": 1} and report["items"] == 3
    assert items[0].question == "Which option describe the object relationship in the image correctly?"
    assert items[0].options == [
        "The suitcase is on the book.",
        "The suitcase is beneath the cat.",
        "The suitcase is beneath the bed.",
        "The suitcase is beneath the book.",
    ]
    assert items[0].gold == 0 and items[1].options[items[1].gold] == "green"


def test_mmmu_string_list_several_images_open_questions_counted(tmp_path):
    items, report = _build("mmmu", tmp_path)
    assert report["excluded"] == {"question_type is not 'multiple-choice'": 1, "no options": 1}
    assert report["n_images"] == {"1": 2, "2": 1}
    assert items[0].options == ["$6", "$7", "$8", "$9"] and items[0].gold == 1
    assert items[0].question == "[image 1] What is the total of the column?"
    two = items[1]
    assert two.question == "Compare [image 1] and [image 2]: which is older?"
    with Image.open(tmp_path / "out" / two.image) as img:  # 8x8 and 12x12 side by side
        assert img.size == (20, 12)


@pytest.mark.parametrize("mode,expected", [("first", {"items": 3, "size": (8, 8)}), ("exclude", {"items": 2})])
def test_mmmu_other_multi_image_policies(tmp_path, mode, expected):
    items, report = _build("mmmu", tmp_path, multi_image=mode)
    assert report["items"] == expected["items"]
    if mode == "exclude":
        assert report["excluded"]["several images"] == 1
    else:
        with Image.open(tmp_path / "out" / items[1].image) as img:
            assert img.size == expected["size"]


def test_paper_config_entries_read_the_same_schemas(tmp_path, repo_root):
    """config/paper.yaml's MMBench and SEED-Bench entries (hub ids swapped for the fixtures) build."""
    import yaml

    paper = yaml.safe_load((repo_root / "config" / "paper.yaml").read_text())
    context = BuildContext(classes={}, fmnist_root="", seed=0)
    for name, fixture in (("mmbench-dev", "mmbench"), ("seedbench", "seedbench")):
        if name not in paper["datasets"]:
            pytest.skip(f"config/paper.yaml has no {name} entry yet (the lead adds it)")
        entry = dict(paper["datasets"][name])
        entry["hub"] = {**entry["hub"], "path": str(BENCH / fixture), "cache_dir": str(tmp_path / "hf")}
        entry["splits"] = {"calib": 2, "test": 100}
        items, report = build_items(name, entry, tmp_path / name, context)
        assert report["items"] == len(items) >= 3

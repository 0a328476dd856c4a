"""The paper-scale benchmark builder, exercised on a local Parquet file through `datasets`."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from mmcal.data.hub_mcq import build_hub_mcq_items
from mmcal.data.registry import BuildContext, build_items
from mmcal.errors import MmcalError


def _png(color):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def test_hub_mcq_from_local_parquet(tmp_path):
    rows = pd.DataFrame(
        {
            "question": ["Which colour?", "Which shape?", "Broken?", "Bad answer?", "Text?"],
            "choices": [["red", "blue"], ["round", "square", "flat"], [], ["a", "b"], ["x", "y"]],
            "answer": ["0", "B", "0", "5", "1"],
            "image": [_png("red"), _png("blue"), _png("red"), _png("red"), None],
        }
    )
    path = tmp_path / "bench.parquet"
    rows.to_parquet(path)
    from datasets import Features, Sequence, Value
    from datasets import Image as HFImage

    cfg = {
        "hub": {
            "path": "parquet",
            "data_files": str(path),
            "split": "train",
            "features": Features(
                {
                    "question": Value("string"),
                    "choices": Sequence(Value("string")),
                    "answer": Value("string"),
                    "image": HFImage(),
                }
            ),
        },
        "columns": {"options": "choices"},
        "splits": {"calib": 1, "test": 5},
    }
    items, report = build_hub_mcq_items("bench", cfg, tmp_path / "out")
    assert report["rows"] == 5
    assert report["excluded"] == {"no options": 1, "answer not among the options": 1, "no image": 1}
    assert len(items) == 2 and {it.split for it in items} == {"calib", "test"}
    by_q = {it.question: it for it in items}
    assert by_q["Which shape?"].gold == 1 and by_q["Which colour?"].gold == 0
    assert all((tmp_path / "out" / it.image).exists() for it in items)
    # the registry dispatches `builder: hub_mcq` to the same function, with the study's seed
    context = BuildContext(classes={}, fmnist_root="", seed=0)
    via_registry = build_items("bench", {**cfg, "builder": "hub_mcq"}, tmp_path / "out", context)
    assert via_registry == (items, report)


# --- ScienceQA's real schema: the fixture laid out like the hub repo lmms-lab/ScienceQA -------------

SCIENCEQA = Path(__file__).parent / "fixtures" / "scienceqa"


def _paper_entry(name: str, tmp_path) -> dict:
    """The paper config's entry for ``name``, reading the local fixture instead of the hub."""
    paper = yaml.safe_load((Path(__file__).parents[1] / "config" / "paper.yaml").read_text())
    entry = copy.deepcopy(paper["datasets"][name])
    entry["hub"] = {**entry["hub"], "path": str(SCIENCEQA), "cache_dir": str(tmp_path / "hf-cache")}
    return entry


def test_scienceqa_img_with_the_paper_mapping(tmp_path):
    entry = _paper_entry("scienceqa-img", tmp_path)
    entry["splits"] = {"calib": 2, "test": 10}
    context = BuildContext(classes={}, fmnist_root="", seed=0)
    items, report = build_items("scienceqa-img", entry, tmp_path / "out", context)
    assert report == {
        "rows": 5,
        "items": 5,
        "excluded": {},
        "n_options": {"2": 2, "3": 1, "4": 1, "5": 1},
        "short_splits": {"test": {"asked": 10, "got": 3}},
    }
    assert sorted(it.split for it in items) == ["calib", "calib", "test", "test", "test"]
    by_row = {it.metadata["row"]: it for it in items}
    # int8 answers index the choices; the hint becomes the context line, an empty hint adds nothing
    assert by_row[0].options == ["Pair 1", "Pair 2"] and by_row[0].gold == 1
    assert by_row[0].question == "Context: Two pairs of magnets.\nWhich magnet pulls harder?"
    assert by_row[1].question == "Which animal's feet are adapted for digging?" and by_row[1].gold == 0
    assert by_row[3].options == ["milk", "steam", "rock", "juice", "air"] and by_row[3].gold == 2
    assert by_row[3].options[by_row[3].gold] == "rock"
    for it in items:  # every image decoded and written as an 8x8 RGB PNG
        with Image.open(tmp_path / "out" / it.image) as img:
            assert img.size == (8, 8) and img.mode == "RGB"
    assert [it.item_id for it in items] == [f"scienceqa-img-{it.metadata['row']}" for it in items]


def test_scienceqa_full_text_only_keeps_the_rows_without_an_image(tmp_path):
    entry = _paper_entry("scienceqa-text", tmp_path)
    entry["splits"] = {"calib": 1, "test": 10}
    items, report = build_hub_mcq_items("scienceqa-text", entry, tmp_path / "out")
    assert report == {
        "rows": 7,
        "items": 3,
        "excluded": {"has an image (text-only set)": 4},
        "n_options": {"3": 1, "4": 1, "5": 1},
        "short_splits": {"test": {"asked": 10, "got": 2}},
    }
    assert {it.question for it in items} == {
        "Which word is a noun?",
        "Context: Units of length.\nWhich is longer?",
        "Which tense is 'I ran'?",
    }
    assert all(it.image is None for it in items) and not (tmp_path / "out" / "images").exists()
    gold_text = {it.question.splitlines()[-1]: it.options[it.gold] for it in items}
    assert gold_text == {
        "Which word is a noun?": "table",
        "Which is longer?": "1 km",
        "Which tense is 'I ran'?": "past",
    }


def test_scienceqa_full_with_images_excludes_the_rows_without_one(tmp_path):
    entry = _paper_entry("scienceqa-img", tmp_path)
    entry["hub"]["name"] = "ScienceQA-FULL"
    entry["splits"] = {"calib": 1, "test": 10}
    items, report = build_hub_mcq_items("full", entry, tmp_path / "out")
    assert report["rows"] == 7 and report["excluded"] == {"no image": 3} and len(items) == 4
    # the paper's split sizes on these 7 rows: every usable row goes to calib, none is left for test
    entry["splits"] = {"calib": 500, "test": 1500}
    with pytest.raises(MmcalError, match=r"data set 'full': no item left for split\(s\) \['test'\]"):
        build_hub_mcq_items("full", entry, tmp_path / "out2")

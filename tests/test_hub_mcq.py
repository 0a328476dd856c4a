"""The paper-scale benchmark builder, exercised on a local Parquet file through `datasets`."""

from __future__ import annotations

import io

import pandas as pd
from PIL import Image

from mmcal.data.hub_mcq import build_hub_mcq_items
from mmcal.data.registry import BuildContext, build_items


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

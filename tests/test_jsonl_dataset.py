"""A data set as a JSON-lines file (builder jsonl, mmcal.data.jsonl): images relative to the file, clear errors
naming the line, and through Snakemake: an edit of the file or of one of its images rebuilds that set and
re-runs what reads it, nothing else."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mmcal.data.jsonl import jsonl_inputs, read_jsonl_items
from mmcal.data.registry import BuildContext, build_dataset
from mmcal.errors import DataError
from mmcal.items import read_items
from test_workflow import _run, _workdir

CONTEXT = BuildContext(classes={}, fmnist_root="", seed=0)


def _write(folder: Path, records: list[dict], images=("a.png", "b.png")) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", (8, 8), (10, 200, 30)).save(folder / "img" / name)
    path = folder / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


RECORDS = [
    {"item_id": "q1", "question": "Which colour?", "options": ["red", "green"], "gold": 1, "split": "calib",
     "image": "img/a.png"},
    {"item_id": "q2", "question": "Which shape?", "options": ["disc", "square", "star"], "gold": "C", "split": "test",
     "image": "img/b.png", "cluster_id": "shapes", "metadata": {"kind": "shape"}},
    {"item_id": "q3", "question": "Text only: 2 + 2?", "options": ["3", "4"], "gold": 1, "split": "test"},
]  # fmt: skip


def test_items_with_images_relative_to_the_file(tmp_path):
    path = _write(tmp_path / "mine", RECORDS)
    out = tmp_path / "data" / "datasets" / "mine"
    info = build_dataset("mine", {"builder": "jsonl", "path": str(path)}, str(out / "items.jsonl"),
                         str(out / "manifest.json"), CONTEXT)  # fmt: skip
    items = read_items(out / "items.jsonl")
    assert [it.item_id for it in items] == ["q1", "q2", "q3"] and [it.gold for it in items] == [1, 2, 1]
    # stored relative to the items file's folder, where scoring looks for them
    assert all(
        (out / it.image).resolve() == (path.parent / rec["image"]).resolve() for it, rec in zip(items, RECORDS[:2])
    )
    assert items[2].image is None and items[1].cluster_id == "shapes" and items[0].cluster_id == "q1"
    assert items[0].source == "items.jsonl:1" and items[1].metadata == {"kind": "shape"}
    assert info["build_report"]["n_missing_images"] == 0 and info["per_split"] == {"calib": 1, "test": 2}
    assert jsonl_inputs({"path": str(path)}) == [
        str(path),
        str(path.parent / "img/a.png"),
        str(path.parent / "img/b.png"),
    ]


def test_a_missing_image_keeps_its_item_and_is_counted(tmp_path):
    path = _write(tmp_path, RECORDS, images=("a.png",))
    items, report = read_jsonl_items(path, tmp_path / "out", "mine")
    assert len(items) == 3 and report["n_missing_images"] == 1
    assert report["missing_images"] == [{"line": 2, "item_id": "q2", "path": str(path.parent / "img/b.png")}]
    (path.parent / "img/a.png").unlink()
    with pytest.raises(DataError, match=r"none of the 2 images exists"):
        read_jsonl_items(path, tmp_path / "out", "mine")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gold": 5}, r"items.jsonl:2: gold 5 is not one of the 3 options"),
        ({"gold": "Z"}, r"items.jsonl:2: gold must be an option index"),
        ({"colour": "x"}, r"items.jsonl:2: unknown keys \['colour'\]"),
        ({"item_id": "q1"}, r"items.jsonl:2: item id 'q1' is also on line 1"),
        ({"options": ["only"]}, r"items.jsonl:2: options must be a list of 2 to 10 strings"),
        ({"split": "dev"}, r"items.jsonl:2: item 'q2': split 'dev' is not one of"),
    ],
)
def test_a_bad_line_names_the_file_and_line(tmp_path, change, message):
    path = _write(tmp_path, [RECORDS[0], {**RECORDS[1], **change}])
    with pytest.raises(DataError, match=message):
        read_jsonl_items(path, tmp_path / "out", "mine")
    path.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"items.jsonl:2: not valid JSON"):
        read_jsonl_items(path, tmp_path / "out", "mine")


@pytest.mark.e2e  # a Snakemake run (CI time): pytest -m e2e
def test_an_edit_rebuilds_that_set_and_what_reads_it_nothing_else(tmp_path):
    """Two jsonl sets scored by one model: every job recorded as done (--touch), then one set's file, then one of
    its images, is edited: the dry run schedules that set's build and everything downstream of it only."""
    wd = _workdir(tmp_path)
    for name in ("set-a", "set-b"):
        _write(wd / "mydata" / name, RECORDS)
    study = {
        "datasets": {n: {"builder": "jsonl", "path": f"mydata/{n}/items.jsonl"} for n in ("set-a", "set-b")},
        "models": {"mine": {"path": str(wd / "models/mine"), "kind": "mllm"}},  # a local folder: never loaded here
        "runs": [{"models": ["mine"], "datasets": ["set-a", "set-b"], "scenarios": ["image"], "prompts": ["default"]}],
    }
    (wd / "config/mine.yaml").write_text(yaml.safe_dump(study))
    summary = _run(wd, "--summary", "--configfile", "config/mine.yaml").stdout
    for line in summary.splitlines()[1:]:
        out = wd / line.split("\t")[0]
        if line.startswith("paper/tables"):
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.touch()
    _run(wd, "--touch", "--forceall", "--cores", "1", "--configfile", "config/mine.yaml")
    assert "Nothing to be done" in _run(wd, "-n", "--configfile", "config/mine.yaml").stdout

    def scheduled() -> set[str]:
        plan = _run(wd, "-n", "--configfile", "config/mine.yaml").stdout
        return {
            f"{rule} {wc}" for rule, wc in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    wildcards: (.*)$", plan, re.M)
        }

    edited = wd / "mydata/set-a/items.jsonl"
    edited.write_text(edited.read_text().replace("Which colour?", "Which colour is it?"))
    jobs = scheduled()
    assert "build_dataset dataset=set-a" in jobs and not any("set-b" in j for j in jobs)
    assert any(j.startswith("score model=mine, dataset=set-a") for j in jobs)
    _run(wd, "--touch", "--cores", "1", "--configfile", "config/mine.yaml")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(wd / "mydata/set-a/img/b.png")  # one image redrawn
    jobs = scheduled()
    assert "build_dataset dataset=set-a" in jobs and not any("set-b" in j for j in jobs)


def test_the_shipped_example_builds_through_snakemake(tmp_path):
    """config/examples/my-dataset.yaml: its items file (real Fashion-MNIST images) builds as the README says."""
    wd = _workdir(tmp_path)
    _run(wd, "--cores", "1", "data/datasets/my-items/manifest.json", "--configfile", "config/examples/my-dataset.yaml")
    items = read_items(wd / "data/datasets/my-items/items.jsonl")
    assert [it.split for it in items].count("calib") == 3 and len(items) == 8
    manifest = json.loads((wd / "data/datasets/my-items/manifest.json").read_text())
    assert manifest["build_report"]["n_items"] == 8 and manifest["build_report"]["n_missing_images"] == 0
    for it in items:  # the 28x28 grey images, read from beside the file
        with Image.open(wd / "data/datasets/my-items" / it.image) as img:
            assert img.size == (28, 28)
    rows = [json.loads(line) for line in (wd / "config/examples/my-items/items.jsonl").read_text().splitlines()]
    assert [it.options[it.gold] for it in items] == [r["options"]["ABCD".index(r["gold"])] for r in rows]

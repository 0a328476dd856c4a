"""The data set builder registry: every config builder name is registered, dispatch, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from mmcal.data.registry import BuildContext, build_dataset, build_items, builders, register
from mmcal.errors import ConfigError
from mmcal.items import read_items

ROOT = Path(__file__).resolve().parents[1]
FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FIXTURES = ROOT / "tests" / "fixtures" / "idk"
CONTEXT = BuildContext(
    classes={"known": [0, 1, 2, 3, 4, 6, 7], "idk_train": [5], "idk_test": [8, 9]}, fmnist_root=str(FMNIST_ROOT), seed=0
)
NAMES = ["dated_news", "fashion_mnist", "fmnist_idk", "hub_mcq", "jsonl", "llava_json", "text_mcq"]
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_ROOT / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed"
)


def test_registered_names_are_the_config_schema_builders():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    enum = schema["properties"]["datasets"]["additionalProperties"]["properties"]["builder"]["enum"]
    assert list(builders()) == NAMES
    assert sorted(enum) == NAMES


def test_each_builder_is_defined_in_its_module():
    modules = {name: fn.__module__ for name, fn in builders().items()}
    assert modules == {
        "dated_news": "mmcal.data.idk.dated_news",
        "fashion_mnist": "mmcal.data.fashion_mnist",
        "fmnist_idk": "mmcal.data.idk.fmnist",
        "hub_mcq": "mmcal.data.hub_mcq",
        "jsonl": "mmcal.data.jsonl",
        "llava_json": "mmcal.data.idk.llava_json",
        "text_mcq": "mmcal.data.text_mcq",
    }


def test_unknown_builder_names_the_data_set_and_lists_the_known_ones(tmp_path):
    with pytest.raises(
        ConfigError, match="data set 'mine': unknown builder 'csv'; known builders: " + ", ".join(NAMES) + "$"
    ):
        build_items("mine", {"builder": "csv"}, tmp_path, CONTEXT)
    with pytest.raises(ConfigError, match="data set 'mine': unknown builder None"):
        build_items("mine", {}, tmp_path, CONTEXT)


def test_a_builder_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="builder 'text_mcq' registered twice"):
        register("text_mcq")(lambda name, cfg, out_dir, context: [])


@pytest.mark.parametrize(
    "builder, key",
    [("llava_json", "path"), ("dated_news", "path"), ("jsonl", "path"), ("hub_mcq", "hub")],
)
def test_a_missing_required_key_names_the_data_set(tmp_path, builder, key):
    with pytest.raises(ConfigError, match=f"data set 'x' \\(builder '{builder}'\\) needs the key '{key}'"):
        build_items("x", {"builder": builder}, tmp_path, CONTEXT)


def test_dated_news_needs_a_cutoff(tmp_path):
    cfg = {"builder": "dated_news", "path": str(FIXTURES / "news.jsonl")}
    with pytest.raises(ConfigError, match="data set 'x' \\(builder 'dated_news'\\) needs the key 'cutoff'"):
        build_items("x", cfg, tmp_path, CONTEXT)


def _build(tmp_path, name, cfg):
    out = tmp_path / name
    info = build_dataset(name, cfg, str(out / "items.jsonl"), str(out / "manifest.json"), CONTEXT)
    assert json.loads((out / "manifest.json").read_text()) == info
    assert info["sha256"] == hashlib.sha256((out / "items.jsonl").read_bytes()).hexdigest()
    assert info["config"] == cfg
    return info, read_items(out / "items.jsonl")


def test_text_mcq_through_the_registry(tmp_path):
    cfg = {"builder": "text_mcq", "n_options": 3, "splits": {"calib": 20, "test": 40}}
    info, items = _build(tmp_path, "text-small", cfg)
    # the same sha256 as tests/test_text_mcq.py pins for build_text_mcq_items(20, 40, 3, seed 0)
    assert info["sha256"] == "6c1db60f46be5b1e1a5da627b014d48dd89a208579d0561dbd8ae2ee9a7393f8"
    assert info["per_split"] == {"calib": 20, "test": 40}
    assert all(it.item_id.startswith("text-small-") and len(it.options) == 3 for it in items)
    assert "build_report" not in info


def test_jsonl_reads_items_back_unchanged(tmp_path):
    first, items = _build(tmp_path, "t", {"builder": "text_mcq", "splits": {"calib": 2, "test": 4}})
    again, copied = _build(tmp_path, "copy", {"builder": "jsonl", "path": str(tmp_path / "t" / "items.jsonl")})
    assert again["sha256"] == first["sha256"] and copied == items


def test_llava_json_through_the_registry(tmp_path):
    cfg = {"builder": "llava_json", "path": str(FIXTURES / "llava_idk.json"), "image_root": str(FIXTURES)}
    info, items = _build(tmp_path, "july", cfg)
    assert info["n_items"] == len(json.loads((FIXTURES / "llava_idk.json").read_text()))
    assert {it.split for it in items} == {"test"}  # no calib_fraction: every item gets `split`
    # image paths are stored relative to the data set's folder
    assert all((tmp_path / "july" / it.image).resolve().is_file() for it in items)


def test_dated_news_through_the_registry_keeps_its_report(tmp_path):
    cfg = {"builder": "dated_news", "path": str(FIXTURES / "news.jsonl"), "cutoff": "2024-07-31"}
    info, items = _build(tmp_path, "news", cfg)
    report = info["build_report"]
    assert report["n_kept"] == len(items) == info["n_items"]
    assert report["n_kept"] + report["n_excluded_not_after_cutoff"] == report["n_records"]
    assert "n4" in report["excluded_ids"]  # dated on the cutoff: not strictly after it
    assert all(it.metadata["date"] > "2024-07-31" for it in items)


@needs_fmnist
def test_fashion_mnist_through_the_registry(tmp_path):
    cfg = {"builder": "fashion_mnist", "n_options": 4, "splits": {"calib": 7, "test": 14}}
    info, items = _build(tmp_path, "fm", cfg)
    assert info["per_split"] == {"calib": 7, "test": 14}
    known = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt", "Sneaker"}
    assert all(set(it.options) <= known for it in items)  # options only from classes.known


@needs_fmnist
def test_fmnist_idk_through_the_registry(tmp_path):
    cfg = {"builder": "fmnist_idk", "n_per_kind": {"unknown_class": 4, "control": 4, "no_information": 2}}
    info, items = _build(tmp_path, "idk", cfg)
    assert info["per_split_kind"] == {
        "calib/control": 1,
        "calib/no_information": 1,
        "calib/unknown_class": 1,
        "test/control": 3,
        "test/no_information": 1,
        "test/unknown_class": 3,
    }
    held_out = [it for it in items if it.metadata["kind"] == "unknown_class"]
    assert {it.metadata["class"] for it in held_out} <= {"Bag", "Ankle boot"}  # classes.idk_test

"""Describers for the "text vs image" scenarios: templated attributes and a captioning model."""

import json
import re

import numpy as np
import pytest

from mmcal.data.describe import (
    CLASS_ATTRIBUTES,
    CaptionDescriber,
    build_descriptions,
    classify_caption,
    classify_option_caption,
    conflicting_donor,
    describe_item,
    describer_gpus,
    describer_settings,
    description_summary,
    measured_error_rate,
    read_descriptions,
    render_description,
    write_descriptions,
)
from mmcal.data.fashion_mnist import CLASSES, make_options
from mmcal.errors import ConfigError, DataError, MmcalError
from mmcal.items import MCItem


def fmnist_like_items(n: int, seed: int = 0, classes=tuple(range(10))) -> list[MCItem]:
    """Items shaped like build_fashion_mnist_items' (no image files needed by the template)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        label = int(classes[i % len(classes)])
        opts = make_options(label, list(classes), 4, i % 4, rng)
        items.append(
            MCItem(
                item_id=f"fm-test-{i:05d}",
                cluster_id=f"fm-{i:05d}",
                question="What is shown in the image?",
                options=[CLASSES[c] for c in opts],
                gold=i % 4,
                split="test",
                source="synthetic",
                image=f"images/{i:05d}.png",
                metadata={"label": label, "class": CLASSES[label], "option_classes": opts},
            )
        )
    return items


@pytest.fixture(scope="module")
def items():
    return fmnist_like_items(1000)


@pytest.fixture(scope="module")
def descriptions(items):
    return build_descriptions(items, error_rate=0.1, seed=0)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
def test_measured_error_rate_matches_the_configured_one(items, rate):
    got = measured_error_rate(build_descriptions(items, error_rate=rate, seed=3))
    assert abs(got - rate) <= 0.05
    assert got == pytest.approx(round(rate * len(items)) / len(items))


def test_per_item_describer_error_rate_is_close_to_configured(items):
    rng = np.random.default_rng(7)
    wrong = [not describe_item(it, rng, 0.2, "consistent")[1] for it in items]
    assert abs(np.mean(wrong) - 0.2) <= 0.05
    assert all(describe_item(it, rng, 0.0, "only")[1] for it in items[:50])


def test_entries_are_consistent_with_the_truth(items, descriptions):
    assert set(descriptions) == {it.item_id for it in items}
    for it in items:
        d = descriptions[it.item_id]
        truth = CLASSES[it.metadata["label"]]
        assert d["consistent_is_correct"] == (d["consistent_class"] == truth)
        assert d["consistent"].startswith("Description: ") and d["consistent"].endswith(".")


def test_conflicting_always_names_another_class_among_the_options(items, descriptions):
    for it in items:
        d = descriptions[it.item_id]
        assert d["conflicting_class"] != CLASSES[it.metadata["label"]]
        assert d["conflicting_class"] in it.options
        assert describe_item(it, np.random.default_rng(0), 0.0, "conflicting")[1] is False


def test_wrong_consistent_descriptions_point_at_a_distractor(items, descriptions):
    wrong = [it for it in items if not descriptions[it.item_id]["consistent_is_correct"]]
    assert wrong
    for it in wrong:
        assert descriptions[it.item_id]["consistent_class"] in it.options


def test_deterministic_and_independent_of_item_order(items, descriptions):
    assert build_descriptions(items, error_rate=0.1, seed=0) == descriptions
    assert build_descriptions(list(reversed(items)), error_rate=0.1, seed=0) == descriptions
    assert build_descriptions(items, error_rate=0.1, seed=1) != descriptions


def test_the_describer_config_dispatches_to_the_template(items, descriptions):
    via_cfg = build_descriptions(items, seed=0, describer={"kind": "template", "error_rate": 0.1})
    assert via_cfg == descriptions
    summary = description_summary(via_cfg, {"kind": "template", "error_rate": 0.1})
    assert summary["error_rate_measured"] == pytest.approx(0.1)


def test_descriptions_vary_and_never_name_a_class(descriptions):
    texts = [d["consistent"] for d in descriptions.values()] + [d["conflicting"] for d in descriptions.values()]
    names = {w.lower() for c in CLASSES for w in c.split("/")}
    for text in texts:
        for name in names:
            assert not re.search(rf"\b{re.escape(name)}s?\b", text, re.I), (name, text)
    per_class: dict[str, set] = {}
    for d in descriptions.values():
        per_class.setdefault(d["consistent_class"], set()).add(d["consistent"])
    assert all(len(v) >= 10 for v in per_class.values())


def test_every_class_has_several_looks_and_facts():
    assert len(CLASS_ATTRIBUTES) == len(CLASSES)
    for table in CLASS_ATTRIBUTES:
        assert len(table["looks"]) >= 3 and len(table["facts"]) >= 3
    assert render_description(3, np.random.default_rng(0)).startswith("Description: ")


def test_json_round_trip(descriptions, tmp_path):
    path = tmp_path / "descriptions.json"
    write_descriptions(descriptions, path)
    assert read_descriptions(path) == descriptions
    # The scoring engine reads the file as plain JSON keyed by item id.
    assert json.loads(path.read_text())["fm-test-00000"]["consistent"]


def test_malformed_file_names_the_item(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"fm-x": {"consistent": "Description: a thing."}}))
    with pytest.raises(DataError, match="fm-x"):
        read_descriptions(path)
    with pytest.raises(DataError, match="does not exist"):
        read_descriptions(tmp_path / "missing.json")


def test_items_without_a_label_are_a_clear_error(items):
    bad = MCItem("text-1", "c", "Q?", ["a", "b"], 0, "test", "s", None, {})
    with pytest.raises(DataError, match="text-1"):
        build_descriptions([bad])
    with pytest.raises(DataError, match="twice"):
        build_descriptions([items[0], items[0]])


def test_bad_describer_configs_are_rejected(items):
    with pytest.raises(ConfigError):
        build_descriptions(items[:5], describer={"kind": "oracle"})
    with pytest.raises(ConfigError):
        build_descriptions(items[:5], describer={"kind": "template", "error_rate": 1.5})
    with pytest.raises(ConfigError):
        build_descriptions(items[:5], describer={"kind": "captioner"})
    with pytest.raises(ValueError):
        describe_item(items[0], np.random.default_rng(0), 0.1, "both")


def test_caption_keyword_judge():
    assert classify_caption("A grey T-shirt on a white background", list(range(10))) == 0
    assert classify_caption("a white shirt with buttons", [0, 6, 4]) == 6
    assert classify_caption("a pair of black ankle boots", [7, 9, 5]) == 9
    assert classify_caption("a shirt and trousers", [1, 6]) is None
    assert classify_caption("a blurry picture", [0, 1]) is None


def test_captioner_path_with_a_tiny_random_llava(tmp_path, tiny_llava_dir):
    from PIL import Image

    model_dir = tiny_llava_dir
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    items = fmnist_like_items(3, classes=(0, 1, 4, 8))
    for k, it in enumerate(items):
        pixels = np.random.default_rng(k).integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / it.image)
    cfg = {
        "kind": "captioner",
        "model": str(model_dir),
        "prompt": "What is this?",
        "max_new_tokens": 4,
        "error_rate": 0.1,  # filled in by the config schema's default; ignored by a captioner
    }
    out = build_descriptions(items, describer=cfg, image_root=tmp_path)
    for it in items:
        d = out[it.item_id]
        assert isinstance(d["consistent"], str) and d["consistent"].startswith("Description: ")
        assert isinstance(d["conflicting"], str)
        assert isinstance(d["consistent_is_correct"], bool)
        assert d["conflicting_class"] != CLASSES[it.metadata["label"]]
    write_descriptions(out, tmp_path / "d.json")
    assert read_descriptions(tmp_path / "d.json") == out

    (tmp_path / items[1].image).unlink()
    with pytest.raises(DataError, match=items[1].item_id):
        build_descriptions(items, describer=cfg, image_root=tmp_path)
    no_image = MCItem(
        "no-img",
        "c",
        "Q?",
        ["T-shirt/top", "Trouser"],
        0,
        "test",
        "s",
        None,
        {"label": 0, "option_classes": [0, 1]},
    )
    with pytest.raises(DataError, match="no-img"):
        build_descriptions([no_image], describer=cfg)


def test_option_caption_judge():
    options = ["mole", "sloth", "duck"]
    assert classify_option_caption("A mole digging in the soil.", options) == 0
    assert classify_option_caption("A DUCK on a pond", options) == 2
    assert classify_option_caption("a mole and a duck", options) is None  # two options named
    assert classify_option_caption("molecules in a flask", options) is None  # whole words only
    assert classify_option_caption("a blurry picture", options) is None


def test_captioner_on_a_data_set_without_labels(tmp_path, tiny_llava_dir):
    """ScienceQA-like items (no metadata['label']): consistent = the item's own caption, conflicting =
    the caption of another item (another image, another gold answer), the same on every run."""
    from PIL import Image

    golds = ["mole", "Maine", "rock", "mole"]
    items = []
    for k, gold in enumerate(golds):
        pixels = np.random.default_rng(10 + k).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{k}.png")
        items.append(MCItem(f"sqa-{k}", f"sqa-{k}", "Which?", [gold, "other"], 0, "test", "s", f"{k}.png", {}))
    cfg = {"kind": "captioner", "model": str(tiny_llava_dir), "max_new_tokens": 4, "device": "cpu", "dtype": "auto"}
    out = build_descriptions(items, describer=cfg, image_root=tmp_path)
    again = build_descriptions(list(reversed(items)), describer=cfg, image_root=tmp_path)
    assert again == out  # deterministic, independent of item order

    captioner = CaptionDescriber(str(tiny_llava_dir), max_new_tokens=4)
    captions = {it.item_id: captioner.caption(tmp_path / it.image, it.item_id) for it in items}
    for it in items:
        d = out[it.item_id]
        donor = conflicting_donor(it, items, seed=0)
        assert donor.item_id != it.item_id and donor.image != it.image
        assert donor.options[donor.gold] != it.options[it.gold]  # sqa-0 and sqa-3 never swap captions
        assert d["consistent"] == "Description: " + captions[it.item_id]
        assert d["conflicting"] == "Description: " + captions[donor.item_id]
        assert d["conflicting_class"] == donor.options[donor.gold]
        judged = classify_option_caption(captions[it.item_id], it.options)
        assert d["consistent_is_correct"] is (judged == it.gold)
    write_descriptions(out, tmp_path / "d.json")
    assert read_descriptions(tmp_path / "d.json") == out
    # the donor depends on the seed only through the item's own generator
    assert {conflicting_donor(items[0], items, seed=s).item_id for s in range(20)} == {"sqa-1", "sqa-2"}


def test_captioner_device_and_dtype(tiny_llava_dir):
    import torch

    assert CaptionDescriber(str(tiny_llava_dir), device="cpu").dtype == torch.float32
    assert CaptionDescriber(str(tiny_llava_dir), device="cpu", dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype"):
        CaptionDescriber(str(tiny_llava_dir), dtype="float99")
    if not torch.cuda.is_available():
        with pytest.raises(MmcalError, match="CUDA is not available"):
            CaptionDescriber(str(tiny_llava_dir), device="cuda")


def test_describer_settings_and_gpu_resource():
    """What the describe_images rule passes: a captioner inherits the study's device and dtype and
    holds a GPU on CUDA; the template describer's block is passed as it is (its job never changes)."""
    template = {"kind": "template", "error_rate": 0.1}
    assert describer_settings({"describer": template, "device": "cuda", "dtype": "auto"}) == template
    captioner = {"kind": "captioner", "model": "m"}
    on_gpu = describer_settings({"describer": captioner, "device": "cuda", "dtype": "bfloat16"})
    assert on_gpu == {"kind": "captioner", "model": "m", "device": "cuda", "dtype": "bfloat16"}
    assert describer_gpus(on_gpu) == 1
    assert describer_gpus(describer_settings({"describer": captioner, "device": "cuda:1", "dtype": "auto"})) == 1
    own = describer_settings({"describer": {**captioner, "device": "cpu"}, "device": "cuda", "dtype": "auto"})
    assert own["device"] == "cpu" and describer_gpus(own) == 0
    assert describer_gpus(describer_settings({"describer": template, "device": "cuda", "dtype": "auto"})) == 0

"""IDK data sets (Fashion-MNIST held-out classes, dated news, LLaVA JSON) and IDK metrics."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmcal.analysis.idk import idk_metrics_with_ci, idk_point_metrics, idk_table
from mmcal.data.fashion_mnist import CLASSES, load_fashion_mnist
from mmcal.data.idk.common import idk_manifest
from mmcal.data.idk.dated_news import build_dated_news_idk, hf_rows_to_records, load_news_records
from mmcal.data.idk.fmnist import build_fmnist_idk_items
from mmcal.data.idk.llava_json import parse_mc_prompt, read_llava_conversation_json
from mmcal.data.registry import BuildContext, build_dataset, build_items, release_inputs
from mmcal.errors import ConfigError, DataError
from mmcal.items import read_items, write_items
from mmcal.records import read_records, write_records

FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FIXTURES = Path(__file__).parent / "fixtures" / "idk"
HELD_OUT = [8, 9]
KNOWN = list(range(8))
N_PER_KIND = {"unknown_class": 12, "control": 12, "no_information": 6}
CUTOFF = "2024-07-31"
CONTEXT = BuildContext(classes={}, fmnist_root=str(FMNIST_ROOT), seed=0)

needs_fmnist = pytest.mark.skipif(
    not (FMNIST_ROOT / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed"
)


# --------------------------------------------------------------------------------------------
# 1. Fashion-MNIST IDK set
# --------------------------------------------------------------------------------------------


def build(tmp_path, **kw):
    args = dict(
        root=FMNIST_ROOT,
        image_dir=tmp_path / "images",
        image_rel="images",
        held_out_classes=HELD_OUT,
        known_classes=KNOWN,
        n_per_kind=N_PER_KIND,
        n_options=4,
        seed=3,
        calib_fraction=0.25,
    )
    args.update(kw)
    return build_fmnist_idk_items(**args)


@pytest.fixture(scope="module")
def fmnist_items(tmp_path_factory):
    return build(tmp_path_factory.mktemp("idk"))


def by_kind(items, kind):
    return [it for it in items if it.metadata["kind"] == kind]


@needs_fmnist
def test_fmnist_counts_per_kind_and_manifest(fmnist_items):
    counts = Counter(it.metadata["kind"] for it in fmnist_items)
    assert counts == N_PER_KIND
    manifest = idk_manifest(fmnist_items)
    assert manifest["n_items"] == 30
    for kind, n in N_PER_KIND.items():
        per_split = manifest["by_kind_split"][kind]
        assert sum(per_split.values()) == n
        assert per_split["calib"] == round(0.25 * n)  # calib fraction per kind
    assert manifest["n_answerable"] == 12


@needs_fmnist
def test_fmnist_held_out_classes_never_in_options_or_control_images(fmnist_items):
    held_out_names = {CLASSES[c] for c in HELD_OUT}
    for it in fmnist_items:
        assert not held_out_names & set(it.options), it.item_id
    for it in by_kind(fmnist_items, "control"):
        assert it.metadata["label"] in KNOWN
    for it in by_kind(fmnist_items, "unknown_class"):
        assert it.metadata["label"] in HELD_OUT
    assert {it.metadata["label"] for it in by_kind(fmnist_items, "unknown_class")} == set(HELD_OUT)


@needs_fmnist
def test_fmnist_gold_and_idk_option(fmnist_items):
    for it in fmnist_items:
        idk = it.metadata["idk_index"]
        assert idk == 3 and it.options[idk] == "I don't know"  # idk_position="last"
        assert len(it.options) == 4 and len(set(it.options)) == 4
        if it.metadata["kind"] == "control":
            assert it.metadata["answerable"] is True
            assert it.gold != idk and it.options[it.gold] == CLASSES[it.metadata["label"]]
        else:
            assert it.metadata["answerable"] is False
            assert it.gold == idk
    gold_positions = Counter(it.gold for it in by_kind(fmnist_items, "control"))
    assert gold_positions == {0: 4, 1: 4, 2: 4}  # balanced over the non-IDK slots


@needs_fmnist
def test_fmnist_images_come_from_t10k_and_clusters_do_not_cross_splits(fmnist_items):
    _, labels = load_fashion_mnist(FMNIST_ROOT, "test")
    for it in by_kind(fmnist_items, "control") + by_kind(fmnist_items, "unknown_class"):
        assert it.source.startswith("fashion-mnist/t10k#")
        assert labels[int(it.source.split("#")[1])] == it.metadata["label"]
    split_of = {}
    for it in fmnist_items:
        assert split_of.setdefault(it.cluster_id, it.split) == it.split
    assert len({it.item_id for it in fmnist_items}) == len(fmnist_items)


@needs_fmnist
def test_fmnist_png_pixels_and_no_information_images(tmp_path):
    items = build(tmp_path, n_per_kind={"control": 2, "no_information": 2})
    images, _ = load_fashion_mnist(FMNIST_ROOT, "test")
    control = by_kind(items, "control")[0]
    png = np.array(Image.open(tmp_path / control.image))
    assert np.array_equal(png, images[int(control.source.split("#")[1])])
    for it in by_kind(items, "no_information"):
        arr = np.array(Image.open(tmp_path / it.image))
        assert arr.shape == (28, 28) and arr.std() > 50  # uniform noise, not a garment
        assert it.metadata["label"] is None and it.gold == it.metadata["idk_index"]


@needs_fmnist
def test_fmnist_idk_position_random_and_fixed(tmp_path):
    items = build(tmp_path, idk_position="random", n_per_kind={"unknown_class": 8, "control": 12})
    unk = Counter(it.metadata["idk_index"] for it in by_kind(items, "unknown_class"))
    assert unk == {0: 2, 1: 2, 2: 2, 3: 2}
    control = by_kind(items, "control")
    assert Counter(it.gold for it in control) == {0: 3, 1: 3, 2: 3, 3: 3}
    assert all(it.gold != it.metadata["idk_index"] for it in control)
    first = build(tmp_path, idk_position=0, n_per_kind={"unknown_class": 3, "control": 3})
    assert all(it.metadata["idk_index"] == 0 and it.options[0] == "I don't know" for it in first)


@needs_fmnist
def test_fmnist_is_deterministic_and_round_trips_jsonl(tmp_path):
    a = build(tmp_path / "a", n_per_kind={"unknown_class": 4, "no_information": 2})
    b = build(tmp_path / "b", n_per_kind={"unknown_class": 4, "no_information": 2})
    assert [x.to_dict() for x in a] == [y.to_dict() for y in b]
    write_items(a, tmp_path / "idk.jsonl")
    assert [x.to_dict() for x in read_items(tmp_path / "idk.jsonl")] == [x.to_dict() for x in a]


@needs_fmnist
def test_fmnist_scramble_style_keeps_histogram(tmp_path):
    items = build(tmp_path, n_per_kind={"control": 4, "no_information": 2}, no_information_style="scramble")
    images, _ = load_fashion_mnist(FMNIST_ROOT, "test")
    control_clusters = {it.cluster_id for it in by_kind(items, "control")}
    for it in by_kind(items, "no_information"):
        assert it.cluster_id not in control_clusters  # sources disjoint from control images
        src = int(it.source.split("#")[1].split(":")[0])
        arr = np.array(Image.open(tmp_path / it.image))
        assert sorted(arr.ravel()) == sorted(images[src].ravel())


def test_fmnist_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="both held out and known"):
        build(tmp_path, known_classes=[0, 1, 8])
    with pytest.raises(ConfigError, match="unknown kinds"):
        build(tmp_path, n_per_kind={"unknown": 3})
    with pytest.raises(ConfigError, match="known classes"):
        build(tmp_path, known_classes=[0, 1], n_options=4)
    with pytest.raises(ConfigError, match="idk_position"):
        build(tmp_path, idk_position="first")


# --------------------------------------------------------------------------------------------
# 2a. Dated news
# --------------------------------------------------------------------------------------------


def news(**kw):
    records = load_news_records(FIXTURES / "news.jsonl")
    args = dict(cutoff=CUTOFF, image_root=FIXTURES, seed=1, calib_fraction=0.0)
    args.update(kw)
    return build_dated_news_idk(records, **args)


def test_news_keeps_only_after_cutoff_and_counts_excluded():
    items, report = news()
    assert {it.metadata["record_id"] for it in items} == {"n1", "n2", "n3", "n6", "n7"}
    assert report["n_records"] == 7 and report["n_kept"] == 5
    # n4 is dated on the cutoff (not strictly after), n5 before it.
    assert report["n_excluded_not_after_cutoff"] == 2
    assert report["excluded_ids"] == ["n4", "n5"]
    assert report["kept_date_range"] == ["2024-08-02", "2024-10-05"]


def test_news_options_gold_semantics_and_clusters():
    items, _ = news()
    for it in items:
        meta = it.metadata
        assert len(it.options) == 4 and len(set(it.options)) == 4
        assert it.options[meta["idk_index"]] == "I don't know" and meta["idk_index"] == 3
        assert it.gold == meta["idk_index"] and meta["answerable"] is False  # gold="idk"
        assert it.options[meta["answer_index"]] == meta["headline"]
    by_id = {it.metadata["record_id"]: it for it in items}
    assert by_id["n3"].metadata["headline"] == "Volcano erupts near coastal village"  # caption
    assert by_id["n3"].metadata["extra"] == {"source": "wire"}
    # Same event cluster: n6's headline is never a distractor for n1 and vice versa.
    assert "Residents evacuated as river floods" not in by_id["n1"].options
    assert by_id["n1"].cluster_id == by_id["n6"].cluster_id
    # Same image -> same cluster; custom question uses the record's own distractors.
    assert by_id["n2"].cluster_id == by_id["n7"].cluster_id
    assert by_id["n7"].question == "Which team won the final shown in the photo?"
    own = {"The Harbour Hawks", "The Valley Foxes", "The City Lions", "The River Otters"}
    assert set(by_id["n7"].options) <= own | {"I don't know"}
    # A custom question's answer is not a plausible headline distractor.
    assert all("The Harbour Hawks" not in by_id[r].options for r in ("n1", "n2", "n3", "n6"))

    answer_items, report = news(gold="answer", idk_position="random")
    for it in answer_items:
        assert it.gold == it.metadata["answer_index"] != it.metadata["idk_index"]
        assert it.metadata["answerable"] is True
    assert report["gold"] == "answer"


def test_news_calib_split_by_cluster_and_determinism():
    items, report = news(calib_fraction=0.5)
    assert sum(report["by_split"].values()) == 5 and report["by_split"].get("calib", 0) >= 1
    split_of = {}
    for it in items:
        assert split_of.setdefault(it.cluster_id, it.split) == it.split
    again, _ = news(calib_fraction=0.5)
    assert [x.to_dict() for x in items] == [y.to_dict() for y in again]


def test_news_csv_and_json_loaders(tmp_path):
    csv_records = load_news_records(FIXTURES / "news.csv")
    items, report = build_dated_news_idk(csv_records, CUTOFF, image_root=FIXTURES, n_options=3)
    assert report["n_kept"] == 3 and report["excluded_ids"] == ["c4"]
    assert any("Marathon winner breaks record, again" in it.options for it in items)
    path = tmp_path / "news.json"
    path.write_text(json.dumps(load_news_records(FIXTURES / "news.jsonl")))
    assert len(load_news_records(path)) == 7
    with pytest.raises(DataError, match="unsupported"):
        (tmp_path / "news.txt").write_text("x")
        load_news_records(tmp_path / "news.txt")


def test_news_malformed_records_raise_naming_record_and_field():
    records = load_news_records(FIXTURES / "news_malformed.jsonl")
    with pytest.raises(DataError, match=r"#1 \(id 'bad-date'\).*2024-13-45"):
        build_dated_news_idk(records, CUTOFF, image_root=FIXTURES, strict=True)
    good = load_news_records(FIXTURES / "news.jsonl")
    missing_headline = [*good, {"id": "x9", "image": "images/news1.png", "date": "2024-08-03"}]
    with pytest.raises(DataError, match=r"'x9'.*headline"):
        build_dated_news_idk(missing_headline, CUTOFF, image_root=FIXTURES, strict=True)
    missing_date = [*good, {"id": "x8", "image": "images/news1.png", "headline": "Hi"}]
    with pytest.raises(DataError, match=r"'x8'.*'date'"):
        build_dated_news_idk(missing_date, CUTOFF, image_root=FIXTURES, strict=True)
    # A malformed record is rejected even when it would have been excluded by date.
    old_bad = [*good, {"id": "x6", "headline": "H", "date": "2020-01-01"}]
    with pytest.raises(DataError, match=r"'x6'.*'image'"):
        build_dated_news_idk(old_bad, CUTOFF, image_root=FIXTURES, strict=True)


def test_news_malformed_records_are_rejected_with_reasons():
    records = load_news_records(FIXTURES / "news_malformed.jsonl")
    bad_date = {"index": 1, "id": "bad-date", "reason": "date '2024-13-45' is not an ISO date (YYYY-MM-DD)"}
    # 1 of 3 rejected: above the default bound (5%), within 1/3, and never with strict.
    with pytest.raises(DataError, match=r"1 malformed record\(s\) rejected \(33.3% of 3 records, above max_rejected"):
        build_dated_news_idk(records, CUTOFF, image_root=FIXTURES)
    items, report = build_dated_news_idk(records, CUTOFF, image_root=FIXTURES, n_options=3, max_rejected=1 / 3)
    assert [it.metadata["record_id"] for it in items] == ["ok-1", "ok-2"]
    assert (report["n_records"], report["n_rejected"], report["n_kept"]) == (3, 1, 2)
    assert report["rejected"] == [bad_date] and report["rejected_share"] == pytest.approx(1 / 3)
    with pytest.raises(DataError, match=r"strict: true"):
        build_dated_news_idk(records, CUTOFF, image_root=FIXTURES, n_options=3, max_rejected=1.0, strict=True)

    # Three kinds of broken record among the 7 good ones: each listed with its index, id and reason.
    good = load_news_records(FIXTURES / "news.jsonl")
    broken = [
        {"id": "x9", "image": "images/news1.png", "date": "2024-08-03"},
        {"id": "x8", "image": "images/news1.png", "headline": "Hi"},
        {"headline": "H", "date": "2020-01-01"},  # no id, no image, before the cutoff
    ]
    items, report = build_dated_news_idk([*good, *broken], CUTOFF, image_root=FIXTURES, seed=1, max_rejected=0.4)
    assert report["rejected"] == [
        {"index": 7, "id": "x9", "reason": "field 'headline' (or 'caption') is missing or empty"},
        {"index": 8, "id": "x8", "reason": "field 'date' is missing or empty"},
        {"index": 9, "id": None, "reason": "field 'image' is missing or empty"},
    ]
    assert (report["n_records"], report["n_rejected"], report["n_kept"]) == (10, 3, 5)
    assert report["n_excluded_not_after_cutoff"] == 2 and report["n_missing_images"] == 0
    # The rejected records change nothing about the good ones' items.
    clean, _ = build_dated_news_idk(good, CUTOFF, image_root=FIXTURES, seed=1)
    assert [it.to_dict() for it in items] == [it.to_dict() for it in clean]
    with pytest.raises(DataError, match=r"3 malformed record\(s\) rejected \(30.0% of 10 records"):
        build_dated_news_idk([*good, *broken], CUTOFF, image_root=FIXTURES, max_rejected=0.29)


def test_news_missing_image_file_is_an_unscorable_item():
    """The reference study skips an item whose image is gone: here it stays, marked unscorable,
    listed and counted; the build never aborts for it, not even with strict."""
    good = load_news_records(FIXTURES / "news.jsonl")
    gone = {"id": "x7", "image": "images/gone.png", "headline": "H", "date": "2024-09-09"}
    items, report = build_dated_news_idk([*good, gone], CUTOFF, image_root=FIXTURES, n_options=3, strict=True)
    path = str(FIXTURES / "images/gone.png")
    assert report["n_rejected"] == 0 and report["n_kept"] == 6
    assert report["n_missing_images"] == 1 and report["missing_images"] == [{"index": 7, "id": "x7", "path": path}]
    by_id = {it.metadata["record_id"]: it for it in items}
    assert by_id["x7"].metadata["unscorable"] == f"image missing: {path}"
    assert all("unscorable" not in it.metadata for rid, it in by_id.items() if rid != "x7")
    with pytest.raises(DataError, match="none of the 1 images exists.*check image_root"):
        build_dated_news_idk([gone], CUTOFF, image_root=FIXTURES, n_options=2, distractor_pool=["A"])


def test_news_too_few_distractors_and_field_map(tmp_path):
    records = load_news_records(FIXTURES / "news.jsonl")[:2]
    with pytest.raises(DataError, match="distractors"):
        build_dated_news_idk(records, CUTOFF, image_root=FIXTURES, n_options=4)
    items, _ = build_dated_news_idk(records, CUTOFF, image_root=FIXTURES, n_options=4, distractor_pool=["A", "B", "C"])
    assert len(items) == 2
    renamed = [{"title": r["headline"], "published": r["date"], "image": r["image"], "id": r["id"]} for r in records]
    items, _ = build_dated_news_idk(
        renamed,
        CUTOFF,
        image_root=FIXTURES,
        n_options=2,
        field_map={"headline": "title", "date": "published"},
    )
    assert [it.metadata["headline"] for it in items] == [r["title"] for r in renamed]


def test_hf_source_is_optional(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # make `import datasets` fail
    with pytest.raises(DataError, match="'datasets' package"):
        load_news_records("hf:someone/news", image_dir=tmp_path)
    rows = [{"id": "r/1", "image": Image.new("RGB", (4, 4)), "headline": "H", "date": "2024-08-01"}]
    records = hf_rows_to_records(rows, tmp_path)
    assert records[0]["image"] == "00000-r_1.png" and (tmp_path / "00000-r_1.png").is_file()


# --------------------------------------------------------------------------------------------
# 2b. LLaVA conversation JSON
# --------------------------------------------------------------------------------------------


def test_llava_parses_formats_answers_and_idk_option():
    items, report = read_llava_conversation_json(FIXTURES / "llava_idk.json", FIXTURES, "july24", "test")
    assert (report["n_records"], report["n_rejected"], report["rejected"]) == (5, 0, [])
    by_id = {it.metadata["record_id"]: it for it in items}
    q1 = by_id["q-001"]
    assert q1.question == "Who won the election held in the city shown in August 2024?"
    assert q1.options == ["Alice Smith", "Bob Jones", "Carol White", "I don't know"]
    assert q1.gold == 3 and q1.metadata["idk_index"] == 3 and q1.metadata["answerable"] is False
    assert q1.metadata["instruction"].startswith("Answer with the option")
    q2 = by_id["q-002"]  # "(A) x" format, "I do not know", answer "(C)"
    assert q2.options == ["Red", "I do not know", "Blue"]
    assert (q2.gold, q2.metadata["idk_index"], q2.metadata["answerable"]) == (2, 1, True)
    q3 = by_id["q-003"]  # "A) x" format, <image> at the end, answer "B. Three"
    assert q3.question == "How many people are in the photo?" and "<image>" not in q3.options[-1]
    assert (q3.gold, q3.metadata["idk_index"]) == (1, 2)
    q4 = by_id["q-004"]  # inline options, curly apostrophe, answer given as option text
    assert q4.options == ["A parade", "A concert", "I don\u2019t know"]
    assert q4.gold == 2 == q4.metadata["idk_index"]
    q5 = by_id["5"]  # "A: x" format, no IDK option
    assert q5.options == ["Winter", "Summer"] and q5.metadata["idk_index"] is None
    assert q1.cluster_id == q4.cluster_id  # same image
    assert all(it.split == "test" and it.item_id.startswith("july24-") for it in items)


def test_llava_gold_idk_mode_and_calib_split():
    path = FIXTURES / "llava_idk.json"
    with pytest.raises(DataError, match=r"id '5'.*no option reads like"):
        read_llava_conversation_json(path, FIXTURES, "j", "test", gold="idk")
    items, _ = read_llava_conversation_json(path, FIXTURES, "j", "test", calib_fraction=0.5)
    split_of = {}
    for it in items:
        assert split_of.setdefault(it.cluster_id, it.split) == it.split
    assert {it.split for it in items} == {"calib", "test"}


def test_llava_malformed_records_are_rejected_with_reasons(tmp_path):
    malformed = FIXTURES / "llava_idk_malformed.json"
    with pytest.raises(DataError, match=r"record #1 \(id 'q-bad'\): answer letter E but only 4 options"):
        read_llava_conversation_json(malformed, FIXTURES, "j", "test")  # 1 of 2: above 5%
    items, report = read_llava_conversation_json(malformed, FIXTURES, "j", "test", max_rejected=0.5)
    assert [it.metadata["record_id"] for it in items] == ["q-ok"]
    assert report == {
        "n_records": 2,
        "n_rejected": 1,
        "rejected_share": 0.5,
        "rejected": [{"index": 1, "id": "q-bad", "reason": "answer letter E but only 4 options (A-D)"}],
        "n_missing_images": 0,
        "missing_images": [],
    }
    with pytest.raises(DataError, match=r"strict: true.*id 'q-bad'"):
        read_llava_conversation_json(malformed, FIXTURES, "j", "test", max_rejected=0.5, strict=True)

    good = json.loads((FIXTURES / "llava_idk.json").read_text())
    broken = [
        {"id": "m1", "image": "images/q1.png"},
        {
            "id": "m3",
            "image": "images/q1.png",
            "conversations": [{"from": "human", "value": "<image>\nNo options here"}, {"from": "gpt", "value": "A"}],
        },
        {"id": "m4", "image": "images/q1.png", "conversations": [good[0]["conversations"][0]]},
        {"image": "images/q1.png", "conversations": [{"value": good[0]["conversations"][0]["value"]}]},
    ]
    path = tmp_path / "llava_idk.json"  # the fixture's name: item sources name the file
    path.write_text(json.dumps(good + broken))
    items, report = read_llava_conversation_json(path, FIXTURES, "j", "test", max_rejected=0.5)
    assert report["rejected"] == [
        {"index": 5, "id": "m1", "reason": "'conversations' must be a non-empty list of turns"},
        {"index": 6, "id": "m3", "reason": "found 0 lettered options ('A. x', 'A) x' or '(A) x'), need at least 2"},
        {"index": 7, "id": "m4", "reason": "no answer turn (from='gpt') after the question"},
        {
            "index": 8,
            "id": None,
            "reason": "no answer turn (turns have no 'from' roles, so the second turn is the answer)",
        },
    ]
    assert (report["n_records"], report["n_rejected"], len(items)) == (9, 4, 5)
    clean, _ = read_llava_conversation_json(FIXTURES / "llava_idk.json", FIXTURES, "j", "test")
    assert [it.to_dict() for it in items] == [it.to_dict() for it in clean]
    with pytest.raises(
        DataError, match=r"4 malformed record\(s\) rejected \(44.4% of 9 records.*record #8: no answer turn"
    ):
        read_llava_conversation_json(path, FIXTURES, "j", "test", max_rejected=0.44)
    with pytest.raises(ConfigError, match="max_rejected must be in"):
        read_llava_conversation_json(path, FIXTURES, "j", "test", max_rejected=1.5)
    # An image file that is gone: an unscorable item, listed and counted, never a rejection.
    path.write_text(
        json.dumps(good + [{"id": "m2", "image": "images/nope.png", "conversations": good[0]["conversations"]}])
    )
    items, report = read_llava_conversation_json(path, FIXTURES, "j", "test", strict=True)
    nope = str(FIXTURES / "images/nope.png")
    assert report["n_rejected"] == 0 and len(items) == 6
    assert report["missing_images"] == [{"index": 5, "id": "m2", "path": nope}] and report["n_missing_images"] == 1
    assert items[-1].metadata["unscorable"] == f"image missing: {nope}" and items[-1].image == "images/nope.png"
    # Two records with one id: the file is broken, not a record, so it always fails.
    path.write_text(json.dumps(good + [good[0]]))
    with pytest.raises(DataError, match=r"duplicate ids \['q-001'\]"):
        read_llava_conversation_json(path, FIXTURES, "j", "test", max_rejected=1.0)


def test_idk_builders_report_rejections_in_the_manifest(tmp_path):
    cfg = {"builder": "llava_json", "path": str(FIXTURES / "llava_idk_malformed.json"), "max_rejected": 0.5}
    info = build_dataset("news-idk", cfg, str(tmp_path / "items.jsonl"), str(tmp_path / "manifest.json"), CONTEXT)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["build_report"]["rejected"] == [
        {"index": 1, "id": "q-bad", "reason": "answer letter E but only 4 options (A-D)"}
    ]
    assert on_disk["n_items"] == info["n_items"] == 1
    with pytest.raises(DataError, match=r"strict: true"):
        build_dataset("news-idk", {**cfg, "strict": True}, str(tmp_path / "i.jsonl"), str(tmp_path / "m.json"), CONTEXT)


def test_idk_set_without_unknowable_items_is_an_error(tmp_path):
    good = json.loads((FIXTURES / "llava_idk.json").read_text())
    answerable = [r for r in good if r["id"] in ("q-002", 5)]  # golds are real answers, not IDK
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(answerable))
    cfg = {"builder": "llava_json", "path": str(path), "image_root": str(FIXTURES)}
    with pytest.raises(
        DataError, match=rf"'july24' \(builder llava_json, file {path}\): none of its 2 items is unknowable"
    ):
        build_items("july24", cfg, tmp_path, CONTEXT)
    items, _ = build_items("july24", {**cfg, "path": str(FIXTURES / "llava_idk.json")}, tmp_path, CONTEXT)
    assert sum(not it.metadata["answerable"] for it in items) == 2  # q-001, q-004

    news_cfg = {"builder": "dated_news", "path": str(FIXTURES / "news.jsonl"), "cutoff": "2030-01-01"}
    with pytest.raises(DataError, match=r"IDK data set 'later' \(builder dated_news, file .*news.jsonl\): no items"):
        build_items("later", news_cfg, tmp_path, CONTEXT)
    # gold: answer asks for an all-answerable set on purpose (false-IDK rates).
    items, _ = build_items("later", {**news_cfg, "cutoff": CUTOFF, "gold": "answer"}, tmp_path, CONTEXT)
    assert len(items) == 5 and all(it.metadata["answerable"] for it in items)


def test_llava_json_gold_key_is_passed_through(tmp_path):
    """A release that stores the true answers: ``gold: file`` (default) keeps them as the gold, so the
    set has no unknowable item and fails naming the file; ``gold: idk`` makes the IDK option the gold
    of every item and keeps the release's answer as ``file_answer_index``."""
    good = json.loads((FIXTURES / "llava_idk.json").read_text())
    path = tmp_path / "true_answers.json"
    path.write_text(json.dumps([r for r in good if r["id"] in ("q-002", "q-003")]))  # answers: C Blue, B Three
    cfg = {"builder": "llava_json", "path": str(path), "image_root": str(FIXTURES)}
    with pytest.raises(DataError, match=rf"file {path}\): none of its 2 items is unknowable"):
        build_items("july24", {**cfg, "gold": "file"}, tmp_path, CONTEXT)
    items, report = build_items("july24", {**cfg, "gold": "idk"}, tmp_path, CONTEXT)
    assert report["n_rejected"] == 0
    got = {
        it.metadata["record_id"]: (it.gold, it.metadata["idk_index"], it.metadata["file_answer_index"]) for it in items
    }
    assert got == {"q-002": (1, 1, 2), "q-003": (2, 2, 1)}
    assert all(it.metadata["kind"] == "unknowable" and it.metadata["answerable"] is False for it in items)
    with pytest.raises(ConfigError, match="gold must be"):
        build_items("july24", {**cfg, "gold": "answer"}, tmp_path, CONTEXT)


@needs_fmnist
def test_fmnist_idk_set_without_unknowable_items_is_an_error(tmp_path):
    context = BuildContext(classes={"idk_test": HELD_OUT, "known": KNOWN}, fmnist_root=str(FMNIST_ROOT), seed=0)
    cfg = {"builder": "fmnist_idk", "n_per_kind": {"control": 4}}
    with pytest.raises(DataError, match=r"IDK data set 'idk' \(builder fmnist_idk\): none of its 4 items"):
        build_items("idk", cfg, tmp_path, context)


def test_parse_mc_prompt_trailer_and_inline():
    q, opts, trailer = parse_mc_prompt("Q?\n(A) one\n(B) two\nPick one.", "x")
    assert (q, opts, trailer) == ("Q?", ["one", "two"], "Pick one.")
    q, opts, _ = parse_mc_prompt("<image> Which? (A) x y (B) z (C) I don't know", "x")
    assert q == "Which?" and opts == ["x y", "z", "I don't know"]


# --------------------------------------------------------------------------------------------
# 3. IDK metrics
# --------------------------------------------------------------------------------------------

# id, kind, answerable, gold, pred, confidence, option probabilities (IDK = index 2), cluster
ROWS = [
    ("c1", "control", True, 0, 0, 0.90, [0.90, 0.05, 0.05], "k1"),
    ("c2", "control", True, 1, 1, 0.60, [0.30, 0.60, 0.10], "k2"),
    ("c3", "control", True, 0, 1, 0.70, [0.20, 0.70, 0.10], "k3"),
    ("c4", "control", True, 1, 2, 0.50, [0.25, 0.25, 0.50], "k4"),
    ("u1", "unknown_class", False, 2, 2, 0.60, [0.20, 0.20, 0.60], "k5"),
    ("u2", "unknown_class", False, 2, 0, 0.85, [0.85, 0.10, 0.05], "k6"),
    ("n1", "no_information", False, 2, 1, 0.55, [0.25, 0.55, 0.20], "k7"),
    ("n2", "no_information", False, 2, 0, 0.40, [0.40, 0.30, 0.30], "k8"),
]


def records_frame(rows=ROWS, readout="letter_restricted", unscored=True):
    out = []
    for item_id, kind, answerable, gold, pred, conf, probs, cluster in rows:
        meta = {"kind": kind, "answerable": answerable, "idk_index": 2}
        out.append(
            {
                "item_id": item_id,
                "cluster_id": cluster,
                "split": "test",
                "model": "m",
                "dataset": "idk",
                "scenario": "image",
                "prompt": "default",
                "readout": readout,
                "gold": gold,
                "pred": pred,
                "correct": pred == gold,
                "confidence": conf,
                "option_scores": [math.log(p) for p in probs],
                "meta": json.dumps(meta),
                "status": "ok",
            }
        )
    if unscored:  # an unscorable row: left out of every rate, counted
        bad = {"item_id": "bad", "cluster_id": "k9", "pred": -1, "correct": False}
        bad.update(confidence=math.nan, option_scores=[], status="image too large")
        out.append({**out[0], **bad})
    return pd.DataFrame(out)


def test_idk_point_metrics_hand_computed():
    m = idk_point_metrics(records_frame())
    expected = {
        "n_items": 8,
        "n_unscored": 1,
        "n_unknowable": 4,
        "n_answerable": 4,
        "n_abstained": 2,
        "admit_rate": 1 / 4,  # u1
        "false_idk_rate": 1 / 4,  # c4
        "answerable_accuracy": 2 / 4,  # c1, c2
        "accuracy_all": 3 / 8,  # c1, c2, u1
        "abstain_precision": 1 / 2,
        "abstain_recall": 1 / 4,
        "abstain_f1": 1 / 3,
        "confident_answer_rate_50": 2 / 4,  # u2 (0.85), n1 (0.55)
        "confident_answer_rate_80": 1 / 4,  # u2
        # answered answerable: c1 (0.9, right), c2 (0.6, right), c3 (0.7, wrong), one per bin
        "answered_ece_10": (0.1 + 0.4 + 0.7) / 3,
        "answered_accuracy": 2 / 3,
        "idk_prob_unknowable": (0.60 + 0.05 + 0.20 + 0.30) / 4,
        "idk_prob_answerable": (0.05 + 0.10 + 0.10 + 0.50) / 4,
        "admit_rate_unknown_class": 1 / 2,
        "admit_rate_no_information": 0.0,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key


def test_idk_ece_bins_are_right_closed():
    rows = [
        ("a", "control", True, 0, 0, 0.50, [0.50, 0.30, 0.20], "k1"),  # bin (0.4, 0.5]
        ("b", "control", True, 0, 1, 0.55, [0.25, 0.55, 0.20], "k2"),  # bin (0.5, 0.6]
    ]
    m = idk_point_metrics(records_frame(rows, unscored=False))
    assert m["answered_ece_10"] == pytest.approx((abs(1 - 0.50) + abs(0 - 0.55)) / 2)


def test_idk_metrics_read_back_from_parquet(tmp_path):
    df = records_frame()
    write_records(df, tmp_path / "r.parquet")  # option_scores come back as numpy arrays
    again = idk_point_metrics(read_records(tmp_path / "r.parquet"))
    assert again == pytest.approx(idk_point_metrics(df), nan_ok=True)


def test_idk_metrics_shared_bin_ece():
    rows = [
        ("a", "control", True, 0, 0, 0.92, [0.92, 0.04, 0.04], "k1"),
        ("b", "control", True, 0, 1, 0.96, [0.02, 0.96, 0.02], "k2"),
    ]
    m = idk_point_metrics(records_frame(rows, unscored=False))
    assert m["answered_ece_10"] == pytest.approx(abs(1 / 2 - 0.94))  # one bin: |acc - mean conf|
    assert math.isnan(m["admit_rate"]) and math.isnan(m["admit_rate_unknown_class"])
    assert math.isnan(m["abstain_f1"])  # no unknowable item and no abstention: undefined
    rows.append(("u", "unknown_class", False, 2, 0, 0.5, [0.5, 0.3, 0.2], "k3"))
    m = idk_point_metrics(records_frame(rows, unscored=False))
    assert m["abstain_f1"] == 0.0 and math.isnan(m["abstain_precision"])  # never abstained


def test_idk_metrics_missing_kind_gives_nan_not_crash():
    only_control = records_frame(ROWS[:4], unscored=False)
    m = idk_metrics_with_ci(only_control, B=200)
    assert math.isnan(m["admit_rate"]) and math.isnan(m["admit_rate_lo"])
    assert math.isnan(m["idk_prob_unknowable"])
    assert m["false_idk_rate"] == pytest.approx(0.25)
    only_unknowable = records_frame(ROWS[4:], unscored=False)
    m = idk_metrics_with_ci(only_unknowable, B=200)
    assert math.isnan(m["answered_ece_10"]) and math.isnan(m["answerable_accuracy"])
    assert m["admit_rate_no_information"] == 0.0


def test_idk_bootstrap_ci_brackets_point_and_is_seeded():
    df = records_frame()
    a = idk_metrics_with_ci(df, B=500, seed=4)
    b = idk_metrics_with_ci(df, B=500, seed=4)
    assert a == pytest.approx(b, nan_ok=True)
    for key in ("admit_rate", "false_idk_rate", "answerable_accuracy", "answered_ece_10"):
        assert a[f"{key}_lo"] <= a[key] <= a[f"{key}_hi"], key
    assert a["admit_rate_lo"] < a["admit_rate_hi"]
    # One cluster only: every replicate redraws the same data, so the CI collapses.
    one_cluster = df.assign(cluster_id="all")
    c = idk_metrics_with_ci(one_cluster, B=200)
    assert c["admit_rate_lo"] == c["admit_rate_hi"] == pytest.approx(0.25)


def test_idk_bootstrap_replicates_are_the_metrics_of_resampled_clusters():
    """The bootstrap's replicates (weighted cluster sums, one matrix product for all B) are the point metrics of
    data sets resampled cluster by cluster: rebuilt here row by row from the same draws, an independent
    computation."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        answerable = i % 2 == 0
        probs = rng.dirichlet(np.ones(4))
        pred = int(np.argmax(probs))
        kind = "control" if answerable else ("unknown_class" if i % 4 == 1 else "no_information")
        rows.append(
            (
                f"i{i}",
                kind,
                answerable,
                0 if answerable else 3,
                pred,
                float(probs[pred]),
                probs.tolist(),
                f"k{i // 2:03d}",
            )
        )
    df = records_frame(rows, unscored=False).assign(
        meta=lambda d: d["meta"].str.replace('"idk_index": 2', '"idk_index": 3')
    )
    B, seed = 20, 7
    m = idk_metrics_with_ci(df, B=B, seed=seed)
    assert m["n_items"] == 120 and m["n_clusters"] == 60
    # the same draws: B multinomial counts over the clusters in sorted order (what idk_metrics_with_ci documents)
    clusters = sorted(df["cluster_id"].unique())
    counts = np.random.default_rng(seed).multinomial(len(clusters), np.full(len(clusters), 1 / len(clusters)), B)
    by_cluster = {c: g for c, g in df.groupby("cluster_id")}
    replicates = []
    for b in range(B):
        parts = [
            by_cluster[c].assign(item_id=lambda g, c=c, k=k: g["item_id"] + f"~{k}", cluster_id=f"{c}~{k}")
            for c, n in zip(clusters, counts[b])
            for k in range(n)
        ]
        replicates.append(idk_point_metrics(pd.concat(parts, ignore_index=True)))
    for key in ("admit_rate", "false_idk_rate", "answerable_accuracy", "answered_ece_10"):
        values = np.array([r[key] for r in replicates], dtype=float)
        values = values[np.isfinite(values)]
        lo, hi = np.quantile(values, [0.025, 0.975])
        assert (m[f"{key}_lo"], m[f"{key}_hi"]) == pytest.approx((lo, hi), abs=1e-12), key


def test_idk_table_one_row_per_group_and_split_filter():
    df = pd.concat(
        [
            records_frame(readout="letter_restricted"),
            records_frame(readout="option_loglik").assign(pred=lambda d: d["gold"].where(d["pred"] >= 0, -1)),
            records_frame().assign(split="calib", readout="letter_restricted"),
        ],
        ignore_index=True,
    )
    df["correct"] = df["pred"] == df["gold"]
    table = idk_table(df, B=100)
    assert len(table) == 2 and list(table["readout"]) == ["letter_restricted", "option_loglik"]
    perfect = table.set_index("readout").loc["option_loglik"]
    assert perfect["admit_rate"] == 1.0 and perfect["false_idk_rate"] == 0.0
    assert table.set_index("readout").loc["letter_restricted", "n_items"] == 8  # calib rows out
    point = idk_table(df, split=None, ci=False)
    assert len(point) == 2 and "admit_rate_lo" not in point.columns
    assert point.set_index("readout").loc["letter_restricted", "n_items"] == 16


def test_idk_metrics_errors_name_item():
    df = records_frame(unscored=False)
    df.loc[2, "meta"] = json.dumps({"kind": "control"})
    with pytest.raises(DataError, match="'c3'.*answerable"):
        idk_point_metrics(df)
    with pytest.raises(DataError, match="lack columns"):
        idk_point_metrics(df.drop(columns=["meta"]))
    df.loc[2, "meta"] = "not json"  # records.parse_meta: an error naming the item, never {}
    with pytest.raises(DataError, match="'c3'.*not a JSON object"):
        idk_point_metrics(df)
    with pytest.raises(DataError, match="lack columns.*status"):
        idk_point_metrics(records_frame().drop(columns=["status"]))


def test_idk_ece_is_the_metrics_ece_and_row_order_changes_nothing():
    from mmcal.analysis import metrics

    df = records_frame()
    m = idk_metrics_with_ci(df, B=300, seed=2)
    answered = df[df["item_id"].isin(["c1", "c2", "c3"])]  # answered answerable items
    assert m["answered_ece_10"] == metrics.ece(answered["confidence"], answered["correct"], n_bins=10)
    shuffled = df.sample(frac=1.0, random_state=5).reset_index(drop=True)
    assert idk_metrics_with_ci(shuffled, B=300, seed=2) == m


def test_dated_news_per_model_cutoffs(tmp_path):
    """``cutoff: per_model``: one items file; each model's scoring job keeps the news published
    strictly after its own ``models.<name>.cutoff`` (the fixture's 2024 dates: n5 05-10, n4 07-31,
    n1 08-02, n2 08-15, n6 08-20, n3 09-01, n7 10-05)."""
    from mmcal.data.idk.dated_news import items_for_model
    from mmcal.engine.job import JobSpec, select_items

    cfg = {"builder": "dated_news", "path": str(FIXTURES / "news.jsonl"), "cutoff": "per_model", "n_options": 3}
    items, report = build_items("news", cfg, tmp_path, CONTEXT)
    assert report["cutoff"] == "per_model" and report["n_excluded_not_after_cutoff"] == 0
    assert len(items) == report["n_kept"] == 7
    expect = {
        "2024-05-09": ["n1", "n2", "n3", "n4", "n5", "n6", "n7"],
        "2024-07-31": ["n1", "n2", "n3", "n6", "n7"],  # n4 is on the cutoff: not after it
        "2024-08-16": ["n3", "n6", "n7"],
    }
    path = tmp_path / "items.jsonl"
    write_items(items, path)
    for cutoff, ids in expect.items():
        got = select_items(JobSpec("m", "news", "image", "p", str(path), str(tmp_path / "r"), cutoff=cutoff))
        assert sorted(it.metadata["record_id"] for it in got) == ids
        assert {it.metadata["cutoff"] for it in got} == {cutoff}
        assert all(it.metadata["answerable"] is False and it.gold == it.metadata["idk_index"] for it in got)
    # the same records under a fixed cutoff give the same items as the per-model set for that model
    fixed, _ = build_items("news", {**cfg, "cutoff": "2024-07-31"}, tmp_path, CONTEXT)
    assert {it.metadata["record_id"] for it in fixed} == set(expect["2024-07-31"])
    with pytest.raises(DataError, match=r"model 'm'.*models.m.cutoff is not set"):
        items_for_model(items, "m", None)
    with pytest.raises(DataError, match=r"model 'late'.*none of the 7 news items is dated after its cutoff 2030-01-01"):
        items_for_model(items, "late", "2030-01-01")
    # items of any other set are left alone, whatever the model's cutoff
    assert items_for_model(fixed, "m", None) is fixed


def test_released_files_are_build_inputs():
    """The llava_json / dated_news release is an input of its build job (planning shows it missing)."""
    assert release_inputs("idk", {"builder": "llava_json", "path": "data/downloads/idk/q.json"}) == {
        "release": "data/downloads/idk/q.json"
    }
    # with a release (here in local mode) the inputs are its folder and the record of its hash
    assert release_inputs("idk", {"builder": "llava_json", "release": {"path": "rel"}, "path": "q.json"}) == {
        "release": "rel",
        "release_record": "data/downloads/idk.resolved.json",
    }
    assert release_inputs("idk", {"builder": "dated_news", "path": "news.jsonl"}) == {"release": "news.jsonl"}
    assert release_inputs("idk", {"builder": "dated_news", "path": "hf:org/news"}) == {}  # read through `datasets`
    assert release_inputs("idk", {"builder": "hub_mcq", "hub": {"path": "lmms-lab/ScienceQA"}}) == {}
    assert release_inputs("idk", {"builder": "fashion_mnist"}) == {}


def test_llava_json_reads_records_as_the_reference_does():
    """The shape the reference's TS.py reads: no 'id', no 'from' roles (turns by position), a bare letter
    as the answer (TS.py compares `answer == decoded letter`)."""
    path = FIXTURES / "llava_idk_ts_shape.json"
    items, report = read_llava_conversation_json(path, FIXTURES, "news", "test", answer="letter", max_rejected=0.5)
    assert (report["n_records"], report["n_rejected"], len(items)) == (5, 2, 3)
    assert report["rejected"] == [
        {"index": 2, "id": None, "reason": "the answer turn 'D.' is not an option letter (answer: letter)"},
        {
            "index": 3,
            "id": None,
            "reason": "no answer turn (turns have no 'from' roles, so the second turn is the answer)",
        },
    ]
    assert [it.item_id for it in items] == ["news-record0", "news-record1", "news-record4"]
    first = items[0]
    assert first.options == ["Spain", "England", "France", "I don't know"] and first.gold == 3
    assert first.metadata["idk_index"] == 3 and first.metadata["answerable"] is False
    raw = json.loads(path.read_text())
    assert first.metadata["human_turn"] == raw[0]["conversations"][0]["value"]  # kept as the file has it
    # PT.py reads answer[0]: "D." is D there; the default rule also reads it
    for rule in ("first_char", "auto"):
        items, report = read_llava_conversation_json(path, FIXTURES, "news", "test", answer=rule, max_rejected=0.5)
        assert report["n_rejected"] == 1 and [it.gold for it in items] == [3, 2, 3, 3]
    with pytest.raises(ConfigError, match="answer must be one of auto, letter, first_char"):
        read_llava_conversation_json(path, FIXTURES, "news", "test", answer="letters")


def test_a_release_folder_with_other_file_names_fails_naming_what_it_holds(tmp_path):
    release = tmp_path / "release"
    (release / "imgs" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(release / "imgs" / "images" / "news1.png")
    (release / "test.json").write_text((FIXTURES / "llava_idk_ts_shape.json").read_text())
    cfg = {"builder": "llava_json", "release": {"path": str(release)}, "path": "questions.json", "image_root": "images"}
    with pytest.raises(DataError) as err:
        build_items("news-idk", cfg, tmp_path / "out", CONTEXT)
    message = str(err.value)
    assert "datasets.news-idk.path: 'questions.json' is no file of the release" in message
    assert "datasets.news-idk.image_root: 'images' is no folder of the release" in message
    assert "test.json: a list of 5 records with keys ['conversations', 'image']" in message
    assert "imgs/images/: 1 images" in message
    # set as the message says, it builds
    fixed = {**cfg, "path": "test.json", "image_root": "imgs", "answer": "letter", "max_rejected": 0.5}
    items, report = build_items("news-idk", fixed, tmp_path / "out", CONTEXT)
    assert len(items) == 3 and report["n_rejected"] == 2 and report["n_missing_images"] == 0

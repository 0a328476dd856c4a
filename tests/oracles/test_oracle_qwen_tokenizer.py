"""Oracle (b): Qwen-VL-Chat's and Qwen-7B's released tokenizers (their ``tokenization_qwen.py`` run on the real
qwen.tiktoken; fixture, sources and command in tests/oracles/SOURCES.md) against mmcal.engine.qwen_vl and the
tokenizer replicas of tests/replicas/qwen_remote.py.

The string and id-reading checks need nothing but the fixture (they run everywhere); the id checks need the
qwen-7b replica (tests/replicas, fetched at set-up) and skip without it. The remote code itself is not needed.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from mmcal.engine import qwen_vl
from mmcal.errors import MmcalError

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "qwen_tokenizers.json").read_text())
CASES = FIXTURE["vl_cases"]
OLD, NEW = "int4_1cd721a2", "newer_quoted"  # the GitHub upload's from_list_format; the hub's after QwenLM/Qwen-VL#184


def _image_paths(case: dict) -> list[str]:
    return [e["image"] for e in case["list_format"] if "image" in e]


def _messages(case: dict) -> list[dict]:
    parts = [{"type": "image"} if "image" in e else {"type": "text", "text": e["text"]} for e in case["list_format"]]
    return [{"role": "user", "content": parts}]


def test_fixture_ids_are_the_documented_ones():
    ids = FIXTURE["vl_ids"]
    assert (ids["img_start_id"], ids["img_end_id"], ids["img_pad_id"]) == (
        qwen_vl.IMG_START_ID,
        qwen_vl.IMG_END_ID,
        qwen_vl.IMG_PAD_ID,
    )
    assert ids["eod_id"] == FIXTURE["qwen7b_special"]["eod_id"] == qwen_vl.EOD_ID
    assert FIXTURE["vl_len"] - FIXTURE["qwen7b_len"] == 9  # <ref> ... <imgpad>


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("path_25")])
def test_mmcal_text_is_from_list_format(name):
    """Without a loaded from_list_format, mmcal writes the hub revision's text ("Picture 1: <img>")."""
    case = CASES[name]
    assert qwen_vl.from_list_format(case["list_format"]) == case[NEW]["text"]
    assert qwen_vl.reference_prompt(_messages(case), _image_paths(case)) == case[NEW]["text"]


@pytest.mark.parametrize("name", ["image_text", "two_images", "reference_prompt"])
def test_the_loaded_tokenizers_from_list_format_decides(name):
    """With a tokenizer's own from_list_format (here: the GitHub upload's text, no space), its text is used."""
    case = CASES[name]
    by_input = {json.dumps(case["list_format"]): case[OLD]["text"]}
    assert (
        qwen_vl.reference_prompt(_messages(case), _image_paths(case), lambda lf: by_input[json.dumps(lf)])
        == (case[OLD]["text"])
    )
    assert (
        case[OLD]["text"].replace("Picture 1:<img>", "Picture 1: <img>").replace("Picture 2:<img>", "Picture 2: <img>")
        == (case[NEW]["text"])
    )


@pytest.mark.parametrize("name", [n for n in CASES if "error" not in CASES[n][NEW]])
@pytest.mark.parametrize("rev", [OLD, NEW])
def test_mmcal_reads_image_paths_as_the_model_does(name, rev):
    """image_spans / path_in_ids on the real tokenizer's ids give what modeling_qwen.py reads, or refuse where it
    fails (a 255- or 256-byte path leaves no <imgpad> inside input_ids[a + 1 : b - 1])."""
    entry = CASES[name][rev]
    spans = qwen_vl.image_spans(entry["ids"])
    assert len(spans) == len(entry["model_reads_paths"])
    for (start, end), read in zip(spans, entry["model_reads_paths"]):
        assert end - start - 1 == qwen_vl.IMAGE_SPAN
        if isinstance(read, dict):
            with pytest.raises(MmcalError, match="no <imgpad>"):
                qwen_vl.path_in_ids(entry["ids"], start, end)
        else:
            assert qwen_vl.path_in_ids(entry["ids"], start, end) == read


def test_path_limit_is_the_models():
    """The real code: 254 bytes are read back, 255 and 256 pass the tokenizer and fail in the model, 257 fail in the
    tokenizer; mmcal's limit and check say the same."""
    for n, model_reads in ((254, True), (255, False), (256, False)):
        case = CASES[f"path_{n}_bytes"]
        path = _image_paths(case)[0]
        assert len(path.encode()) == n
        assert isinstance(case[NEW]["model_reads_paths"][0], str) is model_reads
        assert (qwen_vl.path_problem(path) is None) is model_reads
    assert "too long" in CASES["path_257_bytes"][NEW]["error"]
    assert qwen_vl.path_problem(_image_paths(CASES["path_257_bytes"])[0]).startswith("prompt too long")
    assert qwen_vl.MAX_PATH_BYTES == 254


def test_non_nfc_paths_are_refused():
    """The tokenizer NFC-normalises the whole text: for a decomposed (NFD) path the model reads, and opens, the
    composed one, another file name on disk."""
    nfc, nfd = CASES["non_ascii_nfc"], CASES["non_ascii_nfd"]
    assert nfd[NEW]["ids"] == nfc[NEW]["ids"]
    assert nfd[NEW]["model_reads_paths"] == [unicodedata.normalize("NFC", _image_paths(nfd)[0])]
    assert qwen_vl.path_problem(_image_paths(nfc)[0]) is None
    assert qwen_vl.path_problem(_image_paths(nfd)[0]).startswith("image unreadable")


# ---- ids: the replicas (no remote code, no tiktoken) against the real tokenizers' ids --------------------------
@pytest.fixture(scope="module")
def replicas():
    import build
    import qwen_remote

    try:
        return {
            "qwen-7b": qwen_remote.replica(vl=False),
            OLD: qwen_remote.replica(vl=True, list_format_space=False),
            NEW: qwen_remote.replica(vl=True),
        }
    except build.ReplicaMissing as exc:
        pytest.skip(f"replica sources not fetched: {exc}")


def test_qwen7b_replica_ids_are_the_remote_tokenizers(replicas):
    tok = replicas["qwen-7b"]
    assert len(tok) == FIXTURE["qwen7b_len"]
    assert (tok.eod_id, tok.im_start_id, tok.im_end_id) == tuple(
        FIXTURE["qwen7b_special"][k] for k in ("eod_id", "im_start_id", "im_end_id")
    )
    for t in FIXTURE["qwen7b_texts"]:
        assert tok(t["text"])["input_ids"] == t["ids"], t["text"]
        if t["vl_ids"] is not None:  # without image tags Qwen-VL-Chat's tokenizer gives the same ids
            assert t["vl_ids"] == t["ids"]


@pytest.mark.parametrize("rev", [OLD, NEW])
@pytest.mark.parametrize("name", list(CASES))
def test_qwen_vl_replica_text_and_ids_are_the_remote_tokenizers(replicas, rev, name):
    tok, entry = replicas[rev], CASES[name][rev]
    text = tok.from_list_format(CASES[name]["list_format"])
    assert text == entry["text"]
    if "error" in entry:
        with pytest.raises(ValueError, match="too long"):
            tok(text)
    else:
        assert tok(text)["input_ids"] == entry["ids"]


def test_letters_after_the_answer_prefix(replicas):
    for letter, ids in FIXTURE["vl_letters_after_answer_prefix"].items():
        assert replicas[NEW]("Answer: (" + letter)["input_ids"] == ids == [16141, 25, 320, ord(letter) - 33]

"""Oracle (d): the reference study's own prompt strings (hfutml/Calibration-MLLM@1f3a8de: TS.py and PT.py run as
released on five LLaVA-conversation records, every text they handed Qwen-VL-Chat's tokenizer recorded; fixture,
sources and procedure in tests/oracles/SOURCES.md) against what mmcal's Qwen-VL-Chat engine shows the model
with the reference's switches on: `prompt_format: reference` (TS.py) or `reference-pt` (PT.py), `question:
verbatim`, the image or none (`recalibration.fit_scenario` / `promptopt.scenario`), and PT.py's accuracy bands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmcal.data.idk.llava_json import read_llava_conversation_json
from mmcal.engine import qwen_vl
from mmcal.engine.chat import BUILTIN_FORMATS
from mmcal.engine.loading import LoadedModel
from mmcal.engine.prompts import prompt_from_config
from mmcal.engine.scenarios import Scenario
from mmcal.promptopt.job import answer_prefix_for
from mmcal.promptopt.ranking import accuracy_band
from test_families_loading import StandInQwenTokenizer, StandInQwenVLModel  # tests/ (on sys.path: tests/conftest.py)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "reference_prompts.json").read_text())
TS_PROMPT = {"prompt_format": "reference", "question": "verbatim"}
PT_SUFFIX = "The answer might be"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The fixture's records as a release file with its (8x8) images, read as the reference reads them."""
    root = tmp_path_factory.mktemp("release").resolve()
    (root / "q.json").write_text(json.dumps(FIXTURE["records"]))
    for rec in FIXTURE["records"]:
        Image.new("RGB", (8, 8), (200, 30, 30)).save(root / rec["image"])
    # TS.py: `answer == decoded letter`, so the record whose answer is "C. snowy" can never be right: the
    # letter rule rejects it (counted, with its reason) where TS.py kept it as always wrong
    items, report = read_llava_conversation_json(root / "q.json", root, "ref", "test", answer="letter", max_rejected=1)
    assert [r["id"] for r in report["rejected"]] == ["r5"]
    return root, items


def _engine(root: Path, prompt_cfg: dict, list_format=None) -> qwen_vl.QwenVLEngine:
    tok = StandInQwenTokenizer()
    if list_format is not None:
        tok.from_list_format = list_format
    lm = LoadedModel("qwen-vl-chat", StandInQwenVLModel(), tok, tok, True, "cpu", "stand-in")
    prompt = prompt_from_config(
        prompt_cfg.get("name", "reference"), {k: v for k, v in prompt_cfg.items() if k != "name"}
    )
    return qwen_vl.QwenVLEngine(lm, prompt, image_root=root, chat_format=BUILTIN_FORMATS["raw"])


def _calls(site: str) -> list[dict]:
    return [c for c in FIXTURE["TS.py main()"] if c["site"] == site]


@pytest.mark.parametrize("revision", ["query_newer_revision", "query"])
def test_ts_image_prompts(release, revision):
    """ece_tes: `from_list_format([{'image': path}, {'text': value + "\\nPlease provide ..." + "\\nAnswer: ("}])`;
    the hub revision's spaced tag ("query_newer_revision") or, with the GitHub upload's own from_list_format
    loaded, its "Picture 1:<img>" ("query")."""
    root, items = release
    upload = None
    if revision == "query":  # the tokenizer's own from_list_format decides the tag

        def upload(parts):
            return qwen_vl.from_list_format(parts).replace("Picture 1: <img>", "Picture 1:<img>")

    engine = _engine(root, TS_PROMPT, upload)
    expected = {
        c["from_list_format_input"][0]["image"]: c[revision] for c in _calls("get_confidence_answer <- ece_tes <- main")
    }
    for item in items:
        path = str(root / item.image)
        want = expected["{image_folder}/" + item.image].replace("{image_folder}", str(root))
        assert engine.render(item, Scenario("image", image=True)) == want, item.item_id
        assert path in want


def test_ts_text_only_calibration_prompts(release):
    """TS.py fits its temperature on `add_image=False` prompts: the same text with no picture at all."""
    root, items = release
    engine = _engine(root, TS_PROMPT)
    by_text = [c["query_newer_revision"] for c in _calls("get_confidence_answer <- main")]
    rendered = [engine.render(item, Scenario("blind", image=False)) for item in items]
    assert rendered == [t for t in by_text if not t.startswith("<image>\nWhat is the weather")]


def test_pt_candidate_prompts(release):
    """PT.py: `value + "Please provide ..."` (no newline), then "\\n" + suffix + ": (", text only (with a file
    named `no` present: as released, no item is ever scored)."""
    root, items = release
    runs = FIXTURE["PT.py eval_function"]
    as_released = runs["image_path='no', no file named 'no' in the working directory"]
    assert as_released["returned"] == [10000.0, 0.0] and as_released["calls"] == []
    calls = runs["image_path='no', a valid image file named 'no' in the working directory"]["calls"]
    assert calls[0]["from_list_format_input"][0]["text"].endswith(f"\n{PT_SUFFIX}: (")
    engine = _engine(
        root, {"prompt_format": "reference-pt", "question": "verbatim", "answer_prefix": answer_prefix_for(PT_SUFFIX)}
    )
    rendered = [engine.render(item, Scenario("blind", image=False)) for item in items]
    assert rendered == [c["query_newer_revision"] for c in calls if "weather" not in c["query_newer_revision"]]


def test_pt_accuracy_bands():
    assert {a: accuracy_band(float(a), rule="reference") for a in FIXTURE["PT.py group_by_accuracy"]} == FIXTURE[
        "PT.py group_by_accuracy"
    ]

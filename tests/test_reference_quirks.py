"""The reference study's quirks as switches, each off by default (issue 21, point 4): the instruction glued to
the question (PT.py), the release's question turn shown verbatim, temperature fitted on text-only prompts
(TS.py), candidates scored without the image and PT.py's own accuracy bands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmcal.calibration import fit_on_records, repeated_splits
from mmcal.calibration.study import recalibration_study, split_robustness
from mmcal.data.idk.llava_json import read_llava_conversation_json
from mmcal.engine.prompts import PromptVariant, prompt_from_config, question_text
from mmcal.errors import ConfigError
from mmcal.promptopt.ranking import accuracy_band, rank_key
from mmcal.records import select
from test_recalibration import make_records

FIXTURES = Path(__file__).parent / "fixtures" / "idk"
INSTRUCTION = "Please provide the option letter directly."


def _release_items():
    items, _ = read_llava_conversation_json(
        FIXTURES / "llava_idk_ts_shape.json", FIXTURES, "news", "test", answer="letter", max_rejected=0.5
    )
    return items


def test_defaults_render_as_before_and_keep_their_hashes():
    default = PromptVariant()
    assert (default.prompt_format, default.question, default.is_reference) == ("chat", "parsed", False)
    # the hash leaves out keys at their defaults that came later, so earlier records keep theirs
    assert PromptVariant(question="parsed").prompt_hash() == default.prompt_hash()
    assert PromptVariant(question="verbatim").prompt_hash() != default.prompt_hash()
    assert PromptVariant(prompt_format="reference-pt").is_reference


def test_the_two_reference_scripts_join_the_instruction_differently():
    """TS.py: value + "\\nPlease provide the option letter directly."; PT.py: value + "Please provide ...";
    the verbatim switch shows the file's own question turn as it is, an "<image>" placeholder included (the
    reference's scripts never remove it: tests/oracles)."""
    item = _release_items()[0]
    body = json.loads((FIXTURES / "llava_idk_ts_shape.json").read_text())[0]["conversations"][0]["value"]
    assert body.startswith("<image>\n")
    ts = PromptVariant(prompt_format="reference", question="verbatim")
    pt = PromptVariant(prompt_format="reference-pt", question="verbatim")
    assert question_text(item, ts) == body + "\n" + INSTRUCTION
    assert question_text(item, pt) == body + INSTRUCTION
    # parsed (the default) rebuilds the options in the prompt's option_format
    parsed = question_text(item, PromptVariant(prompt_format="reference"))
    assert parsed.splitlines()[1:3] == ["(A) Spain", "(B) England"] and body.splitlines()[2] == "A. Spain"


def test_verbatim_needs_a_question_turn_and_no_option_shift():
    from mmcal.engine.scenarios import shift_options
    from mmcal.items import MCItem

    plain = MCItem("q", "q", "Q?", ["a", "b"], 0, "test", "x")
    verbatim = prompt_from_config("v", {"question": "verbatim", "prompt_format": "reference"})
    with pytest.raises(ConfigError, match=r"prompts.v.question: verbatim needs .* item 'q'"):
        question_text(plain, verbatim)
    shifted = shift_options(_release_items()[0], 1)
    with pytest.raises(ConfigError, match="cannot be scored under an option shift"):
        question_text(shifted, verbatim)
    with pytest.raises(ConfigError, match="prompts.x.question: 'raw' is not one of parsed, verbatim"):
        prompt_from_config("x", {"question": "raw"})
    with pytest.raises(ConfigError, match="the reference format has no system prompt"):
        prompt_from_config("x", {"prompt_format": "reference-pt", "system": "s"})


def test_reference_accuracy_bands_put_0_6_in_band_2():
    """PT.py's `int(accuracy // 0.2)`: 0.6 // 0.2 == 2.0 and 1.0 // 0.2 == 4.0 in floating point; ours: 3 and 5."""
    accuracies = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.61, 0.79]
    assert [accuracy_band(a) for a in accuracies] == [0, 1, 2, 3, 4, 5, 3, 3]
    assert [accuracy_band(a, rule="reference") for a in accuracies] == [int(a // 0.2) for a in accuracies]
    assert [accuracy_band(a, rule="reference") for a in accuracies] == [0, 1, 2, 2, 4, 4, 3, 3]
    # so the reference ranks a 0.6-accurate, well-calibrated prompt below a 0.61 one with any ECE
    good, bad = ("p", 0.60, 0.01), ("q", 0.61, 0.30)
    assert min([good, bad], key=lambda c: rank_key(*c)) == good
    assert min([good, bad], key=lambda c: rank_key(*c, rule="reference")) == bad


def _twin(records, scenario: str, t_scale: float):
    """The same items scored under another scenario, with logits scaled by ``t_scale``."""
    twin = records.copy()
    twin["scenario"] = scenario
    twin["option_logits"] = [np.asarray(z, dtype=float) * t_scale for z in twin["option_logits"]]
    return twin


def test_temperature_can_be_fitted_on_text_only_records():
    """TS.py fits T on text-only prompts and applies it to image prompts: fit_records gives each target the
    twin scored under recalibration.fit_scenario; the fit equals a fit on the twin's calib rows alone."""
    image = make_records(400, t_true=2.5, seed=3)
    blind = _twin(image, "blind", 0.5)
    kw = dict(readouts=["letter_restricted"], methods=["temperature"], B=50, p_bootstrap=200)
    own, own_params, _ = recalibration_study(image, **kw)
    text, text_params, recalibrated = recalibration_study(image, fit_records=blind, **kw)
    t_own = own_params["m/d/s/p/letter_restricted"]["temperature"]["params"]["temperature"]
    t_text = text_params["m/d/s/p/letter_restricted"]["temperature"]["params"]["temperature"]
    expected = fit_on_records(blind, "temperature", "letter_restricted", split="calib").to_dict()["params"]
    assert t_text == pytest.approx(expected["temperature"], rel=1e-12)
    assert t_text == pytest.approx(0.5 * t_own, rel=1e-3)  # the twin's logits are half the target's
    assert set(own["fit_scenario"]) == {"s"} and set(text["fit_scenario"]) == {"blind"}
    # applied to the target's own test rows
    assert set(select(recalibrated, recalibrator="temperature")["split"]) == {"test"}
    assert set(recalibrated["scenario"]) == {"s"}
    # the repeated random splits fit on the twin's rows of each split's calib clusters
    own_splits = repeated_splits(image, "temperature", "letter_restricted", n_seeds=2)
    text_splits = repeated_splits(image, "temperature", "letter_restricted", n_seeds=2, fit_df=blind)
    for a, b in zip(own_splits["params"].dropna(), text_splits["params"].dropna()):
        assert json.loads(b)["temperature"] == pytest.approx(0.5 * json.loads(a)["temperature"], rel=1e-3)
    assert (own_splits["n_test"] == text_splits["n_test"]).all()
    summary = split_robustness(image, ["letter_restricted"], ["temperature"], 2, fit_records=blind)
    assert set(summary["method"]) == {"temperature"} and summary["mean"].notna().all()


def test_prompt_search_candidates_in_the_reference_pt_prompt_without_the_image(tiny_llava_dir, tmp_path):
    """promptopt.prompt / promptopt.scenario: PT.py's candidates, `f"{human}Please provide the option letter
    directly.\\n{suffix}: ("` with no image, as the search engine renders them."""
    from mmcal.engine.scenarios import scenario_from_config
    from mmcal.promptopt.job import answer_prefix_for, run_prompt_search, search_engine

    items = _release_items()
    prompt = prompt_from_config("pt", {"prompt_format": "reference-pt", "question": "verbatim"})
    engine = search_engine(
        "tiny", {"path": str(tiny_llava_dir), "kind": "mllm"}, device="cpu", dtype="float32", batch_size=4,
        image_root=FIXTURES, prompt=prompt,
    )  # fmt: skip
    blind = scenario_from_config("blind", {"image": False})
    human = json.loads((FIXTURES / "llava_idk_ts_shape.json").read_text())[1]["conversations"][0]["value"]
    engine.prompt = PromptVariant(**{**vars(prompt), "answer_prefix": answer_prefix_for("The answer might be")})
    assert engine.render(items[1], blind) == f"{human}{INSTRUCTION}\nThe answer might be: ("
    # the search runs on calib (the release items are all test: two become calib) in that prompt, its question
    # turns parsed (a LLaVA processor reads their "<image>" placeholders as images)
    engine.prompt = prompt_from_config("pt", {"prompt_format": "reference-pt"})
    for it in items[:2]:
        it.split = "calib"
    from mmcal.items import write_items

    write_items(items, tmp_path / "items.jsonl")
    cfg = {"seeds": ["The answer might be"], "paraphraser": {"kind": "rule"}, "rounds": 1, "m": 1, "k": 1}
    cfg |= {"n_calib": 2, "n_test": 1, "ci_bootstrap": 0, "band_rule": "reference"}
    best = run_prompt_search(engine, tmp_path / "items.jsonl", tmp_path / "out", cfg, scenario=blind)
    assert best["settings"]["band_rule"] == "reference" and best["test"]["n"] == 1
    search = json.loads((tmp_path / "out" / "search.json").read_text())
    assert search["settings"]["band_rule"] == "reference"


def test_an_unknown_search_scenario_fails_at_planning(tmp_path):
    import yaml

    from conftest import run_snakemake, workflow_copy

    wd = workflow_copy(tmp_path)
    (wd / "config/po.yaml").write_text(yaml.safe_dump({"base": "config.yaml", "promptopt": {"scenario": "no-such"}}))
    proc = run_snakemake(wd, "-n", "--configfile", "config/po.yaml", check=False)
    assert proc.returncode != 0 and "promptopt.scenario: 'no-such' is not one of the config's scenarios" in (
        proc.stdout + proc.stderr
    )
    (wd / "config/po.yaml").write_text(yaml.safe_dump({"base": "config.yaml", "promptopt": {"scenario": "blind"}}))
    run_snakemake(wd, "-n", "--configfile", "config/po.yaml")


def test_verbatim_refuses_a_placeholder_the_model_reads_as_an_image(tiny_llava_dir):
    """Plain text to Qwen-VL-Chat, an image to a LLaVA processor: the job stops, naming the prompt and item."""
    from mmcal.engine.build import build_engine
    from mmcal.engine.scenarios import Scenario

    prompt = prompt_from_config("ts", {"prompt_format": "reference", "question": "verbatim"})
    engine = build_engine(
        "tiny", {"path": str(tiny_llava_dir), "kind": "mllm"}, device="cpu", dtype="float32", prompt=prompt,
        readouts=["letter_restricted"], batch_size=2, image_root=FIXTURES,
    )  # fmt: skip
    first, second = _release_items()[:2]
    with pytest.raises(ConfigError, match=r"prompts.ts.question: verbatim shows item 'news-record0'.*'<image>'"):
        engine.score([first], Scenario("image", image=True))
    rows = engine.score([second], Scenario("image", image=True))  # no placeholder in this turn: scored
    assert {r["status"] for r in rows} == {"ok"}

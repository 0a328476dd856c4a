"""The scoring engine: readouts against a hand computation, bad inputs recorded, batch invariance,
several real architectures."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mmcal.engine.chat import render_prompt
from mmcal.engine.loading import load_model
from mmcal.engine.prompts import PromptVariant, build_messages
from mmcal.engine.readouts import letter_token_ids
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine, load_image
from mmcal.errors import ConfigError

READOUT_ORDER = ("letter_restricted", "letter_full_vocab", "option_loglik")  # as _hand_readouts returns


def _by(rows, item_id, readout):
    return next(r for r in rows if r["item_id"] == item_id and r["readout"] == readout)


def _hand_readouts(lm, item, image, prompt):
    """Independent computation: full sequences, no KV cache, no batching, plain softmax maths."""
    proc, tok = lm.processor, lm.tokenizer
    text = render_prompt(proc, build_messages(item, prompt, with_image=True), multimodal=True)

    def logits_for(suffix):
        enc = proc(text=[text + suffix], images=[image], return_tensors="pt", add_special_tokens=False)
        enc = enc.to(lm.device)
        with torch.no_grad():
            return lm.model(**enc).logits[0].double().cpu(), enc["input_ids"][0].cpu()

    logits, _ = logits_for(prompt.answer_prefix)
    last = logits[-1]
    letters = letter_token_ids(tok, prompt.answer_prefix, len(item.options))
    letter_logits = last[letters]
    p_restricted = torch.softmax(letter_logits, 0)
    p_full = torch.softmax(last, 0)[letters]
    option_scores = []
    for opt in item.options:
        logits, ids = logits_for(prompt.option_prefix + " " + opt)
        n_opt = len(tok(" " + opt, add_special_tokens=False)["input_ids"])
        lp = torch.log_softmax(logits, -1)
        total = sum(float(lp[t - 1, ids[t]]) for t in range(len(ids) - n_opt, len(ids)))
        option_scores.append(total / n_opt)
    p_opt = torch.softmax(torch.tensor(option_scores), 0)
    return p_restricted.numpy(), p_full.numpy(), p_opt.numpy()


def test_three_readouts_match_hand_computation(tiny_llava_dir, fmnist_items):
    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    prompt = PromptVariant()
    rows = Engine(lm, prompt, batch_size=3, image_root=root).score(items, Scenario())
    for item in items[:3]:
        image = load_image(root / item.image)
        p_r, p_f, p_o = _hand_readouts(lm, item, image, prompt)
        r = _by(rows, item.item_id, "letter_restricted")
        np.testing.assert_allclose(np.exp(r["option_scores"]), p_r, atol=1e-5)
        assert r["confidence"] == pytest.approx(p_r.max(), abs=1e-5)
        assert r["pred"] == int(p_r.argmax())
        f = _by(rows, item.item_id, "letter_full_vocab")
        np.testing.assert_allclose(np.exp(f["option_scores"]), p_f, rtol=1e-4, atol=1e-9)
        assert f["option_mass"] == pytest.approx(p_f.sum(), rel=1e-4)
        assert f["confidence"] == pytest.approx(p_f.max(), rel=1e-4)
        o = _by(rows, item.item_id, "option_loglik")
        np.testing.assert_allclose(np.exp(o["option_scores"]), p_o, atol=1e-5)
        # entropy of the readout's distribution over options
        assert r["entropy"] == pytest.approx(float(-(p_r * np.log(p_r)).sum()), abs=1e-5)


def test_results_do_not_depend_on_batch_size(tiny_llava_dir, fmnist_items):
    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    a = Engine(lm, PromptVariant(), batch_size=1, image_root=root).score(items, Scenario())
    b = Engine(lm, PromptVariant(), batch_size=8, image_root=root).score(items, Scenario())
    for x, y in zip(a, b):
        assert (x["item_id"], x["readout"]) == (y["item_id"], y["readout"])
        np.testing.assert_allclose(x["option_scores"], y["option_scores"], atol=1e-5)


def test_bad_items_are_recorded_not_dropped(tiny_llava_dir, fmnist_items, tmp_path):
    root, items = fmnist_items
    (tmp_path / "corrupt.png").write_bytes(b"this is not a png")  # outside the session's shared image folder
    bad_image = replace(items[0], item_id="corrupt", image=str(tmp_path / "corrupt.png"))
    missing = replace(items[1], item_id="missing", image="images/nope.png")
    no_options = replace(items[2], item_id="empty", options=[], gold=0)
    lm = load_model("tiny", str(tiny_llava_dir))
    engine = Engine(lm, PromptVariant(), image_root=root)
    rows = engine.score([bad_image, items[3], missing, no_options], Scenario())
    status = {r["item_id"]: r["status"] for r in rows}
    assert len(rows) == 4 * 3  # every item × readout is present
    assert status["corrupt"].startswith("image unreadable") and "corrupt.png" in status["corrupt"]
    assert status["missing"].startswith("image missing")
    assert status["empty"] == "no options"
    assert status[items[3].item_id] == "ok"
    assert all(math.isnan(r["confidence"]) for r in rows if r["status"] != "ok")
    long_engine = Engine(lm, PromptVariant(), image_root=root, max_prompt_tokens=20)
    assert long_engine.score([items[3]], Scenario())[0]["status"].startswith("prompt too long")


def _scores(rows) -> dict:
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    return {r["item_id"]: np.asarray(r["option_scores"]) for r in rows}


def test_blind_scenario_drops_the_image(tiny_llava_dir, fmnist_items, tmp_path):
    """No image token, no pixel values, and scores that do not depend on the image file at all."""
    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    image_token = lm.processor.image_token
    image_id = lm.tokenizer.convert_tokens_to_ids(image_token)
    blind, shown = Scenario(name="blind", image=False), Scenario()
    engine = Engine(lm, PromptVariant(), readouts=["letter_restricted"], image_root=root)
    text = engine.render(items[0], blind)
    assert image_token not in text and items[0].question in text and items[0].options[0] in text
    assert image_token in engine.render(items[0], shown)
    enc, enc_shown = engine.encode(0, items[0], blind), engine.encode(0, items[0], shown)
    assert enc.status == "ok" and "pixel_values" not in enc.extra and image_id not in enc.prefix_ids
    assert "pixel_values" in enc_shown.extra and image_id in enc_shown.prefix_ids
    # The same items with each other's images under their names: blind scores stay, shown scores move.
    swapped = tmp_path / "swapped"
    (swapped / "images").mkdir(parents=True)
    for item, other in zip(items[:3], items[1:4]):
        (swapped / item.image).write_bytes((root / other.image).read_bytes())
    engine_swapped = Engine(lm, PromptVariant(), readouts=["letter_restricted"], image_root=swapped)
    a, b = _scores(engine.score(items[:3], blind)), _scores(engine_swapped.score(items[:3], blind))
    for item_id in a:
        np.testing.assert_array_equal(a[item_id], b[item_id])
    a, b = _scores(engine.score(items[:3], shown)), _scores(engine_swapped.score(items[:3], shown))
    assert all(not np.allclose(a[i], b[i], atol=1e-6) for i in a)


def test_description_scenarios_put_their_description_in_the_prompt(tiny_llava_dir, fmnist_items):
    """The scenario's description (consistent or conflicting, as chosen) is in the prompt, beside the image
    or instead of it, and changes what the model is scored on."""
    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    engine = Engine(lm, PromptVariant(), readouts=["letter_restricted"], image_root=root)
    desc = {
        it.item_id: {
            "consistent": f"Description: a photo of {it.options[it.gold]}.",
            "conflicting": "Description: a bag.",
        }
        for it in items[:3]
    }
    consistent = Scenario(name="image-desc-consistent", image=True, description="consistent")
    conflicting = Scenario(name="image-desc-conflicting", image=True, description="conflicting")
    text_only = Scenario(name="text-desc", image=False, description="consistent")
    item = items[0]
    rendered = {s.name: engine.render(item, s, desc) for s in (consistent, conflicting, text_only)}
    assert desc[item.item_id]["consistent"] in rendered["image-desc-consistent"]
    assert "a bag" not in rendered["image-desc-consistent"]
    assert desc[item.item_id]["conflicting"] in rendered["image-desc-conflicting"]
    assert desc[item.item_id]["consistent"] not in rendered["image-desc-conflicting"]
    assert desc[item.item_id]["consistent"] in rendered["text-desc"]
    image_token = lm.processor.image_token
    assert image_token in rendered["image-desc-consistent"] and image_token not in rendered["text-desc"]
    assert "pixel_values" not in engine.encode(0, item, text_only, desc).extra
    # what the model sees differs, so do its scores: each description against the image alone
    alone = _scores(engine.score(items[:3], Scenario()))
    with_consistent = _scores(engine.score(items[:3], consistent, desc))
    with_conflicting = _scores(engine.score(items[:3], conflicting, desc))
    for i in alone:
        assert not np.allclose(alone[i], with_consistent[i], atol=1e-6)
        assert not np.allclose(with_consistent[i], with_conflicting[i], atol=1e-6)
    with pytest.raises(ConfigError, match=f"description of item {items[3].item_id!r}"):
        engine.score(items[3:4], consistent, desc)


def test_option_shift_moves_gold(tiny_llava_dir, fmnist_items):
    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    engine = Engine(lm, PromptVariant(), readouts=["letter_restricted"], image_root=root)
    rows = engine.score(items[:4], Scenario(name="s1", option_shift=1))
    for it, r in zip(items[:4], rows):
        assert r["gold"] == (it.gold + 1) % len(it.options)


def test_text_only_llm_and_other_mllm_family(smollm2_dir, tiny_idefics3_dir, fmnist_items):
    root, items = fmnist_items
    llm = load_model("smollm2", str(smollm2_dir), kind="llm")
    assert not llm.multimodal
    rows = Engine(llm, PromptVariant(), image_root=root).score(items[:2], Scenario(name="blind", image=False))
    assert {r["status"] for r in rows} == {"ok"}
    refused = Engine(llm, PromptVariant(), image_root=root).score(items[:1], Scenario())
    assert refused[0]["status"] == "text-only model cannot take an image"
    idefics = load_model("idefics3", str(tiny_idefics3_dir))
    assert idefics.model_type == "idefics3"
    rows = Engine(idefics, PromptVariant(), image_root=root).score(items[:2], Scenario())
    assert {r["status"] for r in rows} == {"ok"}


def test_letter_ids_resolve_after_parenthesis(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = letter_token_ids(tok, "Answer: (", 4)
    assert [tok.decode([i]) for i in ids] == ["A", "B", "C", "D"]
    spaced = letter_token_ids(tok, "Answer:", 4)
    assert [tok.decode([i]).strip() for i in spaced] == ["A", "B", "C", "D"]


def test_shared_prefix_candidates_match_scoring_from_scratch(tiny_llava_dir, fmnist_items):
    """The prompt search's KV-cache reuse gives what scoring each answer prefix on its own gives."""
    from mmcal.promptopt.job import answer_prefix_for

    root, items = fmnist_items
    lm = load_model("tiny", str(tiny_llava_dir))
    prefixes = [answer_prefix_for(w) for w in ("The answer might be", "I think it is", "Probably")]
    shared = Engine(lm, PromptVariant(), readouts=["letter_restricted"], batch_size=3, image_root=root)
    reused = shared.score_answer_prefixes(items, Scenario(), prefixes)
    assert shared.forward.tree_ok  # the packed path (all candidates in one tree per item) was checked and used
    for pre in prefixes:
        alone = Engine(lm, PromptVariant(answer_prefix=pre), readouts=["letter_restricted"], image_root=root)
        scratch = alone.score(items, Scenario())
        by_id = {r["item_id"]: r for r in reused[pre]}
        assert sorted(by_id) == sorted(r["item_id"] for r in scratch)
        for b in scratch:
            a = by_id[b["item_id"]]
            np.testing.assert_allclose(a["option_scores"], b["option_scores"], atol=1e-5)
            assert a["option_mass"] == pytest.approx(b["option_mass"], rel=1e-4)


def test_qwen2vl_family_matches_hand_computation(smollm2_dir, fmnist_items, tmp_path):
    """mrope positions: no prefix cache, per-token type ids extended over the continuation."""
    pytest.importorskip("torchvision", exc_type=ImportError)  # Qwen2-VL's processor needs it
    from tiny_models import build_tiny_qwen2vl

    root, items = fmnist_items
    lm = load_model("qwen2vl", str(build_tiny_qwen2vl(tmp_path / "qwen2vl", smollm2_dir)))
    assert not lm.prefix_cache_ok
    prompt = PromptVariant()
    rows = Engine(lm, prompt, batch_size=3, image_root=root).score(items, Scenario())
    assert {r["status"] for r in rows} == {"ok"}
    for item in items[:2]:
        for readout, expected in zip(READOUT_ORDER, _hand_readouts(lm, item, load_image(root / item.image), prompt)):
            got = np.exp(_by(rows, item.item_id, readout)["option_scores"])
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

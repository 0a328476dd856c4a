"""Prompt formats as configuration: the default study renders as before, built-ins render their
families' formats, and a model that cannot render prompts fails before any weights load."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from mmcal.engine.build import build_engine, engine_fingerprint
from mmcal.engine.chat import BUILTIN_FORMATS, OWN, render_prompt, resolve_chat_format
from mmcal.engine.job import score_to_records
from mmcal.engine.loading import load_model
from mmcal.engine.prompts import PromptVariant, build_messages
from mmcal.engine.readouts import encode_ids
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine
from mmcal.errors import ConfigError
from mmcal.items import MCItem, write_items

ITEM = MCItem("q1", "q1", "Which is red?", ["apple", "sky"], 0, "test", "toy", image="x.png")
USER_TEXT = "Which is red?\n(A) apple\n(B) sky\nPlease provide the option letter directly."
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _messages(with_image: bool, system: str | None = None):
    return build_messages(ITEM, PromptVariant(system=system), with_image=with_image)


def test_default_study_renders_as_before(tiny_llava_dir, smollm2_dir):
    """No key: each model's own template, and the answer prefix tokenised on its own (records unchanged)."""
    tiny = load_model("tiny", str(tiny_llava_dir))
    assert render_prompt(tiny.processor, _messages(True), multimodal=True) == (
        f"<|im_start|>user\n<image>\n{USER_TEXT}<|im_end|>\n<|im_start|>assistant\n"
    )
    smol = load_model("smollm2", str(smollm2_dir), kind="llm")
    assert render_prompt(smol.processor, _messages(False), multimodal=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{USER_TEXT}<|im_end|>\n<|im_start|>assistant\n"
    )
    for lm in (tiny, smol):
        assert resolve_chat_format(lm.name, {}, str(tiny_llava_dir if lm is tiny else smollm2_dir)) is OWN
        rs = Engine(lm, PromptVariant()).readout_set
        assert rs.joined("Answer: (") == encode_ids(lm.tokenizer, "Answer: (")
        assert rs.joined("Answer:") == encode_ids(lm.tokenizer, "Answer:")


def test_builtin_formats_render_their_families_text(tiny_llava_dir, smollm2_dir):
    tiny = load_model("tiny", str(tiny_llava_dir))
    llava = BUILTIN_FORMATS["llava-1.5"]
    assert render_prompt(tiny.processor, _messages(True), True, llava) == (
        f"{VICUNA_SYSTEM} USER: <image>\n{USER_TEXT} ASSISTANT:"
    )
    assert render_prompt(tiny.processor, _messages(True, system="Be brief."), True, llava) == (
        f"Be brief. USER: <image>\n{USER_TEXT} ASSISTANT:"
    )
    smol = load_model("smollm2", str(smollm2_dir), kind="llm")
    vicuna = BUILTIN_FORMATS["vicuna-v1.1"]
    text = f"{VICUNA_SYSTEM} USER: {USER_TEXT} ASSISTANT:"
    assert render_prompt(smol.processor, _messages(False), False, vicuna) == text
    # a base LLM given the MLLM's format sees the same text, image aside
    assert render_prompt(smol.processor, _messages(False), False, llava) == text
    with pytest.raises(Exception, match="takes no images"):
        render_prompt(tiny.processor, _messages(True), True, vicuna)
    assert render_prompt(smol.processor, _messages(False), False, BUILTIN_FORMATS["chatml"]) == (
        f"<|im_start|>user\n{USER_TEXT}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(tiny.processor, _messages(True), True, BUILTIN_FORMATS["raw"]) == f"<image>\n{USER_TEXT}"
    assert render_prompt(smol.processor, _messages(False, system="S"), False, BUILTIN_FORMATS["raw"]) == (
        f"S\n{USER_TEXT}"
    )


def test_answer_prefix_follows_the_turn_as_the_familys_answers_do(smollm2_dir):
    smol = load_model("smollm2", str(smollm2_dir), kind="llm")
    tok = smol.tokenizer
    llava = Engine(smol, PromptVariant(), chat_format=BUILTIN_FORMATS["vicuna-v1.1"]).readout_set
    # "ASSISTANT: Answer: (" — the answer starts with the space-led word, not glued to the colon
    assert tok.convert_ids_to_tokens(llava.joined("Answer: (")) == ["ĠAnswer", ":", "Ġ("]
    assert llava.joined("Answer: (") == encode_ids(tok, " Answer: (")
    raw = Engine(smol, PromptVariant(), chat_format=BUILTIN_FORMATS["raw"]).readout_set
    # the raw format's newline ends the prompt (Qwen tokenises ".\n" as one token); the answer follows it
    assert tok.convert_ids_to_tokens(raw.joined("Answer: (")) == ["Answer", ":", "Ġ("]
    chatml = Engine(smol, PromptVariant(), chat_format=BUILTIN_FORMATS["chatml"]).readout_set
    assert chatml.joined("Answer: (") == encode_ids(tok, "Answer: (")


def _no_template_checkpoint(src, dst, weights: bytes | None):
    """SmolLM2's config and tokenizer without its chat template; weights garbage or absent."""
    dst.mkdir()
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(src / f, dst / f)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    if weights is not None:
        (dst / "model.safetensors").write_bytes(weights)
    return dst


@pytest.mark.parametrize("weights", [b"not a safetensors file", None])
def test_no_template_and_no_key_fails_before_weights_load(smollm2_dir, tmp_path, weights):
    ckpt = _no_template_checkpoint(smollm2_dir, tmp_path / "vicuna-like", weights)
    # before the weights: garbage or absent weights would fail otherwise (not a ConfigError naming the key)
    with pytest.raises(ConfigError) as err:
        build_engine(
            "vicuna",
            {"path": str(ckpt), "kind": "llm"},
            device="cpu",
            dtype="float32",
            prompt=PromptVariant(),
            readouts=["letter_restricted"],
            batch_size=1,
            image_root=tmp_path,
        )
    msg = str(err.value)
    assert "models.vicuna.chat_template" in msg
    assert all(name in msg for name in BUILTIN_FORMATS)
    with pytest.raises(ConfigError, match="models.vicuna.chat_template"):
        engine_fingerprint("vicuna", {"path": str(ckpt)})
    with pytest.raises(ConfigError, match="neither a built-in format"):
        resolve_chat_format("vicuna", {"path": str(ckpt), "chat_template": "llava"}, str(ckpt))


def test_a_model_without_template_scores_with_a_configured_format(smollm2_dir, tmp_path):
    ckpt = _no_template_checkpoint(smollm2_dir, tmp_path / "base-llm", None)
    (ckpt / "model.safetensors").symlink_to((smollm2_dir / "model.safetensors").resolve())
    items = [MCItem(f"t{i}", f"t{i}", f"Is {i} even?", ["yes", "no"], i % 2, "test", "toy") for i in range(3)]
    write_items(items, tmp_path / "items.jsonl")
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:")
    fingerprints = set()
    for key in ("vicuna-v1.1", str(jinja)):
        entry = {"path": str(ckpt), "kind": "llm", "chat_template": key}
        out = tmp_path / f"{ckpt.name}-{len(fingerprints)}.parquet"
        stats = score_to_records(
            "base",
            entry,
            "toy",
            tmp_path / "items.jsonl",
            out,
            Scenario(name="blind", image=False),
            PromptVariant(),
            readouts=["letter_restricted", "option_loglik"],
            splits=["calib", "test"],
            device="cpu",
            dtype="float32",
            batch_size=2,
            progress=False,
        )
        assert stats["ok"] == 3
        df = pd.read_parquet(out)
        assert (df["status"] == "ok").all()
        fingerprints |= set(df["model_fingerprint"])
    # the format is part of the fingerprint; without a key the checkpoint's own fingerprint stands
    assert len(fingerprints) == 2
    assert engine_fingerprint("s", {"path": str(smollm2_dir)}) not in fingerprints
    # the user's template renders what it says: each message's content after "Q: ", then "A:" and the answer prefix
    engine = build_engine(
        "base",
        {"path": str(ckpt), "kind": "llm", "chat_template": str(jinja)},
        device="cpu",
        dtype="float32",
        prompt=PromptVariant(),
        readouts=["letter_restricted"],
        batch_size=1,
        image_root=tmp_path,
    )
    question = "Is 1 even?\n(A) yes\n(B) no\nPlease provide the option letter directly."
    assert engine.render(items[1], Scenario(name="blind", image=False)) == f"Q: {question}\nA:Answer: ("

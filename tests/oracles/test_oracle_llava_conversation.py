"""Oracle (a): mmcal's ``llava-1.5`` and ``vicuna-v1.1`` formats against LLaVA's own ``conv_vicuna_v1.get_prompt()``
(haotian-liu/LLaVA@c121f04, llava/conversation.py; fixture and command in tests/oracles/SOURCES.md).

Each fixture shape is the message list LLaVA's eval scripts build (``DEFAULT_IMAGE_TOKEN + '\\n' + question``, then
``append_message(roles[1], None)``); mmcal renders the same turns through :func:`mmcal.engine.chat.render_prompt`
on the llava-1.5 / vicuna replica tokenizers (tests/replicas), and its answer separator must continue the opened
turn the way LLaVA's own answered turn continues it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmcal.engine.chat import BUILTIN_FORMATS, VICUNA_SYSTEM, render_prompt
from mmcal.engine.prompts import PromptVariant

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "llava_conv_vicuna_v1.json").read_text())
SHAPES = {s["name"]: s for s in FIXTURE["shapes"]}
IMAGE_TOKEN = "<image>"


@pytest.fixture(scope="module")
def tokenizers():
    """family -> the replica's processor (llava-1.5) or tokenizer (vicuna); skips when sources are not fetched."""
    import build as replicas
    from transformers import AutoProcessor, AutoTokenizer

    try:
        llava, vicuna = replicas.build("llava-1.5"), replicas.build("vicuna-7b-v1.5")
    except replicas.ReplicaMissing as exc:
        pytest.skip(f"replica sources not fetched: {exc}")
    return {"llava-1.5": AutoProcessor.from_pretrained(llava), "vicuna-v1.1": AutoTokenizer.from_pretrained(vicuna)}


def _messages(shape: dict) -> list[dict]:
    """mmcal's messages for a fixture shape: LLaVA's "<image>\\n" prefix becomes an image part."""
    messages = []
    if shape["system"] is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": shape["system"]}]})
    turns = shape["turns"]
    assert turns[-1] == {"role": "assistant", "text": None}, "every rendered shape ends with the opened turn"
    for turn in turns[:-1]:
        text, parts = turn["text"], []
        if text.startswith(IMAGE_TOKEN + "\n"):
            parts.append({"type": "image"})
            text = text[len(IMAGE_TOKEN) + 1 :]
        parts.append({"type": "text", "text": text})
        messages.append({"role": turn["role"], "content": parts})
    return messages


def test_fixture_is_llavas_conv_vicuna_v1():
    conv = FIXTURE["conv_vicuna_v1"]
    assert conv["system"] == VICUNA_SYSTEM
    assert (conv["roles"], conv["sep"], conv["sep2"], conv["sep_style"]) == (["USER", "ASSISTANT"], " ", "</s>", "TWO")


@pytest.mark.parametrize("name", [n for n in SHAPES if n != "answered_turn"])
def test_llava_format_renders_conv_vicuna_v1(name, tokenizers):
    shape = SHAPES[name]
    messages = _messages(shape)
    got = render_prompt(tokenizers["llava-1.5"], messages, multimodal=True, chat_format=BUILTIN_FORMATS["llava-1.5"])
    assert got == shape["prompt"]


@pytest.mark.parametrize("name", [n for n, s in SHAPES.items() if n != "answered_turn" and not s["image"]])
def test_vicuna_format_renders_conv_vicuna_v1(name, tokenizers):
    """The base LLM's format: the same text as the MLLM's text-only prompt (Vicuna v1.1 is conv_vicuna_v1)."""
    shape = SHAPES[name]
    got = render_prompt(
        tokenizers["vicuna-v1.1"], _messages(shape), multimodal=False, chat_format=BUILTIN_FORMATS["vicuna-v1.1"]
    )
    assert got == shape["prompt"]


@pytest.mark.parametrize("fmt", ["llava-1.5", "vicuna-v1.1"])
def test_answer_separator_continues_the_opened_turn_as_llava_does(fmt, tokenizers):
    """LLaVA's answered turn is the opened one + " " + answer + "</s>": mmcal's separator is that " "."""
    cont = FIXTURE["answer_continuation"]["after_opened_turn"]
    chat_format = BUILTIN_FORMATS[fmt]
    assert cont == chat_format.answer_separator + "Answer: (A" + "</s>"
    opened = SHAPES["text_only_opened"]["prompt"]
    assert SHAPES["answered_turn"]["prompt"] == opened + cont
    # the answer prefix the engine appends after the separator is the start of that answer
    assert cont.startswith(chat_format.answer_separator + PromptVariant().answer_prefix)
    tok = getattr(tokenizers[fmt], "tokenizer", tokenizers[fmt])
    assert tok.eos_token == "</s>"  # what the format closes an assistant turn with

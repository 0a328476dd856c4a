"""Prompt variants: how an item becomes chat messages plus an answer prefix.

A prompt variant is configuration (``config.yaml: prompts``). The default follows the reference
study: question, lettered options, "Please provide the option letter directly.", and the assistant
turn opened with "Answer: (" so that the next token is the option letter.

The text is split in two parts on purpose:
- the *shared prefix*: chat template up to the open assistant turn (image + question + options);
- the *answer prefix*: text appended inside the assistant turn.
Readouts and the prompt search only change the answer prefix, so the prefix can be computed once
per item and its KV cache reused.

``prompt_format``: ``chat`` (the model's own or configured chat format) or ``reference``: the reference
study's released code, whatever the model's chat format: no template and no system prompt, the
processor's image token on its own line, the user's text, then "\n" + the answer prefix (the built-in
``raw`` format of :mod:`mmcal.engine.chat`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from mmcal import LETTERS
from mmcal.errors import ConfigError
from mmcal.items import MCItem

DEFAULT_INSTRUCTION = "Please provide the option letter directly."
PROMPT_FORMATS = ("chat", "reference")


@dataclass(frozen=True)
class PromptVariant:
    name: str = "default"
    instruction: str = DEFAULT_INSTRUCTION
    answer_prefix: str = "Answer: ("
    # Continuation before each option's text for the option_loglik readout.
    option_prefix: str = "Answer:"
    option_format: str = "({letter}) {text}"
    preamble: str = ""  # text placed before the question (e.g. an IDK hint)
    system: str | None = None
    prompt_format: str = "chat"

    def prompt_hash(self) -> str:
        """Hash of what changes the rendered text. The default ``chat`` format is left out so that the
        hashes (and records) of chat prompts are those written before the key existed."""
        fields = {k: v for k, v in asdict(self).items() if k != "name"}
        if fields["prompt_format"] == "chat":
            del fields["prompt_format"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def prompt_from_config(name: str, cfg: dict | None) -> PromptVariant:
    cfg = dict(cfg or {})
    cfg.pop("description", None)
    unknown = set(cfg) - set(PromptVariant.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"prompt {name!r}: unknown keys {sorted(unknown)}")
    fmt = cfg.get("prompt_format", "chat")
    if fmt not in PROMPT_FORMATS:
        raise ConfigError(f"prompts.{name}.prompt_format: {fmt!r} is not one of {', '.join(PROMPT_FORMATS)}")
    if fmt == "reference" and cfg.get("system"):
        raise ConfigError(f"prompts.{name}: the reference format has no system prompt; remove 'system'")
    return PromptVariant(name=name, **cfg)


def question_text(item: MCItem, prompt: PromptVariant, context: str | None = None) -> str:
    """The user's text: optional context (e.g. an image description), question, options, instruction."""
    lines = []
    if prompt.preamble:
        lines.append(prompt.preamble)
    if context:
        lines.append(context)
    lines.append(item.question)
    for i, opt in enumerate(item.options):
        lines.append(prompt.option_format.format(letter=LETTERS[i], text=opt))
    if prompt.instruction:
        lines.append(prompt.instruction)
    return "\n".join(lines)


def build_messages(item: MCItem, prompt: PromptVariant, with_image: bool, context: str | None = None) -> list[dict]:
    """Chat messages in the content-parts form that multimodal processors' templates accept."""
    content: list[dict] = []
    if with_image:
        content.append({"type": "image"})
    content.append({"type": "text", "text": question_text(item, prompt, context)})
    messages = []
    if prompt.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
    messages.append({"role": "user", "content": content})
    return messages


def flatten_for_text_model(messages: list[dict]) -> list[dict]:
    """Text-only chat templates (e.g. SmolLM2's) accept string content only."""
    flat = []
    for m in messages:
        parts = m["content"]
        if isinstance(parts, str):
            flat.append(m)
            continue
        if any(p.get("type") != "text" for p in parts):
            raise ValueError("a text-only model cannot take image content")
        flat.append({"role": m["role"], "content": "\n".join(p["text"] for p in parts)})
    return flat

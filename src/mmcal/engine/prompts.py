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
``raw`` format of :mod:`mmcal.engine.chat`). The reference's two scripts differ in one character:
``temperature_scaling/TS.py`` puts the instruction on its own line (``reference``), while
``prompt_tuning/PT.py`` glues it to the question's last line (``reference-pt``).

``question``: ``parsed`` (default) renders the item's question and its lettered options with
``option_format``; ``verbatim`` renders the data set's own question turn as it stands in the file, an
``<image>`` placeholder included: the reference study passed the release's human turn to Qwen-VL-Chat
unchanged, where ``<image>`` is plain text (tests/oracles: its TS.py and PT.py run on such records), for items
that keep it (``metadata["human_turn"]``, set by the ``llava_json`` builder).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from mmcal import LETTERS
from mmcal.errors import ConfigError
from mmcal.items import MCItem

DEFAULT_INSTRUCTION = "Please provide the option letter directly."
# what goes between the question (with its options) and the instruction, per prompt format
INSTRUCTION_JOINERS = {"chat": "\n", "reference": "\n", "reference-pt": ""}
PROMPT_FORMATS = tuple(INSTRUCTION_JOINERS)
QUESTION_MODES = ("parsed", "verbatim")


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
    question: str = "parsed"

    @property
    def is_reference(self) -> bool:
        """Rendered as the reference study's raw text, whatever the model's chat format."""
        return self.prompt_format != "chat"

    def prompt_hash(self) -> str:
        """Hash of what changes the rendered text. Keys at their defaults that came later (``chat``
        format, ``parsed`` question) are left out, so the hashes (and records) of earlier prompts stay."""
        fields = {k: v for k, v in asdict(self).items() if k != "name"}
        for key, default in (("prompt_format", "chat"), ("question", "parsed")):
            if fields[key] == default:
                del fields[key]
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
    if fmt != "chat" and cfg.get("system"):
        raise ConfigError(f"prompts.{name}: the reference format has no system prompt; remove 'system'")
    if cfg.get("question", "parsed") not in QUESTION_MODES:
        raise ConfigError(f"prompts.{name}.question: {cfg['question']!r} is not one of {', '.join(QUESTION_MODES)}")
    return PromptVariant(name=name, **cfg)


def verbatim_turn(item: MCItem, prompt: PromptVariant) -> str:
    """The data set's own question turn exactly as it is in the file (a model whose image token is the same
    text would read a placeholder as an image: the engine refuses that, :meth:`Engine._prepare`)."""
    turn = item.metadata.get("human_turn")
    if not isinstance(turn, str):
        raise ConfigError(
            f"prompts.{prompt.name}.question: verbatim needs the data set's own question turn, which item "
            f"{item.item_id!r} does not keep (only llava_json sets keep it); use question: parsed"
        )
    if item.metadata.get("option_shift"):
        raise ConfigError(
            f"prompts.{prompt.name}.question: verbatim shows the options in the file's order, so it cannot be "
            f"scored under an option shift (item {item.item_id!r})"
        )
    return turn


def question_text(item: MCItem, prompt: PromptVariant, context: str | None = None) -> str:
    """The user's text: optional context (e.g. an image description), question, options, instruction."""
    lines = []
    if prompt.preamble:
        lines.append(prompt.preamble)
    if context:
        lines.append(context)
    if prompt.question == "verbatim":
        lines.append(verbatim_turn(item, prompt))
    else:
        lines.append(item.question)
        for i, opt in enumerate(item.options):
            lines.append(prompt.option_format.format(letter=LETTERS[i], text=opt))
    text = "\n".join(lines)
    if prompt.instruction:
        text += INSTRUCTION_JOINERS[prompt.prompt_format] + prompt.instruction
    return text


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

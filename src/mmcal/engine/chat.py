"""Chat formats: how the messages of an item become the text up to the opened assistant turn.

A model renders with its own chat template unless its config entry names a format
(``models.<name>.chat_template``): a built-in below or a Jinja file. The format is resolved from
the config and the checkpoint's small files before any weights load (:func:`resolve_chat_format`).

Scoring and training both go through :func:`render_prompt`, so the tiny-LLaVA is trained on exactly
the text the scoring engine later shows it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mmcal.engine.prompts import flatten_for_text_model
from mmcal.errors import ConfigError

# ChatML, as SmolLM2 uses, with image parts and no default system prompt (SmolLM2's own template
# only takes string content and always adds a long system prompt, which costs tokens on 2 cores).
TINY_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Vicuna v1.1's system prompt, which LLaVA-1.5 was fine-tuned (`--version v1`, scripts/v1_5/finetune.sh)
# and evaluated (`--conv-mode vicuna_v1`, scripts/v1_5/eval/*.sh) with: `conv_vicuna_v1` in
# haotian-liu/LLaVA llava/conversation.py (the same string as FastChat's `vicuna_v1.1`). The
# "curious human ... human's questions" variant there is `conv_llava_v1`, which LLaVA-1.5 does not use.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# SeparatorStyle.TWO of that file: system + " ", then "USER: " + message + " ", then the opened turn
# "ASSISTANT:"; an image is "<image>\n" before the user's text. llava-hf/llava-1.5-7b-hf's own
# chat_template renders the same "USER: <image>\n{text} ASSISTANT:" without the system prompt.
# A prompt's own `system` replaces the default one. With text only it is Vicuna v1.1 exactly, so a
# base LLM and its MLLM given this format see the same text apart from the image.
_VICUNA_TEMPLATE = (
    "{% set system = namespace(text=default_system) %}"
    "{% for message in messages if message['role'] == 'system' %}"
    "{% set system.text = message['content'] if message['content'] is string"
    " else message['content'] | map(attribute='text') | join('\n') %}"
    "{% endfor %}"
    "{{ system.text + ' ' }}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{{ message['role'] | upper + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{% if text_only %}{{ raise_exception('this format takes no images') }}"
    "{% endif %}{{ image_token + '\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ ' ' if message['role'] == 'user' else eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_PALIGEMMA_TEMPLATE = (
    "{% for message in messages if message['role'] == 'user' %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ image_token }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endfor %}"
)

# The user's text as is: no roles, no system prompt unless the prompt has one (then it comes first,
# on its own line); an image is the processor's image token on its own line.
_RAW_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ image_token + '\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class ChatFormat:
    """A resolved prompt format.

    ``template`` None: the model's own chat template. ``answer_separator``: text between the opened
    assistant turn and the answer prefix, as the family's own answers begin (LLaVA/Vicuna:
    "ASSISTANT: Answer"); the answer prefix is then tokenised as it follows that text.
    """

    name: str
    template: str | None = None
    answer_separator: str = ""
    variables: tuple[tuple[str, object], ...] = ()
    # the separator ends the prompt's ids and the answer prefix is tokenised as it follows it: the engine
    # appends it to the rendered text, or the processor does (PaliGemma's "\n"). Needed where the separator
    # would merge with the prompt's last token (Qwen's ".\n" is one token).
    separator_in_prompt: bool = False
    processor_adds_separator: bool = False

    def identity(self) -> str:
        """What changes the rendered text (for fingerprints); empty for the model's own template."""
        if self.template is None:
            return ""
        flags = [flag for flag in ("separator_in_prompt", "processor_adds_separator") if getattr(self, flag)]
        blob = json.dumps([self.template, self.answer_separator, list(self.variables)] + flags)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


OWN = ChatFormat("own")

BUILTIN_FORMATS = {
    "llava-1.5": ChatFormat(
        "llava-1.5", _VICUNA_TEMPLATE, " ", variables=(("default_system", VICUNA_SYSTEM), ("text_only", False))
    ),
    "vicuna-v1.1": ChatFormat(
        "vicuna-v1.1", _VICUNA_TEMPLATE, " ", variables=(("default_system", VICUNA_SYSTEM), ("text_only", True))
    ),
    # the opened turn ends with a newline: the answer starts right after it
    "chatml": ChatFormat("chatml", TINY_LLAVA_CHAT_TEMPLATE, ""),
    # the reference study's raw prompt: question, options, instruction and "Answer: (" on separate lines
    "raw": ChatFormat("raw", _RAW_TEMPLATE, "\n", separator_in_prompt=True),
    # PaliGemma: the image token then the text; its processor expands the image token and adds <bos> before
    # and "\n" after the text, the prefix/answer boundary of its training format
    "paligemma": ChatFormat(
        "paligemma", _PALIGEMMA_TEMPLATE, "\n", separator_in_prompt=True, processor_adds_separator=True
    ),
}


def reference_format(chat_format: ChatFormat) -> ChatFormat:
    """The format of a reference-protocol prompt: the reference study's raw text, whatever the model's format;
    a family whose processor itself ends the prompt (PaliGemma: "\n", then the answer) keeps its format,
    which is that raw text already."""
    return chat_format if chat_format.processor_adds_separator else BUILTIN_FORMATS["raw"]


def format_from_key(model_name: str, value: str) -> ChatFormat:
    """``models.<name>.chat_template``: a built-in's name or a Jinja file (joined to the answer prefix as the
    model's own templates are, with no separator)."""
    if value in BUILTIN_FORMATS:
        return BUILTIN_FORMATS[value]
    path = Path(value)
    if path.suffix in {".jinja", ".j2"} and path.is_file():
        return ChatFormat(str(path), path.read_text())
    raise ConfigError(
        f"models.{model_name}.chat_template: {value!r} is neither a built-in format "
        f"({', '.join(BUILTIN_FORMATS)}) nor an existing .jinja file"
    )


def _has_template(cfg_file: Path) -> bool:
    try:
        return bool(json.loads(cfg_file.read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


# Where a saved tokenizer or processor keeps its chat template (transformers 4.4x-5.x layouts).
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_CONFIG_FILES = ("tokenizer_config.json", "processor_config.json")


def own_template_in(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _TEMPLATE_FILES) or any(_has_template(folder / f) for f in _CONFIG_FILES)


def _hub_snapshot_has_template(repo_id: str, revision: str | None) -> bool | None:
    """Whether a hub model ships a chat template, from its small files; None when some cannot be read
    (offline and not cached, gated): the loaded model is checked instead."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    unknown = False
    for f in _TEMPLATE_FILES + _CONFIG_FILES:
        try:
            local = Path(hf_hub_download(repo_id, f, revision=revision))
        except RemoteEntryNotFoundError:  # the repository has no such file
            continue
        except Exception:
            unknown = True
            continue
        if f in _TEMPLATE_FILES or _has_template(local):
            return True
    return None if unknown else False


def resolve_chat_format(model_name: str, model_entry: dict, path: str) -> ChatFormat:
    """The entry's format, checked without loading weights: a configured one, else the model's own,
    which must exist (ConfigError naming the key otherwise)."""
    value = model_entry.get("chat_template")
    if not value and model_entry.get("adapter") == "qwen-vl-chat":
        value = "raw"  # the reference study's prompt, the only one that adapter renders
    if value:
        return format_from_key(model_name, value)
    folder = Path(path)
    if folder.is_dir():
        found = own_template_in(folder)
    else:
        found = _hub_snapshot_has_template(path, model_entry.get("revision"))
    if found is False:
        raise missing_template(model_name, path)
    return OWN


_PROBE_ANSWER = "Zq7"  # a marker no template contains


def own_answer_separator(processor_or_tokenizer, multimodal: bool) -> str:
    """The whitespace a model's own template puts between its opened assistant turn and the answer.

    Rendered, not guessed: a one-turn chat opened for generation vs the same chat with an answer. LLaVA-hf
    ("ASSISTANT:" then " answer") and SmolVLM ("Assistant:" then " answer") answer after a space; ChatML
    models right after the newline. Anything other than whitespace (a template that adds thinking tags,
    or cannot render an assistant turn) gives "": the answer prefix is then joined as before."""
    user = {"role": "user", "content": [{"type": "text", "text": "?"}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": _PROBE_ANSWER}]}
    msgs = [user] if multimodal else flatten_for_text_model([user])
    full_msgs = [user, answer] if multimodal else flatten_for_text_model([user, answer])
    try:
        opened = processor_or_tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = processor_or_tokenizer.apply_chat_template(full_msgs, tokenize=False)
    except Exception:  # a template that rejects an assistant turn: keep the plain join
        return ""
    if not full.startswith(opened) or _PROBE_ANSWER not in full[len(opened) :]:
        return ""
    between = full[len(opened) : full.index(_PROBE_ANSWER, len(opened))]
    return between if between.strip() == "" else ""


def missing_template(model_name: str, path: str) -> ConfigError:
    return ConfigError(
        f"model {model_name!r}: {path} has no chat template of its own; set models.{model_name}.chat_template "
        f"to one of {', '.join(BUILTIN_FORMATS)} or a .jinja file"
    )


def render_prompt(processor_or_tokenizer, messages: list[dict], multimodal: bool, chat_format: ChatFormat = OWN) -> str:
    """Text of the chat up to the opened assistant turn, via the model's own template or ``chat_format``."""
    if not multimodal:
        messages = flatten_for_text_model(messages)
    if chat_format.template is None:
        return processor_or_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    return tokenizer.apply_chat_template(
        messages,
        chat_template=chat_format.template,
        add_generation_prompt=True,
        tokenize=False,
        image_token=getattr(processor_or_tokenizer, "image_token", None) or "<image>",
        **dict(chat_format.variables),
    )

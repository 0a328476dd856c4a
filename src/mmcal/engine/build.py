"""The one way to build a scoring engine from a model entry (config ``models.<name>``).

The scoring job, the prompt search and ``mmcal score`` all load through here, so an entry's loading
options (``path``, ``kind``, ``revision``, ``dtype``, ``batch_size``, ``chat_template``, ``trust_remote_code``,
``image_processor_backend``, ``adapter``) mean the same in each of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from mmcal.engine.chat import OWN, ChatFormat, missing_template, own_answer_separator, resolve_chat_format
from mmcal.engine.loading import has_own_template, load_model, model_fingerprint
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.qwen_vl import QwenVLEngine, load_qwen_lm, load_qwen_vl
from mmcal.engine.scoring import Engine
from mmcal.errors import ConfigError

# models.<name>.adapter: models that do not fit the Auto classes' interface (loader, engine class)
# qwen-vl-chat: Qwen-VL-Chat's remote code; qwen-lm: Qwen-7B's (its base LLM: the same tokenizer, no images)
ADAPTERS = {"qwen-vl-chat": (load_qwen_vl, QwenVLEngine), "qwen-lm": (load_qwen_lm, QwenVLEngine)}


def checkpoint_path(name: str, model_entry: dict, path: str | Path | None = None) -> str:
    """What to load: ``path`` (a folder the DAG built) when given, else the entry's folder or hub id."""
    if path:
        return str(path)
    if not model_entry.get("path"):
        raise ConfigError(f"model {name!r}: the entry has no 'path' (a local folder or a hub id)")
    return str(model_entry["path"])


def image_backend(model_entry: dict) -> str:
    """``models.<name>.image_processor_backend``: fixed default ``pil``, whatever else is installed."""
    return str(model_entry.get("image_processor_backend", "pil"))


def _fingerprint(checkpoint: str, model_entry: dict, chat_format: ChatFormat) -> str:
    """The checkpoint's fingerprint, and the prompt format's when one is configured (a model with its
    own template keeps the checkpoint's fingerprint); an MLLM's image-processor backend follows after
    a slash (``<hash>/pil``), so records say which backend made their pixel values and shards of
    another backend are never resumed."""
    base = model_fingerprint(checkpoint, model_entry.get("revision"))
    adapter = model_entry.get("adapter")
    if chat_format.template is not None or adapter:
        base = hashlib.sha256(f"{base}|{chat_format.identity()}|{adapter or ''}".encode()).hexdigest()[:16]
    if model_entry.get("kind") == "llm" or adapter:  # no image processor (an adapter's model reads the image)
        return base
    return f"{base}/{image_backend(model_entry)}"


def engine_fingerprint(name: str, model_entry: dict, path: str | Path | None = None) -> str:
    """The fingerprint ``build_engine`` stamps on records, computed without loading the model."""
    checkpoint = checkpoint_path(name, model_entry, path)
    return _fingerprint(checkpoint, model_entry, resolve_chat_format(name, model_entry, checkpoint))


def build_engine(
    name: str,
    model_entry: dict,
    *,
    path: str | Path | None = None,
    device: str,
    dtype: str,
    prompt: PromptVariant,
    readouts: Iterable[str],
    batch_size: int,
    image_root: str | Path,
) -> Engine:
    """Load the entry's model and wrap it in an engine.

    ``dtype`` and ``batch_size`` are the study-wide settings; the entry's own ``dtype`` and
    ``batch_size`` take precedence over them. The prompt format is resolved first: a model that
    cannot render prompts fails before its weights load.
    """
    checkpoint = checkpoint_path(name, model_entry, path)
    chat_format = resolve_chat_format(name, model_entry, checkpoint)
    adapter = model_entry.get("adapter")
    if adapter:
        if adapter not in ADAPTERS:
            raise ConfigError(f"models.{name}.adapter: {adapter!r} is not one of {', '.join(ADAPTERS)}")
        load, engine_class = ADAPTERS[adapter]
    else:
        load, engine_class = load_model, Engine
    lm = load(
        name,
        checkpoint,
        kind=model_entry.get("kind", "auto"),
        device=device,
        dtype=model_entry.get("dtype", dtype),
        revision=model_entry.get("revision"),
        trust_remote_code=bool(model_entry.get("trust_remote_code", False)),
        image_processor_backend=image_backend(model_entry),
    )
    if chat_format is OWN:
        if not has_own_template(lm):  # a hub model whose files could not be read before
            raise missing_template(name, checkpoint)
        # the answer prefix follows the opened turn as the family's own answers do ("Assistant: Answer")
        chat_format = replace(chat_format, answer_separator=own_answer_separator(lm.processor, lm.multimodal))
    lm.fingerprint = _fingerprint(checkpoint, model_entry, chat_format)
    return engine_class(
        lm,
        prompt,
        readouts=readouts,
        batch_size=int(model_entry.get("batch_size", batch_size)),
        image_root=image_root,
        chat_format=chat_format,
    )

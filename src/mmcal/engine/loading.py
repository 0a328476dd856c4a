"""Loading any model by a config entry through the ``transformers`` Auto classes.

MLLMs: ``AutoModelForImageTextToText`` + ``AutoProcessor``; text-only LLMs:
``AutoModelForCausalLM`` + ``AutoTokenizer``. Nothing here is specific to one model family.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from mmcal.errors import MmcalError
from mmcal.image_backend import check_backend, loaded_backend
from mmcal.torch_device import resolve_device, resolve_dtype

# Families whose rotary positions depend on the image layout (3-D "mrope"): their position ids are
# rebuilt from the whole sequence, so a prefix KV cache cannot be extended by a batch of different
# size. They are scored with full sequences instead.
# Qwen-VL-Chat's remote code ("qwen") keeps its own legacy cache and takes no ``logits_to_keep``.
NO_PREFIX_CACHE_TYPES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "qwen"}


@dataclass
class LoadedModel:
    name: str
    model: object
    processor: object  # AutoProcessor for MLLMs, the tokenizer for LLMs
    tokenizer: object
    multimodal: bool
    device: str
    fingerprint: str
    revision: str | None = None  # hub revision the weights were loaded at (None: default branch)
    image_processor_backend: str | None = None  # "pil" | "torchvision"; None: no image processor

    @property
    def model_type(self) -> str:
        return getattr(self.model.config, "model_type", "")

    @property
    def prefix_cache_ok(self) -> bool:
        return self.model_type not in NO_PREFIX_CACHE_TYPES


# The small files of a hub repository that decide what a loaded model is, besides its weights (which the
# resolved commit pins): configs, tokenizer and processor files, chat templates, remote code.
HUB_IDENTITY_FILES = ["*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt", "*.py"]


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder (named by its resolved commit) holding a hub model's small files;
    downloads them when allowed (offline: from the cache)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_IDENTITY_FILES))
    except Exception as exc:
        raise MmcalError(
            f"cannot resolve hub model {repo_id!r} at revision {revision or 'main'!r} ({type(exc).__name__}: {exc}); "
            "it must be reachable (offline: false) or already in the hub cache"
        ) from None


def model_fingerprint(path_or_id: str, revision: str | None = None) -> str:
    """Identity of a checkpoint.

    A local folder: the content hash of every file in it (cached by path, size and mtime in
    :mod:`mmcal.hashing`, so weight shards are read once). A hub id: the commit its revision
    resolves to (which pins the weights) plus the hashes of its config, tokenizer, processor,
    template and remote-code files.
    """
    from mmcal.hashing import file_sha256, tree_files, tree_sha256

    path = Path(path_or_id)
    if path.is_dir():
        return tree_sha256(path)[:16]
    snapshot = hub_snapshot(path_or_id, revision)
    h = hashlib.sha256(f"hub:{path_or_id}@{snapshot.name}\n".encode())
    for f in tree_files(snapshot):
        h.update(f"{f.relative_to(snapshot).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()[:16]


def has_own_template(lm: "LoadedModel") -> bool:
    return bool(getattr(lm.tokenizer, "chat_template", None) or getattr(lm.processor, "chat_template", None))


def is_multimodal_config(config) -> bool:
    return getattr(config, "vision_config", None) is not None


def _processor_with_image_backend(path: str, backend: str, kw: dict):
    """``AutoProcessor`` whose image processor has ``backend``. transformers hands ``backend=`` to every
    sub-processor, and video processors exist for torchvision only (Qwen2-VL): then the processor loads at
    its defaults and its image processor is loaded again, explicitly, with the asked backend."""
    from transformers import AutoImageProcessor, AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, backend=backend, **kw)
    except ImportError as exc:
        if "video processor" not in str(exc).lower():
            raise
    processor = AutoProcessor.from_pretrained(path, **kw)
    processor.image_processor = AutoImageProcessor.from_pretrained(path, backend=backend, **kw)
    return processor


def load_model(
    name: str,
    path: str,
    kind: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    image_processor_backend: str = "pil",
) -> LoadedModel:
    """Load a model and its processor/tokenizer; ``kind`` is ``mllm``, ``llm`` or ``auto``.

    ``trust_remote_code`` is passed to every ``from_pretrained``. An MLLM's image processor is loaded
    with ``image_processor_backend`` and checked to be of that backend after loading (no silent fallback).

    Whether it can render prompts (its own chat template or a configured format) is checked before
    this, by :func:`mmcal.engine.chat.resolve_chat_format`."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoTokenizer,
    )

    check_backend(name, image_processor_backend)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    local = Path(path).is_dir()
    if not local and os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in path:
        raise MmcalError(f"model {name!r}: {path} is neither a local folder nor a hub id")
    kw = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **kw)
    except OSError as exc:
        raise MmcalError(
            f"model {name!r}: cannot load config from {path!r} ({exc}). A local path must hold a "
            "saved checkpoint; a hub id needs network access (HF_HUB_OFFLINE unset)."
        ) from None
    multimodal = is_multimodal_config(config) if kind == "auto" else kind == "mllm"
    if multimodal:
        processor = _processor_with_image_backend(path, image_processor_backend, kw)
        tokenizer = processor.tokenizer
        got = loaded_backend(processor)
        if got is not None and got != image_processor_backend:
            raise MmcalError(
                f"model {name!r}: asked for the {image_processor_backend} image processor, transformers loaded "
                f"{type(processor.image_processor).__name__} ({got})"
            )
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, **kw)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        processor = tokenizer
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kw)
    model.to(device)
    model.eval()
    return LoadedModel(
        name=name,
        model=model,
        processor=processor,
        tokenizer=tokenizer,
        multimodal=multimodal,
        device=device,
        fingerprint=model_fingerprint(path, revision),
        revision=revision,
        image_processor_backend=loaded_backend(processor),
    )

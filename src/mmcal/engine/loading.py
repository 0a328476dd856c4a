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

# Families whose rotary positions depend on the image layout (3-D "mrope"): their position ids are
# rebuilt from the whole sequence, so a prefix KV cache cannot be extended by a batch of different
# size. They are scored with full sequences instead.
NO_PREFIX_CACHE_TYPES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v"}


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

    @property
    def model_type(self) -> str:
        return getattr(self.model.config, "model_type", "")

    @property
    def prefix_cache_ok(self) -> bool:
        return self.model_type not in NO_PREFIX_CACHE_TYPES


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MmcalError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise MmcalError(f"unknown dtype {dtype!r}") from None


def model_fingerprint(path_or_id: str, revision: str | None = None) -> str:
    """Cheap, stable identity of a checkpoint: config + weight file names, sizes and first MiB.

    Hashing every byte of a 7B model costs minutes; the first MiB of each shard plus its size
    changes whenever the weights do in practice. A hub id is identified by its name and the
    revision asked for (a local folder has no revision: its files are what it is).
    """
    path = Path(path_or_id)
    h = hashlib.sha256()
    if not path.is_dir():
        h.update(f"hub:{path_or_id}".encode() + (f"@{revision}".encode() if revision else b""))
        return h.hexdigest()[:16]
    for f in sorted(path.iterdir()):
        if f.name == "config.json" or f.suffix in {".json", ".jinja"} and "config" in f.name:
            h.update(f.name.encode() + f.read_bytes())
        elif f.suffix in {".safetensors", ".bin"}:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def has_own_template(lm: "LoadedModel") -> bool:
    return bool(getattr(lm.tokenizer, "chat_template", None) or getattr(lm.processor, "chat_template", None))


def is_multimodal_config(config) -> bool:
    return getattr(config, "vision_config", None) is not None


def load_model(
    name: str,
    path: str,
    kind: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model and its processor/tokenizer; ``kind`` is ``mllm``, ``llm`` or ``auto``.

    Whether it can render prompts (its own chat template or a configured format) is checked before
    this, by :func:`mmcal.engine.chat.resolve_chat_format`."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

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
        processor = AutoProcessor.from_pretrained(path, **kw)
        tokenizer = processor.tokenizer
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
    )

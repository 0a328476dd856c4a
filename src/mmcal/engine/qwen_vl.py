"""Qwen-VL-Chat (``Qwen/Qwen-VL-Chat``, remote code) behind the engine interface (``models.<name>.adapter:
qwen-vl-chat``), scored the way the reference study scored it.

The model has no processor: the image's *path* goes inside the text. The reference built its prompt with
``tokenizer.from_list_format([{'image': path}, {'text': query}])``, which gives
``"Picture 1:<img>PATH</img>\\n" + query`` (no space after the colon), with no chat turns (raw prompt). The
remote tokenizer turns ``<img>PATH</img>`` into ``<img>`` (151857), the path's UTF-8 bytes as ids (byte
value = id), ``<imgpad>`` (151859) up to 256 positions, ``</img>`` (151858); the remote model reads the path
back from ``input_ids`` between ``<img>`` and the first ``<imgpad>``, opens the file itself and puts its 256
visual features on those 256 positions (``config.visual['image_start_id']``; ``</img>`` and ``<imgpad>`` are
that id + 1 and + 2).

These facts are read from the public remote code (``tokenization_qwen.py`` / ``modeling_qwen.py``, e.g. the
GitHub upload ``x1ngzai/Qwen-VL-Chat-Int4@1cd721a2``); that code is not in any package registry and is not
copied here. What the real remote code does when run through this adapter is unverified (see
tests/test_families_loading.py, which drives the adapter with a labelled stand-in of that interface).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from mmcal.engine.chat import ChatFormat
from mmcal.engine.loading import LoadedModel, model_fingerprint
from mmcal.engine.scoring import Engine
from mmcal.errors import ConfigError, MmcalError
from mmcal.torch_device import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

IMG_START_ID = 151857  # "<img>" = 151643 ranks + 3 ChatML + 205 extras + 6 ref/box/quad tags
IMG_END_ID = IMG_START_ID + 1  # "</img>"
IMG_PAD_ID = IMG_START_ID + 2  # "<imgpad>"
IMAGE_SPAN = 256  # positions between <img> and </img>: the path's bytes, then padding
# the model cuts the path at the first <imgpad>, so a path filling all 256 positions cannot be read back
MAX_PATH_BYTES = IMAGE_SPAN - 1


def reference_prompt(messages: list[dict], image_paths: list[str]) -> str:
    """The reference study's text: ``from_list_format`` of the image(s) then the user's text, no roles.

    Image parts take the paths in order ("Picture k:<img>PATH</img>\\n"); several messages (a system
    prompt) are joined by newlines, as the ``raw`` format joins them.
    """
    paths = iter(image_paths)
    out = []
    n_images = 0
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append(content)
            continue
        text = ""
        for part in content:
            if part["type"] == "image":
                n_images += 1
                text += f"Picture {n_images}:<img>{next(paths)}</img>\n"
            elif part["type"] == "text":
                text += part["text"]
        out.append(text)
    return "\n".join(out)


def image_spans(ids: list[int]) -> list[tuple[int, int]]:
    """(start, end) index of every ``<img>`` … ``</img>`` pair in ``ids``."""
    starts = [i for i, t in enumerate(ids) if t == IMG_START_ID]
    ends = [i for i, t in enumerate(ids) if t == IMG_END_ID]
    if len(starts) != len(ends) or any(e <= s for s, e in zip(starts, ends)):
        raise MmcalError(f"unpaired <img>/</img> ids at {starts} / {ends}")
    return list(zip(starts, ends))


def path_in_ids(ids: list[int], start: int, end: int) -> str:
    """The image path the model reads from one span (as the remote model does)."""
    inner = ids[start + 1 : end]
    return bytes(inner[: inner.index(IMG_PAD_ID)]).decode("utf-8")


class RemoteQwenVL:
    """The remote ``QWenLMHeadModel`` seen through the call the engine's forward passes make.

    Its ``forward`` takes neither ``logits_to_keep`` nor the new cache objects: full passes only
    (``model_type`` "qwen" is in :data:`mmcal.engine.loading.NO_PREFIX_CACHE_TYPES`), and the kept
    logits are cut here.
    """

    def __init__(self, inner):
        self.inner = inner

    @property
    def config(self):
        return self.inner.config

    @property
    def dtype(self):
        return self.inner.dtype

    def __call__(self, input_ids, attention_mask=None, logits_to_keep: int = 0, **kwargs):
        out = self.inner(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True, **kwargs
        )
        logits = out.logits if not logits_to_keep else out.logits[:, -int(logits_to_keep) :]
        return SimpleNamespace(logits=logits)


def check_interface(name: str, tokenizer, config) -> None:
    """The loaded tokenizer and config follow the documented ids (else the prompt would mean something else)."""
    visual = getattr(config, "visual", None) or {}
    found = {
        "config.visual['image_start_id']": visual.get("image_start_id"),
        "tokenizer.img_start_id": getattr(tokenizer, "img_start_id", None),
        "tokenizer.img_end_id - 1": (getattr(tokenizer, "img_end_id", 0) or 0) - 1,
        "tokenizer.img_pad_id - 2": (getattr(tokenizer, "img_pad_id", 0) or 0) - 2,
    }
    wrong = {k: v for k, v in found.items() if v != IMG_START_ID}
    if wrong:
        raise MmcalError(f"model {name!r} does not follow Qwen-VL-Chat's image ids (<img> = {IMG_START_ID}): {wrong}")


def load_qwen_vl(
    name: str,
    path: str,
    kind: str = "mllm",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    image_processor_backend: str = "pil",
) -> LoadedModel:
    """Load Qwen-VL-Chat's remote tokenizer and model (``AutoTokenizer``/``AutoModelForCausalLM``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not trust_remote_code:
        raise ConfigError(f"models.{name}: adapter qwen-vl-chat runs the model's own code: set trust_remote_code: true")
    if kind not in ("auto", "mllm"):
        raise ConfigError(f"models.{name}: adapter qwen-vl-chat is an MLLM (kind: {kind!r})")
    device = resolve_device(device)
    kw = {"revision": revision, "trust_remote_code": True}
    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, device), **kw)
    check_interface(name, tokenizer, model.config)
    model.to(device)
    model.eval()
    return LoadedModel(
        name=name,
        model=RemoteQwenVL(model),
        processor=tokenizer,
        tokenizer=tokenizer,
        multimodal=True,
        device=device,
        fingerprint=model_fingerprint(path, revision),
        revision=revision,
    )


# The reference tokenised its whole text at once ("...directly.\nAnswer: ("). Qwen's pre-tokeniser keeps
# punctuation with the newlines after it (".\n" is one token), so a prefix ending "directly." and a
# continuation "\nAnswer: (" would not give the reference's ids; the newline therefore ends the prefix
# (a newline never joins the letters after it), and the answer prefix follows with no separator.
REFERENCE_FORMAT = ChatFormat("qwen-vl-reference", template="mmcal.engine.qwen_vl.reference_prompt + '\\n'")


class QwenVLEngine(Engine):
    """The engine with the reference's text (image path inside it) and the remote tokenizer as processor."""

    def __init__(self, lm: LoadedModel, prompt, *args, chat_format: ChatFormat | None = None, **kwargs):
        if chat_format is None or chat_format.name != "raw":
            raise ConfigError(
                f"models.{lm.name}: adapter qwen-vl-chat scores the reference's raw prompt only "
                f"(chat_template: raw, got {getattr(chat_format, 'name', None)!r})"
            )
        super().__init__(lm, prompt, *args, chat_format=REFERENCE_FORMAT, **kwargs)

    def reference_format(self, chat_format: ChatFormat) -> ChatFormat:
        return REFERENCE_FORMAT

    def _prepare(self, pos, item, scenario, descriptions=None):
        enc, text, image = super()._prepare(pos, item, scenario, descriptions)
        if enc.status == "ok" and image is not None:
            n = len(str((self.image_root / item.image).resolve()).encode())
            if n > MAX_PATH_BYTES:  # an input problem: the row is recorded, the job goes on
                enc.status = f"prompt too long: image path of {n} bytes, Qwen-VL reads at most {MAX_PATH_BYTES}"
                return enc, None, None
        return enc, text, image

    def _render(self, messages: list[dict], multimodal: bool, image_path: Path | None = None) -> str:
        # absolute: the model opens the file itself, from wherever it runs
        return reference_prompt(messages, [] if image_path is None else [str(Path(image_path).resolve())]) + "\n"

    def _call_processor(self, texts: list[str], images: list | None, tensors: str | None):
        # the image goes in as its path inside the text; the model loads it
        return self.tok(texts, return_tensors=tensors, add_special_tokens=self._add_special(texts[0]))

    def _set_encoding(self, enc, ids: list[int], extra: dict) -> None:
        spans = image_spans(ids)
        for start, end in spans:
            if end - start - 1 != IMAGE_SPAN:
                enc.status = f"processor failed: {end - start - 1} image positions, expected {IMAGE_SPAN}"
                return
        super()._set_encoding(enc, ids, extra)

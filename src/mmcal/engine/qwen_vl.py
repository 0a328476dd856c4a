"""Qwen's remote-code models behind the engine interface, scored the way the reference study scored them:
Qwen-VL-Chat (``models.<name>.adapter: qwen-vl-chat``) and its base LLM Qwen-7B (``adapter: qwen-lm``), both
``trust_remote_code`` models of the same tokenizer (qwen.tiktoken), both with ``chat_template: raw``.

Qwen-VL-Chat has no processor: the image's *path* goes inside the text. The reference built its prompt with
``tokenizer.from_list_format([{'image': path}, {'text': query}])``, with no chat turns (raw prompt). When the
loaded tokenizer has ``from_list_format`` (the real remote tokenizer), the text is built by it, so the pinned
revision's own code decides the image tag; otherwise (a tokenizer without it: Qwen-7B's, or a stand-in) the
text is built here as hub revisions after QwenLM/Qwen-VL#184 build it, ``"Picture 1: <img>PATH</img>\\n" +
query`` (the GitHub upload x1ngzai/Qwen-VL-Chat-Int4@1cd721a2 still writes ``Picture 1:<img>``, no space).
The remote tokenizer NFC-normalises the whole text, then turns ``<img>PATH</img>`` into ``<img>`` (151857),
the path's UTF-8 bytes as ids (byte value = id), ``<imgpad>`` (151859) up to 256 positions and ``</img>``
(151858); it refuses paths over 256 bytes. The remote model reads the path back from
``input_ids[a + 1 : b - 1]`` (``a``/``b``: the ``<img>``/``</img>`` positions), cut at the first ``<imgpad>``,
opens the file itself and puts its 256 visual features on the positions after ``<img>``
(``config.visual['image_start_id']``; ``</img>`` and ``<imgpad>`` are that id + 1 and + 2). The slice leaves out
the last position, so a path must leave two ``<imgpad>``: at most 254 bytes.

These facts come from running the public remote code (tests/oracles/SOURCES.md: the tokenizer of
x1ngzai/Qwen-VL-Chat-Int4@1cd721a2 and of zhangningboo/Qwen-7B@ffe04dd, a clone of hub Qwen/Qwen-7B, on the
real qwen.tiktoken, and the modeling code on a tiny random config); that code is in no package registry and is
not copied here.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path
from types import SimpleNamespace

from mmcal.engine import qwen_remote_compat
from mmcal.engine.chat import ChatFormat
from mmcal.engine.loading import LoadedModel, model_fingerprint
from mmcal.engine.scoring import Engine
from mmcal.errors import ConfigError, MmcalError
from mmcal.hub import qwen_font
from mmcal.torch_device import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

IMG_START_ID = 151857  # "<img>" = 151643 ranks + 3 ChatML + 205 extras + 6 ref/box/quad tags
IMG_END_ID = IMG_START_ID + 1  # "</img>"
IMG_PAD_ID = IMG_START_ID + 2  # "<imgpad>"
EOD_ID = 151643  # "<|endoftext|>", the first special after qwen.tiktoken's 151643 ranks (Qwen-7B and Qwen-VL)
IMAGE_SPAN = 256  # positions between <img> and </img>: the path's bytes, then padding
# the model reads input_ids[a + 1 : b - 1] and cuts at the first <imgpad>: a 255-byte path leaves its only
# <imgpad> at b - 1, outside the slice, and the model's forward fails (ValueError: 151859 is not in list)
MAX_PATH_BYTES = IMAGE_SPAN - 2


def from_list_format(parts: list[dict]) -> str:
    """``QWenTokenizer.from_list_format`` for image and text parts, as hub revisions after QwenLM/Qwen-VL#184 write
    it ("Picture k: <img>PATH</img>\\n", with a space); used only when the loaded tokenizer has none."""
    text = ""
    n_images = 0
    for part in parts:
        if "image" in part:
            n_images += 1
            text += f"Picture {n_images}: <img>{part['image']}</img>\n"
        else:
            text += part["text"]
    return text


def reference_prompt(messages: list[dict], image_paths: list[str], list_format=from_list_format) -> str:
    """The reference study's text: ``list_format`` (the loaded tokenizer's ``from_list_format`` when it has one)
    of each message's image(s) and text, no roles.

    Image parts take the paths in order; several messages (a system prompt) are joined by newlines, as the
    ``raw`` format joins them.
    """
    paths = iter(image_paths)
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append(content)
            continue
        parts = [{"image": next(paths)} if p["type"] == "image" else {"text": p["text"]} for p in content]
        out.append(list_format(parts))
    return "\n".join(out)


def path_problem(path: str) -> str | None:
    """Why the remote model would not open ``path`` (an unscorable status), or None."""
    nfc = unicodedata.normalize("NFC", path)
    if nfc != path:  # the tokenizer normalises the whole text: the model would open another name
        return f"image unreadable: {path!r} is not in Unicode NFC form; Qwen's tokenizer makes it {nfc!r}"
    n = len(path.encode("utf-8"))
    if n > MAX_PATH_BYTES:
        return f"prompt too long: image path of {n} bytes, Qwen-VL reads at most {MAX_PATH_BYTES}"
    return None


def image_spans(ids: list[int]) -> list[tuple[int, int]]:
    """(start, end) index of every ``<img>`` … ``</img>`` pair in ``ids``."""
    starts = [i for i, t in enumerate(ids) if t == IMG_START_ID]
    ends = [i for i, t in enumerate(ids) if t == IMG_END_ID]
    if len(starts) != len(ends) or any(e <= s for s, e in zip(starts, ends)):
        raise MmcalError(f"unpaired <img>/</img> ids at {starts} / {ends}")
    return list(zip(starts, ends))


def path_in_ids(ids: list[int], start: int, end: int) -> str:
    """The image path the model reads from one span, as the remote model reads it (``ids[start + 1 : end - 1]``
    up to the first ``<imgpad>``)."""
    inner = ids[start + 1 : end - 1]
    if IMG_PAD_ID not in inner:
        raise MmcalError(f"image span at {start}..{end}: no <imgpad> before its last position (unreadable)")
    return bytes(inner[: inner.index(IMG_PAD_ID)]).decode("utf-8")


class RemoteQwenVL:
    """The remote ``QWenLMHeadModel`` seen through the call the engine's forward passes make.

    Its ``forward`` takes neither ``logits_to_keep`` nor the new cache objects: full passes only
    (``model_type`` "qwen" is in :data:`mmcal.engine.loading.NO_PREFIX_CACHE_TYPES`), and the kept
    logits are cut here.
    """

    def __init__(self, inner, compat_fixes: list[str] | None = None):
        self.inner = inner
        self.compat_fixes = list(compat_fixes or [])  # what load_causal_lm changed to run it (qwen_remote_compat)

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


def check_interface(name: str, tokenizer, config, multimodal: bool) -> None:
    """The loaded tokenizer and config follow the documented ids (else the prompt would mean something else)."""
    found = {"tokenizer.eod_id": getattr(tokenizer, "eod_id", None)}
    expected = {"tokenizer.eod_id": EOD_ID}
    if multimodal:
        visual = getattr(config, "visual", None) or {}
        found |= {
            "config.visual['image_start_id']": visual.get("image_start_id"),
            "tokenizer.img_start_id": getattr(tokenizer, "img_start_id", None),
            "tokenizer.img_end_id - 1": (getattr(tokenizer, "img_end_id", 0) or 0) - 1,
            "tokenizer.img_pad_id - 2": (getattr(tokenizer, "img_pad_id", 0) or 0) - 2,
        }
        expected |= {k: IMG_START_ID for k in found if k != "tokenizer.eod_id"}
    wrong = {k: v for k, v in found.items() if v != expected[k]}
    if wrong:
        raise MmcalError(f"model {name!r} does not follow Qwen's ids ({expected}): {wrong}")


def _load_remote(name: str, path: str, adapter: str, multimodal: bool, device, dtype, revision, trust_remote_code):
    from transformers import AutoTokenizer
    from transformers.utils import cached_file

    if not trust_remote_code:
        raise ConfigError(f"models.{name}: adapter {adapter} runs the model's own code: set trust_remote_code: true")
    device = resolve_device(device)
    tokenizer_file = cached_file(
        path,
        qwen_font.TOKENIZER_FILE,
        revision=revision,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if qwen_font.check_font(name, tokenizer_file):  # imported, the tokenizer would have downloaded it itself
        log.info(
            "model %r: fetched %s/%s, which its tokenizer reads when imported",
            name,
            qwen_font.FONT_REPO,
            qwen_font.FONT_FILE,
        )
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=True)
    # the remote code as transformers 5 must run it, and checked after loading (engine/qwen_remote_compat.py)
    model, fixes = qwen_remote_compat.load_causal_lm(name, path, revision, resolve_dtype(dtype, device))
    check_interface(name, tokenizer, model.config, multimodal)
    model.to(device)
    model.eval()
    return LoadedModel(
        name=name,
        model=RemoteQwenVL(model, fixes),
        processor=tokenizer,
        tokenizer=tokenizer,
        multimodal=multimodal,
        device=device,
        fingerprint=model_fingerprint(path, revision),
        revision=revision,
    )


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
    if kind not in ("auto", "mllm"):
        raise ConfigError(f"models.{name}: adapter qwen-vl-chat is an MLLM (kind: {kind!r}); text LLMs: qwen-lm")
    return _load_remote(name, path, "qwen-vl-chat", True, device, dtype, revision, trust_remote_code)


def load_qwen_lm(
    name: str,
    path: str,
    kind: str = "llm",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    image_processor_backend: str = "pil",
) -> LoadedModel:
    """Load Qwen-7B's (or Qwen-7B-Chat's) remote tokenizer and model: the same interface without images."""
    if kind not in ("auto", "llm"):
        raise ConfigError(f"models.{name}: adapter qwen-lm is a text LLM (kind: {kind!r}); Qwen-VL-Chat: qwen-vl-chat")
    return _load_remote(name, path, "qwen-lm", False, device, dtype, revision, trust_remote_code)


# The reference tokenised its whole text at once ("...directly.\nAnswer: ("). Qwen's pre-tokeniser keeps
# punctuation with the newlines after it (".\n" is one token), so a prefix ending "directly." and a
# continuation "\nAnswer: (" would not give the reference's ids; the newline therefore ends the prefix
# (a newline never joins the letters after it), and the answer prefix follows with no separator.
# The template names what renders the text (it enters the records' fingerprints): the loaded tokenizer's own
# from_list_format, else this module's ("Picture k: <img>", since the space was added).
REFERENCE_FORMAT = ChatFormat(
    "qwen-vl-reference",
    template="mmcal.engine.qwen_vl.reference_prompt(tokenizer.from_list_format | 'Picture k: <img>') + '\\n'",
)


class QwenVLEngine(Engine):
    """The engine with the reference's text (image path inside it) and the remote tokenizer as processor; for
    Qwen-VL-Chat and, with text only, for Qwen-7B (the same text as Qwen-VL-Chat's text-only prompt)."""

    def __init__(self, lm: LoadedModel, prompt, *args, chat_format: ChatFormat | None = None, **kwargs):
        if chat_format is None or chat_format.name != "raw":
            raise ConfigError(
                f"models.{lm.name}: adapters qwen-vl-chat and qwen-lm score the reference's raw prompt only "
                f"(chat_template: raw, got {getattr(chat_format, 'name', None)!r})"
            )
        super().__init__(lm, prompt, *args, chat_format=REFERENCE_FORMAT, **kwargs)

    def reference_format(self, chat_format: ChatFormat) -> ChatFormat:
        return REFERENCE_FORMAT

    def _prepare(self, pos, item, scenario, descriptions=None):
        enc, text, image = super()._prepare(pos, item, scenario, descriptions)
        if enc.status == "ok" and image is not None:
            problem = path_problem(str((self.image_root / item.image).resolve()))
            if problem:  # an input problem: the row is recorded, the job goes on
                enc.status = problem
                return enc, None, None
        return enc, text, image

    def _render(self, messages: list[dict], multimodal: bool, image_path: Path | None = None) -> str:
        # absolute: the model opens the file itself, from wherever it runs
        paths = [] if image_path is None else [str(Path(image_path).resolve())]
        list_format = getattr(self.lm.tokenizer, "from_list_format", None) or from_list_format
        return reference_prompt(messages, paths, list_format) + "\n"

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

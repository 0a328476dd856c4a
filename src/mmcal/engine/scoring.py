"""The one scoring engine: one forward pass per item gives every readout.

For each item the chat prompt (image + question + options, up to the opened assistant turn) is the
*shared prefix*. Everything a readout needs is a short *continuation* of it (which continuations,
and what each readout computes from their logits: :mod:`mmcal.engine.readouts`; how the prefix and
its continuations run through the model: :mod:`mmcal.engine.forward`). This module renders and
tokenises items and batches them. Items are batched only with items whose prefix has exactly the
same token length, so no padding ever enters a prefix: results do not depend on the batch size.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from mmcal import LETTERS
from mmcal.engine.chat import OWN, ChatFormat, reference_format, render_prompt
from mmcal.engine.forward import Encoded, Forward, ForwardError, is_out_of_memory
from mmcal.engine.loading import LoadedModel
from mmcal.engine.prompts import PromptVariant, build_messages
from mmcal.engine.readouts import ReadoutSet
from mmcal.engine.scenarios import Scenario, description_for, shift_options
from mmcal.errors import ConfigError
from mmcal.items import MCItem
from mmcal.records import GREEDY_MAX_TOKENS, READOUTS, meta_json, unscorable_rows

log = logging.getLogger(__name__)


def load_image(path: Path):
    """Open an image as RGB; raise ValueError with the reason if it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise ValueError(f"image missing: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"image unreadable: {path}: {exc}") from None


ENCODE_CHUNK = 256  # items per processor call when encoding in bulk

# Statuses that come from an item's own input (set while preparing or tokenising it, below). Any
# other unscorable status (processor failure, non-finite scores) counts against scoring.max_unscorable.
INPUT_PROBLEMS = (
    "no options",
    "too many options",
    "text-only model cannot take an image",
    "item has no image",
    "image missing",
    "image unreadable",
    "prompt too long",
)


def is_input_problem(status: str) -> bool:
    return status.startswith(INPUT_PROBLEMS)


def _finite(row: dict) -> bool:
    """Every number a scored row is read by: option scores, confidence, entropy, option mass."""
    values = [*row["option_scores"], row.get("confidence", 0.0), row.get("entropy", 0.0), row.get("option_mass", 0.0)]
    return all(math.isfinite(v) for v in values)


def _chunks(seq: list, size: int):
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# processor outputs that are not model inputs at scoring (PaliGemma's processor also returns training `labels`)
NOT_MODEL_INPUTS = ("input_ids", "attention_mask", "labels")


class Engine:
    """Scores items for one loaded model with one prompt variant."""

    def __init__(
        self,
        lm: LoadedModel,
        prompt: PromptVariant,
        readouts: Iterable[str] = READOUTS,
        batch_size: int = 8,
        max_prompt_tokens: int | None = None,
        image_root: str | Path = ".",
        chat_format: ChatFormat = OWN,
    ):
        self.lm = lm
        self.prompt = prompt
        self.chat_format = self.reference_format(chat_format) if prompt.is_reference else chat_format
        chat_format = self.chat_format
        opened = ""
        if chat_format.answer_separator:  # a probe prompt ending like every item's: the instruction
            probe = [{"role": "user", "content": [{"type": "text", "text": prompt.instruction or "?"}]}]
            opened = self._render(probe, multimodal=lm.multimodal)
        self.readout_set = ReadoutSet(
            lm.tokenizer, prompt, readouts, opened, chat_format.answer_separator, chat_format.separator_in_prompt
        )
        self.readouts = self.readout_set.readouts
        self.forward = Forward(lm)
        self.batch_size = max(1, int(batch_size))
        cfg = getattr(lm.model.config, "text_config", None) or lm.model.config
        self.max_prompt_tokens = max_prompt_tokens or getattr(cfg, "max_position_embeddings", 4096)
        self.image_root = Path(image_root)
        self.tok = lm.tokenizer
        self._batch_encode_ok: bool | None = None  # decided on the first item encoded in bulk
        self._fitting_size = self.batch_size  # lowered when a batch runs out of memory

    def reference_format(self, chat_format: ChatFormat) -> ChatFormat:
        """The reference study's format (an adapter may have its own)."""
        return reference_format(chat_format)

    # ---- encoding -----------------------------------------------------------------------
    def _add_special(self, text: str) -> bool:
        bos = getattr(self.tok, "bos_token", None)
        return not (bos and text.startswith(bos))

    def encode(self, pos: int, item: MCItem, scenario: Scenario, descriptions=None) -> Encoded:
        """Render and tokenise one item; problems become a status, never an exception."""
        enc, text, image = self._prepare(pos, item, scenario, descriptions)
        if enc.status == "ok":
            self._tokenize(enc, text, image)
        return enc

    def encode_many(self, items: list[MCItem], scenario: Scenario, descriptions=None) -> list[Encoded]:
        """``encode`` for many items. The processor runs once per chunk of items (its per-call
        overhead dominates small inputs) when its outputs split into per-item tensors identical to
        one-item calls; that is checked on the first item, else every item is encoded alone."""
        prepared = [self._prepare(i, it, scenario, descriptions) for i, it in enumerate(items)]
        ok = [p for p in prepared if p[0].status == "ok"]
        if ok and self._batch_encoding_ok(ok[0]):
            for i in range(0, len(ok), ENCODE_CHUNK):
                self._tokenize_chunk(ok[i : i + ENCODE_CHUNK])
        else:
            for enc, text, image in ok:
                self._tokenize(enc, text, image)
        return [p[0] for p in prepared]

    def _prepare(self, pos: int, item: MCItem, scenario: Scenario, descriptions=None):
        """(Encoded with a status, rendered text, image or None): everything before tokenising."""
        item = shift_options(item, scenario.option_shift)
        enc = Encoded(pos=pos, item=item)
        if not item.options:
            enc.status = "no options"
            return enc, None, None
        if len(item.options) > len(LETTERS):
            enc.status = f"too many options ({len(item.options)} > {len(LETTERS)})"
            return enc, None, None
        with_image = scenario.image
        if with_image and not self.lm.multimodal:
            enc.status = "text-only model cannot take an image"
            return enc, None, None
        image = None
        if with_image:
            if not item.image:
                enc.status = "item has no image"
                return enc, None, None
            try:
                image = load_image(self.image_root / item.image)
            except ValueError as exc:
                enc.status = str(exc)
                return enc, None, None
        context = description_for(scenario, item, descriptions)
        messages = build_messages(item, self.prompt, with_image=with_image, context=context)
        if self.prompt.question == "verbatim":
            self._check_verbatim(item, messages)
        text = self._render(messages, self.lm.multimodal, self.image_root / item.image if with_image else None)
        cf = self.chat_format
        if cf.separator_in_prompt and not cf.processor_adds_separator:
            text += cf.answer_separator
        return enc, text, image

    def _check_verbatim(self, item: MCItem, messages: list[dict]) -> None:
        """A question turn shown as the file has it may hold an "<image>" placeholder: plain text to the
        reference's Qwen-VL-Chat, but an image to a model whose processor's image token it is."""
        token = getattr(self.lm.processor, "image_token", None) if self.lm.multimodal else None
        text = "".join(p.get("text", "") for m in messages for p in m["content"] if isinstance(p, dict))
        if token and token in text:
            raise ConfigError(
                f"prompts.{self.prompt.name}.question: verbatim shows item {item.item_id!r}'s question turn with "
                f"{token!r} in it, which model {self.lm.name!r} reads as an image; use question: parsed"
            )

    def _render(self, messages: list[dict], multimodal: bool, image_path: Path | None = None) -> str:
        """The prompt text (an adapter whose model reads the image from a path in the text overrides this)."""
        if not multimodal:
            return render_prompt(self.lm.tokenizer, messages, multimodal=False, chat_format=self.chat_format)
        return render_prompt(self.lm.processor, messages, multimodal=True, chat_format=self.chat_format)

    def render(self, item: MCItem, scenario: Scenario, descriptions=None) -> str:
        """The exact text the model is shown up to its answer: the rendered prompt, the format's answer
        separator and the answer prefix (the answer prefix is tokenised as it follows the prompt)."""
        enc, text, _ = self._prepare(0, item, scenario, descriptions)
        if enc.status != "ok":
            raise ValueError(f"item {item.item_id!r} cannot be rendered: {enc.status}")
        cf = self.chat_format
        separator_left = not cf.separator_in_prompt or cf.processor_adds_separator
        return text + (cf.answer_separator if separator_left else "") + self.prompt.answer_prefix

    def _call_processor(self, texts: list[str], images: list | None, tensors: str | None):
        special = self._add_special(texts[0])
        if self.lm.multimodal:
            kwargs = {"text": texts, "return_tensors": tensors, "add_special_tokens": special}
            if images is not None:
                kwargs["images"] = images
            return self.lm.processor(**kwargs)
        return self.tok(texts, return_tensors=tensors, add_special_tokens=special)

    def _tokenize(self, enc: Encoded, text: str, image) -> None:
        try:
            batch = self._call_processor([text], None if image is None else [image], "pt")
        except Exception as exc:  # a processor rejecting one input must not kill the job
            enc.status = f"processor failed: {type(exc).__name__}: {exc}"
            return
        self._set_encoding(
            enc,
            batch["input_ids"][0].tolist(),
            {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS and hasattr(v, "shape")},
        )

    def _set_encoding(self, enc: Encoded, ids: list[int], extra: dict) -> None:
        if len(ids) + 32 > self.max_prompt_tokens:
            enc.status = f"prompt too long ({len(ids)} tokens, limit {self.max_prompt_tokens})"
            return
        enc.prefix_ids = ids
        enc.extra = extra

    def _split_batch(self, batch, n: int) -> list[tuple[list[int], dict]] | None:
        """Per-item (ids, tensors) from an un-tensored processor output, or None if it does not
        split one entry per item (e.g. Qwen2-VL's flat patch list)."""
        import torch

        out = [(list(batch["input_ids"][j]), {}) for j in range(n)]
        for k, v in batch.items():
            if k in NOT_MODEL_INPUTS:
                continue
            if len(v) != n:
                return None
            for j in range(n):
                out[j][1][k] = torch.as_tensor(np.asarray(v[j]))[None]
        return out

    def _batch_encoding_ok(self, first) -> bool:
        if self._batch_encode_ok is None:
            enc, text, image = first
            alone = Encoded(enc.pos, enc.item)
            self._tokenize(alone, text, image)
            try:
                split = self._split_batch(self._call_processor([text], None if image is None else [image], None), 1)
            except Exception:
                split = None
            self._batch_encode_ok = bool(
                split
                and alone.status == "ok"
                and split[0][0] == alone.prefix_ids
                and split[0][1].keys() == alone.extra.keys()
                and all(
                    split[0][1][k].shape == v.shape
                    and split[0][1][k].dtype == v.dtype
                    and bool((split[0][1][k] == v).all())
                    for k, v in alone.extra.items()
                )
            )
        return self._batch_encode_ok

    def _tokenize_chunk(self, chunk: list) -> None:
        texts = [text for _, text, _ in chunk]
        images = None if chunk[0][2] is None else [image for _, _, image in chunk]
        try:
            split = self._split_batch(self._call_processor(texts, images, None), len(chunk))
        except Exception:  # find the item the processor rejects: one at a time
            split = None
        if split is None:
            for enc, text, image in chunk:
                self._tokenize(enc, text, image)
            return
        for (enc, _, _), (ids, extra) in zip(chunk, split):
            self._set_encoding(enc, ids, extra)

    # ---- public API ---------------------------------------------------------------------
    def score(
        self,
        items: list[MCItem],
        scenario: Scenario,
        descriptions: dict | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[dict]:
        """Score ``items``; returns record rows (without provenance columns) in item order."""
        encs = self.encode_many(items, scenario, descriptions)
        rows_by_pos: dict[int, list[dict]] = {}
        for e in encs:
            if e.status != "ok":
                rows_by_pos[e.pos] = self._finish(
                    e, unscorable_rows(self.readouts, e.item.gold, len(e.item.options), e.status)
                )
                if progress:
                    progress(1)
        for batch in self._batches([e for e in encs if e.status == "ok"]):
            for part, outs in self._run_batch(batch, scenario):
                for j, e in enumerate(part):
                    rows_by_pos[e.pos] = self._finish(e, self.readout_set.rows(e, *outs[j]))
            if progress:
                progress(len(batch))
        return [r for pos in range(len(items)) for r in rows_by_pos[pos]]

    def _run_batch(self, batch: list[Encoded], scenario: Scenario) -> list[tuple[list[Encoded], list[list]]]:
        """(part of the batch, per item the outputs of its continuations) for the whole batch.

        Out of memory: the batch again in parts of half the size, down to one item (later batches
        start at the size that fitted); any other error fails the job, naming the batch's items.
        """
        size = min(len(batch), self._fitting_size)
        while True:
            try:
                return [(part, self._run_part(part)) for part in _chunks(batch, size)]
            except Exception as exc:
                ids = [e.item.item_id for e in batch]
                where = f"model {self.lm.name!r}, scenario {scenario.name!r}, prompt {self.prompt.name!r}"
                if not is_out_of_memory(exc):
                    raise ForwardError(
                        f"forward pass failed ({where}; items {ids}): {type(exc).__name__}: {exc}"
                    ) from exc
                if size == 1:
                    raise ForwardError(f"out of memory with one item per batch ({where}; items {ids})") from exc
                size //= 2
                self._fitting_size = size
                log.warning("out of memory on %d items: retrying in batches of %d", len(batch), size)
                _free_device_memory()

    def _run_part(self, part: list[Encoded]) -> list[tuple[list, tuple | None]]:
        """Per item: outputs of its continuations, and its greedy decoding when letter_greedy is asked for."""
        rows = [r for j, e in enumerate(part) for r in self.readout_set.continuations(e, j)]
        outs = self.forward.run_rows(part, rows) if rows else []
        greedy = [None] * len(part)
        if self.readout_set.greedy:
            answer = self.readout_set.joined(self.prompt.answer_prefix)
            greedy = self.forward.greedy(part, answer, GREEDY_MAX_TOKENS)
        return [([o for r, o in zip(rows, outs) if r.enc_index == j], greedy[j]) for j in range(len(part))]

    def _finish(self, enc: Encoded, rows: list[dict]) -> list[dict]:
        it = enc.item
        for r in rows:
            r.setdefault("status", "ok")
            r.update(
                item_id=it.item_id,
                cluster_id=it.cluster_id,
                split=it.split,
                n_options=len(it.options),
                meta=meta_json(it.metadata),
            )
            if r["status"] == "ok" and not _finite(r):
                # NaN/inf logits (fp16 overflow, broken weights): an unscorable row like any other (pred -1,
                # NaN confidence), keeping the scores that show why; counted against scoring.max_unscorable
                r.update(status="non-finite scores", pred=-1, correct=False)
                r.update(confidence=float("nan"), entropy=float("nan"), option_mass=float("nan"))
        return rows

    def _batches(self, encs: list[Encoded]):
        """Batches of items whose prefixes have identical length and tensor shapes."""
        buckets: dict[tuple, list[Encoded]] = {}
        for e in encs:
            buckets.setdefault(e.bucket_key(), []).append(e)
        for key in sorted(buckets, key=lambda k: min(e.pos for e in buckets[k])):
            group = buckets[key]
            for i in range(0, len(group), self.batch_size):
                yield group[i : i + self.batch_size]

    def score_answer_prefixes(
        self, items: list[MCItem], scenario: Scenario, prefixes: list[str], descriptions=None
    ) -> dict[str, list[dict]]:
        """Letter readout for many candidate answer prefixes, sharing each item's prefix pass.

        Used by the prompt search: returns, per candidate, ``letter_restricted`` rows.
        """
        encs = self.encode_many(items, scenario, descriptions)
        result: dict[str, list[dict]] = {p: [] for p in prefixes}
        cand_ids = [self.readout_set.joined(p) for p in prefixes]
        for e in encs:
            if e.status != "ok":
                for p in prefixes:
                    result[p] += self._finish(
                        e, unscorable_rows(["letter_restricted"], e.item.gold, len(e.item.options), e.status)
                    )
        for batch in self._batches([e for e in encs if e.status == "ok"]):
            lasts = self.forward.candidate_last_logits(batch, cand_ids)
            for j, e in enumerate(batch):
                for c, p in enumerate(prefixes):
                    result[p] += self._finish(e, [self.readout_set.candidate_row(lasts[j][c], p, e.item)])
        return result

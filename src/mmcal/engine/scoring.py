"""The one scoring engine: one forward pass per item gives every readout.

For each item the chat prompt (image + question + options, up to the opened assistant turn) is the
*shared prefix*. Everything a readout needs is a short *continuation* of it:

- letter readouts: the answer prefix ("Answer: (") — the next-token logits give the option letters'
  scores (``letter_restricted``: softmax over the letters; ``letter_full_vocab``: the reference
  study's full-vocabulary probability of each letter, and the letters' total mass);
- ``option_loglik``: option_prefix + " " + option text — the length-normalised log-likelihood of
  each option's tokens;
- the prompt search: many candidate answer prefixes.

When an item needs a single continuation, prefix + continuation run as one forward pass. When it
needs several, the prefix runs once with ``use_cache=True`` and the continuations run on its KV
cache, one unpadded pass per continuation length (prompt-search candidates: all of an item's
candidates packed into one pass behind a block mask). Items are batched only with items whose prefix has exactly the same
token length, so no padding ever enters a prefix: results do not depend on the batch size.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from mmcal import LETTERS
from mmcal.engine.chat import render_prompt
from mmcal.errors import MmcalError
from mmcal.items import MCItem
from mmcal.engine.loading import LoadedModel
from mmcal.engine.prompts import PromptVariant, build_messages
from mmcal.records import READOUTS, meta_json, readout_row, unscorable_rows
from mmcal.engine.scenarios import Scenario, description_for, shift_options

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """An item ready for the model: prefix token ids plus processor tensors (batch dim 1)."""

    pos: int
    item: MCItem
    prefix_ids: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    status: str = "ok"

    def bucket_key(self) -> tuple:
        return (len(self.prefix_ids),) + tuple(
            (k, tuple(v.shape)) for k, v in sorted(self.extra.items())
        )


@dataclass
class Row:
    """One continuation of an item's prefix: ``ids`` appended; tokens ids[span_from:] are scored."""

    enc_index: int
    ids: list[int]
    span_from: int


@dataclass
class RowOut:
    last_logits: object  # torch tensor [V]: logits after the row's last token
    span_logprob: float
    span_len: int


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


def encode_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def letter_token_ids(tokenizer, answer_prefix: str, n: int) -> list[int]:
    """Token id of each option letter as the model would emit it right after ``answer_prefix``.

    "A", " A" and "(A" tokenise differently; the letter's id is the token that the tokenizer
    produces for prefix+letter beyond the prefix's own tokens. Letters that do not come out as one
    clean extra token are an error (the readout would be ill-defined).
    """
    base = encode_ids(tokenizer, answer_prefix) if answer_prefix else []
    ids = []
    for letter in LETTERS[:n]:
        full = encode_ids(tokenizer, answer_prefix + letter)
        if full[: len(base)] == base and len(full) == len(base) + 1:
            ids.append(full[-1])
            continue
        # The prefix's last token merged with the letter: fall back to the letter's own token.
        variant = letter if (not answer_prefix or answer_prefix[-1] in " (\n") else " " + letter
        alone = encode_ids(tokenizer, variant)
        if len(alone) != 1:
            raise MmcalError(
                f"option letter {letter!r} after answer prefix {answer_prefix!r} is not a single "
                f"token for this tokenizer ({alone}); change the prompt's answer_prefix"
            )
        ids.append(alone[0])
    if len(set(ids)) != len(ids):
        raise MmcalError(f"option letters map to repeated token ids {ids}")
    return ids


def _per_token(value, n_tokens: int) -> bool:
    """A processor output with one integer per prompt token (token types), not image data."""
    return value.dim() == 2 and value.shape[1] == n_tokens and not value.is_floating_point()


ENCODE_CHUNK = 256  # items per processor call when encoding in bulk


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
    ):
        self.lm = lm
        self.prompt = prompt
        self.readouts = tuple(readouts)
        bad = set(self.readouts) - set(READOUTS)
        if bad:
            raise MmcalError(f"unknown readouts {sorted(bad)}; known: {READOUTS}")
        if "option_loglik" in self.readouts and not prompt.option_prefix:
            raise MmcalError(f"prompt {prompt.name!r}: option_loglik needs a non-empty option_prefix")
        self.batch_size = max(1, int(batch_size))
        cfg = getattr(lm.model.config, "text_config", None) or lm.model.config
        self.max_prompt_tokens = max_prompt_tokens or getattr(cfg, "max_position_embeddings", 4096)
        self.image_root = Path(image_root)
        self.tok = lm.tokenizer
        self._letter_cache: dict[tuple[str, int], list[int]] = {}
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self._batch_encode_ok: bool | None = None  # decided on the first item encoded in bulk
        self._packed_ok: bool | None = None  # packed prompt-search candidates, checked on first use

    # ---- encoding -----------------------------------------------------------------------
    def letters(self, answer_prefix: str, n: int) -> list[int]:
        key = (answer_prefix, n)
        if key not in self._letter_cache:
            self._letter_cache[key] = letter_token_ids(self.tok, answer_prefix, n)
        return self._letter_cache[key]

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
        text = render_prompt(self.lm.processor, messages, multimodal=self.lm.multimodal)
        return enc, text, image

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
        self._set_encoding(enc, batch["input_ids"][0].tolist(), {
            k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask") and hasattr(v, "shape")
        })

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
            if k in ("input_ids", "attention_mask"):
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
                split and alone.status == "ok" and split[0][0] == alone.prefix_ids
                and split[0][1].keys() == alone.extra.keys()
                and all(split[0][1][k].shape == v.shape and split[0][1][k].dtype == v.dtype
                        and bool((split[0][1][k] == v).all()) for k, v in alone.extra.items())
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

    # ---- forward passes -----------------------------------------------------------------
    def _extra_for(self, encs: list[Encoded], appended: int = 0) -> dict:
        """Concatenate processor tensors along dim 0 (works for [1, C, H, W] and flat patches).

        Per-token integer tensors (e.g. Qwen2-VL's ``mm_token_type_ids``, [1, prefix length]) are
        extended by ``appended`` zeros (= text tokens) for the continuation that follows the prefix.
        """
        import torch

        if not encs[0].extra:
            return {}
        out = {}
        for k in encs[0].extra:
            parts = []
            for e in encs:
                v = e.extra[k]
                if appended and _per_token(v, len(e.prefix_ids)):
                    v = torch.cat([v, v.new_zeros((v.shape[0], appended))], dim=1)
                parts.append(v)
            out[k] = torch.cat(parts, dim=0).to(self.lm.device)
            if out[k].is_floating_point():
                out[k] = out[k].to(self.lm.model.dtype)
        return out

    def run_rows(self, encs: list[Encoded], rows: list[Row]) -> list[RowOut]:
        """Forward passes for continuations of same-length prefixes; returns one RowOut per row."""
        import torch

        per_item = np.bincount([r.enc_index for r in rows], minlength=len(encs))
        with torch.inference_mode():
            if per_item.max() == 1 and len({len(r.ids) for r in rows}) == 1:
                return self._run_joined(encs, rows)
            if self.lm.prefix_cache_ok:
                return self._run_cached(encs, rows)
            return self._run_full(encs, rows)

    def _span_sums(self, first_logits, cont_logits, rows) -> tuple[list[float], list[int]]:
        """Per row: sum and count of log p(ids[j]) for span_from <= j < len(ids), on the device.

        ``first_logits`` [R, V] predict each row's ids[0]; ``cont_logits`` [R, W, V] (W >= longest
        row - 1) hold the logits after ids[0..W-1], so position t predicts ids[t + 1]. One gather and
        one transfer for the whole batch (per-token reads would each wait for the GPU).
        """
        import torch

        width = max(len(r.ids) for r in rows)
        dev = first_logits.device
        ids = torch.tensor([r.ids + [0] * (width - len(r.ids)) for r in rows], device=dev)
        pos = torch.arange(width, device=dev)[None]
        lo = torch.tensor([r.span_from for r in rows], device=dev)[:, None]
        hi = torch.tensor([len(r.ids) for r in rows], device=dev)[:, None]
        inside = (pos >= lo) & (pos < hi)
        # log p(t) = logit[t] - logsumexp(logits), normalised only where a scored token is predicted
        lp = torch.zeros((len(rows), width), dtype=torch.float32, device=dev)
        first = first_logits.float()
        lp[:, 0] = first.gather(1, ids[:, :1])[:, 0] - torch.logsumexp(first, -1)
        if width > 1:
            need = inside[:, 1:]
            picked = cont_logits[:, : width - 1][need].float()  # [n scored, V]
            target = ids[:, 1:][need]
            rest = lp[:, 1:]
            rest[need] = picked.gather(1, target[:, None])[:, 0] - torch.logsumexp(picked, -1)
        totals = torch.where(inside, lp.double(), 0.0).sum(1).cpu().tolist()
        return totals, inside.sum(1).cpu().tolist()

    def _run_joined(self, encs, rows) -> list[RowOut]:
        """One pass per item: prefix + its single continuation (the common letter-only case)."""
        import torch

        order = sorted(range(len(rows)), key=lambda i: rows[i].enc_index)
        rows_sorted = [rows[i] for i in order]
        ids = torch.tensor(
            [encs[r.enc_index].prefix_ids + r.ids for r in rows_sorted], device=self.lm.device
        )
        keep = len(rows_sorted[0].ids) + 1  # logits from the prefix's last token onwards
        out = self.lm.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            logits_to_keep=keep,
            **self._extra_for(encs, appended=len(rows_sorted[0].ids)),
        )
        logits = out.logits  # [B, keep, V]; position t predicts continuation token t
        last = logits[:, -1].float().cpu()
        totals, counts = [0.0] * len(rows), [0] * len(rows)
        if any(r.span_from < len(r.ids) for r in rows_sorted):
            totals, counts = self._span_sums(logits[:, 0], logits[:, 1:], rows_sorted)
        results = [None] * len(rows)
        for b, i in enumerate(order):
            results[i] = RowOut(last[b], totals[b], counts[b])
        return results

    def _prefix_pass(self, encs):
        """(model output with its KV cache and last-token logits, prefix length) for same-length prefixes."""
        import torch

        ids = torch.tensor([e.prefix_ids for e in encs], device=self.lm.device)
        out = self.lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                            logits_to_keep=1, **self._extra_for(encs))
        return out, ids.shape[1]

    def _run_cached(self, encs, rows) -> list[RowOut]:
        """Prefix once per item (KV cache), then the continuations, one pass per token length.

        Grouping by length needs no padding, so every continuation costs exactly its own tokens
        (prompt-search candidates and option texts differ in length).
        """
        import torch

        dev = self.lm.device
        out, L = self._prefix_pass(encs)
        prefix_last = out.logits[:, -1].float()
        prefix_cache = out.cache
        results: list[RowOut | None] = [None] * len(rows)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            if r.ids:
                groups.setdefault(len(r.ids), []).append(i)
        for g, (width, members) in enumerate(sorted(groups.items())):
            group = [rows[i] for i in members]
            # the last group may consume the prefix cache; earlier ones work on a copy
            cache = prefix_cache if g == len(groups) - 1 else copy.deepcopy(prefix_cache)
            which = torch.tensor([r.enc_index for r in group], device=dev)
            cache.batch_select_indices(which)
            cids = torch.tensor([r.ids for r in group], device=dev)
            mask = torch.ones((len(group), L + width), dtype=torch.long, device=dev)
            scored = any(r.span_from < width for r in group)
            cout = self.lm.model(input_ids=cids, attention_mask=mask, cache=cache,
                                 **({} if scored else {"logits_to_keep": 1}))
            last = cout.logits[:, -1].float().cpu()
            totals, counts = [0.0] * len(group), [0] * len(group)
            if scored:
                totals, counts = self._span_sums(prefix_last[which], cout.logits, group)
            for k, i in enumerate(members):
                results[i] = RowOut(last[k], totals[k], counts[k])
        prefix_last_cpu = prefix_last.cpu()
        for i, r in enumerate(rows):
            if not r.ids:
                results[i] = RowOut(prefix_last_cpu[r.enc_index], 0.0, 0)
        return results

    def _run_full(self, encs, rows) -> list[RowOut]:
        """No cache reuse (position ids depend on the whole sequence): one full pass per row."""
        return [self._run_joined([encs[r.enc_index]], [Row(0, r.ids, r.span_from)])[0] for r in rows]

    # ---- readouts -----------------------------------------------------------------------
    def item_rows(self, enc: Encoded, enc_index: int) -> list[Row]:
        """Continuations needed for this item's readouts: first the answer prefix, then options."""
        rows = []
        if {"letter_restricted", "letter_full_vocab"} & set(self.readouts):
            rows.append(Row(enc_index, encode_ids(self.tok, self.prompt.answer_prefix), 10**9))
        if "option_loglik" in self.readouts:
            head = encode_ids(self.tok, self.prompt.option_prefix)
            for opt in enc.item.options:
                rows.append(Row(enc_index, head + encode_ids(self.tok, " " + opt), len(head)))
        return rows

    def readout_rows(self, enc: Encoded, outs: list[RowOut]) -> list[dict]:
        import torch

        n = len(enc.item.options)
        gold = enc.item.gold
        res = []
        k = 0
        option_mass = float("nan")
        letter_logits = full_lp = None
        if {"letter_restricted", "letter_full_vocab"} & set(self.readouts):
            last = outs[0].last_logits
            letter_ids = self.letters(self.prompt.answer_prefix, n)
            full = torch.log_softmax(last, -1)
            full_lp = full[letter_ids].double().numpy()
            letter_logits = last[letter_ids].double().numpy()
            option_mass = float(np.exp(full_lp).sum())
            k = 1
        for readout in self.readouts:
            if readout == "option_loglik":
                opt_outs = outs[k : k + n]
                scores = np.array([o.span_logprob / max(o.span_len, 1) for o in opt_outs])
                res.append(readout_row(readout, scores, gold, option_mass))
            else:
                res.append(readout_row(readout, letter_logits, gold, option_mass, full_lp))
        return res

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
                rows_by_pos[e.pos] = self._finish(e, unscorable_rows(self.readouts, e.item.gold, len(e.item.options), e.status))
                if progress:
                    progress(1)
        for batch in self._batches([e for e in encs if e.status == "ok"]):
            rows = [r for j, e in enumerate(batch) for r in self.item_rows(e, j)]
            try:
                outs = self.run_rows(batch, rows)
            except Exception as exc:  # e.g. out of memory on one batch: record, keep going
                log.exception("forward pass failed for %d items", len(batch))
                for e in batch:
                    reason = f"forward failed: {type(exc).__name__}: {exc}"[:300]
                    rows_by_pos[e.pos] = self._finish(e, unscorable_rows(self.readouts, e.item.gold, len(e.item.options), reason))
                if progress:
                    progress(len(batch))
                continue
            for j, e in enumerate(batch):
                mine = [o for r, o in zip(rows, outs) if r.enc_index == j]
                rows_by_pos[e.pos] = self._finish(e, self.readout_rows(e, mine))
            if progress:
                progress(len(batch))
        return [r for pos in range(len(items)) for r in rows_by_pos[pos]]

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
            if r["status"] == "ok" and not all(math.isfinite(v) for v in r["option_scores"]):
                r["status"] = "non-finite scores"
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
        cand_ids = [encode_ids(self.tok, p) for p in prefixes]
        for e in encs:
            if e.status != "ok":
                for p in prefixes:
                    result[p] += self._finish(e, unscorable_rows(["letter_restricted"], e.item.gold, len(e.item.options), e.status))
        for batch in self._batches([e for e in encs if e.status == "ok"]):
            lasts = self._candidate_last_logits(batch, cand_ids)
            for j, e in enumerate(batch):
                n = len(e.item.options)
                for c, p in enumerate(prefixes):
                    last = lasts[j][c]
                    ids = self.letters(p, n)
                    lp = np.asarray(__import__("torch").log_softmax(last, -1)[ids].double())
                    row = readout_row("letter_restricted", last[ids].double().numpy(), e.item.gold, float(np.exp(lp).sum()), lp)
                    result[p] += self._finish(e, [row])
        return result

    # ---- many candidates on one prefix ---------------------------------------------------
    def _candidate_last_logits(self, encs: list[Encoded], cand_ids: list[list[int]]) -> list[list]:
        """Per item, per candidate: logits after the candidate's last token.

        Fast path (checked once per engine against the general one): the candidates of an item go
        into ONE continuation after its cached prefix, each attending to the prefix and itself only
        (a block mask, positions restarting after the prefix), so the prefix cache is never copied.
        """
        if all(cand_ids) and self.lm.prefix_cache_ok and self._packed_ok is not False:
            try:
                packed = self._run_packed(encs, cand_ids)
            except Exception as exc:  # an architecture without custom 4-D masks
                log.info("packed candidates unavailable for %s: %s", self.lm.model_type, exc)
                self._packed_ok = False
            else:
                if self._packed_ok is None:
                    self._packed_ok = self._agrees(packed, self._run_rows_for(encs, cand_ids))
                if self._packed_ok:
                    return packed
        return self._run_rows_for(encs, cand_ids)

    def _run_rows_for(self, encs, cand_ids) -> list[list]:
        rows = [Row(j, ids, 10**9) for j in range(len(encs)) for ids in cand_ids]
        outs = self.run_rows(encs, rows)
        k = len(cand_ids)
        return [[o.last_logits for o in outs[j * k : (j + 1) * k]] for j in range(len(encs))]

    def _agrees(self, a, b) -> bool:
        import torch

        tol = 1e-3 if self.lm.model.dtype == torch.float32 else 0.25  # bf16 rounding vs a wrong mask
        worst = max(float((torch.log_softmax(x, -1) - torch.log_softmax(y, -1)).abs().max())
                    for xs, ys in zip(a, b) for x, y in zip(xs, ys))
        if worst > tol:
            log.warning("packed candidates differ from separate passes by %.3g; not used", worst)
        return worst <= tol

    def _run_packed(self, encs, cand_ids) -> list[list]:
        import torch

        dev = self.lm.device
        with torch.inference_mode():
            out, L = self._prefix_pass(encs)
            B = len(encs)
            flat = [t for c in cand_ids for t in c]
            block = torch.tensor([k for k, c in enumerate(cand_ids) for _ in c], device=dev)
            offset = torch.tensor([j for c in cand_ids for j in range(len(c))], device=dev)
            T = len(flat)
            # query t sees the whole prefix, and tokens of its own candidate up to itself
            own = (block[:, None] == block[None, :]) & (offset[:, None] >= offset[None, :])
            allowed = torch.cat([torch.ones((T, L), dtype=torch.bool, device=dev), own], 1)
            if getattr(self.lm.model.config, "_attn_implementation", "sdpa") == "eager":
                mask = torch.zeros(allowed.shape, dtype=self.lm.model.dtype, device=dev)
                mask = mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)
            else:
                mask = allowed
            ends = torch.cumsum(torch.tensor([len(c) for c in cand_ids], device=dev), 0) - 1
            cout = self.lm.model(
                input_ids=torch.tensor(flat, device=dev)[None].expand(B, T),
                attention_mask=mask[None, None].expand(B, 1, T, L + T),
                position_ids=(L + offset)[None].expand(B, T),
                cache=out.cache,
                logits_to_keep=ends,
            )
            logits = cout.logits.float()
            if logits.shape[:2] != (B, len(cand_ids)):
                raise MmcalError(f"unexpected logits shape {tuple(logits.shape)}")
            logits = logits.cpu()
        return [[logits[j, c] for c in range(len(cand_ids))] for j in range(B)]

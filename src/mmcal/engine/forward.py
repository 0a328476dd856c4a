"""Forward strategies: how the model runs an item's shared prefix and its continuations.

Every readout needs a short *continuation* of an item's prefix (see :mod:`mmcal.engine.scoring`).
When an item needs a single continuation, prefix + continuation run as one forward pass. When it
needs several, the prefix runs once with ``use_cache=True`` and the continuations run on its KV
cache, one unpadded pass per continuation length (prompt-search candidates: all of an item's
candidates packed into one pass behind a block mask). Families whose position ids depend on the
whole sequence get one full pass per continuation instead.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np

from mmcal.engine.loading import LoadedModel
from mmcal.errors import MmcalError
from mmcal.items import MCItem

log = logging.getLogger(__name__)


class ForwardError(MmcalError):
    """A forward pass failed for a reason that is not one item's input (a bug, a device error)."""


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


@dataclass
class Encoded:
    """An item ready for the model: prefix token ids plus processor tensors (batch dim 1)."""

    pos: int
    item: MCItem
    prefix_ids: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    status: str = "ok"

    def bucket_key(self) -> tuple:
        return (len(self.prefix_ids),) + tuple((k, tuple(v.shape)) for k, v in sorted(self.extra.items()))


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


# Token type of continuation tokens, where it is not 0 (= text): PaliGemma attends bidirectionally over its
# prefix (type 0) and causally over the answer ("suffix", type 1).
APPENDED_TOKEN_TYPE = {("paligemma", "token_type_ids"): 1}


def _per_token(value, n_tokens: int) -> bool:
    """A processor output with one integer per prompt token (token types), not image data."""
    return value.dim() == 2 and value.shape[1] == n_tokens and not value.is_floating_point()


class Forward:
    """Runs continuations of same-length prefixes through one loaded model."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.packed_ok: bool | None = None  # packed prompt-search candidates, checked on first use

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
                    fill = APPENDED_TOKEN_TYPE.get((self.lm.model_type, k), 0)
                    v = torch.cat([v, v.new_full((v.shape[0], appended), fill)], dim=1)
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

    def greedy(self, encs: list[Encoded], answer_ids: list[int], max_new_tokens: int) -> list[tuple[list[int], object]]:
        """Greedy decoding after prefix + ``answer_ids`` (same-length prefixes, so no padding).

        Per item: the generated token ids up to (not including) the first end-of-sequence token, and
        the raw logits [steps, V] (float32, CPU) that chose them. ``generate`` keeps every family's
        cache and position handling; it runs with a generation config of its own (no sampling, no
        logits processors from the checkpoint's defaults), and each chosen token is checked to be the
        argmax of its raw logits.
        """
        import torch
        from transformers import GenerationConfig

        model = self.lm.model
        defaults = getattr(model, "generation_config", None)
        eos = getattr(defaults, "eos_token_id", None)
        if eos is None:
            eos = self.lm.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = getattr(defaults, "pad_token_id", None)
        if pad is None:
            pad = (
                self.lm.tokenizer.pad_token_id if self.lm.tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
            )
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(eos_ids) or None,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
        )
        ids = torch.tensor([e.prefix_ids + answer_ids for e in encs], device=self.lm.device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                **self._extra_for(encs, appended=len(answer_ids)),
            )
        new = out.sequences[:, ids.shape[1] :].cpu().tolist()
        logits = torch.stack(out.logits, 1).float().cpu()  # [B, steps, V]
        results = []
        for b, seq in enumerate(new):
            stop = next((t for t, tok in enumerate(seq) if tok in eos_ids), len(seq))
            decided = min(stop + 1, len(seq))  # steps after end-of-sequence only pad
            chosen = logits[b, :decided].argmax(-1).tolist()
            if chosen != seq[:decided]:
                raise ForwardError(f"generate did not pick the argmax of the raw logits ({chosen} vs {seq})")
            results.append((seq[:stop], logits[b, : max(stop, 1)]))
        return results

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
        ids = torch.tensor([encs[r.enc_index].prefix_ids + r.ids for r in rows_sorted], device=self.lm.device)
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
        out = self.lm.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            use_cache=True,
            logits_to_keep=1,
            **self._extra_for(encs),
        )
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
            cout = self.lm.model(
                input_ids=cids, attention_mask=mask, cache=cache, **({} if scored else {"logits_to_keep": 1})
            )
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

    def candidate_last_logits(self, encs: list[Encoded], cand_ids: list[list[int]]) -> list[list]:
        """Per item, per candidate: logits after the candidate's last token.

        Fast path (checked once per engine against the general one): the candidates of an item go
        into ONE continuation after its cached prefix, each attending to the prefix and itself only
        (a block mask, positions restarting after the prefix), so the prefix cache is never copied.
        """
        if all(cand_ids) and self.lm.prefix_cache_ok and self.packed_ok is not False:
            try:
                packed = self._run_packed(encs, cand_ids)
            except Exception as exc:  # an architecture without custom 4-D masks
                log.info("packed candidates unavailable for %s: %s", self.lm.model_type, exc)
                self.packed_ok = False
            else:
                if self.packed_ok is None:
                    self.packed_ok = self._agrees(packed, self._run_rows_for(encs, cand_ids))
                if self.packed_ok:
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
        worst = max(
            float((torch.log_softmax(x, -1) - torch.log_softmax(y, -1)).abs().max())
            for xs, ys in zip(a, b)
            for x, y in zip(xs, ys)
        )
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

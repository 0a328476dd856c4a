"""Forward strategies: how the model runs an item's shared prefix and its continuations.

Every readout needs a short *continuation* of an item's prefix (see :mod:`mmcal.engine.scoring`).
When an item needs a single continuation (letter readouts alone), prefix + continuation run as one
forward pass. When it needs several (the option log-likelihoods, prompt-search candidates), the
prefix runs once with ``use_cache=True`` and all its continuations run in ONE more pass on its KV
cache, packed as a token tree behind a block mask (:mod:`mmcal.engine.packing`); that path is
checked once per engine against one pass per continuation length (``_run_cached``), which stays the
fallback. Families whose position ids depend on the whole sequence get one full pass per
continuation instead. Which path a model takes is logged once per engine.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np

from mmcal.engine.loading import LoadedModel
from mmcal.engine.packing import PREFIX, Tree, build_tree
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


NO_SPAN = 10**9  # a Row's span_from when none of its tokens is scored


@dataclass
class Row:
    """One continuation of an item's prefix: ``ids`` appended; tokens ids[span_from:] are scored;
    ``last``: the logits after its last token are read."""

    enc_index: int
    ids: list[int]
    span_from: int
    last: bool = True


@dataclass
class RowOut:
    last_logits: object  # torch tensor [V]: logits after the row's last token (None: not read, packed tree)
    span_logprob: float
    span_len: int


# Position of a sequence's first token, where it is not 0: PaliGemma's positions are 1-indexed.
FIRST_POSITION = {"paligemma": 1}


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
        self.tree_ok: bool | None = None  # packed continuation trees: checked on first use
        self._said: set[str] = set()  # fallbacks already logged (once per engine)

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
            if not self.lm.prefix_cache_ok:
                self._say("its position ids depend on the whole sequence: one full pass per continuation")
                return self._run_full(encs, rows)
            return self._run_packed(encs, rows)

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
        scored = any(r.span_from < len(r.ids) for r in rows_sorted)
        keep = len(rows_sorted[0].ids) + 1 if scored else 1  # logits from the prefix's last token on, where read
        out = self.lm.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            logits_to_keep=keep,
            **self._no_cache(),
            **self._extra_for(encs, appended=len(rows_sorted[0].ids)),
        )
        logits = out.logits  # [B, keep, V]; position t predicts continuation token t
        last = logits[:, -1].float().cpu()
        totals, counts = [0.0] * len(rows), [0] * len(rows)
        if scored:
            totals, counts = self._span_sums(logits[:, 0], logits[:, 1:], rows_sorted)
        results = [None] * len(rows)
        for b, i in enumerate(order):
            results[i] = RowOut(last[b], totals[b], counts[b])
        return results

    def _no_cache(self) -> dict:
        """Nothing follows a joined pass: no KV cache to keep (a 7B model's is ~0.3 GB per item). Families
        without the cache interface (remote code behind an adapter) choose for themselves."""
        return {"use_cache": False} if self.lm.prefix_cache_ok else {}

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
        """Per item, per candidate answer prefix: the logits after the candidate's last token (all of an
        item's candidates in one packed tree behind its prefix, where the family allows it)."""
        rows = [Row(j, ids, NO_SPAN) for j in range(len(encs)) for ids in cand_ids]
        outs = self.run_rows(encs, rows)
        k = len(cand_ids)
        return [[o.last_logits for o in outs[j * k : (j + 1) * k]] for j in range(len(encs))]

    def _say(self, why: str) -> None:
        if why not in self._said:
            self._said.add(why)
            log.info("model %s (%s): %s", self.lm.name, self.lm.model_type, why)

    def _tree_refusal(self, prefix_len: int, trees: list[Tree]) -> str | None:
        """Why these continuations cannot run as packed trees (None: they can)."""
        cfg = getattr(self.lm.model.config, "text_config", None) or self.lm.model.config
        impl = getattr(cfg, "_attn_implementation", None) or getattr(self.lm.model.config, "_attn_implementation", "")
        if "flash" in str(impl):
            return f"attention {impl} takes no custom mask: one cached pass per continuation length"
        window = getattr(cfg, "sliding_window", None)
        if window and prefix_len + max(len(t.tokens) for t in trees) > window:
            # a custom mask replaces the sliding window's: only exact while everything fits inside it
            return f"prompts longer than the sliding window ({window}): one cached pass per continuation length"
        if self.tree_ok is False:
            return "packed trees disagreed with separate passes: one cached pass per continuation length"
        return None

    def _run_packed(self, encs, rows) -> list[RowOut]:
        """All continuations of each item in one packed pass; checked on the engine's first batch against
        one pass per continuation length (on its first item), which is the fallback."""
        import torch

        by_item = [[i for i, r in enumerate(rows) if r.enc_index == j] for j in range(len(encs))]
        trees = [build_tree([rows[i] for i in idx]) for idx in by_item]
        why = self._tree_refusal(len(encs[0].prefix_ids), trees)
        if why:
            self._say(why)
            return self._run_cached(encs, rows)
        if self.tree_ok:
            return self._run_tree(encs, rows, by_item, trees)
        try:
            outs = self._run_tree(encs, rows, by_item, trees)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            self.tree_ok = False
            self._say(f"packed trees failed ({type(exc).__name__}: {exc}): one cached pass per continuation length")
            return self._run_cached(encs, rows)
        first = by_item[0]
        alone = self._run_cached(encs[:1], [rows[i] for i in first])
        worst = _worst_difference([outs[i] for i in first], alone)
        tol = 1e-3 if self.lm.model.dtype == torch.float32 else 0.25  # bf16 rounding vs a wrong mask
        self.tree_ok = worst <= tol
        if not self.tree_ok:
            log.warning("model %s: packed trees differ from separate passes by %.3g; not used", self.lm.name, worst)
            return self._run_cached(encs, rows)
        self._say(f"all continuations in one packed pass (checked: max |log-prob difference| {worst:.2g})")
        return outs

    def _run_tree(self, encs, rows, by_item: list[list[int]], trees: list[Tree]) -> list[RowOut]:
        """Prefix pass (KV cache), then every item's tree in one pass; logits only at read nodes."""
        import torch

        dev, model = self.lm.device, self.lm.model
        out, L = self._prefix_pass(encs)
        prefix_logits = out.logits[:, -1]  # [B, V]: the PREFIX node's logits
        B, T, K = len(encs), max(len(t.tokens) for t in trees), max(t.n_read for t in trees)
        logits = None
        if T:
            first = L + FIRST_POSITION.get(self.lm.model_type, 0)
            ids = np.zeros((B, T), dtype=np.int64)
            pos = np.full((B, T), first, dtype=np.int64)
            allowed = np.zeros((B, T, L + T), dtype=bool)
            allowed[:, :, :L] = True  # the prefix, for every node (padding nodes too: no empty softmax)
            for b, t in enumerate(trees):
                n = len(t.tokens)
                ids[b, :n] = t.tokens
                pos[b, :n] = first + np.asarray(t.depths, dtype=np.int64)
                allowed[b, :n, L : L + n] = t.allowed()
            mask = torch.from_numpy(allowed)[:, None].to(dev)
            cfg = getattr(model.config, "text_config", None) or model.config
            if getattr(cfg, "_attn_implementation", None) == "eager":
                mask = torch.zeros(mask.shape, dtype=model.dtype, device=dev).masked_fill(
                    ~mask, torch.finfo(model.dtype).min
                )
            cout = model(
                input_ids=torch.from_numpy(ids).to(dev),
                attention_mask=mask,
                position_ids=torch.from_numpy(pos).to(dev),
                cache=out.cache,
                logits_to_keep=torch.arange(K, device=dev),
            )
            logits = cout.logits  # [B, K, V]: node k's logits at position k
            if tuple(logits.shape[:2]) != (B, K):
                raise ForwardError(f"packed tree: logits of shape {tuple(logits.shape)}, expected ({B}, {K}, V)")
        sums, counts = self._scored_sums(prefix_logits, logits, rows, by_item, trees)
        lasts = self._last_logits(prefix_logits, logits, by_item, trees)
        return [RowOut(lasts.get(i), sums[i], counts[i]) for i in range(len(rows))]

    @staticmethod
    def _pick(prefix_logits, logits, b, nodes):
        """Logits [n, V] of nodes (PREFIX: the prefix's last token) of items b, in one gather each."""
        import torch

        at_prefix = nodes == PREFIX
        if logits is None:
            return prefix_logits[b]
        return torch.where(at_prefix[:, None], prefix_logits[b], logits[b, nodes.clamp(min=0)])

    def _scored_sums(self, prefix_logits, logits, rows, by_item, trees) -> tuple[list[float], list[int]]:
        """Per row: sum and count of log p(token) over its scored tokens; log p = logit - logsumexp(logits)
        at the node that predicts it, in float32, summed in float64 (as ``_span_sums``); one transfer."""
        import torch

        b, node, target, row = [], [], [], []
        counts = [0] * len(rows)
        for j, (idx, t) in enumerate(zip(by_item, trees)):
            for local, i in enumerate(idx):
                counts[i] = len(t.scored[local])
                for n, tok in t.scored[local]:
                    b.append(j), node.append(n), target.append(tok), row.append(i)
        if not b:
            return [0.0] * len(rows), counts
        dev = prefix_logits.device
        b_t, node_t, target_t = (torch.tensor(x, device=dev) for x in (b, node, target))
        lse = torch.logsumexp(prefix_logits.float(), -1)[b_t]
        picked = prefix_logits[b_t, target_t].float()
        if logits is not None:
            inside = node_t != PREFIX
            tree_lse = torch.logsumexp(logits.float(), -1)  # [B, K]: each read node's normaliser, once
            k = node_t.clamp(min=0)
            lse = torch.where(inside, tree_lse[b_t, k], lse)
            picked = torch.where(inside, logits[b_t, k, target_t].float(), picked)
        totals = torch.zeros(len(rows), dtype=torch.float64, device=dev)
        totals.index_add_(0, torch.tensor(row, device=dev), (picked - lse).double())
        return totals.cpu().tolist(), counts

    def _last_logits(self, prefix_logits, logits, by_item, trees) -> dict[int, object]:
        """Row index -> the float32 CPU logits [V] after its last token, for rows whose last logits are read."""
        import torch

        b, node, row = [], [], []
        for j, (idx, t) in enumerate(zip(by_item, trees)):
            for local, i in enumerate(idx):
                if t.last[local] is not None:
                    b.append(j), node.append(t.last[local]), row.append(i)
        if not row:
            return {}
        dev = prefix_logits.device
        picked = self._pick(prefix_logits, logits, torch.tensor(b, device=dev), torch.tensor(node, device=dev))
        picked = picked.float().cpu()
        return {i: picked[k] for k, i in enumerate(row)}


def _worst_difference(a: list[RowOut], b: list[RowOut]) -> float:
    """Largest difference of two strategies' outputs for the same rows: full-vocabulary log-softmax of the
    last logits, and mean log-probability of the scored tokens."""
    import torch

    worst = 0.0
    for x, y in zip(a, b):
        if x.span_len != y.span_len:
            return float("inf")
        if x.span_len:
            worst = max(worst, abs(x.span_logprob - y.span_logprob) / x.span_len)
        if x.last_logits is not None:
            d = torch.log_softmax(x.last_logits, -1) - torch.log_softmax(y.last_logits, -1)
            worst = max(worst, float(d.abs().max()))
    return worst

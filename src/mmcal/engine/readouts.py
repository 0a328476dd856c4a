"""Readouts: which continuations of its prefix each item needs, and the record rows their logits give.

- letter readouts: the answer prefix ("Answer: (") — the next-token logits give the option letters'
  scores (``letter_restricted``: softmax over the letters; ``letter_full_vocab``: the reference
  study's full-vocabulary probability of each letter, and the letters' total mass);
- ``option_loglik``: option_prefix + " " + option text — the length-normalised log-likelihood of
  each option's tokens;
- the prompt search: the ``letter_restricted`` row after each candidate answer prefix;
- ``letter_greedy``: greedy decoding after the answer prefix (the reference study's loop; its row is
  defined in :mod:`mmcal.records`), run apart from the passes above so neither pays for the other.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from mmcal import LETTERS
from mmcal.engine.forward import NO_SPAN, Encoded, Row, RowOut
from mmcal.engine.prompts import PromptVariant
from mmcal.errors import MmcalError
from mmcal.items import MCItem
from mmcal.records import ALL_READOUTS, GREEDY_READOUT, readout_row


def encode_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def joined_ids(tokenizer, opened_turn: str, separator: str, text: str, separator_in_prompt: bool = False) -> list[int]:
    """Token ids of ``text`` as it follows the opened assistant turn and ``separator`` ("ASSISTANT:" + " " +
    "Answer: (" gives ``▁Answer`` on Llama, as in the family's own answers). ``separator_in_prompt``: the
    prompt's ids already end with the separator (the processor adds it), so only ``text``'s ids are returned.

    With no separator ``text`` is tokenised on its own, as it always was for models' own templates.
    """
    if not separator:
        return encode_ids(tokenizer, text)
    head = encode_ids(tokenizer, opened_turn + (separator if separator_in_prompt else ""))
    full = encode_ids(tokenizer, opened_turn + separator + text)
    if full[: len(head)] != head:
        raise MmcalError(
            f"{text!r} after {opened_turn[-20:]!r} + {separator!r} merges into the turn's last token; "
            "the prompt's answer_prefix cannot follow this chat format"
        )
    return full[len(head) :]


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


class ReadoutSet:
    """The readouts of one engine (one tokenizer, one prompt variant)."""

    def __init__(
        self,
        tok,
        prompt: PromptVariant,
        readouts: Iterable[str],
        opened_turn: str = "",
        answer_separator: str = "",
        separator_in_prompt: bool = False,
    ):
        """``opened_turn``: a rendered prompt up to the opened assistant turn, which continuations follow
        after ``answer_separator`` (see :func:`joined_ids`)."""
        self.tok = tok
        self.opened_turn = opened_turn
        self.answer_separator = answer_separator
        self.separator_in_prompt = separator_in_prompt
        self.prompt = prompt
        self.readouts = tuple(readouts)
        bad = set(self.readouts) - set(ALL_READOUTS)
        if bad:
            raise MmcalError(f"unknown readouts {sorted(bad)}; known: {ALL_READOUTS}")
        if "option_loglik" in self.readouts and not prompt.option_prefix:
            raise MmcalError(f"prompt {prompt.name!r}: option_loglik needs a non-empty option_prefix")
        self._letter_cache: dict[tuple[str, int], list[int]] = {}
        self._joined_cache: dict[str, list[int]] = {}
        self._spellings: dict[str, list[int]] | None = None

    def joined(self, text: str) -> list[int]:
        """Token ids of a continuation (answer prefix, option prefix, candidate) after the opened turn."""
        if text not in self._joined_cache:
            self._joined_cache[text] = joined_ids(
                self.tok, self.opened_turn, self.answer_separator, text, self.separator_in_prompt
            )
        return self._joined_cache[text]

    def letters(self, answer_prefix: str, n: int) -> list[int]:
        key = (answer_prefix, n)
        if key not in self._letter_cache:
            self._letter_cache[key] = letter_token_ids(self.tok, answer_prefix, n)
        return self._letter_cache[key]

    @property
    def greedy(self) -> bool:
        return GREEDY_READOUT in self.readouts

    def letter_spellings(self, n: int) -> list[list[int]]:
        """Per option letter, every token id whose text, decoded on its own and stripped, is the letter."""
        if self._spellings is None:
            texts = self.tok.batch_decode([[i] for i in range(len(self.tok))])
            self._spellings = {letter: [] for letter in LETTERS}  # whole letters, not substrings of LETTERS
            for i, t in enumerate(texts):
                if t.strip() in self._spellings:
                    self._spellings[t.strip()].append(i)
        return [self._spellings[letter] for letter in LETTERS[:n]]

    def greedy_row(self, item: MCItem, generated: list[int], logits) -> dict:
        """The ``letter_greedy`` row from the generated ids and the raw logits of each step."""
        import torch

        n = len(item.options)
        letters = list(LETTERS[:n])
        step = next((t for t, tok in enumerate(generated) if self.tok.decode([tok]).strip() in letters), None)
        at = logits[0 if step is None else step]
        full = torch.log_softmax(at.double(), -1)
        best = []
        for ids in self.letter_spellings(n):
            if not ids:
                raise MmcalError(f"option letter of {item.item_id!r} is no token of this tokenizer")
            best.append(ids[int(full[ids].argmax())])
        full_lp = full[best].numpy()
        row = readout_row(GREEDY_READOUT, at[best].double().numpy(), item.gold, float(np.exp(full_lp).sum()), full_lp)
        if step is None:  # no letter: wrong, with the best letter's probability at the first step
            row.update(pred=-1, correct=False)
        else:  # the decoded letter and its token's probability (the argmax of option_scores, barring ties)
            pred = letters.index(self.tok.decode([generated[step]]).strip())
            row.update(pred=pred, correct=bool(item.gold >= 0 and pred == item.gold))
            row["confidence"] = float(full[generated[step]].exp())
        row["generated"] = self.tok.decode(generated)
        return row

    def continuations(self, enc: Encoded, enc_index: int) -> list[Row]:
        """Continuations needed for this item's readouts: first the answer prefix (the logits after it),
        then the options (their text's log-probabilities). They share the option prefix's tokens, which
        :mod:`mmcal.engine.packing` runs once."""
        rows = []
        if {"letter_restricted", "letter_full_vocab"} & set(self.readouts):
            rows.append(Row(enc_index, self.joined(self.prompt.answer_prefix), NO_SPAN))
        if "option_loglik" in self.readouts:
            head = self.joined(self.prompt.option_prefix)
            for opt in enc.item.options:  # the option's tokens as they follow the head (Llama: "▁the", not "▁", "▁the")
                ids = self.joined(f"{self.prompt.option_prefix} {opt}")
                if ids[: len(head)] != head:
                    raise MmcalError(
                        f"item {enc.item.item_id!r}: option {opt!r} merges into the option prefix "
                        f"{self.prompt.option_prefix!r}"
                    )
                rows.append(Row(enc_index, ids, len(head), last=False))  # only its tokens' log-probs are read
        return rows

    def rows(self, enc: Encoded, outs: list[RowOut], greedy: tuple | None = None) -> list[dict]:
        """The item's record rows, one per readout, from the outputs of its ``continuations`` and, for
        ``letter_greedy``, its (generated ids, logits) from :meth:`Forward.greedy`."""
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
            elif readout == GREEDY_READOUT:
                res.append(self.greedy_row(enc.item, *greedy))
            else:
                res.append(readout_row(readout, letter_logits, gold, option_mass, full_lp))
        return res

    def candidate_row(self, last, answer_prefix: str, item: MCItem) -> dict:
        """The ``letter_restricted`` row of one prompt-search candidate, from the logits after it."""
        import torch

        ids = self.letters(answer_prefix, len(item.options))
        lp = np.asarray(torch.log_softmax(last, -1)[ids].double())
        return readout_row("letter_restricted", last[ids].double().numpy(), item.gold, float(np.exp(lp).sum()), lp)

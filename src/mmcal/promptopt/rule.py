"""The rule-based mutator: single edits from a small synonym/hedging table, chosen with a seed.

It needs no model, so it is the offline baseline paraphraser and the fallback of the language-model
paraphrasers when they fail to give enough valid, distinct candidates.
"""

from __future__ import annotations

import random
import re

from mmcal.promptopt.base import Paraphraser
from mmcal.promptopt.text import clean_candidate, fingerprint, is_acceptable, normalise

# Whole-word (or whole-phrase) swaps, matched case-insensitively; the first occurrence is replaced.
SWAPS: dict[str, tuple[str, ...]] = {
    "might": ("may", "could"),
    "may": ("might", "could"),
    "could": ("might", "may"),
    "must": ("should", "has to"),
    "should": ("must", "ought to"),
    "has to": ("must",),
    "answer": ("correct option", "choice", "correct answer"),
    "correct option": ("answer", "right choice"),
    "correct answer": ("answer", "right option"),
    "choice": ("option", "answer"),
    "option": ("choice", "answer"),
    "correct": ("right",),
    "right": ("correct",),
    "is": ("seems to be", "appears to be"),
    "probably": ("likely", "possibly"),
    "possibly": ("perhaps", "probably"),
    "likely": ("probably",),
    "certainly": ("definitely", "surely"),
    "definitely": ("certainly",),
    "i think": ("i believe", "i guess"),
    "i believe": ("i think",),
    "most likely": ("probably", "very likely"),
}
# Hedges (or assertions) added in front of a suffix that has none, or removed from one that has.
HEDGE_PREFIXES = (
    "I think",
    "Most likely",
    "Perhaps",
    "Probably",
    "I am confident that",
    "In my view",
)
# A degree adverb inserted after the first modal verb: "might be" -> "might possibly be".
MODALS = ("might", "may", "could", "must", "should", "will")
ADVERBS = ("possibly", "probably", "certainly", "definitely")


def rule_table_fingerprint() -> str:
    return fingerprint({"swaps": SWAPS, "prefixes": HEDGE_PREFIXES, "modals": MODALS, "adverbs": ADVERBS})


def _word(phrase: str) -> re.Pattern:
    return re.compile(rf"\b{re.escape(phrase)}\b", re.I)


def _match_case(original: str, replacement: str) -> str:
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    if replacement.startswith("i "):  # "i believe" stays "I believe" mid-sentence
        return "I" + replacement[1:]
    return replacement


def _lower_first(text: str) -> str:
    if text.startswith(("I ", "I'")):  # the pronoun keeps its capital
        return text
    return text[:1].lower() + text[1:]


def rule_variants(parent: str) -> list[str]:
    """Single-edit variants of ``parent`` in a fixed order: cleaned, distinct, not ``parent``."""
    raw: list[str] = []
    for phrase in sorted(SWAPS):
        found = _word(phrase).search(parent)
        if found:
            for repl in SWAPS[phrase]:
                raw.append(parent[: found.start()] + _match_case(found.group(0), repl) + parent[found.end() :])
    if not any(_word(a).search(parent) for a in ADVERBS):
        for modal in MODALS:
            found = _word(modal).search(parent)
            if found:
                raw += [f"{parent[: found.end()]} {a}{parent[found.end() :]}" for a in ADVERBS]
                break
    lowered = normalise(parent)
    present = [p for p in HEDGE_PREFIXES if lowered.startswith(p.lower() + " ") or lowered.startswith(p.lower() + ",")]
    if present:
        rest = parent[len(present[0]) :].lstrip(" ,")
        raw.append(rest[:1].upper() + rest[1:])
    else:
        raw += [f"{p} {_lower_first(parent)}" for p in HEDGE_PREFIXES]
    variants, seen = [], {lowered}
    for text in raw:
        text = clean_candidate(text)
        if text and normalise(text) not in seen:
            seen.add(normalise(text))
            variants.append(text)
    return variants


def rule_pick(parent: str, pick_seed: int, taken: set[str]) -> str | None:
    """The first acceptable variant in a seeded order: distinct from ``taken`` whenever possible."""
    variants = rule_variants(parent)
    random.Random(pick_seed).shuffle(variants)
    return next((v for v in variants if is_acceptable(v, taken)), None)


class RuleParaphraser(Paraphraser):
    kind = "rule"
    max_attempts = 4

    def settings(self) -> dict:
        return {}  # the table itself is in every fingerprint (see Paraphraser.fingerprint)

    def sample(self, parent: str, sample_seed: int) -> str | None:
        variants = rule_variants(parent)
        return random.Random(sample_seed).choice(variants) if variants else None

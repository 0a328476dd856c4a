"""The paraphraser registry (config ``{"kind": ..., ...}``) and the driver that turns raw samples
into m valid, distinct candidates per parent, through the cache.

The driver owns validation, retries and the rule fallback, so every paraphraser behaves the same
way and only has to produce raw text.
"""

from __future__ import annotations

import inspect

from mmcal.errors import ConfigError
from mmcal.promptopt.base import Generated, Paraphraser
from mmcal.promptopt.cache import CandidateCache
from mmcal.promptopt.openai_paraphraser import OpenAIParaphraser
from mmcal.promptopt.rule import RuleParaphraser, rule_pick
from mmcal.promptopt.smollm2_paraphraser import LocalLMParaphraser, SmolLM2Paraphraser
from mmcal.promptopt.text import clean_candidate, derive_seed, is_acceptable, normalise

PARAPHRASERS: dict[str, type[Paraphraser]] = {
    "rule": RuleParaphraser,
    "smollm2": SmolLM2Paraphraser,
    "hf": LocalLMParaphraser,
    "openai": OpenAIParaphraser,
}
DEFAULT_PARAPHRASER = {"kind": "smollm2"}


def make_paraphraser(config: dict | Paraphraser | None = None) -> Paraphraser:
    """A paraphraser from its config, e.g. ``{"kind": "openai", "model": "gpt-4o-mini"}``."""
    if isinstance(config, Paraphraser):
        return config
    config = dict(config or DEFAULT_PARAPHRASER)
    kind = config.pop("kind", None)
    if kind not in PARAPHRASERS:
        raise ConfigError(f"paraphraser kind {kind!r} is not one of {sorted(PARAPHRASERS)}")
    cls = PARAPHRASERS[kind]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(config) - accepted
    if unknown:
        raise ConfigError(f"paraphraser {kind!r}: unknown keys {sorted(unknown)} (accepted: {sorted(accepted)})")
    return cls(**config)


def _propose_one(
    paraphraser: Paraphraser, parent: str, round_index: int, index: int, seed: int, taken: set[str]
) -> Generated:
    for attempt in range(paraphraser.max_attempts):
        sample_seed = derive_seed(seed, round_index, parent, index, attempt)
        text = clean_candidate(paraphraser.sample(parent, sample_seed))
        if is_acceptable(text, taken):
            return Generated(text, paraphraser.kind)
    source = "rule" if paraphraser.kind == "rule" else f"{paraphraser.kind}/rule-fallback"
    text = rule_pick(parent, derive_seed(seed, round_index, parent, index, "rule"), taken)
    return Generated(text, source)


def propose_paraphrases(
    paraphraser: Paraphraser,
    parent: str,
    m: int,
    round_index: int,
    seed: int,
    cache: CandidateCache | None = None,
) -> list[Generated]:
    """Up to ``m`` distinct candidates (all different from ``parent``), fewer only when even the
    rule mutator has nothing new. Candidate i depends only on (parent, round, i, seed) and the
    candidates before it, which is what makes the per-index cache key sufficient."""
    kind, fp = paraphraser.kind, paraphraser.fingerprint()
    taken = {normalise(parent)}
    out: list[Generated] = []
    for index in range(m):
        entry = cache.get(kind, fp, parent, round_index, index, seed) if cache else None
        if entry is None:
            entry = _propose_one(paraphraser, parent, round_index, index, seed, taken)
            if cache:
                cache.put(kind, fp, parent, round_index, index, seed, entry)
        if entry.text is not None and normalise(entry.text) not in taken:
            out.append(entry)
            taken.add(normalise(entry.text))
    return out

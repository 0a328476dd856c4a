"""Iterative prompt optimisation (the paper's APE-style loop) over the answer-prompt suffix.

    from mmcal.promptopt import run_search
    result = run_search(["The answer might be"], {"kind": "rule"}, score_fn, rounds=3, m=3, k=2,
                        seed=0, cache="data/promptopt/cache")
    result.best_prompt, result.to_frame(), result.to_json()

``score_fn(texts)`` returns one dict per text with at least ``accuracy`` and ``ece_10`` (on the
calib split; the caller evaluates the best prompt on test). Paraphrasers: ``rule`` (offline,
deterministic), ``smollm2`` (local SmolLM2-135M-Instruct, default), ``openai`` (any
OpenAI-compatible chat-completions endpoint). Generated candidates are cached on disk so a rerun
with the same seed needs neither a model nor an API.
"""

from mmcal.promptopt.base import Generated, Paraphraser, ParaphraserError
from mmcal.promptopt.cache import CandidateCache
from mmcal.promptopt.openai_paraphraser import OpenAIParaphraser
from mmcal.promptopt.paraphrasers import PARAPHRASERS, make_paraphraser, propose_paraphrases
from mmcal.promptopt.ranking import DEFAULT_BAND_WIDTH, accuracy_band, rank_key
from mmcal.promptopt.rule import RuleParaphraser, rule_variants
from mmcal.promptopt.search import DEFAULT_SEEDS, CandidateRecord, SearchError, SearchResult, run_search
from mmcal.promptopt.smollm2_paraphraser import DEFAULT_MODEL_PATH, SmolLM2Paraphraser

__all__ = [
    "CandidateCache",
    "CandidateRecord",
    "DEFAULT_BAND_WIDTH",
    "DEFAULT_MODEL_PATH",
    "DEFAULT_SEEDS",
    "Generated",
    "OpenAIParaphraser",
    "PARAPHRASERS",
    "Paraphraser",
    "ParaphraserError",
    "RuleParaphraser",
    "SearchError",
    "SearchResult",
    "SmolLM2Paraphraser",
    "accuracy_band",
    "make_paraphraser",
    "propose_paraphrases",
    "rank_key",
    "rule_variants",
    "run_search",
]

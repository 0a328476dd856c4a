"""The iterative prompt search (APE-style): paraphrase the survivors, score everything on the
calibration split, keep the top k by (accuracy band, ECE), repeat.

Round 0 scores and ranks the seed prompts; rounds 1..n add m paraphrases per survivor. Scoring is a
callback (``score_fn(texts) -> [{"accuracy", "ece_10", ...}]``) so this module never touches a
model; each distinct text is scored once per search.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from mmcal.errors import ConfigError, MmcalError
from mmcal.promptopt.base import Paraphraser
from mmcal.promptopt.cache import CandidateCache
from mmcal.promptopt.paraphrasers import make_paraphraser, propose_paraphrases
from mmcal.promptopt.ranking import BAND_RULES, DEFAULT_BAND_WIDTH, accuracy_band, rank_key

log = logging.getLogger(__name__)

DEFAULT_SEEDS = ("The answer might be", "The answer must be")
ScoreFn = Callable[[list[str]], Sequence[Mapping]]


class SearchError(MmcalError):
    """The scorer returned something the search cannot rank."""


@dataclass
class CandidateRecord:
    """One candidate in one round of the trajectory."""

    round: int
    rank: int  # 1 = best in its round
    text: str
    accuracy: float
    ece_10: float
    band: int
    survived: bool
    source: str  # "seed", the paraphraser kind, or "<kind>/rule-fallback"
    parent: str | None  # the survivor it was paraphrased from (None for seeds)
    first_round: int  # the round the text first entered the pool
    metrics: dict = field(default_factory=dict)  # further scalars the scorer returned


@dataclass
class SearchResult:
    seeds: list[str]
    settings: dict
    trajectory: list[CandidateRecord]
    best: CandidateRecord
    n_scored: int  # distinct texts scored

    @property
    def best_prompt(self) -> str:
        return self.best.text

    def round(self, index: int) -> list[CandidateRecord]:
        return [c for c in self.trajectory if c.round == index]

    def to_frame(self):
        """The trajectory, one row per (round, candidate); scorer extras become columns."""
        import pandas as pd

        rows = []
        for c in self.trajectory:
            row = {k: v for k, v in asdict(c).items() if k != "metrics"}
            for key, value in c.metrics.items():
                row[key if key not in row else f"metric_{key}"] = value
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "seeds": list(self.seeds),
            "settings": self.settings,
            "best": asdict(self.best),
            "n_scored": self.n_scored,
            "trajectory": [asdict(c) for c in self.trajectory],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "SearchResult":
        d = json.loads(text)
        return cls(
            seeds=d["seeds"],
            settings=d["settings"],
            trajectory=[CandidateRecord(**c) for c in d["trajectory"]],
            best=CandidateRecord(**d["best"]),
            n_scored=d["n_scored"],
        )


def _number(value, name: str, text: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SearchError(f"score_fn gave {name}={value!r} for candidate {text!r}: need a finite number")
    return float(value)


class _MemoScorer:
    """Calls score_fn once per round with only the texts it has not scored yet."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.scores: dict[str, dict] = {}

    def score(self, texts: list[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.scores]
        if not missing:
            return
        results = list(self.score_fn(list(missing)))
        if len(results) != len(missing):
            raise SearchError(f"score_fn returned {len(results)} results for {len(missing)} candidates")
        for text, result in zip(missing, results):
            if not isinstance(result, Mapping) or not {"accuracy", "ece_10"} <= set(result):
                raise SearchError(
                    f"score_fn result for candidate {text!r} needs keys 'accuracy' and 'ece_10', got {result!r}"
                )
            extras = {
                k: v
                for k, v in result.items()
                if k not in ("accuracy", "ece_10") and (v is None or isinstance(v, (int, float, str, bool)))
            }
            self.scores[text] = {
                "accuracy": _number(result["accuracy"], "accuracy", text),
                "ece_10": _number(result["ece_10"], "ece_10", text),
                "metrics": extras,
            }


def _check_arguments(seeds, rounds, m, k, band_width) -> list[str]:
    seeds = list(dict.fromkeys(seeds))
    if not seeds or not all(isinstance(s, str) and s.strip() for s in seeds):
        raise ConfigError(f"prompt search needs non-empty seed prompts, got {seeds!r}")
    for name, value, low in (("rounds", rounds, 0), ("m", m, 1), ("k", k, 1)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"prompt search: {name} must be an integer >= {low}, got {value!r}")
    if not 0 < band_width <= 1:
        raise ConfigError(f"prompt search: band_width must be in (0, 1], got {band_width!r}")
    return seeds


def run_search(
    seeds: Sequence[str] = DEFAULT_SEEDS,
    paraphraser: Paraphraser | dict | None = None,
    score_fn: ScoreFn | None = None,
    rounds: int = 3,
    m: int = 3,
    k: int = 2,
    seed: int = 0,
    cache: CandidateCache | str | Path | None = None,
    band_width: float = DEFAULT_BAND_WIDTH,
    band_rule: str = "floor",
) -> SearchResult:
    """Run the search; ``paraphraser`` is an instance or a config dict (default: smollm2).

    A paraphraser built here from a config is closed (model released) at the end; an instance
    passed in stays the caller's. With the same seed and cache, a rerun makes no paraphraser calls
    and returns an identical result.
    """
    if score_fn is None:
        raise ConfigError("prompt search needs a score_fn")
    seeds = _check_arguments(seeds, rounds, m, k, band_width)
    if band_rule not in BAND_RULES:
        raise ConfigError(f"prompt search: band_rule must be one of {', '.join(BAND_RULES)}, got {band_rule!r}")
    para = make_paraphraser(paraphraser)
    if isinstance(cache, (str, Path)):
        cache = CandidateCache(cache)
    scorer = _MemoScorer(score_fn)
    first_round: dict[str, int] = {}
    trajectory: list[CandidateRecord] = []
    # text -> (source, parent) of the candidates in the current pool
    pool: dict[str, tuple[str, str | None]] = {s: ("seed", None) for s in seeds}
    survivors: list[str] = []  # the k best of the previous round
    try:
        for r in range(rounds + 1):
            if r > 0:
                pool = {text: pool[text] for text in survivors}
                for parent in survivors:
                    for gen in propose_paraphrases(para, parent, m, r, seed, cache):
                        pool.setdefault(gen.text, (gen.source, parent))
            for text in pool:
                first_round.setdefault(text, r)
            scorer.score(list(pool))
            ranked = sorted(
                pool,
                key=lambda t: rank_key(
                    t, scorer.scores[t]["accuracy"], scorer.scores[t]["ece_10"], band_width, band_rule
                ),
            )
            survivors = ranked[:k]
            for rank, text in enumerate(ranked, 1):
                s = scorer.scores[text]
                source, parent = pool[text]
                trajectory.append(
                    CandidateRecord(
                        round=r,
                        rank=rank,
                        text=text,
                        accuracy=s["accuracy"],
                        ece_10=s["ece_10"],
                        band=accuracy_band(s["accuracy"], band_width, band_rule),
                        survived=rank <= k,
                        source=source,
                        parent=parent,
                        first_round=first_round[text],
                        metrics=dict(s["metrics"]),
                    )
                )
            top = scorer.scores[ranked[0]]
            log.info(
                "prompt search round %d: %d candidates, best %r (acc %.3f, ECE %.3f)",
                r,
                len(ranked),
                ranked[0],
                top["accuracy"],
                top["ece_10"],
            )
    finally:
        if not isinstance(paraphraser, Paraphraser):
            para.close()
    # The best text always survives, so the last round's first is the best of everything scored.
    best = next(c for c in trajectory if c.round == rounds and c.rank == 1)
    settings = {
        "rounds": rounds,
        "m": m,
        "k": k,
        "seed": seed,
        "band_width": band_width,
        "band_rule": band_rule,
        "paraphraser": {
            "kind": para.kind,
            "fingerprint": para.fingerprint(),
            "settings": para.settings(),
        },
    }
    return SearchResult(seeds, settings, trajectory, best, len(scorer.scores))

"""The prompt search as a study step: score candidate answer-prompt suffixes with the engine
(one shared prefix pass per item, candidates as continuations), run the APE-style loop on the
calib split, then evaluate the seeds and the best prompt once on test.

A candidate suffix ``s`` becomes the answer prefix ``f"{s}: ("`` — the reference study's format
("{suffix}: (" before the option letter) — placed inside the assistant turn.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mmcal.analysis.metrics import ece
from mmcal.analysis.stats import cluster_bootstrap_indices, percentile_interval
from mmcal.engine.build import build_engine
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.items import read_items
from mmcal.promptopt import run_search

log = logging.getLogger(__name__)

DEFAULTS = {
    "seeds": ["The answer might be", "The answer must be"],
    "paraphraser": {"kind": "smollm2"},
    "rounds": 3,
    "m": 4,
    "k": 3,
    "n_calib": 200,
    "n_test": 1000,
    "ci_bootstrap": 1000,  # cluster-bootstrap replicates for the test-split intervals
    "band_rule": "floor",  # "reference": the reference's int(accuracy // 0.2) (mmcal.promptopt.ranking)
}


def search_engine(
    model_name: str,
    model_entry: dict,
    *,
    path: str | Path | None = None,
    device: str,
    dtype: str,
    batch_size: int,
    image_root: str | Path,
    prompt: PromptVariant | None = None,
):
    """The engine the search scores candidates with: the model loaded as the scoring job loads it,
    ``prompt`` (default: the default prompt; candidates replace its answer prefix), the letter readout only."""
    return build_engine(
        model_name,
        model_entry,
        path=path,
        device=device,
        dtype=dtype,
        prompt=prompt or PromptVariant(),
        readouts=["letter_restricted"],
        batch_size=batch_size,
        image_root=image_root,
    )


def answer_prefix_for(suffix: str) -> str:
    return f"{suffix}: ("


def summarise_rows(rows: list[dict], ci_B: int = 0, seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy, ECE-10, mean confidence; with ``ci_B`` > 0 also cluster-bootstrap ``_lo``/``_hi``."""
    ok = [r for r in rows if r["status"] == "ok"]
    conf = np.array([r["confidence"] for r in ok], dtype=float)
    correct = np.array([r["correct"] for r in ok], dtype=bool)
    out = {
        "accuracy": float(correct.mean()) if len(ok) else float("nan"),
        "ece_10": ece(conf, correct, n_bins=10) if len(ok) else float("nan"),
        "mean_confidence": float(conf.mean()) if len(ok) else float("nan"),
        "n": len(ok),
        "n_unscorable": len(rows) - len(ok),
    }
    if ci_B and len(ok):
        reps = {"accuracy": [], "ece_10": []}
        for idx in cluster_bootstrap_indices([r["cluster_id"] for r in ok], ci_B, seed):
            reps["accuracy"].append(correct[idx].mean())
            reps["ece_10"].append(ece(conf[idx], correct[idx], n_bins=10))
        for name, values in reps.items():
            out[f"{name}_lo"], out[f"{name}_hi"] = percentile_interval(values, level)
    return out


def make_score_fn(engine, items, scenario: Scenario, ci_B: int = 0, seed: int = 0):
    def score_fn(candidates: list[str]) -> list[dict]:
        prefixes = [answer_prefix_for(c) for c in candidates]
        rows = engine.score_answer_prefixes(items, scenario, prefixes)
        return [summarise_rows(rows[p], ci_B, seed) for p in prefixes]

    return score_fn


def run_prompt_search(
    engine, items_path: str, out_dir: str | Path, cfg: dict, seed: int = 0, scenario: Scenario | None = None
) -> dict:
    """Search on calib, evaluate on test; writes trajectory.csv, search.json, best.json."""
    cfg = {**DEFAULTS, **(cfg or {})}
    scenario = scenario or Scenario()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = read_items(items_path)
    calib = [it for it in items if it.split == "calib"][: int(cfg["n_calib"])]
    test = [it for it in items if it.split == "test"][: int(cfg["n_test"])]
    log.info("prompt search: %d calib items, %d test items", len(calib), len(test))
    result = run_search(
        seeds=cfg["seeds"],
        paraphraser=cfg["paraphraser"],
        score_fn=make_score_fn(engine, calib, scenario),
        rounds=int(cfg["rounds"]),
        m=int(cfg["m"]),
        k=int(cfg["k"]),
        seed=seed,
        cache=cfg.get("cache_dir", out_dir / "cache"),
        band_rule=cfg["band_rule"],
    )
    result.to_frame().to_csv(out_dir / "trajectory.csv", index=False)
    (out_dir / "search.json").write_text(result.to_json())
    # Test evaluation: the best prompt, the seeds and the trained-in default, once each.
    finalists = list(dict.fromkeys([result.best_prompt, *cfg["seeds"], "Answer"]))
    test_scores = make_score_fn(engine, test, scenario, int(cfg["ci_bootstrap"]), seed)(finalists)
    calib_by_text = {}
    for rec in result.to_frame().to_dict("records"):
        calib_by_text.setdefault(rec["text"], {"accuracy": rec["accuracy"], "ece_10": rec["ece_10"]})
    best = {
        "model": engine.lm.name,
        "text": result.best_prompt,
        "answer_prefix": answer_prefix_for(result.best_prompt),
        "calib": calib_by_text.get(result.best_prompt),
        "test": test_scores[0],
        "baselines": {t: {"calib": calib_by_text.get(t), "test": s} for t, s in zip(finalists[1:], test_scores[1:])},
        "settings": {k: v for k, v in cfg.items() if k != "paraphraser"} | {"paraphraser": cfg["paraphraser"]},
    }
    (out_dir / "best.json").write_text(json.dumps(best, indent=2, default=str))
    return best

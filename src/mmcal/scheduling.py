"""Job priorities of the workflow: the serial training chain first, then the largest jobs first.

Snakemake's default scheduler (an ILP) starts, among the jobs ready, the set that fits the free cores
with the largest *sum* of priorities, and only then the most cores. So a 2-thread job runs before two
1-thread jobs only if its priority is above their sum: the priorities below are spaced for that.

- Training (vision tower -> stage 1 -> stage 2 -> IDK variant, and the SmolLM2 conversion stage 1 waits
  for) is one serial chain of 2-thread jobs that everything else waits on: it always goes first.
- After it, everything left is scoring and analysis on both cores. The wall time is then about the work
  left over 2 cores plus whatever runs alone at the end, so the largest jobs start first (the longest-
  processing-time rule) and the IDK variant's scoring, which the IDK metrics, their figures and tables
  wait on, before the other scoring jobs.
"""

from __future__ import annotations

from mmcal.plan import expand_runs, run_readouts

TRAINING = 1000  # above any two other jobs together
PROMPT_SEARCH = 500  # a 2-thread job: above any two scoring jobs together
ANALYSIS = 5  # metrics before the figures and tables that read them (figures: 0)
SCORING_MAX = 240  # scoring priorities stay in [1, SCORING_MAX]
IDK_VARIANT_BONUS = 100  # added for models built by the IDK-training rule

# Readout cost per item relative to one forward pass with the letter readouts (measured order of
# magnitude: option_loglik scores every option's continuation, letter_greedy decodes up to 20 tokens).
READOUT_COST = {"letter_restricted": 1.0, "letter_full_vocab": 0.0, "option_loglik": 1.5, "letter_greedy": 5.0}
UNKNOWN_SIZE = 500  # items of a data set whose size the config does not say (hub, jsonl, release)


def dataset_items(config: dict, dataset: str) -> dict[str, int]:
    """Items per split the data set's config asks for (the builders' own rules), {} when it does not say."""
    d = config["datasets"][dataset]
    if d.get("splits"):
        return {split: int(n) for split, n in d["splits"].items()}
    if d.get("n_per_kind"):
        total = sum(int(n) for n in d["n_per_kind"].values())
        calib = round(total * float(d.get("calib_fraction", 0.3)))
        return {"calib": calib, "test": total - calib}
    return {}


def expected_cost(config: dict, run: dict) -> float:
    """Items the scoring job scores times the cost of its readouts: its size relative to the others."""
    sizes = dataset_items(config, run["dataset"])
    limit = run.get("limit") or (config.get("scoring") or {}).get("limit_per_split")
    n = 0
    for split in run["splits"]:
        count = sizes.get(split, UNKNOWN_SIZE if not sizes else 0)
        n += min(count, int(limit)) if limit else count
    return n * sum(READOUT_COST.get(r, 1.0) for r in run_readouts(config, run))


def score_priorities(config: dict) -> dict[tuple[str, str, str, str], int]:
    """Priority of every scoring job of the config, keyed by (model, dataset, scenario, prompt)."""
    runs = expand_runs(config)
    if not runs:
        return {}
    costs = {(r["model"], r["dataset"], r["scenario"], r["prompt"]): expected_cost(config, r) for r in runs}
    top = max(costs.values()) or 1.0
    out = {}
    for key, cost in costs.items():
        build = (config["models"][key[0]] or {}).get("build")
        bonus = IDK_VARIANT_BONUS if build == "stage2_idk" else 0
        out[key] = max(1, round((SCORING_MAX - IDK_VARIANT_BONUS) * cost / top)) + bonus
    return out

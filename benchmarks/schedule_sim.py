"""Replay a finished run's jobs on N cores under another priority rule: what the schedule alone changes.

    python benchmarks/schedule_sim.py RUN_DIR [--cores 2] [--seeds 20]

Wall times measured on a shared machine carry the other processes' noise, which can hide the few
minutes a schedule changes. This takes the run's own job durations and dependencies (its provenance
records, as benchmarks/timeline.py reads them) and replays them the way Snakemake's default scheduler
picks jobs: whenever cores are free, the set of ready jobs that fits with the largest sum of priorities,
then the most cores used (its ILP objective). Two rules are compared:

- ``none``: every priority 0, as before this branch; ties (there are many) broken in random order, so
  it reports the mean and the range over ``--seeds`` orders;
- ``mmcal``: the priorities of ``mmcal.scheduling`` for the config the run used (``--config``).

Job threads: the training jobs' recipe thread counts and the prompt search's 2 are read from the run's
provenance (torch threads); every other job takes 1 core. Times between jobs (Snakemake's own
bookkeeping, Python start-up) are not in the replay.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timeline import critical_path, label, load_jobs  # noqa: E402


def dependencies(jobs: list[dict]) -> dict[int, set[int]]:
    producer = {out: i for i, job in enumerate(jobs) for out in job["outputs"]}
    deps = {}
    for i, job in enumerate(jobs):
        found = set()
        for inp in job["inputs"]:
            p = producer.get(inp)
            if p is None:
                p = next((producer[o] for o in producer if inp.startswith(o.rstrip("/") + "/")), None)
            if p is not None and p != i:
                found.add(p)
        deps[i] = found
    return deps


def priority_of(job: dict, config: dict | None) -> float:
    if config is None:
        return 0.0
    from mmcal import scheduling

    rule = job["rule"]
    if rule.startswith("train_") or rule == "convert_smollm2":
        return scheduling.TRAINING
    if rule == "prompt_search":
        return scheduling.PROMPT_SEARCH
    if rule in ("summarize", "compare", "no_letter", "idk_metrics"):
        return scheduling.ANALYSIS
    if rule == "score":
        wc = job["wildcards"]
        return scheduling.score_priorities(config).get((wc["model"], wc["dataset"], wc["scenario"], wc["prompt"]), 1)
    return 0.0


def cores_of(job: dict, cores: int) -> int:
    rule = job["rule"]
    if rule.startswith("train_") or rule == "prompt_search":
        return min(cores, int(job.get("threads") or 1))
    return 1


def pick(ready: list[int], free: int, prio: dict, need: dict, order: dict) -> list[int]:
    """The subset of ``ready`` fitting ``free`` cores with the largest (sum of priorities, cores used),
    ties to the earliest in ``order`` (Snakemake's solver breaks them its own way)."""
    best, best_key = [], None
    candidates = sorted(ready, key=lambda j: (-prio[j], order[j]))[:12]
    for r in range(1, min(free, len(candidates)) + 1):
        for combo in itertools.combinations(candidates, r):
            used = sum(need[j] for j in combo)
            if used > free:
                continue
            key = (sum(prio[j] for j in combo), used, [-order[j] for j in combo])
            if best_key is None or key > best_key:
                best, best_key = list(combo), key
    return best


def replay(jobs, deps, prio, need, cores: int, order: dict) -> tuple[float, list]:
    dur = {i: j["end"] - j["start"] for i, j in enumerate(jobs)}
    done, running, t, trace = set(), {}, 0.0, []
    while len(done) < len(jobs):
        ready = [i for i in range(len(jobs)) if i not in done and i not in running and deps[i] <= done]
        free = cores - sum(need[i] for i in running)
        for i in pick(ready, free, prio, need, order) if free > 0 else []:
            running[i] = t + dur[i]
            trace.append((t, i))
        if not running:
            raise RuntimeError("no job can run: a dependency cycle or a job wider than the cores")
        t = min(running.values())
        for i in [i for i, end in running.items() if end <= t]:
            del running[i]
            done.add(i)
    return t, trace


def merged(base: dict, over: dict) -> dict:
    """Snakemake's rule for --configfile: mappings merge, everything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument(
        "--config", type=Path, nargs="*", help="the run's config files, merged in order (default: RUN_DIR/config/config.yaml)"
    )
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args(argv)
    import yaml

    config: dict = {}
    for path in args.config or [args.run_dir / "config/config.yaml"]:
        config = merged(config, yaml.safe_load(path.read_text()))
    config.setdefault("scoring", {})
    jobs = load_jobs(args.run_dir)
    deps = dependencies(jobs)
    need = {i: cores_of(j, args.cores) for i, j in enumerate(jobs)}
    work = sum((j["end"] - j["start"]) * need[i] for i, j in enumerate(jobs))
    path = critical_path(jobs)
    print(f"{len(jobs)} jobs, {work:.0f} core-seconds of work: at least {work / args.cores:.0f} s on {args.cores} cores")
    print(f"longest chain of the measured run: {sum(j['end'] - j['start'] for j in path):.0f} s")
    measured = max(j["end"] for j in jobs) - min(j["start"] for j in jobs)
    print(f"measured run: {measured:.0f} s (first job start to last job end)")
    for rule_set in ("none", "mmcal"):
        prio = {i: priority_of(j, config if rule_set == "mmcal" else None) for i, j in enumerate(jobs)}
        spans = []
        for seed in range(args.seeds):
            shuffled = list(range(len(jobs)))
            random.Random(seed).shuffle(shuffled)
            span, trace = replay(jobs, deps, prio, need, args.cores, {j: k for k, j in enumerate(shuffled)})
            spans.append(span)
        mean = sum(spans) / len(spans)
        print(f"priorities {rule_set:>5}: replayed {mean:.0f} s on average (min {min(spans):.0f}, max {max(spans):.0f})")
        if rule_set == "mmcal":
            starts = {i: t for t, i in trace}
            late = sorted(starts, key=starts.get)[-6:]
            print("  last jobs to start: " + ", ".join(f"{label(jobs[i])} @{starts[i]:.0f}s" for i in late))


if __name__ == "__main__":
    main()

"""Job timeline and critical path of a finished workflow run, from its provenance records.

    python benchmarks/timeline.py RUN_DIR [--markdown]

Every job writes ``provenance/<output>.json`` with its rule, wildcards, inputs, outputs and the times its
script started and ended (mmcal.provenance); a job with several outputs writes one record each, with the
same times. This prints one line per job (start offset from the first job, seconds, rule and wildcards),
the seconds per rule, how busy the cores were (job-seconds over wall seconds), and the critical path: from
the job that ended last, back through the input whose job ended last, to a job with no such input.
Times are the scripts' own (Python start-up and Snakemake's bookkeeping between jobs are not in them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections import defaultdict
from pathlib import Path


def load_jobs(run_dir: Path) -> list[dict]:
    jobs: dict[tuple, dict] = {}
    for path in sorted((run_dir / "provenance").rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if "started" not in rec or "rule" not in rec:
            continue
        key = (rec["rule"], json.dumps(rec.get("wildcards") or {}, sort_keys=True), rec["started"])
        job = jobs.setdefault(
            key,
            {
                "rule": rec["rule"],
                "wildcards": rec.get("wildcards") or {},
                "start": dt.datetime.fromisoformat(rec["started"]).timestamp(),
                "end": dt.datetime.fromisoformat(rec["ended"]).timestamp(),
                "inputs": {i["path"] for i in rec.get("inputs", [])},
                "outputs": set(),
                "threads": ((rec.get("environment") or {}).get("numerics") or {}).get("torch_threads"),
            },
        )
        job["outputs"].update(rec.get("outputs") or [rec["output"]])
    return sorted(jobs.values(), key=lambda j: j["start"])


def label(job: dict) -> str:
    wc = "/".join(str(v) for v in job["wildcards"].values())
    return f"{job['rule']}" + (f" {wc}" if wc else "")


def critical_path(jobs: list[dict]) -> list[dict]:
    """From the last job to end, back through the producer of an input that ended last."""
    producer = {out: job for job in jobs for out in job["outputs"]}

    def parents(job):
        found = []
        for inp in job["inputs"]:
            p = producer.get(inp)
            if p is None:  # an input inside a produced folder (e.g. a model folder's file)
                p = next((producer[o] for o in producer if inp.startswith(o.rstrip("/") + "/")), None)
            if p is not None and p is not job:
                found.append(p)
        return found

    path = [max(jobs, key=lambda j: j["end"])]
    while True:
        ps = parents(path[-1])
        if not ps:
            break
        path.append(max(ps, key=lambda j: j["end"]))
    return path[::-1]


def report(run_dir: Path, markdown: bool = False) -> str:
    jobs = load_jobs(run_dir)
    if not jobs:
        raise SystemExit(f"no provenance records with times under {run_dir}/provenance")
    t0 = min(j["start"] for j in jobs)
    wall = max(j["end"] for j in jobs) - t0
    busy = sum(j["end"] - j["start"] for j in jobs)
    lines = []
    row = "| {:>7} | {:>7} | {:>7} | {} |" if markdown else "{:>7}  {:>7}  {:>7}  {}"
    lines.append(row.format("start s", "end s", "seconds", "job"))
    if markdown:
        lines.append("| ---: | ---: | ---: | --- |")
    for j in jobs:
        lines.append(
            row.format(f"{j['start'] - t0:.0f}", f"{j['end'] - t0:.0f}", f"{j['end'] - j['start']:.1f}", label(j))
        )
    per_rule: dict[str, list[float]] = defaultdict(list)
    for j in jobs:
        per_rule[j["rule"]].append(j["end"] - j["start"])
    lines.append("")
    lines.append("seconds per rule: " + ", ".join(f"{r} {sum(v):.0f} ({len(v)})" for r, v in per_rule.items()))
    training = sum(sum(v) for r, v in per_rule.items() if r.startswith("train_"))
    lines.append(
        f"{len(jobs)} jobs; first start to last end {wall:.0f} s ({wall / 60:.1f} min); job-seconds {busy:.0f} "
        f"(on average {busy / wall:.2f} jobs running); training jobs {training:.0f} s ({training / 60:.1f} min)"
    )
    path = critical_path(jobs)
    lines.append("")
    lines.append(f"critical path ({sum(j['end'] - j['start'] for j in path):.0f} s of job time, {len(path)} jobs):")
    for j in path:
        lines.append(f"  {j['start'] - t0:7.0f} +{j['end'] - j['start']:7.1f}  {label(j)}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="the workflow folder of the run (with provenance/)")
    ap.add_argument("--markdown", action="store_true", help="the job table as Markdown")
    args = ap.parse_args(argv)
    print(report(args.run_dir, args.markdown))


if __name__ == "__main__":
    main()

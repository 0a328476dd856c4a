"""Sweep of tiny-LLaVA training plans: train each candidate's stages, score them on the study's test split.

Each candidate is a ``training:`` section (the shape of ``config/config.yaml``'s, with ``train_classes``
and the seed of the default study) plus a name. Stages are trained by the workflow's own functions
(``train_vision``, ``train_stage1``, ``train_stage2``) under the training jobs' kernel pins, each into a
folder named by the hash of its own settings and its parents', so candidates that share a stage train
it once. Every stage 1 and stage 2 is then scored on the test split of a data set the DAG built
(``data/datasets/fmnist/items.jsonl``: 1,000 Fashion-MNIST t10k items) with the training jobs'
evaluation (``mmcal.tinyllava.evaluation.score_accuracy``), i.e. the study's scoring engine.

    python -m mmcal.tinyllava.plan_sweep --candidates docs/training-plan-candidates.yaml \\
        --lm data/models/smollm2-135m-instruct --items data/datasets/fmnist/items.jsonl --out sweep/

``--probe-steps N`` times N steps of every stage instead (no test scoring): the median seconds per step,
for the time per step of each candidate in a short window. One JSON line per stage goes to
``OUT/results.jsonl``; the table at the end prints them.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

from mmcal.tinyllava.config import STAGES
from mmcal.tinyllava.config import stage_config as study_stage_config

log = logging.getLogger("mmcal.plan_sweep")

KNOWN = [0, 1, 2, 3, 4, 6, 7]  # config.yaml classes.known
IDK_TRAIN = [5]  # config.yaml classes.idk_train


def stage_config(training: dict, stage: str, seed: int = 0) -> dict:
    """What the workflow's ``training_cfg(stage)`` passes the stage, for a candidate's ``training`` section
    and the default study's classes."""
    study = {"training": training, "classes": {"known": KNOWN, "idk_train": IDK_TRAIN}, "seed": seed}
    return study_stage_config(study, stage)


def stage_key(cfg: dict, stage: str, parent: str | None) -> str:
    """Hash of the stage's settings with the code's defaults filled in (a changed default is another
    stage) and of its parent's key."""
    from mmcal.tinyllava.config import resolve_config

    resolved = resolve_config(cfg)
    section = "stage2" if stage == "stage2_idk" else stage
    own = {k: v for k, v in resolved.items() if k not in ("vision", "stage1", "stage2")}
    text = json.dumps({"cfg": {**own, section: resolved[section]}, "parent": parent}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def probe_config(cfg: dict, stage: str, steps: int) -> dict:
    """The stage's config cut to ``steps`` optimizer steps (same shapes, so the same time per step)."""
    cfg = copy.deepcopy(cfg)
    cfg["n_eval"] = 8
    if stage == "vision":
        batch = int(cfg["vision"].get("batch_size", 128))
        cfg["vision"].update(epochs=1, n_train=steps * batch)
    else:
        cfg["stage1" if stage == "stage1" else "stage2"]["steps"] = steps
    return cfg


def train(stage: str, cfg: dict, parents: dict, out: Path) -> dict:
    from mmcal.tinyllava.stage1 import train_stage1
    from mmcal.tinyllava.stage2 import train_stage2
    from mmcal.tinyllava.vision import train_vision

    if stage == "vision":
        return train_vision(cfg, out)
    if stage == "stage1":
        return train_stage1(cfg, parents["vision"], parents["lm"], out)
    return train_stage2(cfg, parents["stage1" if stage == "stage2" else "stage2"], out)


def score_test(model_dir: Path, items_path: Path, readouts, split: str = "test") -> dict:
    from mmcal.items import read_items
    from mmcal.tinyllava.evaluation import score_accuracy
    from mmcal.tinyllava.model import load_tiny_llava

    model, processor = load_tiny_llava(model_dir)
    items = read_items(items_path, splits=[split])
    return score_accuracy(model, processor, items, items_path.parent, readouts)


def weights_sha256(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def run_candidate(cand: dict, args, results: Path) -> None:
    training = cand.get("training") or {}
    parents = {"lm": str(args.lm)}
    parent_key = None
    for stage in STAGES:
        if stage == "stage2_idk" and "stage2_idk" not in training or stage not in args.stages:
            break
        cfg = stage_config(training, stage)
        if args.probe_steps:
            cfg = probe_config(cfg, stage, args.probe_steps)
        key = stage_key(cfg, stage, parent_key)
        out = args.out / f"{stage}-{key}"
        if args.dry_run:
            print(cand["name"], stage, out, "(done)" if (out / "sweep_result.json").exists() else "")
            parents[stage], parent_key = str(out), key
            continue
        result_file = out / "sweep_result.json"
        if not result_file.exists():
            load = os.getloadavg()
            t0 = time.time()
            if (out / "model.safetensors").exists():
                # trained by the workflow with the same settings and copied here (its job times: benchmarks/)
                summary, wall = {"trained_elsewhere": str(out.resolve())}, None
            else:
                summary = train(stage, cfg, parents, out)
                wall = round(time.time() - t0, 1)
            result = {
                "stage": stage,
                "key": key,
                "wall_seconds": wall,
                "load_before": [round(x, 2) for x in load],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "weights_sha256": weights_sha256(out),
                "summary": summary,
            }
            if not args.probe_steps and stage in ("stage1", "stage2"):
                readouts = ["option_loglik", "letter_restricted"] if stage == "stage1" else ["letter_restricted"]
                result["test"] = score_test(out, args.items, readouts)
            if not args.probe_steps and stage == "stage2_idk" and args.idk_items:
                result["test_idk"] = score_test(out, args.idk_items, ["letter_restricted"])
            result_file.write_text(json.dumps(result, indent=1, default=str) + "\n")
        result = json.loads(result_file.read_text())
        with results.open("a") as f:
            f.write(json.dumps({"candidate": cand["name"], **environment(), **result}, default=str) + "\n")
        log.info("%s %s: %s", cand["name"], stage, {k: result.get(k) for k in ("wall_seconds", "test")})
        parents[stage] = str(out)
        parent_key = key


def environment() -> dict:
    import torch

    from mmcal.tinyllava.kernels import AVX2_KERNELS

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "pins": {k: os.environ.get(k) for k in (*AVX2_KERNELS, "MKL_CBWR", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
    }


def table(results: Path, names=None) -> str:
    """One line per candidate: per stage the wall time (s/step) and its test accuracies."""
    rows: dict[str, dict] = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        if names and r["candidate"] not in names:
            continue
        rows.setdefault(r["candidate"], {})[r["stage"]] = r
    out = []
    for name, stages in rows.items():
        cells = []
        for stage in STAGES:
            r = stages.get(stage)
            if not r:
                continue
            s = r["summary"]
            cell = f"{stage} {r['wall_seconds'] or 0:.0f}s"
            if s.get("median_step_seconds") is not None:
                cpu = s.get("median_step_cpu_seconds", float("nan"))
                cell += f" ({s['median_step_seconds']:.3f} s/step, {cpu:.3f} cpu-s x {s['steps']})"
            test = r.get("test") or {}
            accs = {k.removesuffix("_accuracy"): v for k, v in test.items() if k.endswith("_accuracy")}
            if accs:
                cell += " " + " ".join(f"{k}={v:.3f}" for k, v in accs.items())
            cells.append(cell)
        out.append(f"{name}: " + " | ".join(cells))
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=Path, required=True, help="YAML list of {name, training}")
    ap.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    ap.add_argument("--lm", type=Path, required=True, help="the SmolLM2 folder the DAG converted")
    ap.add_argument("--items", type=Path, help="fmnist items.jsonl (test split scored)")
    ap.add_argument("--idk-items", type=Path, help="idk items.jsonl (test split scored for the IDK variant)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--probe-steps", type=int, default=0, help="time N steps per stage instead of training")
    ap.add_argument("--stages", nargs="*", default=list(STAGES), help="train up to the last of these (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="print each stage's folder; train nothing")
    ap.add_argument("--no-pins", action="store_true", help="leave the CPU kernels unpinned (for the pins' cost)")
    args = ap.parse_args(argv)
    if not args.no_pins:
        from mmcal.tinyllava.kernels import pin_training_kernels

        pin_training_kernels()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import yaml

    candidates = yaml.safe_load(args.candidates.read_text())
    if args.only:
        candidates = [c for c in candidates if c["name"] in args.only]
    if not (args.probe_steps or args.dry_run or args.items):
        ap.error("--items is needed unless --probe-steps is given")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    for cand in candidates:
        run_candidate(cand, args, results)
    if not args.dry_run:
        print(table(results, [c["name"] for c in candidates]))


if __name__ == "__main__":
    main()

"""``mmcal`` command line: score a model on a data set outside Snakemake, inspect records.

The workflow scripts call the same functions (``score_from_params``), so a CLI run and a DAG run
produce identical records.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mmcal.errors import MmcalError


def make_engine_factory(model_name: str, model_cfg: dict, model_path: str, prompt_name: str,
                        prompt_cfg: dict, readouts, device: str, dtype: str, batch_size: int,
                        image_root: str):
    def make():
        from mmcal.engine.loading import load_model
        from mmcal.engine.prompts import prompt_from_config
        from mmcal.engine.scoring import Engine

        lm = load_model(
            model_name, model_path, kind=model_cfg.get("kind", "auto"), device=device,
            dtype=dtype, revision=model_cfg.get("revision"),
        )
        prompt = prompt_from_config(prompt_name, prompt_cfg)
        return Engine(lm, prompt, readouts=readouts, batch_size=batch_size, image_root=image_root)

    return make


def score_from_params(params: dict, wildcards, inputs, out_path: str) -> dict:
    """Run one scoring job from the Snakemake rule's params (see workflow/rules/common.smk)."""
    from mmcal.engine.loading import model_fingerprint
    from mmcal.engine.prompts import prompt_from_config
    from mmcal.engine.scenarios import scenario_from_config
    from mmcal.engine.job import JobSpec, run_job

    items_path = inputs.item_file
    model_cfg = params["model_cfg"]
    model_path = inputs.model if "model" in inputs.keys() else model_cfg["path"]
    spec = JobSpec(
        model=wildcards.model, dataset=wildcards.dataset, scenario=wildcards.scenario,
        prompt=wildcards.prompt, items_path=items_path, out_path=out_path,
        splits=tuple(params["splits"]),
        descriptions_path=inputs.descriptions if "descriptions" in inputs.keys() else None,
        shard_size=int(params["shard_size"]), limit_per_split=params.get("limit_per_split"),
        fingerprint=model_fingerprint(model_path),
        prompt_hash=prompt_from_config(wildcards.prompt, params["prompt_cfg"]).prompt_hash(),
    )
    factory = make_engine_factory(
        wildcards.model, model_cfg, model_path, wildcards.prompt, params["prompt_cfg"],
        params["readouts"], params["device"], params["dtype"], int(params["batch_size"]),
        image_root=str(Path(items_path).parent),
    )
    scenario = scenario_from_config(wildcards.scenario, params["scenario_cfg"])
    return run_job(spec, factory, scenario)


class _W:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def keys(self):
        return self.__dict__.keys()


def cmd_score(args) -> int:
    import yaml

    cfg = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    model_cfg = {"path": args.model_path, "kind": args.kind}
    params = {
        "model_cfg": model_cfg,
        "prompt_cfg": (cfg.get("prompts") or {}).get(args.prompt) or {},
        "scenario_cfg": (cfg.get("scenarios") or {}).get(args.scenario) or {"image": args.kind != "llm"},
        "splits": args.splits.split(","),
        "readouts": args.readouts.split(","),
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "shard_size": 64,
        "limit_per_split": args.limit,
    }
    inputs = _W(item_file=args.items, model=args.model_path)
    if args.descriptions:
        inputs.descriptions = args.descriptions
    wc = _W(model=args.model_name, dataset=Path(args.items).parent.name, scenario=args.scenario,
            prompt=args.prompt)
    stats = score_from_params(params, wc, inputs, args.out)
    print(json.dumps(stats))
    return 0


def cmd_records(args) -> int:
    import pandas as pd

    df = pd.read_parquet(args.path)
    ok = df["status"] == "ok"
    print(f"{args.path}: {len(df)} rows, {df['item_id'].nunique()} items, {int((~ok).sum())} unscorable rows")
    print(df[ok].groupby("readout")[["correct", "confidence"]].mean().to_string())
    bad = df[~ok].drop_duplicates("item_id")
    for _, r in bad.head(20).iterrows():
        print(f"  unscorable {r['item_id']}: {r['status']}")
    return 0


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="mmcal", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score one model on one items.jsonl")
    s.add_argument("--model-path", required=True)
    s.add_argument("--model-name", default="model")
    s.add_argument("--kind", default="auto", choices=["auto", "mllm", "llm"])
    s.add_argument("--items", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--config", help="a study config to take prompts/scenarios from")
    s.add_argument("--scenario", default="image")
    s.add_argument("--prompt", default="default")
    s.add_argument("--descriptions")
    s.add_argument("--splits", default="calib,test")
    s.add_argument("--readouts", default="letter_restricted,letter_full_vocab,option_loglik")
    s.add_argument("--device", default="auto")
    s.add_argument("--dtype", default="auto")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--limit", type=int)
    s.set_defaults(func=cmd_score)
    r = sub.add_parser("records", help="summarise a records Parquet file")
    r.add_argument("path")
    r.set_defaults(func=cmd_records)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except MmcalError as exc:
        print(f"mmcal: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

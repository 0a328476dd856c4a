"""``mmcal`` command line: score a model on a data set outside Snakemake, import harness logs, inspect records.

``mmcal score`` calls the scoring job the workflow's ``score`` rule calls
(:func:`mmcal.engine.job.score_to_records`), so a CLI run and a DAG run produce identical records.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mmcal.errors import ConfigError, MmcalError

# The variables through which huggingface_hub, datasets and transformers allow or forbid downloads.
HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def set_hub_offline(offline: bool) -> None:
    """Forbid (``"1"``) or allow (``"0"``) downloads in this process and every process it starts.

    Set to ``"0"`` rather than removed: huggingface_hub falls back on ``TRANSFORMERS_OFFLINE`` when
    ``HF_HUB_OFFLINE`` is unset, and datasets reads its own flag first, so a stale exported flag
    would otherwise still win. Must run before those libraries are imported (they read it once).
    """
    for var in HUB_OFFLINE_VARS:
        os.environ[var] = "1" if offline else "0"


def model_entry_for(args, cfg: dict) -> dict:
    """The config's ``models.<model-name>`` entry when there is one, with the loading options given
    on the command line taking precedence over the entry's."""
    entry = dict((cfg.get("models") or {}).get(args.model_name) or {})
    flags = {
        "path": args.model_path,
        "kind": args.kind,
        "revision": args.revision,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "chat_template": args.chat_template,
        "trust_remote_code": True if args.trust_remote_code else None,
        "image_processor_backend": args.image_processor_backend,
    }
    entry.update({k: v for k, v in flags.items() if v is not None})
    if "path" not in entry:
        raise ConfigError(f"model {args.model_name!r}: give --model-path, or a --config whose models: has this name")
    return entry


def study_settings(config: str | None, root: str | None) -> dict:
    """``--config`` on its base chain (so a file without ``base`` brings the shared prompts and scenarios of
    ``config/defaults.yaml``), else those shared settings alone. ``root`` (default: the checkout this mmcal runs
    from) holds ``config/defaults.yaml``; where there is none (mmcal installed elsewhere), the file as it is."""
    from mmcal import config as study_config

    if root is None:
        checkout = Path(__file__).resolve().parents[2]
        root = checkout if (checkout / study_config.DEFAULTS_FILE).is_file() else Path(".")
    defaults = Path(root) / study_config.DEFAULTS_FILE
    if not defaults.is_file():
        return study_config.read_config_file(config) if config else {}
    if config:
        return study_config.load_study([config], root=root)
    return study_config.read_config_file(defaults)


def named_setting(cfg: dict, section: str, name: str, builtin: dict) -> dict:
    """``cfg[section][name]``, or the built-in entry of that name; a name defined nowhere is an error (it
    must not silently score another scenario or prompt under the name asked for)."""
    known = {**builtin, **(cfg.get(section) or {})}
    if name not in known:
        raise ConfigError(
            f"{section[:-1]} {name!r} is not defined: known {sorted(known)} "
            "(from --config, else config/defaults.yaml under --root)"
        )
    return known[name] or {}


def cmd_score(args) -> int:
    from mmcal.engine.job import score_to_records
    from mmcal.engine.prompts import prompt_from_config
    from mmcal.engine.scenarios import scenario_from_config

    cfg = study_settings(args.config, args.root)
    entry = model_entry_for(args, cfg)
    scenario_cfg = named_setting(cfg, "scenarios", args.scenario, {"image": {"image": True}})
    if entry.get("kind") == "llm" and args.scenario == "image":
        scenario_cfg = {**scenario_cfg, "image": False}  # a text-only model's "image" run shows it no image
    prompt_cfg = named_setting(cfg, "prompts", args.prompt, {"default": {}})
    stats = score_to_records(
        args.model_name,
        entry,
        Path(args.items).parent.name,
        args.items,
        args.out,
        scenario_from_config(args.scenario, scenario_cfg),
        prompt_from_config(args.prompt, prompt_cfg),
        readouts=args.readouts.split(","),
        splits=args.splits.split(","),
        device=args.device or cfg.get("device", "auto"),
        dtype=cfg.get("dtype", "auto"),
        batch_size=(cfg.get("scoring") or {}).get("batch_size", 8),
        shard_size=(cfg.get("scoring") or {}).get("shard_size", 64),
        limit_per_split=args.limit,
        descriptions_path=args.descriptions,
        max_unscorable=(cfg.get("scoring") or {}).get("max_unscorable", 0.02),
    )
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


def cmd_config_check(args) -> int:
    """``mmcal config check FILE [FILE ...]``: the merged study config (its base chain, overlays) against the
    schema, every problem at once; then what planning checks (the runs, the same-text comparisons)."""
    from mmcal import config as study_config

    root = Path(args.root)
    study = study_config.load_study(args.files, root=root)
    problems = study_config.config_errors(study, study_config.load_schema(root))
    if problems:
        print(f"{args.files[0]}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    from mmcal import plan
    from mmcal.engine import parity

    runs = plan.expand_runs(study)
    later = parity.check_comparisons(study)
    print(f"{args.files[0]}: ok ({len(runs)} scored runs, {len(study.get('models') or {})} models)")
    for pair in later:
        print(f"  comparison {pair.comparison!r}: same text checked by the download job (hub templates)")
    return 0


def cmd_import(args) -> int:
    """Harness logs -> records files under --out in the records layout, and a report (--json: as JSON)."""
    from mmcal.imports import import_logs, write_import

    options = {
        "items": args.items,
        "id_field": args.id_field,
        "cluster_field": args.cluster_field,
        "metric": args.metric,
        "filter_name": args.filter,
        "dataset_name": args.task,
    }
    imported = import_logs(
        args.harness,
        args.paths,
        args.name,
        task=args.task,
        dataset=args.dataset,
        scenario=args.scenario,
        prompt=args.prompt,
        calib_fraction=args.calib_fraction,
        **{k: v for k, v in options.items() if v is not None},
    )
    reports = []
    for imp in imported:
        path = write_import(imp, Path(args.out) / Path(imp.relpath).relative_to("data/records"))
        reports.append({**imp.summary, "records": str(path)})
    if args.json:
        print(json.dumps(reports, indent=1))
        return 0
    for r in reports:
        acc = ", ".join(f"{k} {v:.4f}" for k, v in r["accuracy"].items())
        lines = f"{r['lines_ok']}/{r['lines']} lines ok"
        print(f"{r['records']}: {r['harness']} {r['version']} task {r['task']}, {lines}; {acc}")
        for check in r["accuracy_check"].values():
            verdict = "equal" if check["equal"] else "DIFFERENT"
            print(f"  accuracy ours {check['ours']:.6f}, harness {check['harness']:.6f}: {verdict}")
        for status, n in r["lines_by_status"].items():
            if status != "ok":
                print(f"  {n} lines: {status}")
        for quirk in r["quirks"]:
            print(f"  - {quirk}")
        if "not_available" in r:
            print(f"  not available: {r['not_available']['metrics']} ({r['not_available']['reason']})")
    return 0


def cmd_audit(args) -> int:
    """The chain behind an artifact, ``--verify`` against the disk, ``--export`` as an RO-Crate;
    ``--cell`` and ``--rescore`` go down to one number (mmcal.audit.cells, mmcal.audit.rescore)."""
    if args.cell:
        from mmcal.audit.cells import audit_cell

        return audit_cell(args.path, args.cell, as_json=args.json)
    if args.row:
        from mmcal.audit.metric_rows import audit_metric_row

        return audit_metric_row(args.path, args.row, args.json)
    if args.rescore is not None:
        from mmcal.audit.rescore import rescore

        return rescore(args.path, args.rescore, args.configfile, args.json)
    if args.export:
        from mmcal.audit.export import export_crate

        print(export_crate(args.export, args.root))
        return 0
    if args.verify:
        from mmcal.audit.verify import format_report, verify

        result = verify(args.root, args.path)
        print(json.dumps(result, indent=2) if args.json else format_report(result))
        return 0 if result["ok"] else 1
    if not args.path:
        raise ConfigError("mmcal audit: give an artifact PATH, or --verify / --export DIR")
    from mmcal.audit.chain import chain, format_chain

    tree = chain(args.path, args.root)
    print(json.dumps(tree, indent=2) if args.json else format_chain(tree))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mmcal", description=__doc__)
    p.add_argument(
        "--online", action="store_true", help="allow hub downloads (default: offline, like the config's offline: true)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score one model on one items.jsonl")
    s.add_argument("--model-name", default="model", help="with --config: the models: entry to load")
    s.add_argument("--model-path", help="a local folder or hub id (overrides the entry's path)")
    s.add_argument("--kind", choices=["auto", "mllm", "llm"], help="default: the entry's, else auto")
    s.add_argument("--revision", help="hub revision (default: the entry's)")
    s.add_argument("--chat-template", help="a built-in prompt format or a .jinja file (default: the entry's)")
    s.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model's own code from its repository (default: the entry's)",
    )
    s.add_argument("--image-processor-backend", choices=["pil", "torchvision"], help="default: the entry's, else pil")
    s.add_argument("--items", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--config", help="a study config: the model entry, prompts, scenarios, defaults")
    s.add_argument("--scenario", default="image", help="a scenario of the config (or of config/defaults.yaml)")
    s.add_argument("--prompt", default="default", help="a prompt of the config (or of config/defaults.yaml)")
    s.add_argument("--root", help="where config/defaults.yaml is (default: the checkout mmcal runs from, else .)")
    s.add_argument("--descriptions")
    s.add_argument("--splits", default="calib,test")
    s.add_argument("--readouts", default="letter_restricted,letter_full_vocab,option_loglik")
    s.add_argument("--device", help="default: the config's, else auto")
    s.add_argument("--dtype", help="default: the entry's, else the config's, else auto")
    s.add_argument("--batch-size", type=int, help="default: the entry's, else the config's scoring, else 8")
    s.add_argument("--limit", type=int)
    s.set_defaults(func=cmd_score)
    r = sub.add_parser("records", help="summarise a records Parquet file")
    r.add_argument("path")
    r.set_defaults(func=cmd_records)
    i = sub.add_parser("import", help="records from lm-eval / lmms-eval / VLMEvalKit logs (docs/imports.md)")
    i.add_argument("harness", choices=["lm-eval", "lmms-eval", "vlmevalkit"])
    i.add_argument("paths", nargs="+", help="log files or folders (samples + results files)")
    i.add_argument("--name", required=True, help="the model name of the records")
    i.add_argument("--task", help="import only this task (default: every task of the logs)")
    i.add_argument("--dataset", help="the records' dataset name (default: the task)")
    i.add_argument("--scenario", help="default: image (lm-eval: blind)")
    i.add_argument("--prompt", help="default: the harness's name")
    i.add_argument("--items", help="an mmcal items.jsonl to join by doc_id (= metadata.row; lmms-eval >= 0.4)")
    i.add_argument("--id-field", help="the doc field holding an item id (logs that carry their doc)")
    i.add_argument("--cluster-field", help="the doc field holding a cluster id")
    i.add_argument("--metric", help="the per-sample metric that is the harness's verdict (generation tasks)")
    i.add_argument("--filter", help="lm-eval: the filter whose lines are imported")
    i.add_argument("--calib-fraction", type=float, default=0.3, help="share of clusters marked calib (default 0.3)")
    i.add_argument("--out", default="data/records", help="records root (default data/records)")
    i.add_argument("--json", action="store_true", help="print the import report as JSON")
    i.set_defaults(func=cmd_import)
    a = sub.add_parser("audit", help="provenance of an artifact: its chain to the sources, --verify, --export")
    a.add_argument("path", nargs="?", help="an artifact (a file or folder the workflow wrote)")
    a.add_argument("--root", default=".", help="the workflow's working directory (default: .)")
    a.add_argument("--json", action="store_true", help="JSON instead of text")
    a.add_argument("--verify", action="store_true", help="re-hash and report what no longer matches (exit 1)")
    a.add_argument("--configfile", help="with --rescore: the config the run used")
    a.add_argument("--export", metavar="DIR", help="write the run as a Workflow Run RO-Crate into DIR")
    a.add_argument(
        "--cell",
        metavar="ROW,COL",
        help="recompute one cell of a paper table from its records (labels as printed, commas allowed, or indices)",
    )
    a.add_argument(
        "--row",
        metavar="N|KEY=VALUE,...",
        help="a row of a data/metrics/*.csv file (1-based, or the keys that select it): its records and the "
        "table cells that print it",
    )
    a.add_argument("--rescore", metavar="K", type=int, help="re-score K random items of a records file")
    a.set_defaults(func=cmd_audit)
    c = sub.add_parser("config", help="check a study config (base chain, overlays) before running it")
    c_sub = c.add_subparsers(dest="config_cmd", required=True)
    check = c_sub.add_parser("check", help="every problem of the merged config at once (exit 1 if any)")
    check.add_argument("files", nargs="+", help="the study's config file, then any overlays")
    check.add_argument("--root", default=".", help="the workflow's directory (config/defaults.yaml, the schema)")
    check.set_defaults(func=cmd_config_check)
    args = p.parse_args(argv)
    set_hub_offline(not args.online)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except MmcalError as exc:
        print(f"mmcal: error: {exc}", file=sys.stderr)
        return 2

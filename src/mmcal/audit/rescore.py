"""Re-execution audit: re-score a seeded sample of a records file's items and compare with the stored rows.

``rescore`` takes K random scorable items of one records file, loads the recorded model through
``mmcal.engine.job.scoring_engine`` (the scoring job's own path: ``build_engine`` with the config's
model entry, dtype, batch size and the items' image folder), renders the recorded prompt and
scenario, scores the items with ``Engine.score`` and reports, per readout, the largest absolute
difference of the confidence and of the per-option probabilities (exp(option_scores)) against the
stored rows, and how many predictions changed. It also says whether the model's fingerprint and the
prompt's hash today equal those stamped on the records. Differences above the tolerance of the dtype
and device (``TOLERANCE``) mean weight, data or code drift: exit 1.

Tolerances: on CPU in fp32 a re-scored probability differs from the stored one by up to ~4e-6
(measured on the test study: the items are batched and padded differently than in the job, which
reorders float reductions), so 1e-5 is tight and still far below any change of weights or code. On a GPU, fp32
matmuls may use TF32 and other kernels: 1e-3. In bf16/fp16 a logit carries ~3 significant digits,
a probability can move by ~1e-2 between batchings: 2e-2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.errors import ConfigError, DataError
from mmcal.records import RUN_KEYS, option_probs, read_records, scorable, to_frame

TOLERANCE = {
    ("cpu", "float32"): 1e-5,
    ("cuda", "float32"): 1e-3,
    ("cpu", "bfloat16"): 2e-2,
    ("cuda", "bfloat16"): 2e-2,
    ("cpu", "float16"): 2e-2,
    ("cuda", "float16"): 2e-2,
}


def project_root(records_path) -> Path:
    """The directory the workflow ran in: records live in ``<root>/data/records/<m>/<d>/<s>/<p>.parquet``."""
    return Path(records_path).absolute().parents[5]


def load_config(root: Path, configfile=None) -> dict:
    """The config the workflow ran with: ``configfile`` (default ``config/config.yaml``) on its base chain
    (mmcal.config, as the Snakefile loads it), validated against the workflow's schema (which fills the
    defaults)."""
    from snakemake.utils import validate

    from mmcal.config import load_study

    path = Path(configfile) if configfile else root / "config/config.yaml"
    path = path if path.is_absolute() or path.exists() else root / path
    cfg = load_study([path], root=root)
    validate(cfg, str(root / "workflow/schemas/config.schema.yaml"))
    return cfg


def _one(records: pd.DataFrame, column: str, path) -> str:
    values = records[column].dropna().unique()
    if len(values) != 1:
        raise DataError(f"{path}: expected one {column} in the records, found {list(values)}")
    return str(values[0])


def tolerance_for(device: str, dtype: str) -> float:
    key = ("cuda" if str(device).startswith("cuda") else "cpu", str(dtype).replace("torch.", ""))
    if key not in TOLERANCE:
        raise ConfigError(f"no rescoring tolerance for device {device!r} and dtype {dtype!r}")
    return TOLERANCE[key]


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def rescore_report(records_path, k: int, configfile=None, seed: int = 0) -> dict:
    """Re-score ``k`` seeded random scorable items of ``records_path``; the comparison as a dict."""
    import torch

    from mmcal import plan
    from mmcal.engine.build import engine_fingerprint
    from mmcal.engine.job import scoring_engine
    from mmcal.engine.prompts import prompt_from_config
    from mmcal.engine.scenarios import scenario_from_config
    from mmcal.items import read_items
    from mmcal.torch_device import resolve_device, resolve_dtype

    records_path = Path(records_path)
    root = project_root(records_path)
    stored = read_records(records_path)
    keys = {c: _one(stored, c, records_path) for c in RUN_KEYS}
    cfg = load_config(root, configfile)
    model, dataset = keys["model"], keys["dataset"]
    if model not in cfg["models"]:
        raise ConfigError(f"{records_path}: model {model!r} is not in the config")
    entry = cfg["models"][model]
    model_dir = plan.model_dir(cfg, model)
    model_path = root / model_dir if model_dir else None
    prompt = prompt_from_config(keys["prompt"], cfg["prompts"][keys["prompt"]] or {})
    scenario = scenario_from_config(keys["scenario"], cfg["scenarios"][keys["scenario"]] or {})
    recorded_fp = _one(stored, "model_fingerprint", records_path)
    recorded_ph = _one(stored, "prompt_hash", records_path)
    current_fp = engine_fingerprint(model, entry, model_path)

    ok_ids = sorted(scorable(stored)["item_id"].unique())
    if not ok_ids:
        raise DataError(f"{records_path}: no scorable items to re-score")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(ok_ids, size=min(int(k), len(ok_ids)), replace=False).tolist())
    items_path = root / f"data/datasets/{dataset}/items.jsonl"
    by_id = {it.item_id: it for it in read_items(items_path)}
    missing = [i for i in chosen if i not in by_id]
    if missing:
        raise DataError(f"{items_path}: items {missing[:5]} of the records are not in the data set (data drift)")
    descriptions = None
    if plan.scenario_needs_descriptions(cfg, keys["scenario"]):
        descriptions = json.loads((root / f"data/datasets/{dataset}/descriptions.json").read_text())

    readouts = list(dict.fromkeys(stored["readout"]))
    device = resolve_device(cfg["device"])
    dtype = entry.get("dtype", cfg["dtype"])
    resolved_dtype = str(resolve_dtype(dtype, device)).replace("torch.", "")
    torch.set_num_threads(int(cfg.get("threads", torch.get_num_threads())))
    engine = scoring_engine(
        model,
        entry,
        prompt,
        readouts=readouts,
        device=device,
        dtype=dtype,
        batch_size=entry.get("batch_size", cfg["scoring"]["batch_size"]),
        items_path=items_path,
        model_path=model_path,
    )
    fresh = to_frame(engine.score([by_id[i] for i in chosen], scenario, descriptions))
    tol = tolerance_for(device, resolved_dtype)

    per_readout = {}
    for readout in readouts:
        old = stored[(stored["readout"] == readout) & stored["item_id"].isin(chosen)].sort_values("item_id")
        new = fresh[fresh["readout"] == readout].sort_values("item_id")
        both_ok = set(old.loc[old["status"] == "ok", "item_id"]) & set(new.loc[new["status"] == "ok", "item_id"])
        old_ok, new_ok = old[old["item_id"].isin(both_ok)], new[new["item_id"].isin(both_ok)]
        d_conf = _max_diff(old_ok["confidence"].to_numpy(float), new_ok["confidence"].to_numpy(float))
        d_prob = _max_diff(option_probs(old_ok), option_probs(new_ok))
        per_readout[readout] = {
            "n": len(both_ok),
            "n_not_scorable_now": int(len(old) - len(both_ok)),
            "max_abs_diff_confidence": d_conf,
            "max_abs_diff_option_probs": d_prob,
            "pred_changed": int((old_ok["pred"].to_numpy() != new_ok["pred"].to_numpy()).sum()),
            "within_tolerance": bool(max(d_conf, d_prob) <= tol and len(both_ok) == len(old)),
        }
    return {
        "records": str(records_path),
        "keys": keys,
        "items": chosen,
        "seed": seed,
        "device": device,
        "dtype": resolved_dtype,
        "tolerance": tol,
        "model_fingerprint": {"recorded": recorded_fp, "current": current_fp, "equal": recorded_fp == current_fp},
        "prompt_hash": {
            "recorded": recorded_ph,
            "current": prompt.prompt_hash(),
            "equal": recorded_ph == prompt.prompt_hash(),
        },
        "readouts": per_readout,
        "max_abs_diff": max(
            max(r["max_abs_diff_confidence"], r["max_abs_diff_option_probs"]) for r in per_readout.values()
        ),
        "ok": all(r["within_tolerance"] for r in per_readout.values()),
    }


def rescore(records_path, k: int, configfile=None, as_json: bool = False) -> int:
    """``mmcal audit RECORDS --rescore K``: print the comparison; exit 1 above tolerance."""
    report = rescore_report(records_path, k, configfile)
    if as_json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    fp, ph = report["model_fingerprint"], report["prompt_hash"]
    out = [
        f"{report['records']}: re-scored {len(report['items'])} items (seed {report['seed']}) "
        f"on {report['device']} in {report['dtype']}, tolerance {report['tolerance']:g}",
        f"  model fingerprint: recorded {fp['recorded']}, now {fp['current']}"
        + ("" if fp["equal"] else "  DIFFERENT: the model files changed since scoring"),
        f"  prompt hash:       recorded {ph['recorded']}, now {ph['current']}"
        + ("" if ph["equal"] else "  DIFFERENT: the prompt changed since scoring"),
    ]
    for readout, r in report["readouts"].items():
        out.append(
            f"  {readout:18s} n={r['n']:3d}  max |d confidence| {r['max_abs_diff_confidence']:.3g}  "
            f"max |d option prob| {r['max_abs_diff_option_probs']:.3g}  predictions changed {r['pred_changed']}"
            f"  {'ok' if r['within_tolerance'] else 'ABOVE TOLERANCE'}"
        )
    out.append(f"  largest difference {report['max_abs_diff']:.3g}: {'ok' if report['ok'] else 'DRIFT'}")
    print("\n".join(out), file=sys.stdout)
    return 0 if report["ok"] else 1

"""Recalibration as a study step: fit every recalibrator on `calib`, apply to `test`, and report
before/after metrics with CIs and paired tests — from records only, never re-running a model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from mmcal.analysis.stats import derive_seed, holm, metric_cis, paired_metric_differences
from mmcal.calibration.records_adapter import apply_to_records, fit_on_records, labelled_rows
from mmcal.calibration.splits import repeated_splits, summarise_splits
from mmcal.errors import DataError
from mmcal.records import RUN_KEYS, metric_arrays, scorable, select

log = logging.getLogger(__name__)

TABLE_METRICS = ["accuracy", "ece_10", "ece_15", "ece_debiased", "smece", "nll", "brier", "auroc"]
PAIRED_METRICS = ["ece_10", "ece_debiased", "nll", "brier"]
# The table's Params cell: each method's headline parameters, under the names the cell shows.
HEADLINE_PARAMS = {
    "temperature": {"temperature": "temperature"},
    "platt": {"slope": "slope", "intercept": "intercept"},
    "vector": {"scale": "scale", "bias": "bias"},
    "histogram": {"bins": "values"},
    "isotonic": {"knots": "y"},
}


def _group_label(key) -> str:
    return "/".join(str(k) for k in key)


def short_params(fitted: dict) -> dict:
    """The headline fitted parameters of a saved recalibrator (``Recalibrator.to_dict()``) for the
    table: T for temperature scaling, slope and intercept for Platt, the per-class scales and biases,
    bin or knot values (the table shows how many). Full fits are saved separately as JSON."""
    params = fitted.get("params") or {}
    names = HEADLINE_PARAMS.get(fitted["method"], {})
    return {shown: params[key] for shown, key in names.items() if key in params}


def recalibrate_group(rows: pd.DataFrame, readout: str, methods, B: int, seed: int, level: float):
    """One (model, dataset, scenario, prompt) × readout: returns (table rows, params, test frames)."""
    calib, test = labelled_rows(rows, readout, "calib"), labelled_rows(rows, readout, "test")
    if calib.empty or test.empty:
        raise DataError(f"needs scored calib and test rows ({len(calib)} calib, {len(test)} test)")
    key = tuple(rows.iloc[0][c] for c in RUN_KEYS)
    gseed = derive_seed(seed, *key, readout)
    before = metric_arrays(test)
    clusters = test["cluster_id"].to_numpy()
    frames = {"none": test.assign(recalibrator="none")}
    out_rows, params = [], {}
    base = dict(zip(RUN_KEYS, key), readout=readout)
    stats_none = metric_cis(**before, cluster_ids=clusters, B=B, seed=gseed, level=level, keys=TABLE_METRICS)
    out_rows.append({**base, "recalibrator": "none", "params": "{}", **stats_none, "accuracy_unchanged": True})
    for method in methods:
        recal = fit_on_records(rows, method, readout, split="calib")
        after_df = apply_to_records(test, recal)
        after = metric_arrays(after_df)
        stats_after = metric_cis(**after, cluster_ids=clusters, B=B, seed=gseed, level=level, keys=TABLE_METRICS)
        paired = paired_metric_differences(before, after, clusters, PAIRED_METRICS, B=B, seed=gseed, level=level)
        diff_cols = {}
        for metric, res in paired.items():
            diff_cols.update({f"diff_{metric}": res["diff"], f"diff_{metric}_lo": res["lo"],
                              f"diff_{metric}_hi": res["hi"], f"p_{metric}": res["p_value"]})
        unchanged = bool(np.array_equal(after_df["pred"].to_numpy(), test["pred"].to_numpy()))
        fitted = recal.to_dict()
        params[method] = fitted
        out_rows.append({**base, "recalibrator": method, "params": json.dumps(short_params(fitted)),
                         **stats_after, **diff_cols, "accuracy_unchanged": unchanged})
        frames[method] = after_df.assign(recalibrator=method)
    return out_rows, params, frames


def recalibration_study(records: pd.DataFrame, readouts, methods, B=1000, seed=0, level=0.95):
    """Every group × readout that has calib and test rows. Returns (table, params, recalibrated)."""
    table, params, frames = [], {}, []
    for key, rows in records.groupby(list(RUN_KEYS), sort=True):
        for readout in readouts:
            if select(rows, readout=readout).empty:
                continue
            label = f"{_group_label(key)}/{readout}"
            try:
                t, p, f = recalibrate_group(rows, readout, methods, B, seed, level)
            except DataError as exc:
                log.warning("recalibration skipped for %s: %s", label, exc)
                continue
            table += t
            params[label] = p
            frames += list(f.values())
    df = pd.DataFrame(table)
    p_cols = [c for c in df.columns if c.startswith("p_") and c != "p_holm"]
    if "p_ece_10" in df.columns:
        mask = df["p_ece_10"].notna()
        df.loc[mask, "p_holm"] = holm(df.loc[mask, "p_ece_10"].to_numpy())
    log.info("recalibration table: %d rows, p-value columns %s", len(df), p_cols)
    recalibrated = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return df, params, recalibrated


def split_robustness(records: pd.DataFrame, readouts, methods, n_seeds: int, seed: int = 0) -> pd.DataFrame:
    """Repeated random cluster-level calib/test splits: mean and CI of post-calibration metrics."""
    out = []
    for key, rows in records.groupby(list(RUN_KEYS), sort=True):
        for readout in readouts:
            if select(scorable(rows), readout=readout).empty:
                continue
            for method in methods:
                per_seed = repeated_splits(rows, method, readout, n_seeds=n_seeds, seed=seed)
                summary = summarise_splits(per_seed)
                for col, val in zip(RUN_KEYS, key):
                    summary[col] = val
                summary["readout"], summary["method"] = readout, method
                out.append(summary)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()

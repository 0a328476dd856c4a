"""Recalibration as a study step: fit every recalibrator on `calib`, apply to `test`, and report
before/after metrics with CIs and paired tests — from records only, never re-running a model.

Tests. Each recalibrator's ECE_10 change is tested against no recalibration on the same test
items, and the p-values are Holm-corrected over every recalibrator, readout and run (``p_holm``).
A paired cluster-bootstrap p-value cannot go below 2 / (B + 1), and Holm multiplies the smallest by
the number of tests m: with the intervals' B = 1000 and m = 36 no change could ever be significant
(floor 0.072). The ECE_10 test therefore draws ``p_bootstrap`` replicates (its first B draws are
the intervals' draws; the recalibrators of one group share all of them). Each row records the
floors, ``p_ece_10_floor`` = 2 / (B' + 1) and ``p_holm_floor`` = m times that: a p-value at its
floor means "no replicate crossed zero", i.e. p is at most about the floor. The other paired
columns (``p_ece_debiased``, ``p_nll``, ``p_brier``) are uncorrected, from the B interval draws.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from mmcal.analysis.metrics import metric_replicates, prepare
from mmcal.analysis.stats import (
    bootstrap_pvalue,
    cluster_bootstrap_weights,
    derive_seed,
    holm,
    metric_cis,
    paired_metric_differences,
)
from mmcal.calibration.base import NotApplicable
from mmcal.calibration.records_adapter import apply_to_records, fit_on_records, labelled_rows
from mmcal.calibration.splits import repeated_splits, summarise_splits
from mmcal.errors import DataError
from mmcal.records import RUN_KEYS, metric_arrays, scorable, select

log = logging.getLogger(__name__)

TABLE_METRICS = ["accuracy", "ece_10", "ece_15", "ece_debiased", "smece", "nll", "brier", "auroc"]
PAIRED_METRICS = ["ece_10", "ece_debiased", "nll", "brier"]
TESTED_METRIC = "ece_10"  # the Holm-corrected family: one test per recalibrator x readout x run
# The default study's 36 tests (2 models x 3 readouts x 6 methods): Holm floor 36 * 2 / 50001 = 0.0014.
# Cost at 1,000 test items: about 1.5 s of one core per group x readout for 7 ECEs (rule: 11 s -> 20 s).
P_BOOTSTRAP = 50_000
P_BLOCK = 1000  # replicates evaluated per matrix product (memory: P_BLOCK x n floats)
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


def paired_pvalues(before: dict, afters: dict[str, dict], cluster_ids, metric: str, B: int, seed) -> dict:
    """Paired cluster-bootstrap p-value of ``metric`` (after - before) for each entry of ``afters``.

    ``before`` and each ``afters`` value are metric arrays of the same rows (``records.metric_arrays``).
    Every comparison uses the same ``B`` draws (those of ``stats.cluster_bootstrap_weights`` with
    this seed). Returns ``{name: (p_value, floor)}``, floor = 2 / (B' + 1) with B' finite replicates:
    the p-value when no replicate crosses zero (``stats.bootstrap_pvalue``).
    """
    reference = prepare(**before)
    inputs = {name: prepare(**data) for name, data in afters.items()}
    diffs: dict[str, list] = {name: [] for name in inputs}
    for weights in _blocks(cluster_bootstrap_weights(cluster_ids, B, seed), P_BLOCK):
        base = metric_replicates(reference, weights, [metric])[metric]
        for name, inp in inputs.items():
            diffs[name].append(metric_replicates(inp, weights, [metric])[metric] - base)
    out = {}
    for name, parts in diffs.items():
        d = np.concatenate(parts)
        out[name] = (bootstrap_pvalue(d), 2 / (int(np.isfinite(d).sum()) + 1))
    return out


def _blocks(chunks, size: int):
    """Stack consecutive [b, n] weight chunks into blocks of about ``size`` rows (fewer, larger
    matrix products)."""
    pending, rows = [], 0
    for chunk in chunks:
        pending.append(chunk)
        rows += len(chunk)
        if rows >= size:
            yield np.concatenate(pending)
            pending, rows = [], 0
    if pending:
        yield np.concatenate(pending)


def recalibrate_group(
    rows: pd.DataFrame,
    readout: str,
    methods,
    B: int,
    seed: int,
    level: float,
    p_bootstrap: int = P_BOOTSTRAP,
    fit_rows: pd.DataFrame | None = None,
):
    """One (model, dataset, scenario, prompt) × readout: returns (table rows, params, test frames). The
    recalibrators are fitted on the calib rows of ``fit_rows`` (another scenario of the same model, data set
    and prompt) when given, else of ``rows``."""
    fit_rows = rows if fit_rows is None else fit_rows
    calib, test = labelled_rows(fit_rows, readout, "calib"), labelled_rows(rows, readout, "test")
    if calib.empty or test.empty:
        raise DataError(f"needs scored calib and test rows ({len(calib)} calib, {len(test)} test)")
    key = tuple(rows.iloc[0][c] for c in RUN_KEYS)
    gseed = derive_seed(seed, *key, readout)
    before = metric_arrays(test)
    clusters = test["cluster_id"].to_numpy()
    frames = {"none": test.assign(recalibrator="none")}
    out_rows, params, afters = [], {}, {}
    base = dict(zip(RUN_KEYS, key), readout=readout, fit_scenario=str(fit_rows.iloc[0]["scenario"]))
    stats_none = metric_cis(**before, cluster_ids=clusters, B=B, seed=gseed, level=level, keys=TABLE_METRICS)
    out_rows.append({**base, "recalibrator": "none", "params": "{}", **stats_none, "accuracy_unchanged": True})
    for method in methods:
        try:
            recal = fit_on_records(fit_rows, method, readout, split="calib")
            after_df = apply_to_records(test, recal)
        except NotApplicable as exc:  # this method only: its row says why, the other methods go on
            log.warning("recalibration %s/%s/%s: %s", "/".join(map(str, key)), readout, method, exc)
            out_rows.append({**base, "recalibrator": method, "params": json.dumps({"not_applicable": str(exc)})})
            continue
        after = afters[method] = metric_arrays(after_df)
        stats_after = metric_cis(**after, cluster_ids=clusters, B=B, seed=gseed, level=level, keys=TABLE_METRICS)
        paired = paired_metric_differences(before, after, clusters, PAIRED_METRICS, B=B, seed=gseed, level=level)
        diff_cols = {}
        for metric, res in paired.items():
            diff_cols.update(
                {
                    f"diff_{metric}": res["diff"],
                    f"diff_{metric}_lo": res["lo"],
                    f"diff_{metric}_hi": res["hi"],
                    f"p_{metric}": res["p_value"],
                }
            )
        unchanged = bool(np.array_equal(after_df["pred"].to_numpy(), test["pred"].to_numpy()))
        fitted = recal.to_dict()
        params[method] = fitted
        out_rows.append(
            {
                **base,
                "recalibrator": method,
                "params": json.dumps(short_params(fitted)),
                **stats_after,
                **diff_cols,
                "accuracy_unchanged": unchanged,
            }
        )
        frames[method] = after_df.assign(recalibrator=method)
    tests = paired_pvalues(before, afters, clusters, TESTED_METRIC, p_bootstrap, gseed) if afters else {}
    for row in out_rows[1:]:
        row[f"p_{TESTED_METRIC}"], row[f"p_{TESTED_METRIC}_floor"] = tests.get(row["recalibrator"], (np.nan, np.nan))
    return out_rows, params, frames


def fit_group(rows: pd.DataFrame, fit_records: pd.DataFrame | None) -> pd.DataFrame | None:
    """The rows a group's recalibrators are fitted on: its twin in ``fit_records`` (same model, data set and
    prompt; ``recalibration.fit_scenario``), or None (its own rows)."""
    if fit_records is None:
        return None
    first = rows.iloc[0]
    twin = select(fit_records, model=first["model"], dataset=first["dataset"], prompt=first["prompt"])
    if twin.empty:
        raise DataError(f"no records to fit {first['model']}/{first['dataset']}/{first['prompt']} on")
    return twin


def recalibration_study(
    records: pd.DataFrame,
    readouts,
    methods,
    B=1000,
    seed=0,
    level=0.95,
    p_bootstrap: int = P_BOOTSTRAP,
    fit_records: pd.DataFrame | None = None,
):
    """Every group × readout that has calib and test rows. Returns (table, params, recalibrated).

    ``B``: bootstrap replicates of the intervals; ``p_bootstrap``: of the Holm-corrected ECE test
    (module docstring). ``fit_records``: the records each group is fitted on instead of its own calib rows
    (:func:`fit_group`).
    """
    table, params, frames = [], {}, []
    for key, rows in records.groupby(list(RUN_KEYS), sort=True):
        for readout in readouts:
            if select(rows, readout=readout).empty:
                continue
            label = f"{_group_label(key)}/{readout}"
            try:
                fit_rows = fit_group(rows, fit_records)
                t, p, f = recalibrate_group(rows, readout, methods, B, seed, level, p_bootstrap, fit_rows)
            except DataError as exc:
                log.warning("recalibration skipped for %s: %s", label, exc)
                continue
            table += t
            params[label] = p
            frames += list(f.values())
    df = pd.DataFrame(table)
    tested = f"p_{TESTED_METRIC}"
    if tested in df.columns:
        mask = df[tested].notna()
        df.loc[mask, "p_holm"] = holm(df.loc[mask, tested].to_numpy())
        # Holm's smallest adjusted p is m times the smallest p: a row's adjusted p is at least this
        df.loc[mask, "p_holm_floor"] = np.minimum(1.0, int(mask.sum()) * df.loc[mask, f"{tested}_floor"])
        floor = df["p_holm_floor"].max()
        if floor >= 1 - level:
            log.warning(
                "Holm-corrected p-values cannot go below %.3g, not below alpha = %.3g: raise p_bootstrap",
                floor,
                1 - level,
            )
        log.info("recalibration table: %d rows, %d tests, Holm floor %.3g", len(df), int(mask.sum()), floor)
    recalibrated = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return df, params, recalibrated


def split_robustness(
    records: pd.DataFrame, readouts, methods, n_seeds: int, seed: int = 0, fit_records: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Repeated random cluster-level calib/test splits: mean and CI of post-calibration metrics."""
    out = []
    for key, rows in records.groupby(list(RUN_KEYS), sort=True):
        for readout in readouts:
            if select(scorable(rows), readout=readout).empty:
                continue
            for method in methods:
                fit_df = fit_group(rows, fit_records)
                try:
                    per_seed = repeated_splits(rows, method, readout, n_seeds=n_seeds, seed=seed, fit_df=fit_df)
                except NotApplicable as exc:  # the recalibration table's row of this method says why
                    log.warning("repeated splits %s/%s/%s: %s", "/".join(map(str, key)), readout, method, exc)
                    continue
                summary = summarise_splits(per_seed)
                for col, val in zip(RUN_KEYS, key):
                    summary[col] = val
                summary["readout"], summary["method"] = readout, method
                out.append(summary)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()

"""Cluster-level calib/test splits and repeated splits (fit on calib, evaluate on test, K seeds).

:func:`calib_test_split` is hashed and deterministic: every cluster (items sharing an image or a
source) lies entirely on one side. :func:`repeated_splits` measures split-to-split variability
and :func:`summarise_splits` gives its mean and Student-t interval over seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from mmcal.analysis.metrics import cluster_rank_key, compute_all
from mmcal.calibration.base import Calibrated, argmax_answers, make_recalibrator
from mmcal.calibration.records_adapter import records_to_scores, rows_to_fit
from mmcal.errors import DataError
from mmcal.records import log_softmax


@dataclass(frozen=True)
class ClusterSplit:
    """A cluster-disjoint calib/test split; the masks are aligned with the input rows."""

    calib_mask: np.ndarray
    calib_clusters: frozenset
    test_clusters: frozenset

    @property
    def test_mask(self) -> np.ndarray:
        return ~self.calib_mask


def calib_test_split(records_or_cluster_ids, frac_calib: float = 0.5, seed: int = 0) -> ClusterSplit:
    """Split rows into calib / test so that every cluster lies entirely on one side.

    Clusters are ordered by a keyed hash of (seed, cluster_id) and the first
    round(frac_calib * n_clusters) go to calib (at least one cluster on each side). The order of a
    cluster depends only on its id and the seed, never on row order or on which other rows are
    present, so one seed gives the same split for every model and readout of the same items.
    ``frac_calib`` is a fraction of clusters, not of rows.
    """
    if not 0.0 < frac_calib < 1.0:
        raise ValueError("frac_calib must be strictly between 0 and 1")
    ids = (
        records_or_cluster_ids["cluster_id"]
        if isinstance(records_or_cluster_ids, pd.DataFrame)
        else records_or_cluster_ids
    )
    ids = pd.Series(list(ids), dtype=object)
    if ids.isna().any():
        raise DataError("some rows have no cluster_id; cluster-level splitting needs one on every row")
    ids = ids.astype(str)
    clusters = sorted(ids.unique(), key=lambda c: cluster_rank_key(c, seed))
    if len(clusters) < 2:
        raise DataError(f"need at least two clusters to split, got {len(clusters)}")
    n_calib = min(max(int(np.floor(frac_calib * len(clusters) + 0.5)), 1), len(clusters) - 1)
    calib = frozenset(clusters[:n_calib])
    return ClusterSplit(ids.isin(calib).to_numpy(), calib, frozenset(clusters[n_calib:]))


def _uncalibrated(z: np.ndarray, readout_mode: str) -> Calibrated:
    probs = np.exp(log_softmax(z))
    pred = argmax_answers(z, readout_mode)
    return Calibrated(probs, pred, probs[np.arange(len(z)), pred])


def repeated_splits(
    records_df: pd.DataFrame,
    method: str,
    readout: str,
    n_seeds: int = 10,
    frac_calib: float = 0.5,
    seed: int = 0,
    pool_splits: Iterable[str] | None = ("calib", "test"),
    readout_mode: str | None = None,
    metrics_fn: Callable[..., dict] | None = None,
    allow_mixed: bool = False,
    fit_df: pd.DataFrame | None = None,
    **kw,
) -> pd.DataFrame:
    """Re-split the pool K times by cluster, fit on calib, evaluate on test; one row per seed and stage.

    ``fit_df``: fit on its rows of the calib clusters instead (the same items scored another way, e.g.
    without the image: ``recalibration.fit_scenario``).

    The pool is the 'ok' rows of ``readout`` with known gold whose ``split`` is in ``pool_splits``
    (None: every split). For seeds seed, seed+1, ..., seed+n_seeds-1 it returns two rows: stage
    'uncalibrated' (the readout's own distribution on the test part) and stage = method label
    (after recalibration), each with ``metrics_fn(confidence, correct, probs=, gold=)`` (default
    ``mmcal.analysis.metrics.compute_all``), the part sizes and the fitted parameters as JSON. The spread
    over seeds measures split-to-split variability (see :func:`summarise_splits`), not the
    sampling uncertainty of one test set.
    """
    metrics_fn = metrics_fn or compute_all
    pool, mode = rows_to_fit(records_df, readout, pool_splits, allow_mixed, readout_mode)
    fit_pool = pool if fit_df is None else rows_to_fit(fit_df, readout, pool_splits, allow_mixed, mode)[0]
    out = []
    for s in range(seed, seed + n_seeds):
        split = calib_test_split(pool, frac_calib, s)
        test = pool[split.test_mask]
        calib = fit_pool[fit_pool["cluster_id"].isin(list(split.calib_clusters))]
        recal = make_recalibrator(method, readout_mode=mode, **kw)
        recal.fit(*records_to_scores(calib, mode))
        z, gold = records_to_scores(test, mode)
        sizes = {
            "seed": s,
            "n_calib": len(calib),
            "n_test": len(test),
            "n_calib_clusters": len(split.calib_clusters),
            "n_test_clusters": len(split.test_clusters),
        }
        for stage, res, params in (
            ("uncalibrated", _uncalibrated(z, mode), None),
            (
                recal.label,
                recal.transform(z),
                json.dumps(recal.to_dict()["params"], sort_keys=True),
            ),
        ):
            metrics = metrics_fn(res.confidence, res.pred == gold, probs=res.probs, gold=gold)
            out.append({**sizes, "stage": stage, "params": params, **metrics})
    return pd.DataFrame(out)


def summarise_splits(per_seed: pd.DataFrame, metrics: Sequence[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Mean, standard deviation and Student-t interval over seeds, per stage and metric.

    CI = mean +- t_{(1+level)/2, K-1} * sd / sqrt(K); with one seed the interval is NaN.
    """
    from scipy.stats import t as student_t

    skip = {"seed", "stage", "params", "n_calib", "n_test", "n_calib_clusters", "n_test_clusters"}
    metrics = (
        list(metrics)
        if metrics is not None
        else [c for c in per_seed.columns if c not in skip and pd.api.types.is_numeric_dtype(per_seed[c])]
    )
    rows = []
    for stage, group in per_seed.groupby("stage", sort=False):
        for m in metrics:
            v = group[m].to_numpy(dtype=np.float64)
            k, mean = len(v), float(np.mean(v))
            sd = float(np.std(v, ddof=1)) if k > 1 else float("nan")
            half = float(student_t.ppf((1 + level) / 2, k - 1) * sd / np.sqrt(k)) if k > 1 else float("nan")
            rows.append(
                {
                    "stage": stage,
                    "metric": m,
                    "n_seeds": k,
                    "mean": mean,
                    "sd": sd,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                }
            )
    return pd.DataFrame(rows)

"""Uncertainty and tests for the metrics: cluster bootstrap, paired comparisons, TOST, Holm.

Resampling unit. Items that share an image or source (same ``cluster_id``) are not independent,
so the bootstrap draws clusters with replacement (as many as there are clusters) and keeps every
row of a drawn cluster (Field & Welsh 2007, "Bootstrapping clustered data"). A replicate is
stored as per-row weights w_i = how often row i's cluster was drawn; ``mmcal.analysis.metrics`` evaluates
all replicates of every metric at once from a [B, n] weight matrix.

Determinism. Draws come from ``numpy.random.default_rng(seed)`` in fixed chunks of
``DRAW_CHUNK`` replicates, so the same seed and the same cluster ids give identical numbers on
every run and machine (cluster ids are sorted as strings first, so row order does not change
which clusters are drawn).

Intervals. Percentile intervals [q_{(1-level)/2}, q_{(1+level)/2}] of the replicates (Efron &
Tibshirani 1993), with replicates where a metric is undefined (e.g. AUROC of a replicate with a
single class) left out. One exception: a debiased estimator T (``ece_debiased_sq``) is unbiased
for the true value, but its bootstrap replicates T* are centred on the *plug-in* value P of the
resampled population (the bootstrap world's truth), which exceeds T by about the bias T removes.
Percentile intervals of T* would sit too high (and essentially never cover 0 for a calibrated
model). For those keys the replicates are recentred, T* - P + T: the bootstrap estimates the
distribution of T - theta by that of T* - P. Their percentile interval is
[T + q_lo(T*) - P, T + q_hi(T*) - P]. (In simulation, n = 500, B = 200, 200 repeats, this covered
the true squared ECE in 100/100/97/96 % of repeats for confidences p^g, g = 1/0.8/0.6/0.4, where
the reflected basic interval T + P - T* gave 100/96/90/92 % and the raw percentile interval
71/79/86 % for g = 1/0.8/0.6; at g = 1 it is conservative: it covered 0 in 100 % of repeats.)
``ece_debiased`` = sqrt(max(., 0)) of the recentred values (a monotone map, so its interval is
the transformed interval).

Paired comparisons (A vs B on the same items, same draws for both):

- diff = metric_B - metric_A; interval = percentile interval of the replicate differences d*.
- Two-sided p-value by inverting the percentile interval: p = min(1, 2 min(1 + #{d* <= 0},
  1 + #{d* >= 0}) / (B' + 1)), B' = finite replicates; p < alpha when 0 lies outside the
  (1 - alpha) percentile interval (up to quantile interpolation and the +1 terms, which keep
  p > 0). Resolution: p >= 2 / (B' + 1), which matters after a multiplicity correction.
- TOST equivalence with margin m (Schuirmann 1987): H0: |Delta| >= m. The one-sided bootstrap
  p-values are p_low = (1 + #{d* <= -m}) / (B' + 1) and p_high = (1 + #{d* >= m}) / (B' + 1);
  tost_p = max(p_low, p_high); equivalent when tost_p < alpha, i.e. when the (1 - 2 alpha)
  percentile interval lies inside (-m, m).
- Smooth ECE is a non-negative plug-in, biased upwards at finite n; no interval of it covers 0
  for a calibrated model. ``smece_calibration_test`` tests perfect calibration instead, by
  consistency resampling (Broecker & Smith 2007): labels redrawn as Bernoulli(confidence).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import numpy as np

from mmcal.analysis import metrics as m

DRAW_CHUNK = 100  # replicates drawn (and evaluated) per block; part of the seeded definition


# ---------------------------------------------------------------------------------------------
# Seeds and draws


def derive_seed(seed: int, *parts) -> int:
    """A 64-bit seed from ``seed`` and any labels, stable across processes (unlike ``hash``)."""
    text = "\x1f".join([str(int(seed)), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def cluster_index(cluster_ids) -> tuple[np.ndarray, int]:
    """Each row's cluster as 0..C-1 (clusters sorted by their string form) and C."""
    ids = np.asarray(cluster_ids).astype(str).reshape(-1)
    uniques, inverse = np.unique(ids, return_inverse=True)
    return inverse.reshape(-1), len(uniques)


def _cluster_draws(n_clusters: int, B: int, seed) -> Iterator[np.ndarray]:
    """Blocks of [<= DRAW_CHUNK, C] cluster indices drawn with replacement."""
    rng = np.random.default_rng(seed)
    for start in range(0, B, DRAW_CHUNK):
        yield rng.integers(0, n_clusters, size=(min(DRAW_CHUNK, B - start), n_clusters))


def _draw_weights(draws: np.ndarray, row_cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    """[b, C] drawn clusters -> [b, n] row weights (times each row's cluster was drawn)."""
    b = draws.shape[0]
    flat = (draws + n_clusters * np.arange(b)[:, None]).ravel()
    counts = np.bincount(flat, minlength=b * n_clusters).reshape(b, n_clusters)
    return counts[:, row_cluster].astype(np.float64)


def cluster_bootstrap_weights(cluster_ids, B: int, seed=0) -> Iterator[np.ndarray]:
    """Blocks of [b, n] replicate weights (see module docstring), B rows in all."""
    row_cluster, n_clusters = cluster_index(cluster_ids)
    for draws in _cluster_draws(n_clusters, B, seed):
        yield _draw_weights(draws, row_cluster, n_clusters)


def cluster_bootstrap_indices(cluster_ids, B: int, seed=0) -> list[np.ndarray]:
    """B arrays of row indices: every row of each drawn cluster, clusters in draw order.

    The same draws as ``cluster_bootstrap_weights`` with the same seed: replicate b holds row i
    exactly w_bi times.
    """
    row_cluster, n_clusters = cluster_index(cluster_ids)
    rows_sorted = np.argsort(row_cluster, kind="stable")
    sizes = np.bincount(row_cluster, minlength=n_clusters)
    starts = np.cumsum(sizes) - sizes
    out = []
    for draws in _cluster_draws(n_clusters, B, seed):
        for draw in draws:
            lengths = sizes[draw]
            offsets = np.repeat(starts[draw] - (np.cumsum(lengths) - lengths), lengths)
            out.append(rows_sorted[offsets + np.arange(lengths.sum())])
    return out


# ---------------------------------------------------------------------------------------------
# Intervals and p-values from replicates


def percentile_interval(replicates, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates; NaN if there are none."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_pvalue(diff_replicates) -> float:
    """Two-sided p-value for Delta = 0 by inverting the percentile interval (module docstring)."""
    d = np.asarray(diff_replicates, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    tail = min(1 + np.sum(d <= 0), 1 + np.sum(d >= 0))
    return float(min(1.0, 2 * tail / (d.size + 1)))


def tost_pvalue(diff_replicates, margin) -> float:
    """Bootstrap TOST p-value for |Delta| < margin; NaN without a (positive) margin."""
    d = np.asarray(diff_replicates, dtype=np.float64)
    d = d[np.isfinite(d)]
    if margin is None or not np.isfinite(margin) or margin <= 0 or d.size == 0:
        return float("nan")
    p_low = (1 + np.sum(d <= -margin)) / (d.size + 1)
    p_high = (1 + np.sum(d >= margin)) / (d.size + 1)
    return float(max(p_low, p_high))


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (monotone in the sorted order, capped at 1).

    For the m finite p-values sorted p_(1) <= ... <= p_(m):
    adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). NaN inputs stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    count = order.size
    scaled = np.minimum(1.0, (count - np.arange(count)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


# ---------------------------------------------------------------------------------------------
# Generic statistic


def bootstrap_ci(
    stat_fn: Callable[[dict], float],
    data: dict[str, np.ndarray],
    cluster_ids,
    B: int = 1000,
    seed=0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(point, lo, hi): ``stat_fn`` on ``data`` and its cluster-bootstrap percentile interval.

    ``data`` maps names to arrays with one row per item; ``stat_fn`` gets the same dict with
    the rows of one replicate. A Python loop over replicates: use ``metric_cis`` for metrics.
    """
    point = float(stat_fn(data))
    reps = [stat_fn(_take(data, idx)) for idx in cluster_bootstrap_indices(cluster_ids, B, seed)]
    lo, hi = percentile_interval(reps, level)
    return point, lo, hi


def _take(data: dict, idx: np.ndarray) -> dict:
    return {k: np.asarray(v)[idx] for k, v in data.items()}


# ---------------------------------------------------------------------------------------------
# Metrics of mmcal.analysis.metrics, vectorised over replicates


def _inputs(data: dict, cluster_ids=None) -> m.MetricInputs:
    return m.prepare(data["confidence"], data["correct"], data.get("probs"), data.get("gold"), cluster_ids=cluster_ids)


def _recentre_debiased(point: dict, reps: dict) -> dict:
    """Move replicates of debiased keys from the plug-in P onto the estimate: T* - P + T."""
    reps = dict(reps)
    for key, plugin in m.DEBIASED_PLUGIN.items():
        if key in reps:
            reps[key] = reps[key] - point[plugin] + point[key]
    if "ece_debiased_sq" in reps:
        reps["ece_debiased"] = np.sqrt(np.clip(reps["ece_debiased_sq"], 0, None))
    return reps


def _needed_keys(keys) -> list[str]:
    keys = list(keys)
    if "ece_debiased" in keys or "ece_debiased_sq" in keys:
        keys += ["ece_debiased_sq", *m.DEBIASED_PLUGIN.values()]
    return keys


def _point_and_replicates(inputs_list, cluster_ids, B, seed, keys):
    """Point values and (recentred) replicates of ``keys`` for several input sets, same draws."""
    keys = _needed_keys(keys)
    points = [m.metric_replicates(inp, np.ones((1, inp.n)), keys) for inp in inputs_list]
    blocks = [[] for _ in inputs_list]
    for w in cluster_bootstrap_weights(cluster_ids, B, seed):
        for block, inp in zip(blocks, inputs_list):
            block.append(m.metric_replicates(inp, w, keys))
    out = []
    for point, block in zip(points, blocks):
        reps = {k: np.concatenate([b[k] for b in block]) for k in point}
        point = {k: float(v[0]) for k, v in point.items()}
        out.append((point, _recentre_debiased(point, reps)))
    return out


def metric_cis(
    confidence,
    correct,
    probs=None,
    gold=None,
    cluster_ids=None,
    B: int = 1000,
    seed=0,
    level: float = 0.95,
    keys=None,
) -> dict[str, float]:
    """Point value and cluster-bootstrap interval of every ``compute_all`` metric.

    Returns ``{"n": n, key: value, key_lo: lo, key_hi: hi, ...}`` for each key of
    ``mmcal.analysis.metrics.METRIC_KEYS`` except ``n`` (or of ``keys``). ``cluster_ids=None`` treats
    every row as its own cluster.
    """
    inputs = m.prepare(confidence, correct, probs, gold, cluster_ids=cluster_ids)
    keys = [k for k in (m.METRIC_KEYS if keys is None else keys) if k != "n"]
    out: dict[str, float] = {"n": inputs.n}
    if inputs.n == 0:
        for k in keys:
            out[k] = out[f"{k}_lo"] = out[f"{k}_hi"] = float("nan")
        return out
    cluster_ids = np.arange(inputs.n) if cluster_ids is None else cluster_ids
    [(point, reps)] = _point_and_replicates([inputs], cluster_ids, B, seed, keys)
    for k in keys:
        out[k] = point[k]
        out[f"{k}_lo"], out[f"{k}_hi"] = percentile_interval(reps[k], level)
    return out


def paired_difference(
    stat,
    data_a: dict,
    data_b: dict,
    cluster_ids,
    B: int = 1000,
    seed=0,
    level: float = 0.95,
    margin: float | None = None,
) -> dict:
    """Paired cluster-bootstrap comparison of one statistic, B minus A, on the same items.

    ``stat`` is a metric name of ``mmcal.analysis.metrics`` (data dicts with ``confidence``, ``correct``
    and optionally ``probs``, ``gold``) or a function of such a dict returning a float. Row i of
    ``data_a`` and of ``data_b`` must be the same item. Returns ``value_a, value_b, diff, lo, hi,
    p_value, tost_p, equivalent`` (see the module docstring for the tests).
    """
    if callable(stat):
        value_a, value_b = float(stat(data_a)), float(stat(data_b))
        idx_list = cluster_bootstrap_indices(cluster_ids, B, seed)
        diffs = np.array([stat(_take(data_b, i)) - stat(_take(data_a, i)) for i in idx_list], dtype=float)
        return _paired_summary(value_a, value_b, diffs, level, margin)
    return paired_metric_differences(data_a, data_b, cluster_ids, [stat], B, seed, level, {stat: margin})[stat]


def paired_metric_differences(
    data_a: dict,
    data_b: dict,
    cluster_ids,
    metrics,
    B: int = 1000,
    seed=0,
    level: float = 0.95,
    margins: dict | None = None,
) -> dict[str, dict]:
    """``paired_difference`` for several metric names at once (one set of draws)."""
    inputs_a, inputs_b = _inputs(data_a, cluster_ids), _inputs(data_b, cluster_ids)
    if inputs_a.n != inputs_b.n:
        raise ValueError(f"paired data need the same rows: {inputs_a.n} vs {inputs_b.n}")
    margins = margins or {}
    if inputs_a.n == 0:
        return {k: _paired_summary(np.nan, np.nan, np.zeros(0), level, margins.get(k)) for k in metrics}
    (point_a, reps_a), (point_b, reps_b) = _point_and_replicates([inputs_a, inputs_b], cluster_ids, B, seed, metrics)
    return {k: _paired_summary(point_a[k], point_b[k], reps_b[k] - reps_a[k], level, margins.get(k)) for k in metrics}


def _paired_summary(value_a, value_b, diffs, level, margin) -> dict:
    alpha = 1 - level
    lo, hi = percentile_interval(diffs, level)
    tost_p = tost_pvalue(diffs, margin)
    return {
        "value_a": float(value_a),
        "value_b": float(value_b),
        "diff": float(value_b - value_a),
        "lo": lo,
        "hi": hi,
        "p_value": bootstrap_pvalue(diffs),
        "tost_p": tost_p,
        "margin": float("nan") if margin is None else float(margin),
        "equivalent": bool(np.isfinite(tost_p) and tost_p < alpha),
    }


# ---------------------------------------------------------------------------------------------
# Calibration test for the smooth ECE


def smece_calibration_test(confidence, correct, B: int = 1000, seed=0) -> dict[str, float]:
    """Consistency-resampling test of perfect calibration with the smooth ECE as statistic.

    Under H0 (P(correct | c) = c) labels are redrawn y*_i ~ Bernoulli(c_i), B times, keeping the
    confidences; p = (1 + #{smECE* >= smECE}) / (B + 1). Rows are treated as independent under
    H0 (labels of items sharing an image may be correlated, which makes the test liberal).
    Returns ``{"smece": observed, "p_value": p}``.
    """
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    observed = m.smooth_ece(c, np.asarray(correct, dtype=np.float64))
    if c.size == 0:
        return {"smece": float("nan"), "p_value": float("nan")}
    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, B, DRAW_CHUNK):
        labels = rng.random((min(DRAW_CHUNK, B - start), c.size)) < c
        null = m.smooth_ece(c, labels.astype(np.float64), np.ones((1, c.size)))
        exceed += int(np.sum(null >= observed - 1e-12))
    return {"smece": observed, "p_value": (1 + exceed) / (B + 1)}

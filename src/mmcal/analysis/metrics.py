"""Top-label calibration, proper-score and selective-prediction metrics, from arrays.

Inputs (one row per scored item; n rows):

- ``confidence`` c_i in [0, 1]: probability of the predicted option under the readout. For the
  full-vocabulary readout this is the *unnormalised* probability of the predicted letter (the
  reference study's definition), so it can be well below 1/K and even exactly 0.
- ``correct`` y_i in {0, 1}: whether the predicted option is the gold one.
- ``probs`` p_ik (optional, [n, K]): per-option probabilities. Rows may sum to less than 1 (the
  full-vocabulary readout). The proper scores (``brier``, ``nll``) and ``mean_entropy`` use the
  row-renormalised distribution p~_ik = p_ik / sum_k p_ik, because a proper score is only defined
  for a distribution over the options; the top-label metrics use ``confidence`` as given.
- ``gold`` g_i (optional, [n] int; -1 = unknown): rows with unknown gold are left out of
  ``brier`` and ``nll`` (which need the gold option) and kept in everything else.

Rows that could not be scored (records with ``status != "ok"``, NaN confidence) must be dropped
by the caller; a NaN confidence raises ``ValueError`` instead of silently biasing a metric.

Every metric is computed from per-row weights ``w`` of shape [B, n]: the point estimate uses
w = 1, and a cluster-bootstrap replicate uses w_i = how often row i's cluster was drawn. So all B
replicates are evaluated with a few matrix operations instead of B Python calls (see
``metric_replicates``; :mod:`mmcal.analysis.stats` builds the weights). A weighted metric with integer
weights equals the metric of the data set with row i repeated w_i times.

Metric definitions (W = sum_i w_i, which is n for the point estimate):

- ``accuracy`` = mean y; ``mean_confidence`` = mean c; ``overconfidence`` = mean c - mean y.
- ``ece_M`` (equal-width, M bins): sum_b |B_b|/n * |acc_b - conf_b| = (1/n) sum_b |sum_{i in b}
  (y_i - c_i)|, bin b = (b/M, (b+1)/M] with c = 0 put in the first bin. Empty bins add nothing.
- ``mce_10``: max over non-empty equal-width bins of |acc_b - conf_b|.
- ``ece_adaptive_15``: the same sum over 15 equal-mass bins (rows sorted by confidence, row i
  goes to bin floor(15 * (rows before i + w_i/2) / W); ties keep input order).
- ``ece_debiased_sq``: Kumar, Liang & Ma (2019, "Verified uncertainty calibration") debiased
  estimator of the squared (L2) ECE over the same 15 equal-mass bins:
  sum_b (n_b/n) [ (cbar_b - ybar_b)^2 - ybar_b (1 - ybar_b) / (n_b - 1) ].
  The subtracted term is the unbiased estimate of Var(ybar_b), which inflates the plug-in
  (cbar - ybar)^2 in expectation; bins with n_b = 1 get no correction. It can be negative.
  ``ece_debiased`` = sqrt(max(ece_debiased_sq, 0)), on the ECE scale.
- ``smece``: smooth ECE of Blasiok & Nakkiran (2024, "Smooth ECE: principled reliability
  diagrams via kernel smoothing"): smECE_s = int_0^1 |(1/n) sum_i K_s(t, c_i)(y_i - c_i)| dt with
  the reflected Gaussian kernel K_s(t, c) = sum_{k in Z} phi_s(t - c - 2k) + phi_s(t + c - 2k),
  and smECE = s* where s* solves smECE_{s*} = s* (smECE_s decreases in s, so s* is unique).
  See ``smooth_ece`` for the discretisation (FFT-based, no BLAS calls).
- ``brier`` (multi-class, if probs given): mean_i sum_k (p~_ik - 1[k = g_i])^2, range [0, 2];
  without probs it equals ``brier_top``. ``brier_top`` (top-label): mean (c_i - y_i)^2.
- ``nll``: -mean log max(p~_{i g_i}, 1e-12).
- ``auroc``: P(c_i > c_j | y_i = 1, y_j = 0) + P(c_i = c_j)/2; NaN when one class is absent.
- ``aurc`` (Geifman, Uziel & El-Yaniv 2019): mean over coverage of the selective risk. Rows are
  accepted from the most confident down; with no ties aurc = (1/n) sum_k E_k / k, E_k = errors
  among the k most confident. Tied rows can only be accepted together (a threshold cannot split
  them), so each row of a tie group gets the risk of accepting the whole group.
- ``augrc`` (Traub et al. 2024, "Overcoming common flaws in the evaluation of selective
  classification systems"): area under the generalised risk (errors accepted / n) vs coverage
  curve through (0, 0) and the points of every distinct threshold, trapezoid rule =
  (1/n^2) sum_{i wrong} sum_j [1(c_j < c_i) + 1(c_j = c_i)/2]
  = (1 - auroc) acc (1 - acc) + (1 - acc)^2 / 2 when both classes are present.
- ``acc_at_cov_X``: accuracy of the most confident fraction X of the rows. When X n is not a
  whole number or cuts through a tie group, the boundary row or tie group counts fractionally
  (the expected accuracy under random tie-breaking), so the metric is deterministic.
- ``mean_entropy``: mean of -sum_k p~_ik log p~_ik (nats), if probs given.

Metrics other benchmarks report, with their definitions (checked against their code in tests):

- ``helm_ece_10``: HELM's ``ece_10_bin``, the equal-mass ECE of the ``uncertainty-calibration``
  package (``get_ece_em(confidence, correct, num_bins=10)``): the sorted confidences are cut into
  M = min(10, n) runs of sizes ceil/floor(n/M) (``np.array_split``: the longer runs first), each
  inner bin edge is the midpoint between the last value of a run and the first of the next, a row
  goes to the bin of ``searchsorted(edges, c, side="left")`` (a value equal to an edge goes
  below it, so tied rows share a bin), and ECE = (1/n) sum_b |sum_{i in b} (c_i - y_i)|.
- ``helm_acc_at_cov_10``: HELM's ``selective_acc@10`` (``get_selective_stats``): accuracy of the
  floor(0.1 n) + 1 most confident rows. A tie group cut by that count counts fractionally (the
  expected accuracy under random tie-breaking); HELM's unstable sort picks one arbitrary order,
  so the two agree exactly when the cut does not fall inside a tie group.
- ``conformal_{lac,aps}_{coverage,set_size}``: split conformal prediction sets at
  alpha = ``CONFORMAL_ALPHA`` (0.1) as LLM-Uncertainty-Bench computes them (Ye et al. 2024,
  ``uncertainty_quantification_via_cp.py``): the rows are split by cluster into a calibration and
  a test half (``conformal_calib_mask``: a keyed hash of the cluster id and ``CONFORMAL_SEED``,
  half the clusters each side); with the calibration rows' scores s_i (LAC: 1 - p~_{i,g_i}; APS:
  the sum of p~_ik over the options at least as likely as the gold one, in the order of a stable
  ascending sort reversed, gold included), n their number and q = ceil((n + 1)(1 - alpha)) / n,
  the threshold is numpy's ``quantile(s, q, method="higher")`` (q capped at 1); a test row's LAC
  set holds the options with p~_k >= 1 - qhat (empty: the most likely option), its APS set the
  options in that order while their running sum stays <= qhat (at least the first). Coverage =
  share of test rows whose set holds the gold option; set size = mean number of options in the
  set. Rows with unknown gold take no part; options with probability exactly 0 (padding of items
  with fewer options) never enter a set. ``conformal_sets(..., rule="split")`` gives the
  textbook split-conformal rule instead (qhat = the ceil((n + 1)(1 - alpha))-th smallest score,
  infinite when that exceeds n; empty sets allowed), the rule of MAPIE and crepes.
  Under bootstrap weights the calibration and test halves keep their clusters and the quantile is
  taken over the calibration rows repeated w_i times.

With n = 0 every metric is NaN and ``n`` is 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp

ECE_BINS = (10, 15)
MCE_BINS = 10
MASS_BINS = 15
COVERAGES = (0.5, 0.8, 0.9)
PROB_FLOOR = 1e-12
SMECE_GRID_POINTS = 257  # nodes on [0, 1], spacing 1/256; the mirrored period has 512 points
SMECE_SIGMAS = np.geomspace(1e-4, 1.0, 193)  # bandwidth grid for the fixed-point search

HELM_BINS = 10  # HELM's ece_10_bin
HELM_COVERAGE = 0.1  # HELM's selective_acc@10
CONFORMAL_ALPHA = 0.1  # LLM-Uncertainty-Bench's error rate
CONFORMAL_CALIB_FRACTION = 0.5  # LLM-Uncertainty-Bench's cal_ratio (here: of clusters)
CONFORMAL_SEED = 0
CONFORMAL_SCORES = ("lac", "aps")
CONFORMAL_RULES = ("llm-uncertainty-bench", "split")
CONFORMAL_KEYS = tuple(f"conformal_{s}_{q}" for s in CONFORMAL_SCORES for q in ("coverage", "set_size"))

# Replicates of this key are centred on the plug-in value named here (see mmcal.analysis.stats).
DEBIASED_PLUGIN = {"ece_debiased_sq": "_ece_sq_plugin_15"}


def metric_keys(n_bins_list=ECE_BINS) -> tuple[str, ...]:
    """The keys ``compute_all`` returns, in order."""
    return (
        "n",
        "accuracy",
        "mean_confidence",
        "overconfidence",
        *(f"ece_{m}" for m in n_bins_list),
        "ece_adaptive_15",
        "ece_debiased",
        "ece_debiased_sq",
        "smece",
        "mce_10",
        "brier",
        "brier_top",
        "nll",
        "auroc",
        "aurc",
        "augrc",
        *(f"acc_at_cov_{round(100 * x)}" for x in COVERAGES),
        "mean_entropy",
        "helm_ece_10",
        "helm_acc_at_cov_10",
        *CONFORMAL_KEYS,
    )


METRIC_KEYS = metric_keys()


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class MetricInputs:
    """Validated arrays plus everything that depends on the data but not on the weights."""

    confidence: np.ndarray  # [n] float64
    correct: np.ndarray  # [n] float64 in {0, 1}
    brier_item: np.ndarray  # [n] multi-class (or top-label) Brier per row; 0 where gold unknown
    nll_item: np.ndarray  # [n] -log p~(gold); 0 where gold unknown
    gold_known: np.ndarray  # [n] float64 in {0, 1}: rows that enter brier and nll
    entropy_item: np.ndarray  # [n]
    has_probs: bool
    order: np.ndarray  # rows sorted by confidence, ascending, stable
    tie_starts: np.ndarray  # start of each group of equal confidence in ``order``
    n_bins_list: tuple[int, ...]
    conformal: dict | None = None  # per score: ConformalScore (None without probs)

    @property
    def n(self) -> int:
        return int(self.confidence.shape[0])


def prepare(confidence, correct, probs=None, gold=None, n_bins_list=ECE_BINS, cluster_ids=None) -> MetricInputs:
    """Validate the arrays and precompute the weight-independent parts of every metric.

    ``cluster_ids`` (one per row; None: every row its own cluster) choose the conformal metrics'
    calibration/test halves (``conformal_calib_mask``)."""
    confidence = _as_confidence(confidence)
    n = confidence.shape[0]
    correct = np.asarray(correct).astype(bool).reshape(-1).astype(np.float64)
    if correct.shape[0] != n:
        raise ValueError(f"correct has {correct.shape[0]} rows, confidence has {n}")
    brier_top_item = (confidence - correct) ** 2
    if probs is None:
        brier_item, nll_item = brier_top_item, np.zeros(n)
        gold_known, entropy_item = np.ones(n), np.full(n, np.nan)
    else:
        brier_item, nll_item, gold_known, entropy_item = _proper_scores(probs, gold, n)
    order = np.argsort(confidence, kind="stable")
    sorted_conf = confidence[order]
    tie_starts = np.flatnonzero(np.r_[True, sorted_conf[1:] != sorted_conf[:-1]]) if n else np.zeros(0, int)
    return MetricInputs(
        confidence=confidence,
        correct=correct,
        brier_item=brier_item,
        nll_item=nll_item,
        gold_known=gold_known,
        entropy_item=entropy_item,
        has_probs=probs is not None,
        order=order,
        tie_starts=tie_starts,
        n_bins_list=tuple(int(m) for m in n_bins_list),
        conformal=None if probs is None else _conformal_inputs(probs, gold, cluster_ids, n),
    )


def _as_confidence(confidence) -> np.ndarray:
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if np.isnan(c).any():
        raise ValueError("confidence contains NaN: drop unscorable rows before computing metrics")
    if c.size and (c.min() < -1e-9 or c.max() > 1 + 1e-9):
        raise ValueError(f"confidence must lie in [0, 1], got range [{c.min()}, {c.max()}]")
    return np.clip(c, 0.0, 1.0)


def _renormalised(probs, n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"probs must have shape [n={n}, K], got {p.shape}")
    if (p < 0).any() or np.isnan(p).any():
        raise ValueError("probs must be non-negative and not NaN")
    total = p.sum(axis=1, keepdims=True)
    if n and (total <= 0).any():
        raise ValueError("every probs row needs positive mass")
    return p / total


def _proper_scores(probs, gold, n: int):
    """Per-row multi-class Brier, NLL and entropy of the renormalised option distribution."""
    if gold is None:
        raise ValueError("probs need gold (use -1 for unknown) to compute brier and nll")
    p = _renormalised(probs, n)
    gold = np.asarray(gold).astype(np.int64).reshape(-1)
    if gold.shape[0] != n:
        raise ValueError(f"gold has {gold.shape[0]} rows, confidence has {n}")
    if (gold >= p.shape[1]).any():
        raise ValueError(f"gold index out of range for K={p.shape[1]} options")
    known = gold >= 0
    safe_gold = np.where(known, gold, 0)
    onehot = np.zeros_like(p)
    onehot[np.arange(n), safe_gold] = 1.0
    brier = np.where(known, ((p - onehot) ** 2).sum(axis=1), 0.0)
    p_gold = p[np.arange(n), safe_gold]
    nll = np.where(known, -np.log(np.maximum(p_gold, PROB_FLOOR)), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return brier, nll, known.astype(np.float64), entropy


# ---------------------------------------------------------------------------------------------
# Entry points


def compute_all(confidence, correct, probs=None, gold=None, n_bins_list=ECE_BINS, cluster_ids=None) -> dict[str, float]:
    """All metrics of one set of rows, as ``{key: float}`` with the keys of ``metric_keys``."""
    inputs = prepare(confidence, correct, probs, gold, n_bins_list, cluster_ids)
    keys = metric_keys(inputs.n_bins_list)
    if inputs.n == 0:
        return {k: (0 if k == "n" else float("nan")) for k in keys}
    values = metric_replicates(inputs, np.ones((1, inputs.n)))
    out = {k: float(values[k][0]) for k in keys}
    out["n"] = inputs.n
    return out


def metric_replicates(inputs: MetricInputs, weights: np.ndarray, keys=None) -> dict[str, np.ndarray]:
    """Every metric for each row of ``weights`` ([B, n]); returns ``{key: array[B]}``.

    ``keys`` limits the work to the metric families those keys need. The result also holds
    internal keys starting with ``_`` (plug-in companions of debiased estimators).
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != inputs.n:
        raise ValueError(f"weights have {w.shape[1]} columns, inputs have {inputs.n} rows")
    wanted = set(metric_keys(inputs.n_bins_list) if keys is None else keys)
    width_keys = {f"ece_{m}" for m in inputs.n_bins_list} | {f"mce_{MCE_BINS}"}
    families = (
        (_MEAN_KEYS, _weighted_means),
        (width_keys, _equal_width_family),
        (_MASS_KEYS, _equal_mass_family),
        (_RANK_KEYS, _ranking_family),
        ({"smece"}, _smece_family),
        ({"helm_ece_10"}, _helm_ece_family),
        (set(CONFORMAL_KEYS), _conformal_family),
    )
    out: dict[str, np.ndarray] = {}
    for family_keys, family in families:
        if wanted & family_keys:
            out.update(family(inputs, w))
    return out


_MEAN_KEYS = {
    "n",
    "accuracy",
    "mean_confidence",
    "overconfidence",
    "brier",
    "brier_top",
    "nll",
    "mean_entropy",
}
_MASS_KEYS = {"ece_adaptive_15", "ece_debiased", "ece_debiased_sq", "_ece_sq_plugin_15"}
_RANK_KEYS = {"auroc", "aurc", "augrc", "helm_acc_at_cov_10", *(f"acc_at_cov_{round(100 * x)}" for x in COVERAGES)}


def _ratio(num, den):
    """num / den, NaN where den == 0 (an empty set of rows has no mean)."""
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


# ---------------------------------------------------------------------------------------------
# Families of metrics sharing intermediate sums


def _weighted_means(inputs: MetricInputs, w: np.ndarray) -> dict[str, np.ndarray]:
    known = inputs.gold_known
    columns = np.column_stack(
        [
            np.ones(inputs.n),
            inputs.correct,
            inputs.confidence,
            (inputs.confidence - inputs.correct) ** 2,
            inputs.brier_item * known,
            inputs.nll_item * known,
            known,
            np.nan_to_num(inputs.entropy_item),
        ]
    )
    s = w @ columns
    total = s[:, 0]
    acc, conf = _ratio(s[:, 1], total), _ratio(s[:, 2], total)
    brier_top = _ratio(s[:, 3], total)
    out = {
        "n": total,
        "accuracy": acc,
        "mean_confidence": conf,
        "overconfidence": conf - acc,
        "brier_top": brier_top,
        "brier": _ratio(s[:, 4], s[:, 6]) if inputs.has_probs else brier_top,
        "nll": _ratio(s[:, 5], s[:, 6]) if inputs.has_probs else np.full(len(w), np.nan),
        "mean_entropy": _ratio(s[:, 7], total) if inputs.has_probs else np.full(len(w), np.nan),
    }
    return out


def equal_width_bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence for bins (b/M, (b+1)/M], b = 0..M-1; confidence 0 goes to bin 0.

    The edges are the correctly rounded doubles b/M, so e.g. 0.3 is in (0.2, 0.3] for M = 10.
    """
    edges = np.arange(n_bins + 1) / n_bins
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def _equal_width_family(inputs: MetricInputs, w: np.ndarray) -> dict[str, np.ndarray]:
    bin_sets = sorted(set(inputs.n_bins_list) | {MCE_BINS})
    residual = inputs.correct - inputs.confidence
    blocks, slices, start = [], {}, 0
    for m in bin_sets:
        onehot = np.zeros((inputs.n, m))
        onehot[np.arange(inputs.n), equal_width_bin_index(inputs.confidence, m)] = 1.0
        blocks += [onehot, onehot * residual[:, None]]
        slices[m] = (start, start + m, start + 2 * m)
        start += 2 * m
    sums = w @ np.hstack(blocks)  # one matrix product gives every bin's count and residual sum
    total = w.sum(axis=1)
    out = {}
    for m, (a, b, c) in slices.items():
        counts, gaps = sums[:, a:b], sums[:, b:c]
        if m in inputs.n_bins_list:
            out[f"ece_{m}"] = _ratio(np.abs(gaps).sum(axis=1), total)
        if m == MCE_BINS:
            bin_gap = np.where(counts > 0, np.abs(_ratio(gaps, counts)), -np.inf)
            mce = bin_gap.max(axis=1)
            out["mce_10"] = np.where(np.isfinite(mce), mce, np.nan)
    return out


def equal_mass_bin_sums(confidence, correct, w_sorted: np.ndarray, n_bins: int):
    """Per-bin (count, sum of confidence, sum of correct) for equal-mass bins, per weight row.

    ``confidence``/``correct`` are sorted by confidence and ``w_sorted`` ([B, n]) follows that
    order. Row i goes to bin floor(M * (weight before i + w_i / 2) / W): with unit weights the
    sorted rows are cut into M runs of (nearly) equal length.
    """
    n_rep = w_sorted.shape[0]
    cum = np.cumsum(w_sorted, axis=1)
    total = cum[:, -1:]
    position = _ratio(cum - 0.5 * w_sorted, total)
    bins = np.minimum((np.nan_to_num(position) * n_bins).astype(np.int64), n_bins - 1)
    flat = (bins + n_bins * np.arange(n_rep)[:, None]).ravel()
    size = n_rep * n_bins

    def per_bin(values):
        return np.bincount(flat, weights=values.ravel(), minlength=size).reshape(n_rep, n_bins)

    return per_bin(w_sorted), per_bin(w_sorted * confidence), per_bin(w_sorted * correct)


def _equal_mass_family(inputs: MetricInputs, w: np.ndarray) -> dict[str, np.ndarray]:
    order = inputs.order
    counts, conf_sum, corr_sum = equal_mass_bin_sums(
        inputs.confidence[order], inputs.correct[order], w[:, order], MASS_BINS
    )
    total = counts.sum(axis=1)
    ybar = _ratio(corr_sum, counts)
    # Var(ybar_b) estimate; undefined for a single row, which then gets no correction.
    variance = np.where(counts > 1, np.nan_to_num(ybar * (1 - ybar)) * counts / np.maximum(counts - 1, 1), 0.0)
    plugin_sq = _ratio((np.nan_to_num(_ratio((conf_sum - corr_sum) ** 2, counts))).sum(axis=1), total)
    debiased_sq = plugin_sq - _ratio(variance.sum(axis=1), total)
    return {
        "ece_adaptive_15": _ratio(np.abs(conf_sum - corr_sum).sum(axis=1), total),
        "ece_debiased_sq": debiased_sq,
        "ece_debiased": np.sqrt(np.clip(debiased_sq, 0, None)),
        "_ece_sq_plugin_15": plugin_sq,
    }


def _ranking_family(inputs: MetricInputs, w: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC, AURC, AUGRC and accuracy at coverage from per-tie-group weighted sums."""
    ws = w[:, inputs.order]
    group_w = np.add.reduceat(ws, inputs.tie_starts, axis=1)  # ascending confidence
    group_pos = np.add.reduceat(ws * inputs.correct[inputs.order], inputs.tie_starts, axis=1)
    group_neg = group_w - group_pos
    total, pos = group_w.sum(axis=1), group_pos.sum(axis=1)
    neg = total - pos
    below_all = np.cumsum(group_w, axis=1) - group_w
    below_neg = np.cumsum(group_neg, axis=1) - group_neg
    wins = (group_pos * (below_neg + 0.5 * group_neg)).sum(axis=1)
    out = {
        "auroc": _ratio(wins, pos * neg),
        "augrc": _ratio((group_neg * (below_all + 0.5 * group_w)).sum(axis=1), total**2),
    }
    # Accepting every row at or above a group's confidence:
    accepted = total[:, None] - below_all
    accepted_errors = neg[:, None] - below_neg
    risk = np.nan_to_num(_ratio(accepted_errors, accepted))
    out["aurc"] = _ratio((group_w * risk).sum(axis=1), total)
    out.update(_accuracy_at_coverage(group_w[:, ::-1], group_pos[:, ::-1], total))
    return out


def _accuracy_at_coverage(group_w, group_pos, total) -> dict[str, np.ndarray]:
    """Accuracy of the top X of the weight; groups in descending confidence order."""
    out = {f"acc_at_cov_{round(100 * x)}": _top_accuracy(group_w, group_pos, x * total) for x in COVERAGES}
    # HELM counts rows: the floor(0.1 n) + 1 most confident (uncertainty-calibration's accs[int(0.1 n)])
    out["helm_acc_at_cov_10"] = _top_accuracy(group_w, group_pos, np.floor(HELM_COVERAGE * total) + 1)
    return out


def _top_accuracy(group_w, group_pos, mass) -> np.ndarray:
    """Accuracy of the ``mass`` most confident rows (per weight row); the tie group at the cut
    counts fractionally. Groups in descending confidence order."""
    cum_w, cum_pos = np.cumsum(group_w, axis=1), np.cumsum(group_pos, axis=1)
    k = np.minimum((cum_w < mass[:, None]).sum(axis=1), group_w.shape[1] - 1)[:, None]
    before_w = np.take_along_axis(cum_w - group_w, k, axis=1)[:, 0]
    before_pos = np.take_along_axis(cum_pos - group_pos, k, axis=1)[:, 0]
    boundary_w = np.take_along_axis(group_w, k, axis=1)[:, 0]
    boundary_pos = np.take_along_axis(group_pos, k, axis=1)[:, 0]
    fraction = np.nan_to_num(_ratio(mass - before_w, boundary_w))
    return _ratio(before_pos + fraction * boundary_pos, mass)


# ---------------------------------------------------------------------------------------------
# HELM's equal-mass ECE (uncertainty-calibration's get_ece_em)


def _helm_ece_family(inputs: MetricInputs, w: np.ndarray) -> dict[str, np.ndarray]:
    """Per weight row: bins from the runs of the rows repeated w_i times (module docstring)."""
    c, y = inputs.confidence[inputs.order], inputs.correct[inputs.order]
    ws = w[:, inputs.order]
    cum = np.cumsum(ws, axis=1)
    total = cum[:, -1] if inputs.n else np.zeros(len(w))
    n_runs = np.minimum(HELM_BINS, total)
    safe = np.maximum(n_runs, 1)
    size, longer = total // safe, total % safe  # array_split: the first `longer` runs have size + 1
    edges = np.ones((len(w), HELM_BINS - 1))  # 1.0: no edge (fewer than 10 runs); no row lies above it
    for i in range(HELM_BINS - 1):
        first_of_next = (i + 1) * size + np.minimum(i + 1, longer)  # position in the repeated sorted rows
        mid = (_value_at(c, cum, first_of_next - 1) + _value_at(c, cum, first_of_next)) / 2.0
        edges[:, i] = np.where(i < n_runs - 1, mid, 1.0)
    bins = (edges[:, :, None] < c[None, None, :]).sum(axis=1)  # searchsorted(edges, c, side="left")
    flat = (bins + HELM_BINS * np.arange(len(w))[:, None]).ravel()
    gaps = np.bincount(flat, weights=(ws * (c - y)).ravel(), minlength=len(w) * HELM_BINS)
    return {"helm_ece_10": _ratio(np.abs(gaps.reshape(len(w), HELM_BINS)).sum(axis=1), total)}


def _value_at(sorted_values: np.ndarray, cum: np.ndarray, position: np.ndarray) -> np.ndarray:
    """The value at 0-based ``position`` of the sorted rows repeated by their weights (``cum``:
    cumulative weights per weight row)."""
    index = (cum <= position[:, None]).sum(axis=1)
    return sorted_values[np.minimum(index, len(sorted_values) - 1)]


# ---------------------------------------------------------------------------------------------
# Conformal prediction sets (LLM-Uncertainty-Bench's LAC and APS; the textbook split rule)


@dataclass(frozen=True)
class ConformalScore:
    """One score function's weight-independent parts: calibration rows sorted by score, and per test
    row and option the value compared with the threshold (NaN: not an option)."""

    calib_rows: np.ndarray  # calibration rows (known gold), ascending by score, stable
    calib_sorted: np.ndarray  # their scores, ascending
    test_rows: np.ndarray  # test rows (known gold)
    values: np.ndarray  # [m, K]: an option is in a test row's set when its value <= the threshold
    gold_col: np.ndarray  # [m] the gold option's column
    fallback_is_gold: np.ndarray  # [m] the set of an empty rule is the top option: is that gold?
    shift: float  # threshold = qhat + shift (LAC: p >= 1 - qhat  <=>  -p <= qhat - 1)


def cluster_rank_key(cluster_id: str, seed: int) -> tuple[int, str]:
    """The order of a cluster in a seeded cluster-level split: a keyed hash of (seed, id), so it
    never depends on the row order or on which other clusters are present."""
    digest = hashlib.blake2b(f"{seed}\x1f{cluster_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big"), cluster_id


def conformal_calib_mask(cluster_ids, fraction: float = CONFORMAL_CALIB_FRACTION, seed: int = CONFORMAL_SEED):
    """Rows of the conformal calibration half: the first round(fraction * clusters) clusters in
    ``cluster_rank_key`` order (at least one cluster each side; all False with one cluster)."""
    ids = np.asarray([str(c) for c in cluster_ids], dtype=object)
    clusters = sorted(set(ids.tolist()), key=lambda c: cluster_rank_key(c, seed))
    if len(clusters) < 2:
        return np.zeros(len(ids), dtype=bool)
    n_calib = min(max(int(np.floor(fraction * len(clusters) + 0.5)), 1), len(clusters) - 1)
    return np.isin(ids, clusters[:n_calib])


def _conformal_inputs(probs, gold, cluster_ids, n: int) -> dict[str, ConformalScore] | None:
    if gold is None:
        return None
    p = _renormalised(probs, n)
    gold = np.asarray(gold).astype(np.int64).reshape(-1)
    ids = np.arange(n) if cluster_ids is None else np.asarray(cluster_ids).reshape(-1)
    if len(ids) != n:
        raise ValueError(f"cluster_ids has {len(ids)} rows, confidence has {n}")
    calib = conformal_calib_mask(ids)
    return {score: conformal_score(p, gold, calib, score) for score in CONFORMAL_SCORES}


def conformal_score(p: np.ndarray, gold: np.ndarray, calib: np.ndarray, score: str) -> ConformalScore:
    """Calibration scores and test-set values of ``score`` (lac | aps) for option probabilities
    ``p`` ([n, K], rows summing to 1), ``gold`` ([n], -1 unknown) and the calibration mask."""
    if score not in CONFORMAL_SCORES:
        raise ValueError(f"conformal score must be one of {CONFORMAL_SCORES}, got {score!r}")
    n, k = p.shape
    known = gold >= 0
    rows = np.arange(n)
    safe_gold = np.where(known, gold, 0)
    option = p > 0  # exactly 0: padding of a row with fewer options
    if score == "lac":
        values = np.where(option, -p, np.nan)
        per_row = 1 - p[rows, safe_gold]  # LAC's score: 1 - p(gold)
        top = np.argmax(p, axis=1)
        shift = -1.0
    else:
        order = np.argsort(p, axis=1, kind="stable")[:, ::-1]  # descending; ties: later option first
        running = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
        values = np.empty_like(p)
        np.put_along_axis(values, order, running, axis=1)  # each option's running sum, in option order
        values = np.where(option, values, np.nan)
        per_row = values[rows, safe_gold]
        top = order[:, 0]
        shift = 0.0
    calib_rows = rows[calib & known]
    sorted_idx = np.argsort(per_row[calib_rows], kind="stable")
    test_rows = rows[~calib & known]
    return ConformalScore(
        calib_rows=calib_rows[sorted_idx],
        calib_sorted=per_row[calib_rows][sorted_idx],
        test_rows=test_rows,
        values=values[test_rows].reshape(len(test_rows), k),
        gold_col=gold[test_rows],
        fallback_is_gold=top[test_rows] == gold[test_rows],
        shift=shift,
    )


def conformal_thresholds(score: ConformalScore, w: np.ndarray, alpha: float, rule: str) -> np.ndarray:
    """qhat per weight row from the calibration rows repeated w_i times (NaN without any)."""
    if rule not in CONFORMAL_RULES:
        raise ValueError(f"conformal rule must be one of {CONFORMAL_RULES}, got {rule!r}")
    if not len(score.calib_rows):
        return np.full(len(w), np.nan)
    cum = np.cumsum(w[:, score.calib_rows], axis=1)
    total = cum[:, -1]
    rank = np.ceil((total + 1) * (1 - alpha))  # the ceil((n + 1)(1 - alpha))-th smallest score
    with np.errstate(divide="ignore", invalid="ignore"):
        if rule == "split":
            position = rank - 1
        else:  # numpy's quantile(s, min(rank / n, 1), method="higher"): index ceil((n - 1) q)
            position = np.ceil((total - 1) * np.minimum(rank / total, 1.0))
    index = np.minimum((cum <= position[:, None]).sum(axis=1), len(score.calib_rows) - 1)
    qhat = score.calib_sorted[index]
    if rule == "split":
        qhat = np.where(rank > total, np.inf, qhat)  # fewer scores than the rank: every option
    return np.where(total > 0, qhat, np.nan)


def conformal_sets(score: ConformalScore, qhat: np.ndarray, rule: str) -> np.ndarray:
    """[B, m, K] membership of each test row's options in its set, one threshold per weight row."""
    thr = np.asarray(qhat, dtype=np.float64).reshape(-1) + score.shift
    with np.errstate(invalid="ignore"):
        member = score.values[None, :, :] <= thr[:, None, None]
    if rule == "llm-uncertainty-bench" and member.size:  # an empty set becomes the top option
        b_idx, m_idx = np.nonzero(~member.any(axis=2) & np.isfinite(thr)[:, None])
        member[b_idx, m_idx, _fallback_columns(score)[m_idx]] = True
    return member


def _fallback_columns(score: ConformalScore) -> np.ndarray:
    """The top option of each test row: LAC the largest p (the first of ties, as np.argmax), APS the
    first of its order (the smallest running sum)."""
    return np.argmin(np.where(np.isnan(score.values), np.inf, score.values), axis=1)


def _coverage_and_size(score: ConformalScore, w: np.ndarray, alpha: float, rule: str):
    """Weighted coverage and mean set size over the test rows, per weight row."""
    qhat = conformal_thresholds(score, w, alpha, rule)
    member = conformal_sets(score, qhat, rule)
    wt = w[:, score.test_rows]
    covered = member[:, np.arange(len(score.test_rows)), score.gold_col] if len(score.test_rows) else member[..., 0]
    total = wt.sum(axis=1)
    ok = ~np.isnan(qhat)  # no calibration row: no threshold
    coverage = np.where(ok, _ratio((wt * covered).sum(axis=1), total), np.nan)
    size = np.where(ok, _ratio((wt * member.sum(axis=2)).sum(axis=1), total), np.nan)
    return coverage, size


def _conformal_family(inputs: MetricInputs, w: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name in CONFORMAL_SCORES:
        if inputs.conformal is None:
            coverage = size = np.full(len(w), np.nan)
        else:
            coverage, size = _coverage_and_size(inputs.conformal[name], w, CONFORMAL_ALPHA, CONFORMAL_RULES[0])
        out[f"conformal_{name}_coverage"], out[f"conformal_{name}_set_size"] = coverage, size
    return out


def conformal_prediction(
    probs, gold, calib_mask, alpha: float = CONFORMAL_ALPHA, score: str = "lac", rule: str = CONFORMAL_RULES[0]
) -> dict:
    """Split conformal prediction sets on plain arrays: calibrate on the rows of ``calib_mask``, predict
    the others (rows with gold -1 take no part). Returns ``qhat``, ``test_rows``, ``sets`` ([m, K]
    bool), ``coverage`` and ``set_size`` (the summary's conformal metrics with ``rule`` and
    ``alpha`` as given; see the module docstring)."""
    p = _renormalised(probs, np.asarray(probs).shape[0])
    cs = conformal_score(p, np.asarray(gold).astype(np.int64), np.asarray(calib_mask, dtype=bool), score)
    ones = np.ones((1, p.shape[0]))
    qhat = conformal_thresholds(cs, ones, alpha, rule)
    coverage, size = _coverage_and_size(cs, ones, alpha, rule)
    return {
        "qhat": float(qhat[0]),
        "test_rows": cs.test_rows,
        "sets": conformal_sets(cs, qhat, rule)[0],
        "coverage": float(coverage[0]),
        "set_size": float(size[0]),
    }


# ---------------------------------------------------------------------------------------------
# Smooth ECE


def _smece_family(inputs: MetricInputs, w: np.ndarray) -> dict[str, np.ndarray]:
    return {"smece": smooth_ece(inputs.confidence, inputs.correct, w)}


def smooth_ece(confidence, correct, weights=None):
    """Smooth ECE (Blasiok & Nakkiran 2024) of top-label confidences; float or array[B].

    ``correct`` may be [n] or [B, n] (e.g. labels simulated under perfect calibration) and
    ``weights`` None, [n] or [B, n]; any 2-D input makes the result an array over its rows.

    Definition: smECE_s = int_0^1 |(1/W) sum_i w_i K_s(t, c_i) (y_i - c_i)| dt with the reflected
    Gaussian kernel K_s(t, c) = sum_k phi_s(t - c - 2k) + phi_s(t + c - 2k) (mass 1 on [0, 1] for
    every c), and smECE = s*, the fixed point smECE_{s*} = s*.

    Discretisation: each residual w_i (y_i - c_i) is split linearly between the two nearest of
    257 equally spaced nodes on [0, 1]. Reflecting at 0 and 1 makes the kernel periodic with
    period 2, so the smoothing is a circular convolution of the mirrored node masses with a
    sampled Gaussian (computed with FFTs, normalised to mass 1), and the integral is the
    trapezoid rule on the nodes. The fixed point is bracketed by bisection on a geometric grid of
    193 bandwidths in [1e-4, 1] and linearly interpolated inside the bracket (relative error
    ~1e-3 against a direct evaluation of the definition). If smECE_s < s already at s = 1e-4,
    the result is smECE_{1e-4} (exactly 0 when every residual is 0).
    """
    c = _as_confidence(confidence)
    y = np.asarray(correct, dtype=np.float64)
    scalar = y.ndim == 1 and (weights is None or np.ndim(weights) == 1)
    y2 = np.atleast_2d(y)
    w = np.ones((1, c.size)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if c.size == 0:
        result = np.full(max(len(y2), len(w)), np.nan)
        return float(result[0]) if scalar else result
    mass = (_node_split(c).T @ (w * (y2 - c)).T).T  # [B, T] residual mass at the nodes
    total = np.broadcast_to(w.sum(axis=1), (mass.shape[0],))
    result = _smece_fixed_point(_mirrored_spectrum(mass), total)
    return float(result[0]) if scalar else result


def _node_split(c: np.ndarray) -> sp.csr_matrix:
    """[n, T] matrix splitting each row linearly between its two neighbouring grid nodes."""
    t = SMECE_GRID_POINTS
    position = c * (t - 1)
    left = np.minimum(np.floor(position).astype(np.int64), t - 2)
    right_share = position - left
    rows = np.repeat(np.arange(c.size), 2)
    cols = np.column_stack([left, left + 1]).ravel()
    vals = np.column_stack([1 - right_share, right_share]).ravel()
    return sp.csr_matrix((vals, (rows, cols)), shape=(c.size, t))


def _mirrored_spectrum(mass: np.ndarray) -> np.ndarray:
    """FFT of node masses extended to the period [0, 2) by reflection at 1.

    The end nodes are their own mirror images, so their mass is doubled: the reflected kernel
    at c = 0 or 1 is twice a Gaussian, and every node then carries mass 2 over the period.
    """
    t = SMECE_GRID_POINTS
    extended = np.concatenate([mass, mass[:, t - 2 : 0 : -1]], axis=1)
    extended[:, [0, t - 1]] *= 2
    return np.fft.rfft(extended, axis=1)


@lru_cache(maxsize=None)
def _kernel_spectrum(sigma_index: int) -> np.ndarray:
    """FFT of the Gaussian of bandwidth SMECE_SIGMAS[i] sampled on the period, mass 1."""
    sigma = SMECE_SIGMAS[sigma_index]
    period = 2 * (SMECE_GRID_POINTS - 1)
    step = 1.0 / (SMECE_GRID_POINTS - 1)
    offsets = np.arange(period)[:, None] - period * np.arange(-3, 4)[None, :]  # periodic images
    g = np.exp(-0.5 * (offsets * step / sigma) ** 2).sum(axis=1)
    spectrum = np.fft.rfft(g / g.sum())
    spectrum[np.abs(spectrum) < 1e-100] = 0.0  # subnormal numbers would slow every product
    return spectrum


def _smece_at(spectrum: np.ndarray, total: np.ndarray, sigma_index: int) -> np.ndarray:
    """smECE_s per row: half the period's sum of |smoothed mass| = trapezoid on [0, 1]."""
    smoothed = np.fft.irfft(spectrum * _kernel_spectrum(sigma_index), n=2 * (SMECE_GRID_POINTS - 1), axis=1)
    return _ratio(0.5 * np.abs(smoothed).sum(axis=1), total)


def _smece_fixed_point(spectrum: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Solve smECE_s = s per row by bisection over the bandwidth grid, then interpolate."""
    sigmas = SMECE_SIGMAS
    n_rep = spectrum.shape[0]
    at_smallest = _smece_at(spectrum, total, 0)
    gap_lo = at_smallest - sigmas[0]  # > 0 where the root is above the smallest bandwidth
    gap_hi = _smece_at(spectrum, total, len(sigmas) - 1) - sigmas[-1]  # <= 0 always (smECE <= 1)
    lo, hi = np.zeros(n_rep, np.int64), np.full(n_rep, len(sigmas) - 1)
    active = gap_lo > 0
    while True:
        todo = active & (hi - lo > 1)
        if not todo.any():
            break
        mid = (lo + hi) // 2
        for m in np.unique(mid[todo]):  # bootstrap rows share few distinct bandwidths
            rows = np.flatnonzero(todo & (mid == m))
            gap = _smece_at(spectrum[rows], total[rows], int(m)) - sigmas[m]
            above = gap > 0
            lo[rows[above]], gap_lo[rows[above]] = m, gap[above]
            hi[rows[~above]], gap_hi[rows[~above]] = m, gap[~above]
    s_lo, s_hi = sigmas[lo], sigmas[hi]
    root = s_lo + _ratio(gap_lo * (s_hi - s_lo), gap_lo - gap_hi)
    return np.where(active, root, at_smallest)


# ---------------------------------------------------------------------------------------------
# One-metric helpers on plain arrays (unit weights)


def _single(key: str, confidence, correct, probs=None, gold=None, n_bins_list=ECE_BINS) -> float:
    inputs = prepare(confidence, correct, probs, gold, n_bins_list)
    if inputs.n == 0:
        return float("nan")
    return float(metric_replicates(inputs, np.ones((1, inputs.n)), keys=[key])[key][0])


def ece(confidence, correct, n_bins: int = 15) -> float:
    """Equal-width ECE with bins (b/M, (b+1)/M] (see module docstring)."""
    return _single(f"ece_{n_bins}", confidence, correct, n_bins_list=(n_bins,))


def mce(confidence, correct) -> float:
    """Maximum calibration error over 10 equal-width bins."""
    return _single("mce_10", confidence, correct)


def adaptive_ece(confidence, correct) -> float:
    """ECE over 15 equal-mass bins."""
    return _single("ece_adaptive_15", confidence, correct)


def debiased_squared_ece(confidence, correct) -> float:
    """Kumar et al. (2019) debiased squared ECE over 15 equal-mass bins (can be < 0)."""
    return _single("ece_debiased_sq", confidence, correct)


def brier_top_label(confidence, correct) -> float:
    """mean (c_i - y_i)^2."""
    return _single("brier_top", confidence, correct)


def brier_multiclass(probs, gold) -> float:
    """mean_i sum_k (p~_ik - 1[k = g_i])^2 over rows with known gold; p~ renormalised rows."""
    p = np.asarray(probs, dtype=np.float64)
    conf = _renormalised(p, p.shape[0]).max(axis=1) if p.size else np.zeros(0)
    return _single("brier", conf, np.zeros(p.shape[0]), p, gold)


def nll(probs, gold) -> float:
    """-mean log max(p~_{i, g_i}, 1e-12) over rows with known gold; p~ renormalised rows."""
    p = np.asarray(probs, dtype=np.float64)
    conf = _renormalised(p, p.shape[0]).max(axis=1) if p.size else np.zeros(0)
    return _single("nll", conf, np.zeros(p.shape[0]), p, gold)


def auroc(confidence, correct) -> float:
    """AUROC of confidence for separating correct from wrong rows (ties count 1/2)."""
    return _single("auroc", confidence, correct)


def aurc(confidence, correct) -> float:
    """Area under the risk-coverage curve (tie groups accepted together)."""
    return _single("aurc", confidence, correct)


def augrc(confidence, correct) -> float:
    """Area under the generalised risk-coverage curve (Traub et al. 2024)."""
    return _single("augrc", confidence, correct)


def accuracy_at_coverage(confidence, correct, coverage: float) -> float:
    """Accuracy of the most confident ``coverage`` fraction (one of ``COVERAGES``)."""
    key = f"acc_at_cov_{round(100 * coverage)}"
    if coverage not in COVERAGES:
        raise ValueError(f"coverage must be one of {COVERAGES}")
    return _single(key, confidence, correct)


def helm_ece(confidence, correct) -> float:
    """HELM's ``ece_10_bin``: equal-mass ECE over 10 bins as uncertainty-calibration's get_ece_em."""
    return _single("helm_ece_10", confidence, correct)


def helm_selective_accuracy(confidence, correct) -> float:
    """HELM's ``selective_acc@10``: accuracy of the floor(0.1 n) + 1 most confident rows."""
    return _single("helm_acc_at_cov_10", confidence, correct)

"""Top-label recalibrators (Platt, histogram binning, isotonic) and the PAV algorithm.

They map the top-label confidence ``c = max_k p_k`` to ``c' = g(c)`` and keep ``pred`` (the input
argmax). To still give proper scoring rules a full distribution, ``probs`` puts ``c'`` on ``pred``
and spreads ``1 - c'`` over the other options in proportion to their input probabilities
(uniformly if those are all 0). When ``c' < 1/2`` another option can then carry more mass than
``pred``: ``pred``/``confidence`` are the top-label prediction, ``probs`` is only the companion
distribution for Brier/NLL.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from mmcal.calibration.base import Calibrated, Recalibrator, argmax_answers, as_floats, check_logits, register
from mmcal.records import log_softmax


def top_label(logits, readout_mode: str = "restricted"):
    """Input distribution, argmax answer, its confidence c and log-odds log(c / (1 - c)).

    The log-odds are computed as log p_pred - log sum_{j != pred} p_j, which stays exact when c
    rounds to 1.0 in floating point (then 1 - c would be 0).
    """
    z = check_logits(logits)
    lp = log_softmax(z)
    rows = np.arange(len(z))
    pred = argmax_answers(z, readout_mode)
    others = lp.copy()
    others[rows, pred] = -np.inf
    with np.errstate(divide="ignore"):
        log_rest = np.log(np.sum(np.exp(others), axis=1))
    probs = np.exp(lp)
    return probs, pred, probs[rows, pred], lp[rows, pred] - log_rest


def spread_confidence(probs: np.ndarray, pred: np.ndarray, confidence: np.ndarray, valid: np.ndarray):
    """Distribution with ``confidence`` on ``pred`` and the rest proportional to the input.

    q_pred = c', q_j = p_j (1 - c') / sum_{l != pred} p_l for j != pred. When the input rest mass is
    0 (c rounded to 1), 1 - c' is spread uniformly over the other ``valid`` options. A row with a
    single valid option has nowhere else to put mass: it keeps c' = 1. Returns (q, c').
    """
    rows = np.arange(len(probs))
    rest = probs.copy()
    rest[rows, pred] = 0.0
    rest_mass = rest.sum(axis=1)
    others = valid.copy()
    others[rows, pred] = False
    n_others = others.sum(axis=1)
    conf = np.where(n_others == 0, 1.0, confidence)
    share = np.where(
        (rest_mass > 0)[:, None],
        rest / np.where(rest_mass > 0, rest_mass, 1.0)[:, None],
        others / np.maximum(n_others, 1)[:, None],
    )
    out = share * (1.0 - conf)[:, None]
    out[rows, pred] = conf
    return out, conf


class TopLabelRecalibrator(Recalibrator):
    """Recalibrates the top-label confidence c -> g(c); pred is the input argmax, unchanged.

    Subclasses implement ``_fit_scores(conf, log_odds, correct)`` and ``_map(conf, log_odds)``; the
    public ``fit_confidence`` / ``calibrate_confidence`` work directly on confidences.
    """

    kind = "top_label"

    @abstractmethod
    def _fit_scores(self, conf: np.ndarray, log_odds: np.ndarray, correct: np.ndarray) -> None: ...

    @abstractmethod
    def _map(self, conf: np.ndarray, log_odds: np.ndarray) -> np.ndarray: ...

    def fit_confidence(self, confidence, correct) -> "TopLabelRecalibrator":
        """Fit g on (confidence, correct) pairs directly, without logits."""
        conf = np.asarray(confidence, dtype=np.float64)
        hit = np.asarray(correct, dtype=bool)
        if conf.shape != hit.shape or conf.ndim != 1 or len(conf) == 0:
            raise ValueError("confidence and correct must be equal-length non-empty 1-D arrays")
        if np.isnan(conf).any() or (conf < 0).any() or (conf > 1).any():
            raise ValueError("confidence must lie in [0, 1]")
        self._fit_scores(conf, _log_odds(conf), hit)
        self.fit_stats["n"] = int(len(conf))
        self._fitted = True
        return self

    def calibrate_confidence(self, confidence) -> np.ndarray:
        """g(c) for raw confidences."""
        if not self._fitted:
            raise RuntimeError(f"{self.method} recalibrator is not fitted: call fit first")
        conf = np.asarray(confidence, dtype=np.float64)
        return np.clip(self._map(conf, _log_odds(conf)), 0.0, 1.0)

    def _fit(self, z, gold):
        _, pred, conf, log_odds = top_label(z, self.readout_mode)
        self._fit_scores(conf, log_odds, pred == gold)

    def _transform(self, z):
        probs, pred, conf, log_odds = top_label(z, self.readout_mode)
        new_conf = np.clip(self._map(conf, log_odds), 0.0, 1.0)
        out, new_conf = spread_confidence(probs, pred, new_conf, np.isfinite(z))
        return Calibrated(out, pred, new_conf)


def _log_odds(conf: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(conf) - np.log1p(-conf)


@register
class PlattScaling(TopLabelRecalibrator):
    """c' = sigmoid(a * logit(c) + b), (a, b) minimising the Bernoulli NLL of ``correct``.

    With ``smooth_targets`` (Platt 1999) the 0/1 targets become 1/(N- + 2) and (N+ + 1)/(N+ + 2),
    which keeps (a, b) finite when the calibration set is separable (e.g. all answers correct).
    Log-odds are clipped to +-700 so that c = 0 or 1 stays finite.
    """

    method = "platt"

    def __init__(self, smooth_targets: bool = True, readout_mode: str = "restricted"):
        super().__init__(readout_mode)
        self.smooth_targets = bool(smooth_targets)
        self.slope = float("nan")
        self.intercept = float("nan")

    def _targets(self, correct):
        if not self.smooth_targets:
            return correct.astype(np.float64)
        n_pos, n_neg = int(correct.sum()), int((~correct).sum())
        return np.where(correct, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def _fit_scores(self, conf, log_odds, correct):
        x = np.clip(log_odds, -700.0, 700.0)
        t = self._targets(correct)

        def loss(theta):
            s = theta[0] * x + theta[1]
            value = -np.mean(t * log_expit(s) + (1.0 - t) * log_expit(-s))
            r = expit(s) - t
            return value, np.array([np.mean(r * x), np.mean(r)])

        res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        self.slope, self.intercept = float(res.x[0]), float(res.x[1])
        self.fit_stats.update(converged=bool(res.success))

    def _map(self, conf, log_odds):
        return expit(self.slope * np.clip(log_odds, -700.0, 700.0) + self.intercept)

    def _config(self):
        return {"smooth_targets": self.smooth_targets}

    def _params(self):
        return {"slope": self.slope, "intercept": self.intercept}

    def _set_params(self, params):
        self.slope, self.intercept = float(params["slope"]), float(params["intercept"])


@register
class HistogramBinning(TopLabelRecalibrator):
    """c' = accuracy of the calibration rows in c's equal-mass bin.

    Sorted calibration confidences are cut into ``n_bins`` chunks of (nearly) equal size; the inner
    edges are the first confidence of each chunk after the first. Duplicate edges (ties) and edges
    equal to the minimum are dropped, so bins may be fewer than asked but never empty. A
    confidence c falls in bin j = #{edges <= c}: bin j = [e_{j-1}, e_j).
    """

    method = "histogram"

    def __init__(self, n_bins: int = 15, readout_mode: str = "restricted"):
        super().__init__(readout_mode)
        if n_bins < 1:
            raise ValueError("n_bins must be >= 1")
        self.n_bins = int(n_bins)
        self.edges = np.empty(0)
        self.values = np.empty(0)

    def _fit_scores(self, conf, log_odds, correct):
        s = np.sort(conf)
        cuts = [len(chunk) for chunk in np.array_split(s, min(self.n_bins, len(s)))]
        starts = np.cumsum(cuts)[:-1]
        edges = np.unique(s[starts])
        self.edges = edges[edges > s[0]]
        bins = np.searchsorted(self.edges, conf, side="right")
        counts = np.bincount(bins, minlength=len(self.edges) + 1)
        self.values = np.bincount(bins, weights=correct.astype(np.float64), minlength=len(counts)) / counts
        self.fit_stats.update(bin_counts=[int(c) for c in counts])

    def _map(self, conf, log_odds):
        return self.values[np.searchsorted(self.edges, conf, side="right")]

    def _config(self):
        return {"n_bins": self.n_bins}

    def _params(self):
        return {"edges": as_floats(self.edges), "values": as_floats(self.values)}

    def _set_params(self, params):
        self.edges = np.asarray(params["edges"], dtype=np.float64)
        self.values = np.asarray(params["values"], dtype=np.float64)


def pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit of y (already ordered by x): the PAV algorithm.

    Scan left to right keeping blocks (weighted mean, total weight, length); whenever the last
    block's mean drops below the previous one, merge them (their pooled mean is the weighted
    average) and re-check leftwards. The result repeats each block's mean over its members.
    """
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(np.asarray(y, dtype=np.float64), np.asarray(w, dtype=np.float64)):
        means.append(float(yi))
        weights.append(float(wi))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            w_sum = weights[-2] + weights[-1]
            pooled = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w_sum
            size = sizes[-2] + sizes[-1]
            del means[-1], weights[-1], sizes[-1]
            means[-1], weights[-1], sizes[-1] = pooled, w_sum, size
    return np.repeat(np.array(means), sizes)


@register
class IsotonicCalibration(TopLabelRecalibrator):
    """c' = f(c), f the non-decreasing least-squares fit of ``correct`` on c (PAV).

    Equal confidences are merged first (their mean accuracy, weighted by their count). Between the
    fitted knots f is linear, outside it is clamped to the end values (same convention as
    scikit-learn's IsotonicRegression with out_of_bounds='clip'). Only the first and last knot of
    each constant block are stored: the interpolant is unchanged.
    """

    method = "isotonic"

    def __init__(self, readout_mode: str = "restricted"):
        super().__init__(readout_mode)
        self.x_knots = np.empty(0)
        self.y_knots = np.empty(0)

    def _fit_scores(self, conf, log_odds, correct):
        x, inverse, counts = np.unique(conf, return_inverse=True, return_counts=True)
        y = np.bincount(inverse, weights=correct.astype(np.float64)) / counts
        fitted = pool_adjacent_violators(y, counts)
        keep = np.ones(len(x), dtype=bool)
        # interior points of a constant run add nothing to the linear interpolant
        keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
        self.x_knots, self.y_knots = x[keep], fitted[keep]

    def _map(self, conf, log_odds):
        return np.interp(conf, self.x_knots, self.y_knots)

    def _config(self):
        return {}

    def _params(self):
        return {"x": as_floats(self.x_knots), "y": as_floats(self.y_knots)}

    def _set_params(self, params):
        self.x_knots = np.asarray(params["x"], dtype=np.float64)
        self.y_knots = np.asarray(params["y"], dtype=np.float64)

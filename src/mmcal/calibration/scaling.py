"""Scaling recalibrators: rescale the scores and renormalise.

``pred`` is the argmax of the recalibrated distribution. Temperature scaling never changes the
argmax (``T > 0`` is a monotone map; ``pred`` is even taken from the input scores so that rounding
cannot create ties). Vector scaling has a per-class scale and bias and *can* change the argmax,
hence the accuracy.

In ``full_vocab`` mode (see :mod:`mmcal.calibration.base`) temperature scaling divides all ``K + 1``
log-probs by ``T``. Re-running the model at temperature ``T`` would give ``p_k(T) ∝ p_k^{1/T}`` for
the letters (exact here: the log-partition is a common shift) but
``p_other(T) ∝ sum_{v not a letter} p_v^{1/T}``, whereas the bucket gives ``(sum_v p_v)^{1/T}``.
The two agree only when ``T = 1``, when the non-letter mass sits on a single token, or when it is 0.
Otherwise (power-mean inequality) the bucket overstates the other mass for ``T < 1`` and understates
it for ``T > 1``: a spread-out non-letter mass is treated as one token.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from mmcal.calibration.base import Calibrated, NotApplicable, Recalibrator, argmax_answers, as_floats, register
from mmcal.records import log_softmax


def _mean_nll(log_probs: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.mean(log_probs[np.arange(len(gold)), gold]))


def _tempered_nll(z: np.ndarray, gold: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """NLL(T) = mean_i [logsumexp(z_i / T) - z_{i,y_i} / T] for each T, computed stably.

    Scores are shifted by their row maximum first (softmax is shift-invariant), so every exponent
    is <= 0; padding (-inf) stays -inf and contributes exp(-inf) = 0.
    """
    shifted = z - np.max(z, axis=1, keepdims=True)
    gold_shifted = shifted[np.arange(len(gold)), gold]
    out = np.empty(len(temperatures))
    for start in range(0, len(temperatures), 32):  # chunks bound memory at 32 * n * C floats
        t = temperatures[start : start + 32, None]
        lse = np.log(np.sum(np.exp(shifted[None] / t[..., None]), axis=2))
        out[start : start + 32] = np.mean(lse - gold_shifted[None] / t, axis=1)
    return out


@register
class TemperatureScaling(Recalibrator):
    """p_k = softmax(z / T)_k with one T > 0 minimising the mean NLL on the calibration rows.

    ``mode='continuous'``: bounded Brent search over u = log T in [log t_min, log t_max]. NLL is
    convex in beta = 1/T (a log-sum-exp of functions linear in beta minus a linear term) and u -> beta
    is monotone, so NLL(u) is unimodal and the bounded search finds the global optimum.

    ``mode='grid'``: the reference study's search, T = step, 2 step, ..., grid_max (0.01..9.99),
    keeping the first T of minimal NLL. The reference code starts its grid at T = 0 (a division by
    zero); it is excluded here.
    """

    method = "temperature"
    kind = "scaling"

    def __init__(
        self,
        mode: str = "continuous",
        t_min: float = 0.01,
        t_max: float = 100.0,
        grid_step: float = 0.01,
        grid_max: float = 9.99,
        readout_mode: str = "restricted",
    ):
        super().__init__(readout_mode)
        if mode not in ("continuous", "grid"):
            raise ValueError(f"mode must be 'continuous' or 'grid', got {mode!r}")
        if not 0 < t_min < t_max or not 0 < grid_step <= grid_max:
            raise ValueError("need 0 < t_min < t_max and 0 < grid_step <= grid_max")
        self.mode, self.t_min, self.t_max = mode, float(t_min), float(t_max)
        self.grid_step, self.grid_max = float(grid_step), float(grid_max)
        self.temperature = float("nan")

    @property
    def label(self) -> str:
        return "temperature_grid" if self.mode == "grid" else "temperature"

    def grid(self) -> np.ndarray:
        """k * step for k = 1..round(grid_max / step): integer multiples, no float drift, no T = 0."""
        n = int(round(self.grid_max / self.grid_step))
        return np.arange(1, n + 1) * self.grid_step

    def _fit(self, z, gold):
        if self.mode == "grid":
            grid = self.grid()
            nll = _tempered_nll(z, gold, grid)
            best = int(np.argmin(nll))
            self.temperature = float(grid[best])
            at_bound = best in (0, len(grid) - 1)
        else:
            res = minimize_scalar(
                lambda u: _tempered_nll(z, gold, np.array([np.exp(u)]))[0],
                bounds=(np.log(self.t_min), np.log(self.t_max)),
                method="bounded",
                options={"xatol": 1e-8},
            )
            self.temperature = float(np.exp(res.x))
            at_bound = bool(np.isclose(res.x, np.log([self.t_min, self.t_max]), atol=1e-5).any())
        if at_bound:
            warnings.warn(
                f"temperature {self.temperature:g} is at the edge of its search range; "
                "the calibration data may be separable or degenerate",
                stacklevel=3,
            )
        self.fit_stats.update(
            nll_before=float(_tempered_nll(z, gold, np.array([1.0]))[0]),
            nll_after=float(_tempered_nll(z, gold, np.array([self.temperature]))[0]),
            at_bound=bool(at_bound),
        )

    def _transform(self, z):
        probs = np.exp(log_softmax(z / self.temperature))
        pred = argmax_answers(z, self.readout_mode)  # from the input: T > 0 keeps the argmax
        return Calibrated(probs, pred, probs[np.arange(len(z)), pred])

    def _config(self):
        return {
            "mode": self.mode,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "grid_step": self.grid_step,
            "grid_max": self.grid_max,
        }

    def _params(self):
        return {"temperature": self.temperature}

    def _set_params(self, params):
        self.temperature = float(params["temperature"])


@register
class VectorScaling(Recalibrator):
    """p = softmax(w * x + b) with per-class (per option position) scale w_k and bias b_k.

    x = log_softmax(z) over the valid options, not the raw z: raw letter logits carry an arbitrary
    per-row offset c, and w * (x + c) + b differs from w * x + b unless all w_k are equal.
    Objective: mean NLL + l2/2 * (||w - 1||^2 + ||b||^2). The L2 term pins down the otherwise free
    common shift of b and shrinks towards the identity map; L-BFGS with the analytic gradient
    dNLL/dw_k = mean_i (p_ik - [y_i = k]) x_ik, dNLL/db_k = mean_i (p_ik - [y_i = k]).
    Classes that differ in scale can swap order, so the argmax (accuracy) may change.
    """

    method = "vector"
    kind = "scaling"

    def __init__(self, l2: float = 1e-4, max_iter: int = 500, readout_mode: str = "restricted"):
        super().__init__(readout_mode)
        if l2 < 0:
            raise ValueError("l2 must be >= 0")
        self.l2, self.max_iter = float(l2), int(max_iter)
        self.scale = np.empty(0)
        self.bias = np.empty(0)

    @staticmethod
    def _features(z):
        valid = np.isfinite(z)
        x = np.where(valid, log_softmax(z), 0.0)  # 0 at padding keeps gradients finite
        return x, valid

    @staticmethod
    def _scaled_log_probs(x, valid, scale, bias):
        return log_softmax(np.where(valid, x * scale + bias, -np.inf))

    def _objective(self, theta, x, valid, onehot):
        c = x.shape[1]
        scale, bias = theta[:c], theta[c:]
        lp = self._scaled_log_probs(x, valid, scale, bias)
        n = len(x)
        nll = -np.sum(lp[onehot]) / n
        residual = (np.exp(lp) - onehot) / n  # exp(-inf) = 0 at padding
        grad = np.concatenate([np.sum(residual * x, axis=0), np.sum(residual, axis=0)])
        penalty = 0.5 * self.l2 * (np.sum((scale - 1.0) ** 2) + np.sum(bias**2))
        grad += self.l2 * np.concatenate([scale - 1.0, bias])
        return nll + penalty, grad

    def _fit(self, z, gold):
        x, valid = self._features(z)
        c = z.shape[1]
        onehot = np.zeros_like(valid)
        onehot[np.arange(len(gold)), gold] = True
        theta0 = np.concatenate([np.ones(c), np.zeros(c)])
        res = minimize(
            self._objective,
            theta0,
            args=(x, valid, onehot),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter},
        )
        self.scale, self.bias = res.x[:c].copy(), res.x[c:].copy()
        self.fit_stats.update(
            nll_before=_mean_nll(log_softmax(z), gold),
            nll_after=_mean_nll(self._scaled_log_probs(x, valid, self.scale, self.bias), gold),
            converged=bool(res.success),
        )

    def _transform(self, z):
        if z.shape[1] != len(self.scale):
            # one scale and bias per option position: a position the calib rows never had has none
            raise NotApplicable(
                f"vector scaling was fitted on {len(self.scale)} columns (the calib rows' widest item), got "
                f"{z.shape[1]}: no parameters for the other option positions"
            )
        x, valid = self._features(z)
        log_probs = self._scaled_log_probs(x, valid, self.scale, self.bias)
        probs = np.exp(log_probs)
        pred = argmax_answers(log_probs, self.readout_mode)
        return Calibrated(probs, pred, probs[np.arange(len(z)), pred])

    def _config(self):
        return {"l2": self.l2, "max_iter": self.max_iter}

    def _params(self):
        return {"scale": as_floats(self.scale), "bias": as_floats(self.bias)}

    def _set_params(self, params):
        self.scale = np.asarray(params["scale"], dtype=np.float64)
        self.bias = np.asarray(params["bias"], dtype=np.float64)

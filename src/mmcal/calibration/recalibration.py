"""Post-hoc recalibration from records: fit on a calibration part, apply anywhere, never re-run a model.

Array interface
---------------
Every recalibrator works on a score matrix ``logits`` of shape ``[n, C]`` and integer ``gold`` of
shape ``[n]``:

- ``fit(logits, gold) -> self``
- ``transform(logits) -> Calibrated(probs [n, C], pred [n], confidence [n])`` with
  ``confidence[i] == probs[i, pred[i]]``
- ``to_dict()`` / ``Recalibrator.from_dict(d)``: JSON-safe persistence of the configuration and the
  fitted parameters (floats survive ``json`` exactly, so a reloaded recalibrator reproduces
  ``transform`` bit for bit).

Items with fewer options than the widest item are padded with ``-inf`` (see :func:`pad_ragged`):
``-inf`` is "no such option", it gets probability 0 and is never predicted.

Two kinds of method:

- *scaling* methods (temperature, vector) rescale the scores and renormalise; ``pred`` is the argmax
  of the recalibrated distribution. Temperature scaling never changes the argmax (``T > 0`` is a
  monotone map; ``pred`` is even taken from the input scores so that rounding cannot create ties).
  Vector scaling has a per-class scale and bias and *can* change the argmax, hence the accuracy.
- *top-label* methods (Platt, histogram binning, isotonic) map the top-label confidence
  ``c = max_k p_k`` to ``c' = g(c)`` and keep ``pred`` (the input argmax). To still give proper
  scoring rules a full distribution, ``probs`` puts ``c'`` on ``pred`` and spreads ``1 - c'`` over the
  other options in proportion to their input probabilities (uniformly if those are all 0). When
  ``c' < 1/2`` another option can then carry more mass than ``pred``: ``pred``/``confidence`` are the
  top-label prediction, ``probs`` is only the companion distribution for Brier/NLL.

Readout modes
-------------
``restricted`` (default): the matrix holds the option-restricted scores (``option_logits``); every
method normalises with a softmax over the options.

``full_vocab``: reproduces the reference study's ``letter_full_vocab`` readout. The matrix has
``K + 1`` columns: the letters' full-vocabulary log-probs ``log p_k`` and one last "other" column
``log(1 - sum_k p_k)`` (the mass on every non-letter token, i.e. ``1 - option_mass``). The other
column takes part in the normalisation but is never a prediction nor a gold label. Temperature
scaling divides all ``K + 1`` log-probs by ``T``. Re-running the model at temperature ``T`` would give
``p_k(T) ∝ p_k^{1/T}`` for the letters (exact here: the log-partition is a common shift) but
``p_other(T) ∝ sum_{v not a letter} p_v^{1/T}``, whereas the bucket gives ``(sum_v p_v)^{1/T}``.
The two agree only when ``T = 1``, when the non-letter mass sits on a single token, or when it is 0.
Otherwise (power-mean inequality) the bucket overstates the other mass for ``T < 1`` and understates
it for ``T > 1``: a spread-out non-letter mass is treated as one token.

Records interface
-----------------
:func:`fit_on_records`, :func:`apply_to_records`, :func:`calib_test_split` (cluster-level, hashed,
deterministic) and :func:`repeated_splits` (K seeds of split / fit / evaluate, for mean and CI).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit

from mmcal.errors import DataError
from mmcal.records import log_softmax

READOUT_MODES = ("restricted", "full_vocab")
FORMAT_VERSION = 1
GROUP_COLUMNS = ("model", "dataset", "scenario", "prompt")


# ----------------------------------------------------------------------------------------------
# Small array helpers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibrated:
    """Output of ``transform``: a distribution, the prediction and its confidence."""

    probs: np.ndarray  # [n, C], rows sum to 1, 0 on padded options
    pred: np.ndarray  # [n] int64, an answer option (never the full-vocab "other" column)
    confidence: np.ndarray  # [n] == probs[i, pred[i]]


def pad_ragged(rows: Sequence[Sequence[float]], width: int | None = None) -> np.ndarray:
    """Stack per-item score lists of different lengths into ``[n, width]``, padding with ``-inf``."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = np.full((len(rows), width), -np.inf)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.asarray(r, dtype=np.float64)
    return out


def _check_logits(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits must be a 2-D [n, C] array with C >= 1, got shape {z.shape}")
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ValueError("logits contain NaN or +inf (use -inf only to pad missing options)")
    if len(z) and not np.isfinite(z).any(axis=1).all():
        raise ValueError("every row of logits needs at least one finite score")
    return z


def _n_answers(n_columns: int, readout_mode: str) -> int:
    """Number of answer columns: all of them, or all but the trailing full-vocab 'other' bucket."""
    return n_columns - 1 if readout_mode == "full_vocab" else n_columns


def _check_gold(z: np.ndarray, gold, readout_mode: str) -> np.ndarray:
    y = np.asarray(gold)
    if y.shape != (len(z),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"gold must be an integer array of shape ({len(z)},), got {y.dtype} {y.shape}"
        )
    n_answers = _n_answers(z.shape[1], readout_mode)
    if len(y) and (y.min() < 0 or y.max() >= n_answers):
        raise ValueError(
            f"gold must index an answer option 0..{n_answers - 1} (drop unknown gold = -1)"
        )
    if len(y) and not np.isfinite(z[np.arange(len(y)), y]).all():
        raise ValueError("some gold options are padding (-inf score)")
    return y.astype(np.int64)


def _argmax_answers(z: np.ndarray, readout_mode: str) -> np.ndarray:
    return np.argmax(z[:, : _n_answers(z.shape[1], readout_mode)], axis=1).astype(np.int64)


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


def _as_floats(a) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


# ----------------------------------------------------------------------------------------------
# Base class and registry
# ----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type["Recalibrator"]] = {}


def _register(cls):
    _REGISTRY[cls.method] = cls
    return cls


class Recalibrator(ABC):
    """Common interface; see the module docstring.

    ``fitted_on`` is free-form provenance (readout, model, split, ...) that :func:`fit_on_records`
    fills in and :func:`apply_to_records` reads; it travels with ``to_dict``.
    """

    method: ClassVar[str]
    kind: ClassVar[str]  # "scaling" | "top_label"

    def __init__(self, readout_mode: str = "restricted"):
        if readout_mode not in READOUT_MODES:
            raise ValueError(f"readout_mode must be one of {READOUT_MODES}, got {readout_mode!r}")
        self.readout_mode = readout_mode
        self.fitted_on: dict | None = None
        self.fit_stats: dict = {}
        self._fitted = False

    # -- to implement ------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, z: np.ndarray, gold: np.ndarray) -> None: ...

    @abstractmethod
    def _transform(self, z: np.ndarray) -> Calibrated: ...

    @abstractmethod
    def _config(self) -> dict:
        """Constructor keyword arguments (besides readout_mode)."""

    @abstractmethod
    def _params(self) -> dict:
        """Fitted parameters as JSON-safe values."""

    @abstractmethod
    def _set_params(self, params: dict) -> None: ...

    # -- public -------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """Name written to the records' ``recalibrator`` column."""
        return self.method

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def fit(self, logits, gold) -> "Recalibrator":
        z = _check_logits(logits)
        y = _check_gold(z, gold, self.readout_mode)
        if len(y) == 0:
            raise ValueError(f"{self.method}: nothing to fit on (0 rows)")
        if self.readout_mode == "full_vocab" and z.shape[1] < 2:
            raise ValueError("full_vocab logits need K letters plus the trailing 'other' column")
        self._fit(z, y)
        self.fit_stats["n"] = int(len(y))
        self._fitted = True
        return self

    def transform(self, logits) -> Calibrated:
        if not self._fitted:
            raise RuntimeError(f"{self.method} recalibrator is not fitted: call fit first")
        return self._transform(_check_logits(logits))

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "readout_mode": self.readout_mode,
            "config": self._config(),
            "params": self._params() if self._fitted else None,
            "fit_stats": dict(self.fit_stats),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Recalibrator":
        """Rebuild any recalibrator from ``to_dict`` output (dispatches on ``d['method']``)."""
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown recalibrator format version {d.get('format_version')!r}")
        klass = _REGISTRY.get(d["method"])
        if klass is None:
            raise ValueError(
                f"unknown recalibration method {d['method']!r}; known: {sorted(_REGISTRY)}"
            )
        if cls is not Recalibrator and not issubclass(klass, cls):
            raise ValueError(f"{cls.__name__}.from_dict got a {d['method']!r} recalibrator")
        obj = klass(readout_mode=d["readout_mode"], **d["config"])
        obj.fitted_on = d.get("fitted_on")
        obj.fit_stats = dict(d.get("fit_stats") or {})
        if d.get("params") is not None:
            obj._set_params(d["params"])
            obj._fitted = True
        return obj

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Recalibrator":
        return cls.from_dict(json.loads(text))


def make_recalibrator(method: str, **kwargs) -> Recalibrator:
    """Build an unfitted recalibrator: 'temperature', 'temperature_grid', 'vector', 'platt',
    'histogram' or 'isotonic' (keyword arguments go to its constructor)."""
    if method == "temperature_grid":
        return TemperatureScaling(mode="grid", **kwargs)
    if method not in _REGISTRY:
        raise ValueError(f"unknown recalibration method {method!r}; known: {METHODS}")
    return _REGISTRY[method](**kwargs)


# ----------------------------------------------------------------------------------------------
# Scaling methods
# ----------------------------------------------------------------------------------------------


@_register
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
        pred = _argmax_answers(z, self.readout_mode)  # from the input: T > 0 keeps the argmax
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


@_register
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
            raise ValueError(
                f"vector scaling was fitted on {len(self.scale)} columns, got {z.shape[1]}"
            )
        x, valid = self._features(z)
        log_probs = self._scaled_log_probs(x, valid, self.scale, self.bias)
        probs = np.exp(log_probs)
        pred = _argmax_answers(log_probs, self.readout_mode)
        return Calibrated(probs, pred, probs[np.arange(len(z)), pred])

    def _config(self):
        return {"l2": self.l2, "max_iter": self.max_iter}

    def _params(self):
        return {"scale": _as_floats(self.scale), "bias": _as_floats(self.bias)}

    def _set_params(self, params):
        self.scale = np.asarray(params["scale"], dtype=np.float64)
        self.bias = np.asarray(params["bias"], dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Top-label methods
# ----------------------------------------------------------------------------------------------


def top_label(logits, readout_mode: str = "restricted"):
    """Input distribution, argmax answer, its confidence c and log-odds log(c / (1 - c)).

    The log-odds are computed as log p_pred - log sum_{j != pred} p_j, which stays exact when c
    rounds to 1.0 in floating point (then 1 - c would be 0).
    """
    z = _check_logits(logits)
    lp = log_softmax(z)
    rows = np.arange(len(z))
    pred = _argmax_answers(z, readout_mode)
    others = lp.copy()
    others[rows, pred] = -np.inf
    with np.errstate(divide="ignore"):
        log_rest = np.log(np.sum(np.exp(others), axis=1))
    probs = np.exp(lp)
    return probs, pred, probs[rows, pred], lp[rows, pred] - log_rest


def spread_confidence(
    probs: np.ndarray, pred: np.ndarray, confidence: np.ndarray, valid: np.ndarray
):
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


@_register
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


@_register
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
        self.values = (
            np.bincount(bins, weights=correct.astype(np.float64), minlength=len(counts)) / counts
        )
        self.fit_stats.update(bin_counts=[int(c) for c in counts])

    def _map(self, conf, log_odds):
        return self.values[np.searchsorted(self.edges, conf, side="right")]

    def _config(self):
        return {"n_bins": self.n_bins}

    def _params(self):
        return {"edges": _as_floats(self.edges), "values": _as_floats(self.values)}

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


@_register
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
        return {"x": _as_floats(self.x_knots), "y": _as_floats(self.y_knots)}

    def _set_params(self, params):
        self.x_knots = np.asarray(params["x"], dtype=np.float64)
        self.y_knots = np.asarray(params["y"], dtype=np.float64)


METHODS = ("temperature", "temperature_grid", "vector", "platt", "histogram", "isotonic")


# ----------------------------------------------------------------------------------------------
# Records <-> score matrices
# ----------------------------------------------------------------------------------------------


def default_readout_mode(readout: str) -> str:
    """The paper's choice: the full-vocab readout keeps its 'other' bucket, the rest are restricted."""
    return "full_vocab" if readout == "letter_full_vocab" else "restricted"


def _other_log_mass(letter_log_probs: np.ndarray) -> float:
    """log(1 - sum_k p_k) = log(-expm1(logsumexp(log p))), exact near sum = 1; -inf when >= 1."""
    finite = letter_log_probs[np.isfinite(letter_log_probs)]
    if len(finite) == 0:
        return 0.0
    m = finite.max()
    lse = m + np.log(np.sum(np.exp(finite - m)))
    return float(np.log(-np.expm1(lse))) if lse < 0 else -np.inf


def records_to_scores(records: pd.DataFrame, readout_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Score matrix and gold vector for records rows (all must be scorable, status 'ok').

    restricted: ``option_logits`` padded with -inf to the widest item ([n, K_max]).
    full_vocab: ``option_scores`` (full-vocab letter log-probs) padded to K_max, then the 'other'
    column log(1 - sum_k p_k) ([n, K_max + 1]). The other mass is taken from the letter log-probs
    themselves (it equals 1 - option_mass by the records contract) so that at T = 1 the bucketed
    distribution reproduces the recorded probabilities exactly.
    """
    if readout_mode not in READOUT_MODES:
        raise ValueError(f"readout_mode must be one of {READOUT_MODES}, got {readout_mode!r}")
    column = "option_logits" if readout_mode == "restricted" else "option_scores"
    rows = [np.asarray(v, dtype=np.float64) for v in records[column]]
    bad = [i for i, r in enumerate(rows) if r.size == 0 or np.isnan(r).any()]
    if bad:
        ids = list(records["item_id"].iloc[bad[:5]]) if "item_id" in records else bad[:5]
        raise DataError(f"{len(bad)} records rows have empty or NaN {column} (e.g. items {ids})")
    z = pad_ragged(rows)
    if readout_mode == "full_vocab":
        other = np.array([_other_log_mass(r) for r in rows])
        z = np.concatenate([z, other[:, None]], axis=1)
    return z, records["gold"].to_numpy().astype(np.int64)


def _select_rows(records: pd.DataFrame, readout: str, split, need_gold: bool) -> pd.DataFrame:
    keep = (records["status"] == "ok") & (records["readout"] == readout)
    if split is not None:
        splits = [split] if isinstance(split, str) else list(split)
        keep &= records["split"].isin(splits)
    if need_gold:
        keep &= records["gold"] >= 0
    return records[keep.to_numpy(dtype=bool)]


def _check_single_group(rows: pd.DataFrame) -> None:
    mixed = {
        c: sorted(map(str, rows[c].unique()))
        for c in GROUP_COLUMNS
        if c in rows and rows[c].nunique() > 1
    }
    if mixed:
        raise DataError(
            f"records mix several {', '.join(mixed)} values ({mixed}); recalibrate each "
            "(model, dataset, scenario, prompt) separately, or pass allow_mixed=True to pool them"
        )


def _provenance(rows: pd.DataFrame, readout: str, split) -> dict:
    info: dict = {
        "readout": readout,
        "split": split if isinstance(split, (str, type(None))) else list(split),
    }
    for c in GROUP_COLUMNS:
        if c in rows:
            values = sorted(map(str, rows[c].dropna().unique()))
            info[c] = values[0] if len(values) == 1 else values
    info["n_rows"] = int(len(rows))
    return info


def fit_on_records(
    records_df: pd.DataFrame,
    method: str,
    readout: str,
    split: str | Iterable[str] | None = "calib",
    readout_mode: str | None = None,
    allow_mixed: bool = False,
    **kw,
) -> Recalibrator:
    """Fit ``method`` on the rows with status 'ok', this ``readout``, this ``split`` and known gold.

    ``split`` may be one split name, several, or None (all rows). ``readout_mode`` defaults to
    :func:`default_readout_mode`. Rows from several models/datasets/scenarios/prompts are refused
    unless ``allow_mixed`` (one temperature for two models is almost always a mistake).
    """
    rows = _select_rows(records_df, readout, split, need_gold=True)
    if rows.empty:
        raise DataError(
            f"no scorable records with readout {readout!r} and split {split!r} to fit on"
        )
    if not allow_mixed:
        _check_single_group(rows)
    mode = readout_mode or default_readout_mode(readout)
    z, gold = records_to_scores(rows, mode)
    recal = make_recalibrator(method, readout_mode=mode, **kw).fit(z, gold)
    recal.fitted_on = _provenance(rows, readout, split)
    return recal


def _entropy(p: np.ndarray) -> float:
    p = p / p.sum()
    nz = p[p > 0]
    return float(-np.sum(nz * np.log(nz)))


def apply_to_records(
    records_df: pd.DataFrame, recal: Recalibrator, readout: str | None = None
) -> pd.DataFrame:
    """A copy of the records with recalibrated columns on the 'ok' rows of ``readout``.

    ``readout`` defaults to the one the recalibrator was fitted on. Updated: ``confidence``,
    ``option_scores`` (log of the recalibrated probabilities of the K options; in full_vocab mode
    they exclude the 'other' bucket and do not sum to 1, as in the records contract), ``pred``,
    ``correct``, ``entropy`` (of the option probabilities renormalised over the options) and a new
    ``recalibrator`` column (the method label; None on untouched rows). ``option_logits`` and
    ``option_mass`` keep the model's raw output. Rows that are not 'ok', or of another readout,
    pass through unchanged; the row count and order never change.
    """
    readout = readout or (recal.fitted_on or {}).get("readout")
    if readout is None:
        raise ValueError(
            "say which readout to recalibrate (the recalibrator carries no fitted_on readout)"
        )
    out = records_df.copy()
    target = np.flatnonzero(
        ((out["status"] == "ok") & (out["readout"] == readout)).to_numpy(dtype=bool)
    )
    labels = [None] * len(out)
    if len(target) == 0:
        out["recalibrator"] = pd.Series(labels, index=out.index, dtype=object)
        return out
    rows = out.iloc[target]
    z, gold = records_to_scores(rows, recal.readout_mode)
    result = recal.transform(z)
    n_options = [
        len(np.asarray(v))
        for v in rows["option_logits" if recal.readout_mode == "restricted" else "option_scores"]
    ]

    with np.errstate(divide="ignore"):
        log_probs = np.log(result.probs)
    scores = [[float(v) for v in log_probs[j, :k]] for j, k in enumerate(n_options)]
    entropy = [_entropy(result.probs[j, :k]) for j, k in enumerate(n_options)]
    for pos in target:
        labels[pos] = recal.label

    _set_rows(out, "confidence", target, result.confidence)
    _set_rows(out, "option_scores", target, scores)
    _set_rows(out, "pred", target, result.pred)
    _set_rows(out, "correct", target, (gold >= 0) & (result.pred == gold))
    _set_rows(out, "entropy", target, entropy)
    out["recalibrator"] = pd.Series(labels, index=out.index, dtype=object)
    return out


def _set_rows(df: pd.DataFrame, column: str, positions: np.ndarray, values) -> None:
    """Overwrite ``column`` at integer ``positions`` only, keeping the column's dtype and every
    other row's value as it was (a whole-column cast would turn e.g. None into False)."""
    dtype = df[column].dtype
    arr = df[column].to_numpy(copy=True)
    if arr.dtype == object:  # element-wise: values may themselves be lists
        for pos, v in zip(positions, values):
            arr[pos] = v
    else:
        arr[positions] = values
    df[column] = pd.Series(arr, index=df.index, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Cluster-level splits
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSplit:
    """A cluster-disjoint calib/test split; the masks are aligned with the input rows."""

    calib_mask: np.ndarray
    calib_clusters: frozenset
    test_clusters: frozenset

    @property
    def test_mask(self) -> np.ndarray:
        return ~self.calib_mask


def _cluster_rank_key(cluster_id: str, seed: int) -> tuple[int, str]:
    digest = hashlib.blake2b(f"{seed}\x1f{cluster_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big"), cluster_id


def calib_test_split(
    records_or_cluster_ids, frac_calib: float = 0.5, seed: int = 0
) -> ClusterSplit:
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
        raise DataError(
            "some rows have no cluster_id; cluster-level splitting needs one on every row"
        )
    ids = ids.astype(str)
    clusters = sorted(ids.unique(), key=lambda c: _cluster_rank_key(c, seed))
    if len(clusters) < 2:
        raise DataError(f"need at least two clusters to split, got {len(clusters)}")
    n_calib = min(max(int(np.floor(frac_calib * len(clusters) + 0.5)), 1), len(clusters) - 1)
    calib = frozenset(clusters[:n_calib])
    return ClusterSplit(ids.isin(calib).to_numpy(), calib, frozenset(clusters[n_calib:]))


def _uncalibrated(z: np.ndarray, readout_mode: str) -> Calibrated:
    probs = np.exp(log_softmax(z))
    pred = _argmax_answers(z, readout_mode)
    return Calibrated(probs, pred, probs[np.arange(len(z)), pred])


def _default_metrics(confidence, correct, probs=None, gold=None) -> dict:
    from mmcal.analysis.metrics import compute_all  # lazy: the metrics library is optional for this module

    return compute_all(confidence, correct, probs=probs, gold=gold)


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
    **kw,
) -> pd.DataFrame:
    """Re-split the pool K times by cluster, fit on calib, evaluate on test; one row per seed and stage.

    The pool is the 'ok' rows of ``readout`` with known gold whose ``split`` is in ``pool_splits``
    (None: every split). For seeds seed, seed+1, ..., seed+n_seeds-1 it returns two rows: stage
    'uncalibrated' (the readout's own distribution on the test part) and stage = method label
    (after recalibration), each with ``metrics_fn(confidence, correct, probs=, gold=)`` (default
    ``mmcal.analysis.metrics.compute_all``), the part sizes and the fitted parameters as JSON. The spread
    over seeds measures split-to-split variability (see :func:`summarise_splits`), not the
    sampling uncertainty of one test set.
    """
    metrics_fn = metrics_fn or _default_metrics
    pool = _select_rows(records_df, readout, pool_splits, need_gold=True)
    if pool.empty:
        raise DataError(f"no scorable records with readout {readout!r} in splits {pool_splits!r}")
    if not allow_mixed:
        _check_single_group(pool)
    mode = readout_mode or default_readout_mode(readout)
    out = []
    for s in range(seed, seed + n_seeds):
        split = calib_test_split(pool, frac_calib, s)
        calib, test = pool[split.calib_mask], pool[split.test_mask]
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


def summarise_splits(
    per_seed: pd.DataFrame, metrics: Sequence[str] | None = None, level: float = 0.95
) -> pd.DataFrame:
    """Mean, standard deviation and Student-t interval over seeds, per stage and metric.

    CI = mean +- t_{(1+level)/2, K-1} * sd / sqrt(K); with one seed the interval is NaN.
    """
    from scipy.stats import t as student_t

    skip = {"seed", "stage", "params", "n_calib", "n_test", "n_calib_clusters", "n_test_clusters"}
    metrics = (
        list(metrics)
        if metrics is not None
        else [
            c
            for c in per_seed.columns
            if c not in skip and pd.api.types.is_numeric_dtype(per_seed[c])
        ]
    )
    rows = []
    for stage, group in per_seed.groupby("stage", sort=False):
        for m in metrics:
            v = group[m].to_numpy(dtype=np.float64)
            k, mean = len(v), float(np.mean(v))
            sd = float(np.std(v, ddof=1)) if k > 1 else float("nan")
            half = (
                float(student_t.ppf((1 + level) / 2, k - 1) * sd / np.sqrt(k))
                if k > 1
                else float("nan")
            )
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

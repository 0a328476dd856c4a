"""The recalibrator interface: fit on a score matrix, transform any other, persist as JSON.

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

Two kinds of method: *scaling* methods rescale the scores (:mod:`mmcal.calibration.scaling`),
*top-label* methods map the confidence of the predicted option
(:mod:`mmcal.calibration.top_label`). Each registers itself here by its ``method`` name, so that
:func:`make_recalibrator` and :meth:`Recalibrator.from_dict` find it.

Readout modes
-------------
``restricted`` (default): the matrix holds the option-restricted scores (``option_logits``); every
method normalises with a softmax over the options.

``full_vocab``: reproduces the reference study's ``letter_full_vocab`` readout. The matrix has
``K + 1`` columns: the letters' full-vocabulary log-probs ``log p_k`` and one last "other" column
``log(1 - sum_k p_k)`` (the mass on every non-letter token, i.e. ``1 - option_mass``). The other
column takes part in the normalisation but is never a prediction nor a gold label.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from mmcal.errors import DataError

READOUT_MODES = ("restricted", "full_vocab")
FORMAT_VERSION = 1
METHODS = ("temperature", "temperature_grid", "vector", "platt", "histogram", "isotonic")
# Method names that stand for a registered class in a fixed configuration.
PRESETS = {"temperature_grid": ("temperature", {"mode": "grid"})}


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


def check_logits(logits) -> np.ndarray:
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
        raise ValueError(f"gold must be an integer array of shape ({len(z)},), got {y.dtype} {y.shape}")
    n_answers = _n_answers(z.shape[1], readout_mode)
    if len(y) and (y.min() < 0 or y.max() >= n_answers):
        raise ValueError(f"gold must index an answer option 0..{n_answers - 1} (drop unknown gold = -1)")
    if len(y) and not np.isfinite(z[np.arange(len(y)), y]).all():
        raise ValueError("some gold options are padding (-inf score)")
    return y.astype(np.int64)


def argmax_answers(z: np.ndarray, readout_mode: str) -> np.ndarray:
    return np.argmax(z[:, : _n_answers(z.shape[1], readout_mode)], axis=1).astype(np.int64)


def as_floats(a) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


# ----------------------------------------------------------------------------------------------
# Base class and registry
# ----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type["Recalibrator"]] = {}


def register(cls):
    """Class decorator: make a recalibrator known to ``make_recalibrator`` and ``from_dict``."""
    _REGISTRY[cls.method] = cls
    return cls


class NotApplicable(DataError, ValueError):
    """A fitted recalibrator that cannot map these scores (e.g. an option position its calib rows never had)."""


class Recalibrator(ABC):
    """Common interface; see the module docstring.

    ``fitted_on`` is free-form provenance (readout, model, split, ...) that
    :func:`mmcal.calibration.records_adapter.fit_on_records` fills in and ``apply_to_records``
    reads; it travels with ``to_dict``.
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
        z = check_logits(logits)
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
        return self._transform(check_logits(logits))

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
            raise ValueError(f"unknown recalibration method {d['method']!r}; known: {sorted(_REGISTRY)}")
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
    registered, preset = PRESETS.get(method, (method, {}))
    if registered not in _REGISTRY:
        raise ValueError(f"unknown recalibration method {method!r}; known: {METHODS}")
    return _REGISTRY[registered](**preset, **kwargs)

"""Records <-> score matrices: fit a recalibrator on records rows, write its output back as records.

:func:`fit_on_records` fits on the scored rows of one readout and split whose gold answer is
known; :func:`apply_to_records` returns a copy of the records with the recalibrated columns. The
readout decides the score matrix (:func:`default_readout_mode`): the option-restricted logits, or
the full-vocabulary letter log-probs plus the "other" bucket (see :mod:`mmcal.calibration.base`).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from mmcal.calibration.base import READOUT_MODES, Recalibrator, make_recalibrator, pad_ragged
from mmcal.errors import DataError
from mmcal.records import RUN_KEYS, select


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


def labelled_rows(records: pd.DataFrame, readout: str, split=None) -> pd.DataFrame:
    """The scored rows (status "ok") of ``readout`` in ``split`` (a name, several, or None: all)
    with a known gold answer (gold = -1 can be neither fitted on nor scored).

    Rows keep the records' order (unlike ``records.scorable``, which sorts by item): fitted
    parameters are sums over rows, and their last bits depend on that order.
    """
    split = split if split is None or isinstance(split, str) else list(split)
    rows = select(records, status="ok", readout=readout, split=split)
    return rows[rows["gold"] >= 0]


def check_single_group(rows: pd.DataFrame) -> None:
    """Refuse rows of several runs (models, data sets, scenarios or prompts)."""
    mixed = {c: sorted(map(str, rows[c].unique())) for c in RUN_KEYS if c in rows and rows[c].nunique() > 1}
    if mixed:
        raise DataError(
            f"records mix several {', '.join(mixed)} values ({mixed}); recalibrate each "
            "(model, dataset, scenario, prompt) separately, or pass allow_mixed=True to pool them"
        )


def rows_to_fit(records: pd.DataFrame, readout: str, split, allow_mixed: bool, readout_mode: str | None):
    """The labelled rows a recalibrator is fitted on (one run unless ``allow_mixed``) and the readout
    mode to fit in; no rows is an error naming the readout and split."""
    rows = labelled_rows(records, readout, split)
    if rows.empty:
        raise DataError(f"no scorable records with readout {readout!r} and split {split!r} to fit on")
    if not allow_mixed:
        check_single_group(rows)
    return rows, readout_mode or default_readout_mode(readout)


def _provenance(rows: pd.DataFrame, readout: str, split) -> dict:
    info: dict = {
        "readout": readout,
        "split": split if isinstance(split, (str, type(None))) else list(split),
    }
    for c in RUN_KEYS:
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
    rows, mode = rows_to_fit(records_df, readout, split, allow_mixed, readout_mode)
    z, gold = records_to_scores(rows, mode)
    recal = make_recalibrator(method, readout_mode=mode, **kw).fit(z, gold)
    recal.fitted_on = _provenance(rows, readout, split)
    return recal


def _entropy(p: np.ndarray) -> float:
    p = p / p.sum()
    nz = p[p > 0]
    return float(-np.sum(nz * np.log(nz)))


def apply_to_records(records_df: pd.DataFrame, recal: Recalibrator, readout: str | None = None) -> pd.DataFrame:
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
        raise ValueError("say which readout to recalibrate (the recalibrator carries no fitted_on readout)")
    out = records_df.copy()
    by_position = out.reset_index(drop=True)  # index = row position, whatever the input's index
    target = select(by_position, status="ok", readout=readout).index.to_numpy()
    labels = [None] * len(out)
    if len(target) == 0:
        out["recalibrator"] = pd.Series(labels, index=out.index, dtype=object)
        return out
    rows = out.iloc[target]
    z, gold = records_to_scores(rows, recal.readout_mode)
    result = recal.transform(z)
    n_options = [
        len(np.asarray(v)) for v in rows["option_logits" if recal.readout_mode == "restricted" else "option_scores"]
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

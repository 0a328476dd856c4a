"""The records contract: one row per (model, dataset, scenario, prompt, item, readout).

Everything downstream (metrics, recalibration, IDK, figures, tables) reads records and never
re-runs a model. Columns:

- ``item_id, cluster_id, split``: from the item (cluster = items sharing an image/source).
- ``model, dataset, scenario, prompt, prompt_hash, model_fingerprint``: provenance.
- ``readout``: ``letter_restricted`` | ``letter_full_vocab`` | ``option_loglik`` | ``letter_greedy``
  (the reference study's greedy loop: see below).
- ``gold`` (int option index; -1 when unknown), ``pred`` (argmax option), ``correct`` (bool).
- ``option_scores``: list of per-option log-probabilities under the readout's own normalisation:
  log-softmax over option letters (letter_restricted), log p(letter) under the full-vocabulary
  softmax (letter_full_vocab; these do not sum to 1), log-softmax of the length-normalised option
  log-likelihoods (option_loglik).
- ``option_logits``: the raw per-option scores before normalisation (letter logits; mean token
  log-likelihood of each option's text for option_loglik). Recalibrators rescale these.
- ``confidence``: probability of ``pred`` under the readout (letter_full_vocab: the full-vocab
  probability of the predicted letter, the reference study's definition).
- ``option_mass``: total full-vocabulary probability of the option letters (same for every readout
  of an item; shows whether the model follows the answer format).
- ``entropy``: entropy (nats) of the readout's distribution over options (full-vocab readout:
  of the letter probabilities renormalised over the options).
- ``n_options``, ``meta`` (JSON of item metadata), ``status`` ("ok" or why the item could not be
  scored; unscorable rows carry NaN scores and ``pred = -1``).

``letter_greedy`` (the reference study's released code): greedy decoding of at most
``GREEDY_MAX_TOKENS`` tokens after the answer prefix; each generated token is decoded on its own and
the first whose stripped text is an option letter is the answer. Its row: ``pred`` that letter,
``confidence`` the full-vocabulary softmax probability (raw logits) of that token at that step,
``option_scores`` per letter the full-vocabulary log-probability, at that step, of the most likely
token that decodes to the letter (so ``pred`` is their argmax and ``confidence`` its probability),
``option_logits`` those tokens' logits, ``option_mass`` the sum of those probabilities, and an extra
column ``generated``: all generated text (only record files with letter_greedy rows have it).
*No letter* in ``GREEDY_MAX_TOKENS`` tokens (or before end-of-sequence): the row is kept with status
"ok", ``pred = -1``, ``correct = False``, scores taken at the first generated step, and
``confidence`` = the largest full-vocabulary letter probability at that step (the
``letter_full_vocab`` confidence of the item): a non-answer counts as a wrong answer with the
confidence the model put on its best option when asked for the letter (confidence 0 would reward
not answering with perfect calibration). :func:`no_letter` finds these rows; the analysis option
``metrics.no_letter`` (``keep``, ours, or ``drop``, the released code's) is applied by
:func:`apply_no_letter`.

Records imported from evaluation-harness logs (``mmcal import``, :mod:`mmcal.imports`) have their own
readouts (``IMPORTED_READOUTS``): ``harness_loglik`` (``option_logits`` = the per-option
log-likelihood the harness logged, under its own convention: summed over tokens in
lm-evaluation-harness, minus the mean token NLL in lmms-eval; ``option_scores`` its log-softmax;
``pred`` the harness's own choice), ``harness_loglik_norm`` (the harness's length-normalised scores,
behind its ``acc_norm``) and ``generated`` (only the generated answer: ``pred`` the option it names,
-1 for none, ``correct`` the harness's own verdict, ``confidence``/``entropy``/scores NaN or empty
with status "ok", the text in ``generated``). ``option_mass`` is NaN for all three. A readout of
``NO_CONFIDENCE_READOUTS`` has no confidence: the analysis reports accuracy only and says why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.atomic import write_atomically
from mmcal.errors import DataError

READOUTS = ("letter_restricted", "letter_full_vocab", "option_loglik")  # one forward pass per item
GREEDY_READOUT = "letter_greedy"  # a generation loop of its own
ALL_READOUTS = (*READOUTS, GREEDY_READOUT)
# Readouts of records imported from harness logs (mmcal.imports; docs/imports.md).
HARNESS_LOGLIK = "harness_loglik"
HARNESS_LOGLIK_NORM = "harness_loglik_norm"
GENERATED = "generated"
IMPORTED_READOUTS = (HARNESS_LOGLIK, HARNESS_LOGLIK_NORM, GENERATED)
NO_CONFIDENCE_READOUTS = (GENERATED,)
GREEDY_MAX_TOKENS = 20
NO_LETTER_POLICIES = ("keep", "drop")
# What one scoring job is (one records file) and what one analysed group is (a readout of it).
RUN_KEYS = ("model", "dataset", "scenario", "prompt")
GROUP_KEYS = (*RUN_KEYS, "readout")

COLUMNS = [
    "item_id",
    "cluster_id",
    "split",
    "model",
    "dataset",
    "scenario",
    "prompt",
    "prompt_hash",
    "model_fingerprint",
    "readout",
    "gold",
    "pred",
    "correct",
    "confidence",
    "entropy",
    "option_mass",
    "option_scores",
    "option_logits",
    "n_options",
    "meta",
    "status",
]
OPTIONAL_COLUMNS = ["generated"]  # written only by runs that have letter_greedy (or imported generated) rows


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def entropy_from_logprobs(lp: np.ndarray) -> float:
    p = np.exp(lp)
    return float(-np.sum(np.where(p > 0, p * lp, 0.0)))


def readout_row(
    readout: str,
    option_logits: np.ndarray,
    gold: int,
    option_mass: float,
    full_vocab_logprobs: np.ndarray | None = None,
) -> dict:
    """Turn raw per-option scores into the readout's columns (pred, confidence, entropy, ...)."""
    option_logits = np.asarray(option_logits, dtype=np.float64)
    restricted = log_softmax(option_logits)
    if readout in ("letter_full_vocab", GREEDY_READOUT):
        if full_vocab_logprobs is None:
            raise ValueError(f"{readout} needs the full-vocabulary log-probs")
        scores = np.asarray(full_vocab_logprobs, dtype=np.float64)
        pred = int(np.argmax(scores))
        confidence = float(math.exp(scores[pred]))
    else:
        scores = restricted
        pred = int(np.argmax(scores))
        confidence = float(math.exp(scores[pred]))
    return {
        "readout": readout,
        "gold": int(gold),
        "pred": pred,
        "correct": bool(gold >= 0 and pred == gold),
        "confidence": confidence,
        "entropy": entropy_from_logprobs(restricted),
        "option_mass": float(option_mass),
        "option_scores": [float(v) for v in scores],
        "option_logits": [float(v) for v in option_logits],
    }


def unscorable_rows(readouts, gold: int, n_options: int, reason: str) -> list[dict]:
    nan = float("nan")
    return [
        {
            "readout": r,
            "gold": int(gold),
            "pred": -1,
            "correct": False,
            "confidence": nan,
            "entropy": nan,
            "option_mass": nan,
            "option_scores": [],
            "option_logits": [],
            "status": reason,
            "n_options": n_options,
        }
        for r in readouts
    ]


def to_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    return df[COLUMNS + [c for c in OPTIONAL_COLUMNS if c in df.columns]]


def write_records(df: pd.DataFrame, path: str | Path, metadata: dict[bytes, str] | None = None) -> None:
    """``metadata``: extra Parquet schema metadata (the job's provenance, mmcal.provenance). Written atomically
    (mmcal.atomic): a killed job or a full disk never leaves a half-written records file or shard under its name."""

    def write(tmp: Path) -> None:
        if metadata:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **metadata}), tmp)
        else:
            df.to_parquet(tmp, index=False)

    write_atomically(path, write, "records file")


def read_parquet_file(path: str | Path, **kwargs) -> pd.DataFrame:
    """``pd.read_parquet`` with an error naming the file when it is not a readable Parquet file (truncated,
    foreign bytes): pyarrow's own message does not say which file."""
    try:
        return pd.read_parquet(path, **kwargs)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its I/O errors OSErrors
        raise DataError(f"{path}: not a readable records file: {exc}") from exc


def read_records(paths) -> pd.DataFrame:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = [read_parquet_file(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else to_frame([])


def meta_json(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)


def select(df: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows matching every ``column=value`` (a list/tuple/set means "any of"); None means "any".

    A condition on a column the frame lacks is ignored, so one call works on records and on
    tables derived from them (a summary has no ``split`` column per row, say).
    """
    mask = np.ones(len(df), dtype=bool)
    for col, value in where.items():
        if value is None or col not in df.columns:
            continue
        if isinstance(value, (list, tuple, set)):
            mask &= df[col].isin(list(value)).to_numpy()
        else:
            mask &= (df[col] == value).to_numpy()
    return df[mask]


ALL_SPLITS = "all"  # the split an analysis names when it used every split


def in_split(df: pd.DataFrame, split: str | None) -> pd.DataFrame:
    """The rows of ``split``; every row for None or ``ALL_SPLITS``. Asking for a split of a frame
    without a ``split`` column is an error (``select`` would silently keep every row)."""
    if split in (None, ALL_SPLITS):
        return df
    if "split" not in df.columns:
        raise DataError(f"records have no 'split' column to select split {split!r}")
    return select(df, split=split)


def scorable(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that were scored (status "ok"), sorted by item so that the input row order never
    changes a number (ties, equal-mass bins, bootstrap resamples)."""
    return df[df["status"] == "ok"].sort_values("item_id", kind="stable")


def parse_meta(value, item_id=None) -> dict:
    """An item's metadata as a dict: a dict as is, JSON text parsed, empty for a missing value.

    Text that is not a JSON object is an error naming the item, never silently ``{}``.
    """
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    try:
        meta = json.loads(value)
    except (TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise DataError(f"record of item {item_id!r}: meta is not a JSON object: {str(value)[:80]!r}")
    return meta


def option_probs(df: pd.DataFrame, renormalise: bool = False) -> np.ndarray:
    """[n, K] probabilities exp(option_scores); rows with fewer options are padded with 0.

    ``renormalise``: divide each row by its sum (the full-vocabulary readout's letter
    probabilities do not sum to one; the other readouts' already do).
    """
    scores = df["option_scores"].tolist()
    width = max((len(s) for s in scores), default=0)
    out = np.zeros((len(scores), width))
    for i, s in enumerate(scores):
        out[i, : len(s)] = np.exp(np.asarray(s, dtype=np.float64))
    if renormalise:
        totals = out.sum(axis=1, keepdims=True)
        out = np.divide(out, totals, out=out.copy(), where=totals > 0)
    return out


def no_letter(df: pd.DataFrame) -> np.ndarray:
    """Mask of the letter_greedy rows whose generated text held no option letter."""
    if df.empty:
        return np.zeros(0, dtype=bool)
    return ((df["readout"] == GREEDY_READOUT) & (df["status"] == "ok") & (df["pred"] == -1)).to_numpy()


def apply_no_letter(df: pd.DataFrame, policy: str = "keep") -> pd.DataFrame:
    """The rows an analysis uses under ``metrics.no_letter``: ``keep`` all (no-letter rows count as wrong,
    see the module doc) or ``drop`` the no-letter rows (the reference study's released code)."""
    if policy not in NO_LETTER_POLICIES:
        raise DataError(f"metrics.no_letter: {policy!r} is not one of {', '.join(NO_LETTER_POLICIES)}")
    return df if policy == "keep" else df[~no_letter(df)]


def metric_arrays(df: pd.DataFrame) -> dict:
    """The arrays the metrics library takes, from scored ('ok') record rows of one readout."""
    return {
        "confidence": df["confidence"].to_numpy(dtype=np.float64),
        "correct": df["correct"].to_numpy(dtype=bool),
        "probs": option_probs(df),
        "gold": df["gold"].to_numpy(dtype=np.int64),
    }

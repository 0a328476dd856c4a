"""Selecting and summarising the input frames (records, summary tables) for the figures."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

from mmcal.analysis.stats import cluster_bootstrap_weights

GROUP_COLS = ("model", "dataset", "scenario", "prompt", "readout")


def select(df: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows matching every ``column=value`` (a list/tuple means "any of"); None means "any".

    A condition on a column the frame lacks is ignored, so one call works on records and on
    tables that were already reduced to one readout, say.
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


def scored(records: pd.DataFrame) -> pd.DataFrame:
    """Rows that were scored (status ok, a finite confidence, a prediction), ``correct`` as bool."""
    ok = pd.to_numeric(records["confidence"], errors="coerce").notna()
    if "status" in records.columns:
        ok &= records["status"].astype(str).eq("ok")
    if "pred" in records.columns:
        ok &= pd.to_numeric(records["pred"], errors="coerce").fillna(-1) >= 0
    out = records[ok.to_numpy()].copy()
    out["confidence"] = out["confidence"].astype(float)
    out["correct"] = out["correct"].astype(bool)
    if "cluster_id" not in out.columns:
        out["cluster_id"] = out.get("item_id", pd.Series(range(len(out)), index=out.index))
    return out


def require(df: pd.DataFrame, what: str) -> pd.DataFrame:
    if df.empty:
        raise ValueError(f"nothing to plot: no rows for {what}")
    return df


def varying(df: pd.DataFrame, cols=GROUP_COLS) -> list[str]:
    """The columns among ``cols`` that take more than one value (the ones worth labelling)."""
    return [c for c in cols if c in df.columns and df[c].nunique(dropna=False) > 1]


def group_label(keys: dict, cols) -> str:
    return " / ".join(str(keys[c]) for c in cols) if cols else ""


def parse_meta(value) -> dict:
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return {}
    try:
        meta = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def option_probs(option_scores) -> np.ndarray:
    """Per-option probabilities renormalised over the options (the full-vocabulary readout's
    log-probs do not sum to one)."""
    p = np.exp(np.asarray(list(option_scores), dtype=np.float64))
    total = p.sum()
    return p / total if total > 0 else p


def option_shift(scenario: str, meta: dict) -> int:
    """How far a scenario rotated the options: the item's ``option_shift`` metadata, else a
    ``shift<k>`` in the scenario name, else 0."""
    if meta.get("option_shift") is not None:
        return int(meta["option_shift"])
    match = re.search(r"shift(\d+)", str(scenario))
    return int(match.group(1)) if match else 0


def cluster_mean_ci(values, clusters, B: int = 200, seed: int = 0, level: float = 0.95):
    """(mean, lo, hi): a mean and its cluster-bootstrap percentile interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return np.nan, np.nan, np.nan
    reps = np.concatenate([w @ values / w.sum(axis=1) for w in cluster_bootstrap_weights(clusters, B, seed)])
    lo, hi = np.nanquantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(lo), float(hi)


def ci_errors(df: pd.DataFrame, metric: str):
    """Error-bar half-lengths [2, n] from ``<metric>_lo`` / ``_hi`` columns, or None without them."""
    if f"{metric}_lo" not in df.columns or f"{metric}_hi" not in df.columns:
        return None
    value = df[metric].to_numpy(float)
    lower = np.clip(value - df[f"{metric}_lo"].to_numpy(float), 0, None)
    upper = np.clip(df[f"{metric}_hi"].to_numpy(float) - value, 0, None)
    return np.vstack([np.nan_to_num(lower), np.nan_to_num(upper)])


def slug(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"

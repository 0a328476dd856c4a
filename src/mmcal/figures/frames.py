"""Summarising the input frames (records, summary tables) for the figures.

Rows are chosen with ``mmcal.records`` (``select``, ``scorable``), the one reader of the records
contract; intervals come from ``mmcal.analysis.stats``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from mmcal.analysis.stats import cluster_bootstrap_weights, percentile_interval
from mmcal.records import GROUP_KEYS


def require(df: pd.DataFrame, what: str) -> pd.DataFrame:
    if df.empty:
        raise ValueError(f"nothing to plot: no rows for {what}")
    return df


def varying(df: pd.DataFrame, cols=GROUP_KEYS) -> list[str]:
    """The columns among ``cols`` that take more than one value (the ones worth labelling)."""
    return [c for c in cols if c in df.columns and df[c].nunique(dropna=False) > 1]


def group_label(keys: dict, cols) -> str:
    return " / ".join(str(keys[c]) for c in cols) if cols else ""


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
    lo, hi = percentile_interval(reps, level)
    return float(values.mean()), lo, hi


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

"""Paired tests of self-assessment on IDK sets: does a prompt (or IDK training) change how often a
model admits what it cannot know, on the same items?"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmcal.analysis.idk import item_table
from mmcal.analysis.stats import bootstrap_pvalue, cluster_bootstrap_indices, derive_seed, holm, percentile_interval
from mmcal.records import select

IDK_RATES = {
    # name: (which items, which indicator)
    "admit_rate": (True, "abstained"),
    "false_idk_rate": (False, "abstained"),
    "answerable_accuracy": (False, "correct"),
}


def _side(records: pd.DataFrame, name: str, filters: dict) -> pd.DataFrame:
    unknown = [column for column in filters if column not in records.columns]
    if unknown:
        raise ValueError(f"IDK comparison {name!r}: filter on unknown column {unknown[0]!r}")
    return select(records, **filters)


def _rate(items: pd.DataFrame, unknowable: bool, column: str, idx=None) -> float:
    rows = items if idx is None else items.iloc[idx]
    sub = rows[rows["unknowable"] == unknowable]
    return float(sub[column].mean()) if len(sub) else float("nan")


def idk_paired(
    records: pd.DataFrame,
    comparisons: list[dict],
    B: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    split: str | None = "test",
) -> pd.DataFrame:
    """One row per (comparison, IDK rate): B − A with a cluster-bootstrap CI, p-value, Holm."""
    records = select(records, split=split)
    out = []
    for comp in comparisons:
        where = dict(comp.get("where") or {})
        side_a = item_table(_side(records, comp["name"], {**where, **comp["a"]}))[0]
        side_b = item_table(_side(records, comp["name"], {**where, **comp["b"]}))[0]
        paired = side_a.merge(side_b, on=["item_id", "cluster_id", "kind", "unknowable"], suffixes=("_a", "_b"))
        if paired.empty:
            continue
        draws = cluster_bootstrap_indices(paired["cluster_id"].to_numpy(), B, derive_seed(seed, comp["name"]))
        for name, (unknowable, column) in IDK_RATES.items():
            a = paired.rename(columns={f"{column}_a": column})
            b = paired.rename(columns={f"{column}_b": column})
            value_a, value_b = _rate(a, unknowable, column), _rate(b, unknowable, column)
            diffs = np.array([_rate(b, unknowable, column, i) - _rate(a, unknowable, column, i) for i in draws])
            lo, hi = percentile_interval(diffs, level)  # over the finite replicates
            out.append(
                {
                    "comparison": comp["name"],
                    "metric": name,
                    "n_paired": len(paired),
                    "value_a": value_a,
                    "value_b": value_b,
                    "diff": value_b - value_a,
                    "diff_lo": lo,
                    "diff_hi": hi,
                    "p_value": bootstrap_pvalue(diffs),
                }
            )
    df = pd.DataFrame(out)
    if not df.empty:
        ok = df["p_value"].notna()
        df.loc[ok, "p_holm"] = holm(df.loc[ok, "p_value"].to_numpy())
        df["significant"] = df["p_holm"] < (1 - level)
    return df

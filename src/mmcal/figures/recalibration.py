"""Recalibration figures: reliability before/after for one group, and ECE per recalibrator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.figures.frames import ci_errors, require
from mmcal.figures.reliability import plot_reliability_panels
from mmcal.figures.style import NEUTRAL_COLOR, PALETTE, metric_label, model_color, panel_grid, save_figure, styled
from mmcal.records import GROUP_KEYS, select


def _recalibrated_rows(after: pd.DataFrame) -> pd.DataFrame:
    """Rows that a recalibrator rewrote (``apply_to_records`` leaves the others untouched)."""
    if "recalibrator" in after.columns:
        return after[after["recalibrator"].notna()]
    return after


def plot_recalibration_reliability(
    before: pd.DataFrame,
    after: pd.DataFrame,
    out_stem: Path,
    *,
    label: str | None = None,
    bins: int = 10,
    n_boot: int = 200,
    seed: int = 0,
    dpi: int = 200,
) -> list[Path]:
    """Reliability of the same items before and after recalibration, side by side.

    ``after`` is a recalibrated copy of the records (``mmcal.calibration.apply_to_records``);
    ``before`` is cut down to the groups, splits and items of the recalibrated rows so both
    panels show the same items.
    """
    after = require(_recalibrated_rows(after), "recalibrated records")
    keys = [c for c in (*GROUP_KEYS, "split", "item_id") if c in before.columns and c in after.columns]
    before = require(
        before.merge(after[keys].drop_duplicates(), on=keys, how="inner"),
        "records before recalibration matching the recalibrated ones",
    )
    if label is None:
        label = str(after["recalibrator"].iloc[0]) if "recalibrator" in after.columns else "recalibrated"
    color = model_color(after["model"].iloc[0]) if "model" in after.columns else None
    colors = [NEUTRAL_COLOR, color or PALETTE[0]]
    return plot_reliability_panels(
        [("Before", before), (f"After: {label}", after)],
        out_stem,
        bins=bins,
        n_boot=n_boot,
        seed=seed,
        colors=colors,
        dpi=dpi,
    )


def _recalibrator_order(names) -> list[str]:
    names = list(dict.fromkeys(names))
    return (["none"] if "none" in names else []) + sorted(n for n in names if n != "none")


@styled
def plot_recalibration_metric(
    recal: pd.DataFrame,
    out_stem: Path,
    *,
    metric: str = "ece_10",
    readout: str | None = None,
    dataset: str | None = None,
    scenario: str | None = None,
    prompt: str | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Bars of ``metric`` (with CIs) per recalibrator ('none' = before), grouped by model."""
    rows = require(
        select(recal, readout=readout, dataset=dataset, scenario=scenario, prompt=prompt), "the recalibration bar chart"
    )
    if metric not in rows.columns:
        raise ValueError(f"the recalibration table has no column {metric!r}")
    # One bar per model x recalibrator: the remaining grouping columns go into the model label.
    label_cols = [c for c in GROUP_KEYS if c in rows.columns and (c == "model" or rows[c].nunique() > 1)]
    rows = rows.assign(_label=rows[label_cols].astype(str).agg(" / ".join, axis=1))
    labels = sorted(rows["_label"].unique())
    methods = _recalibrator_order(rows["recalibrator"])
    width = 0.8 / len(labels)
    fig, axes = panel_grid(
        1, panel_width=max(2.2, 0.45 * len(methods) * len(labels)), panel_height=2.1, legend_room=0.15
    )
    ax = axes[0]
    for j, label in enumerate(labels):
        part = rows[rows["_label"] == label].set_index("recalibrator").reindex(methods)
        x = np.arange(len(methods)) - 0.4 + width * (j + 0.5)
        model = part["model"].dropna().iloc[0]
        ax.bar(x, part[metric], width=width * 0.92, color=model_color(model), alpha=0.85, label=label)
        err = ci_errors(part.reset_index(), metric)
        ax.errorbar(x, part[metric], yerr=err, fmt="none", color="black", lw=0.7, capsize=1.5)
    ax.set_xticks(range(len(methods)), ["none\n(before)" if m == "none" else m for m in methods])
    ax.set_ylabel(metric_label(metric))
    ax.set_ylim(0, None)
    fig.legend(loc="outside upper center", ncol=min(3, len(labels)))
    return save_figure(fig, out_stem, dpi)


def plot_recalibration_ece(recal: pd.DataFrame, out_stem: Path, **kw) -> list[Path]:
    """ECE (10 bins) per recalibrator with CIs; see ``plot_recalibration_metric``."""
    return plot_recalibration_metric(recal, out_stem, metric="ece_10", **kw)

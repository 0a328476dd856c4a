"""Forest plot of paired differences (B - A) with their confidence intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.figures.frames import require
from mmcal.figures.style import CORRECT_COLOR, NEUTRAL_COLOR, metric_label, panel_grid, save_figure, styled

DEFAULT_METRICS = ("accuracy", "ece_10", "brier", "nll", "auroc")


def _significant(df: pd.DataFrame, alpha: float) -> np.ndarray:
    if "p_holm" in df.columns:
        return (pd.to_numeric(df["p_holm"], errors="coerce") < alpha).to_numpy()
    if "significant" in df.columns:
        return df["significant"].astype(bool).to_numpy()
    return np.zeros(len(df), dtype=bool)


@styled
def plot_forest(
    comparisons: pd.DataFrame, out_stem: Path, *, metrics=None, alpha: float = 0.05, dpi: int = 200
) -> list[Path]:
    """One panel per metric (scales differ), one row per comparison: diff = B - A with its CI,
    a zero line, filled markers where the Holm-corrected p-value is below ``alpha``."""
    require(comparisons, "the forest plot")
    present = list(dict.fromkeys(comparisons["metric"]))
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in present] or present
    metrics = [m for m in metrics if m in present]
    if not metrics:
        raise ValueError("nothing to plot: none of the requested metrics is in the comparisons")
    order = list(dict.fromkeys(comparisons["comparison"]))
    fig, axes = panel_grid(
        len(metrics),
        max_cols=len(metrics),
        panel_width=1.4,
        panel_height=0.3 + 0.22 * len(order),
        sharex=False,
        sharey=True,
        legend_room=0.25,
    )
    y_of = {name: len(order) - 1 - i for i, name in enumerate(order)}
    for ax, metric in zip(axes, metrics):
        rows = comparisons[comparisons["metric"] == metric]
        y = rows["comparison"].map(y_of).to_numpy(float)
        diff = rows["diff"].to_numpy(float)
        lo, hi = rows["diff_lo"].to_numpy(float), rows["diff_hi"].to_numpy(float)
        sig = _significant(rows, alpha)
        ax.axvline(0, color=NEUTRAL_COLOR, lw=0.7, ls="--", zorder=1)
        ax.hlines(y, lo, hi, color=CORRECT_COLOR, lw=1.0, zorder=2)
        ax.plot(diff[sig], y[sig], "o", color=CORRECT_COLOR, ms=4, zorder=3, label=f"Holm p < {alpha:g}")
        ax.plot(
            diff[~sig],
            y[~sig],
            "o",
            color=CORRECT_COLOR,
            markerfacecolor="white",
            ms=4,
            zorder=3,
            label="not significant",
        )
        ax.set_title(metric_label(metric))
        ax.margins(x=0.15)
        ax.locator_params(axis="x", nbins=4)
    axes[0].set_yticks(range(len(order)), list(reversed(order)))
    axes[0].set_ylim(-0.6, len(order) - 0.4)
    fig.supxlabel("Paired difference, B − A (95% CI)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=2)
    return save_figure(fig, out_stem, dpi)

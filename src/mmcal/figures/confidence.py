"""Confidence histograms of correct vs incorrect predictions, one panel per records group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.figures.frames import group_label, require, varying
from mmcal.figures.style import CORRECT_COLOR, INCORRECT_COLOR, panel_grid, save_figure, styled
from mmcal.records import scorable


@styled
def plot_confidence_histograms(
    records: pd.DataFrame, out_stem: Path, *, bins: int = 20, density: bool = False, max_cols: int = 4, dpi: int = 200
) -> list[Path]:
    """Histogram of confidence for correct and incorrect predictions, one panel per group
    (the group columns that vary name the panels)."""
    rows = require(scorable(records), "the confidence histograms")
    label_cols = varying(rows) or ["model"]
    groups = list(rows.groupby(label_cols, sort=True))
    fig, axes = panel_grid(len(groups), max_cols=max_cols, sharey=density)
    edges = np.linspace(0, 1, bins + 1)
    for ax, (keys, group) in zip(axes, groups):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for is_correct, color, name in ((True, CORRECT_COLOR, "Correct"), (False, INCORRECT_COLOR, "Incorrect")):
            values = group.loc[group["correct"] == is_correct, "confidence"]
            ax.hist(values, bins=edges, density=density, color=color, alpha=0.4, lw=0, label=name)
            ax.hist(values, bins=edges, density=density, color=color, histtype="step", lw=0.9)
        ax.set_title(group_label(dict(zip(label_cols, keys)), label_cols), fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1], ["0", ".25", ".5", ".75", "1"])
    for ax in axes:
        if ax.get_subplotspec().is_last_row():
            ax.set_xlabel("Confidence")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("Density" if density else "Items")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2)
    return save_figure(fig, out_stem, dpi)

"""The uncertainty metrics other benchmarks report, per group of ``summary.csv``: conformal prediction
sets (LLM-Uncertainty-Bench's LAC and APS: coverage against mean set size, the target 1 - alpha
dashed) and HELM's equal-mass ECE-10 against its selective accuracy at 10 % coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.analysis.metrics import CONFORMAL_ALPHA
from mmcal.figures.frames import require, varying
from mmcal.figures.style import NEUTRAL_COLOR, model_color, panel_grid, save_figure, styled
from mmcal.records import GROUP_KEYS

MARKERS = {"lac": "o", "aps": "s"}


def _label(row: pd.Series, keys: list[str]) -> str:
    return " / ".join(str(row[k]) for k in keys) or str(row["model"])


def _errorbar(ax, x, y, row, xkey, ykey, color, marker, filled=True):
    xerr = [[x - row[f"{xkey}_lo"]], [row[f"{xkey}_hi"] - x]]
    yerr = [[y - row[f"{ykey}_lo"]], [row[f"{ykey}_hi"] - y]]
    ax.errorbar(
        x,
        y,
        xerr=np.abs(xerr),
        yerr=np.abs(yerr),
        fmt=marker,
        color=color,
        markerfacecolor=color if filled else "white",
        ms=4,
        lw=0.8,
        capsize=1.5,
    )


@styled
def plot_reported_metrics(summary: pd.DataFrame, out_stem: Path, *, dpi: int = 200) -> list[Path]:
    """Left: conformal coverage vs mean set size (LAC filled circles, APS open squares) with 95 %
    intervals and the 1 - alpha target. Right: HELM's ECE-10 vs its selective accuracy at 10 %."""
    rows = require(summary.dropna(subset=["conformal_lac_coverage", "helm_ece_10"], how="all"), "reported metrics")
    keys = varying(rows, GROUP_KEYS)
    fig, (left, right) = panel_grid(2, max_cols=2, panel_width=2.6, panel_height=2.4, sharex=False, sharey=False)
    handles = {}
    one_per_model = rows["model"].is_unique
    for i, (_, row) in enumerate(rows.iterrows()):
        # a model's own colour when each model is one row; otherwise one colour per row
        color = model_color(row["model"]) if one_per_model else f"C{i % 10}"
        label = _label(row, keys)
        for score, marker in MARKERS.items():
            x, y = row[f"conformal_{score}_set_size"], row[f"conformal_{score}_coverage"]
            if np.isfinite(x) and np.isfinite(y):
                _errorbar(
                    left,
                    x,
                    y,
                    row,
                    f"conformal_{score}_set_size",
                    f"conformal_{score}_coverage",
                    color,
                    marker,
                    score == "lac",
                )
        if np.isfinite(row["helm_ece_10"]):
            _errorbar(
                right,
                row["helm_ece_10"],
                row["helm_acc_at_cov_10"],
                row,
                "helm_ece_10",
                "helm_acc_at_cov_10",
                color,
                "o",
            )
        handles.setdefault(label, right.plot([], [], "o", color=color, ms=4)[0])
    left.axhline(1 - CONFORMAL_ALPHA, color=NEUTRAL_COLOR, lw=0.7, ls="--")
    left.set_xlabel("mean set size (LAC ●, APS □)")
    left.set_ylabel(f"coverage (target {1 - CONFORMAL_ALPHA:g})")
    left.set_title(f"Conformal sets, α = {CONFORMAL_ALPHA:g}")
    right.set_xlabel("HELM ECE-10 (equal mass)")
    right.set_ylabel("accuracy of the 10 % most confident")
    right.set_title("HELM calibration / selective")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(3, len(handles)))
    return save_figure(fig, out_stem, dpi)


@styled
def plot_no_confidence(records: pd.DataFrame, out_stem: Path, *, dpi: int = 200) -> list[Path]:
    """In place of a reliability diagram, for records without a confidence (a generation-only log):
    the accuracy, and why nothing else can be drawn."""
    fig, (ax,) = panel_grid(1, panel_width=3.2, panel_height=1.2)
    ok = records[records["status"] == "ok"]
    text = (
        f"{records['model'].iloc[0]}: accuracy {ok['correct'].mean():.3f} (n = {len(ok)})\n"
        "no confidence in the log (only the generated answer):\nno reliability diagram"
    )
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_axis_off()
    return save_figure(fig, out_stem, dpi)

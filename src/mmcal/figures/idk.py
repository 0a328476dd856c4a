"""IDK figures: how often each model x prompt admits "I don't know", and at what cost.

``plot_idk_tradeoff`` reads the IDK metrics table (admit rate on unknowable items against the
false-IDK rate on answerable ones, 95 % CIs); ``plot_idk_confidence`` reads records of an IDK
data set (``meta``: ``answerable``, ``idk_index``, ``kind``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.lines as mlines
import matplotlib.patches as mpatches
import numpy as np
import pandas as pd

from mmcal.figures.frames import ci_errors, require
from mmcal.figures.style import (
    CORRECT_COLOR,
    INCORRECT_COLOR,
    MARKERS,
    NEUTRAL_COLOR,
    metric_label,
    model_color,
    panel_grid,
    save_figure,
    styled,
)
from mmcal.records import option_probs, parse_meta, scorable, select


@styled
def plot_idk_tradeoff(
    idk: pd.DataFrame,
    out_stem: Path,
    *,
    readout: str | None = "letter_restricted",
    dataset: str | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Admit rate vs false-IDK rate, one point per model (colour) x prompt (marker), with CIs.
    Top left is best: admits what it cannot know, never refuses what it can."""
    rows = select(idk, readout=readout, dataset=dataset)
    rows = require(rows.dropna(subset=["admit_rate", "false_idk_rate"]), "the IDK trade-off plot")
    fig, axes = panel_grid(1, panel_height=2.6, legend_room=0.7)
    ax = axes[0]
    # On the diagonal, choosing IDK does not tell unknowable from answerable items.
    ax.plot([0, 1], [0, 1], ls="--", lw=0.7, color=NEUTRAL_COLOR, zorder=1)
    prompts = sorted(rows["prompt"].unique())
    marker_of = {p: MARKERS[i % len(MARKERS)] for i, p in enumerate(prompts)}
    for i in range(len(rows)):
        row = rows.iloc[[i]]
        ax.errorbar(
            row["false_idk_rate"],
            row["admit_rate"],
            xerr=ci_errors(row, "false_idk_rate"),
            yerr=ci_errors(row, "admit_rate"),
            fmt=marker_of[row["prompt"].iloc[0]],
            color=model_color(row["model"].iloc[0]),
            ms=4.5,
            capsize=1.5,
            lw=0.8,
            zorder=3,
        )
    ax.set(
        xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=metric_label("false_idk_rate"), ylabel=metric_label("admit_rate")
    )
    ax.set_aspect("equal")
    model_handles = [mpatches.Patch(color=model_color(m), label=m) for m in sorted(rows["model"].unique())]
    prompt_handles = [
        mlines.Line2D([], [], color=NEUTRAL_COLOR, marker=marker_of[p], ls="none", label=p) for p in prompts
    ]
    chance = mlines.Line2D([], [], color=NEUTRAL_COLOR, ls="--", lw=0.7, label="no discrimination")
    fig.legend(handles=model_handles + prompt_handles + [chance], loc="outside lower center", ncol=2)
    return save_figure(fig, out_stem, dpi)


def idk_items(records: pd.DataFrame) -> pd.DataFrame:
    """Scored IDK records with ``answerable`` (bool), ``kind`` and ``p_idk`` (the probability of
    the IDK option, renormalised over the options) taken from ``meta``."""
    rows = scorable(records)
    metas = [parse_meta(m, item_id) for m, item_id in zip(rows["meta"], rows["item_id"])]
    probs = option_probs(rows, renormalise=True)
    widths = [len(s) for s in rows["option_scores"]]
    p_idk = [
        float(probs[j, int(m["idk_index"])])
        if m.get("idk_index") is not None and widths[j] > int(m["idk_index"])
        else np.nan
        for j, m in enumerate(metas)
    ]
    return rows.assign(
        answerable=[bool(m.get("answerable", True)) for m in metas],
        kind=[str(m.get("kind", "")) for m in metas],
        p_idk=p_idk,
    )


@styled
def plot_idk_confidence(
    records: pd.DataFrame,
    out_stem: Path,
    *,
    value: str = "confidence",
    readout: str | None = "letter_restricted",
    bins: int = 20,
    dpi: int = 200,
) -> list[Path]:
    """Histograms of ``value`` (``confidence`` or ``p_idk``) on unknowable vs answerable items,
    one panel per model (rows) x prompt (columns), as shares of each item type."""
    rows = require(idk_items(select(records, readout=readout)), "the IDK confidence histograms")
    models, prompts = sorted(rows["model"].unique()), sorted(rows["prompt"].unique())
    fig, axes = panel_grid(
        len(models) * len(prompts), max_cols=len(prompts), panel_width=1.7, panel_height=1.3, legend_room=0.15
    )
    edges = np.linspace(0, 1, bins + 1)
    for k, ax in enumerate(axes):
        model, prompt = models[k // len(prompts)], prompts[k % len(prompts)]
        part = rows[(rows["model"] == model) & (rows["prompt"] == prompt)]
        for answerable, color, label in ((False, INCORRECT_COLOR, "unknowable"), (True, CORRECT_COLOR, "answerable")):
            values = part.loc[part["answerable"] == answerable, value].dropna()
            if values.empty:
                continue
            weights = np.full(len(values), 1.0 / len(values))
            ax.hist(values, bins=edges, weights=weights, color=color, alpha=0.4, lw=0, label=label)
            ax.hist(values, bins=edges, weights=weights, color=color, histtype="step", lw=0.9)
        ax.set_title(f"{model}\n{prompt}" if len(models) > 1 else prompt, fontsize=6.5)
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.5, 1], ["0", ".5", "1"])
        spec = ax.get_subplotspec()
        if spec.is_last_row():
            ax.set_xlabel("P(IDK option)" if value == "p_idk" else "Confidence")
        if spec.is_first_col():
            ax.set_ylabel("Share of items")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=2)
    return save_figure(fig, out_stem, dpi)

"""Top-label reliability diagrams from records: one group, several groups, or panels side by side.

A panel shows the accuracy of each equal-width confidence bin (bars) against the diagonal, the
mean confidence of each bin (markers), a 95 % cluster-bootstrap band of the per-bin accuracy,
and the number of items per bin underneath; the legend carries the ECE of the same bins.
Bins and ECE are ``mmcal.analysis.metrics``' ((b/M, (b+1)/M], confidence 0 in the first bin),
the band's intervals ``mmcal.analysis.stats``'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mmcal.analysis import metrics
from mmcal.analysis.metrics import equal_width_bin_index
from mmcal.analysis.stats import cluster_bootstrap_weights, percentile_interval
from mmcal.figures.frames import require, slug
from mmcal.figures.style import NEUTRAL_COLOR, ONE_COLUMN, TWO_COLUMN, model_color, save_figure, styled
from mmcal.records import GROUP_KEYS, scorable


def reliability_bins(confidence, correct, bins: int = 10) -> pd.DataFrame:
    """Per equal-width bin: edges, count, accuracy and mean confidence (NaN when empty)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    idx = equal_width_bin_index(confidence, bins)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=bins) / count
        conf = np.bincount(idx, weights=confidence, minlength=bins) / count
    edges = np.arange(bins + 1) / bins
    return pd.DataFrame(
        {
            "bin": np.arange(bins),
            "left": edges[:-1],
            "right": edges[1:],
            "count": count,
            "accuracy": acc,
            "confidence": conf,
        }
    )


def reliability_band(
    confidence, correct, clusters, bins: int = 10, n_boot: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band of each bin's accuracy over a cluster bootstrap (items of one image or
    source are resampled together); NaN for bins empty in every replicate."""
    confidence = np.asarray(confidence, dtype=np.float64)
    onehot = np.eye(bins)[equal_width_bin_index(confidence, bins)]
    hits = onehot * np.asarray(correct, dtype=np.float64)[:, None]
    reps = []
    for w in cluster_bootstrap_weights(clusters, n_boot, seed):
        with np.errstate(invalid="ignore", divide="ignore"):
            reps.append((w @ hits) / (w @ onehot))
    reps = np.concatenate(reps)
    lo, hi = np.array([percentile_interval(reps[:, b], level) for b in range(bins)]).T
    return lo, hi


def _panel_color(records: pd.DataFrame) -> str:
    if "model" in records.columns and records["model"].nunique() == 1:
        return model_color(records["model"].iloc[0])
    return NEUTRAL_COLOR


def draw_reliability(
    ax,
    ax_count,
    records: pd.DataFrame,
    *,
    bins: int = 10,
    n_boot: int = 200,
    seed: int = 0,
    color: str | None = None,
    title: str | None = None,
) -> float:
    """Draw one reliability panel (main axis + count axis) and return its ECE."""
    rows = require(scorable(records), title or "the reliability diagram")
    color = color or _panel_color(rows)
    table = reliability_bins(rows["confidence"], rows["correct"], bins)
    ece = metrics.ece(rows["confidence"], rows["correct"], n_bins=bins)
    lo, hi = reliability_band(rows["confidence"], rows["correct"], rows["cluster_id"], bins, n_boot, seed)
    width = 1.0 / bins
    centers = (table["left"] + table["right"]).to_numpy() / 2
    filled = table["count"].to_numpy() > 0

    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=NEUTRAL_COLOR, label="Ideal", zorder=1)
    ax.bar(
        centers[filled],
        table["accuracy"][filled],
        width=width,
        color=color,
        alpha=0.75,
        edgecolor="white",
        linewidth=0.5,
        zorder=2,
        label=f"Accuracy (ECE = {ece:.3f})",
    )
    band = np.isfinite(lo) & filled
    acc = table["accuracy"].to_numpy()
    ax.errorbar(
        centers[band],
        acc[band],
        yerr=[np.clip(acc - lo, 0, None)[band], np.clip(hi - acc, 0, None)[band]],
        ls="none",
        color="black",
        lw=0.7,
        capsize=1.5,
        capthick=0.7,
        zorder=3,
        label="95% CI",
    )
    ax.plot(
        centers[filled],
        table["confidence"][filled],
        ls="none",
        marker="D",
        ms=2.5,
        color="black",
        markerfacecolor="white",
        markeredgewidth=0.7,
        label="Mean conf.",
        zorder=4,
    )
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="Accuracy")
    if title:
        ax.set_title(title)
    # The panel's own legend names its ECE; the shared items (diagonal, CI, markers) go in a
    # figure legend so they are not repeated in every panel.
    handles, labels = ax.get_legend_handles_labels()
    accuracy_entry = [i for i, lab in enumerate(labels) if lab.startswith("Accuracy")]
    ax.legend(
        [handles[i] for i in accuracy_entry],
        [labels[i] for i in accuracy_entry],
        loc="upper left",
        frameon=True,
        framealpha=0.85,
        edgecolor="none",
        handlelength=1.0,
        borderaxespad=0.3,
    )
    plt.setp(ax.get_xticklabels(), visible=False)

    ax_count.bar(
        centers[filled], table["count"][filled], width=width, color=color, alpha=0.75, edgecolor="white", linewidth=0.5
    )
    ax_count.set(xlim=(0, 1), xlabel="Confidence", ylabel="Count")
    # Count axes may be shared across panels: never shrink below what an earlier panel needed.
    top = table["count"].max() * 1.45
    ax_count.set_ylim(0, max(top, ax_count.get_ylim()[1]))
    ax_count.set_yticks([])
    if bins <= 12:  # numbers stay legible up to about a dozen bins per panel
        for x, c in zip(centers[filled], table["count"][filled]):
            ax_count.text(x, c, str(int(c)), ha="center", va="bottom", fontsize=5.5)
    ax_count.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", ".25", ".5", ".75", "1"])
    return ece


def _default_title(records: pd.DataFrame) -> str:
    keys = {c: records[c].iloc[0] for c in GROUP_KEYS if c in records.columns and len(records)}
    # model and dataset on the first line, scenario, prompt and readout on the second
    first = " · ".join(str(keys[c]) for c in GROUP_KEYS[:2] if c in keys)
    second = " · ".join(str(keys[c]) for c in GROUP_KEYS[2:] if c in keys)
    return "\n".join(part for part in (first, second) if part)


@styled
def plot_reliability_panels(
    panels: Sequence[tuple[str, pd.DataFrame]],
    out_stem: Path,
    *,
    bins: int = 10,
    n_boot: int = 200,
    seed: int = 0,
    colors: Sequence[str] | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Reliability panels side by side, sharing axes; ``panels`` = [(title, records), ...]."""
    if not panels:
        raise ValueError("nothing to plot: no reliability panels given")
    n = len(panels)
    width = ONE_COLUMN if n == 1 else min(TWO_COLUMN, 2.3 * n)
    fig, axes = plt.subplots(
        2,
        n,
        figsize=(width, 3.2),
        sharex=True,
        sharey="row",
        gridspec_kw={"height_ratios": [3, 1]},
        squeeze=False,
        layout="constrained",
    )
    fig.get_layout_engine().set(h_pad=0.02, hspace=0.0, wspace=0.02)
    for j, (title, records) in enumerate(panels):
        color = colors[j] if colors is not None else None
        draw_reliability(axes[0, j], axes[1, j], records, bins=bins, n_boot=n_boot, seed=seed, color=color, title=title)
        if j > 0:
            axes[0, j].set_ylabel("")
            axes[1, j].set_ylabel("")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    shared = [i for i, lab in enumerate(labels) if not lab.startswith("Accuracy")]
    fig.legend(
        [handles[i] for i in shared],
        [labels[i] for i in shared],
        loc="outside lower center",
        ncol=len(shared),
        handlelength=1.2,
        columnspacing=1.2,
    )
    return save_figure(fig, out_stem, dpi)


def plot_reliability(
    records: pd.DataFrame,
    out_stem: Path,
    *,
    bins: int = 10,
    n_boot: int = 200,
    seed: int = 0,
    title: str | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Reliability diagram of one (model, dataset, scenario, prompt, readout) group."""
    present = [c for c in GROUP_KEYS if c in records.columns]
    groups = records[present].drop_duplicates()
    if len(groups) > 1:
        raise ValueError(
            f"plot_reliability takes one group, got {len(groups)}; use plot_reliability_groups or select the rows first"
        )
    title = _default_title(records) if title is None else title
    return plot_reliability_panels([(title, records)], out_stem, bins=bins, n_boot=n_boot, seed=seed, dpi=dpi)


def plot_reliability_groups(
    records: pd.DataFrame,
    out_dir: Path,
    *,
    prefix: str = "reliability",
    bins: int = 10,
    n_boot: int = 200,
    seed: int = 0,
    dpi: int = 200,
) -> list[Path]:
    """One reliability diagram per group, named ``<prefix>_<model>_<dataset>_..._<readout>``."""
    present = [c for c in GROUP_KEYS if c in records.columns]
    paths: list[Path] = []
    for keys, group in scorable(records).groupby(present, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        stem = Path(out_dir) / "_".join([prefix, *(slug(k) for k in keys)])
        paths += plot_reliability(group, stem, bins=bins, n_boot=n_boot, seed=seed, dpi=dpi)
    return paths


def plot_reliability_pair(
    records_a: pd.DataFrame,
    records_b: pd.DataFrame,
    out_stem: Path,
    *,
    labels: tuple[str, str] = ("A", "B"),
    bins: int = 10,
    n_boot: int = 200,
    seed: int = 0,
    dpi: int = 200,
) -> list[Path]:
    """Two reliability diagrams side by side on shared axes (two models or two scenarios)."""
    return plot_reliability_panels(
        [(labels[0], records_a), (labels[1], records_b)], out_stem, bins=bins, n_boot=n_boot, seed=seed, dpi=dpi
    )

"""Text vs image: how accuracy, confidence and entropy move with what the model is shown.

``plot_text_vs_image`` reads the summary table (one point per model and scenario, 95 % CI);
``entropy_shift`` / ``plot_entropy_shift`` compare each item's entropy with a description added
to the image against the image alone, separately for descriptions that agree or conflict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.figures.frames import ci_errors, cluster_mean_ci, require
from mmcal.figures.style import (
    NEUTRAL_COLOR,
    PALETTE,
    metric_label,
    model_color,
    panel_grid,
    save_figure,
    scenario_label,
    styled,
)
from mmcal.records import GROUP_KEYS, scorable, select

TEXT_IMAGE_SCENARIOS = ("image", "blind", "text-desc", "image-desc-consistent", "image-desc-conflicting")
DESCRIPTION_CONDITIONS = {"consistent": "image-desc-consistent", "conflicting": "image-desc-conflicting"}


def _dodge(n: int, width: float = 0.5) -> np.ndarray:
    """Horizontal offsets that spread ``n`` series around each category."""
    return np.zeros(1) if n == 1 else np.linspace(-width / 2, width / 2, n)


@styled
def plot_text_vs_image(
    summary: pd.DataFrame,
    out_stem: Path,
    *,
    scenarios=None,
    metrics=("accuracy", "mean_confidence", "mean_entropy"),
    readout: str | None = "letter_restricted",
    dataset: str | None = None,
    prompt: str | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Per scenario (rows) and model (colour): each metric with its CI, one panel per metric."""
    rows = select(summary, readout=readout, dataset=dataset, prompt=prompt)
    if scenarios is None:
        scenarios = [s for s in TEXT_IMAGE_SCENARIOS if s in set(rows["scenario"])]
    rows = require(select(rows, scenario=list(scenarios)), "the text-vs-image figure")
    metrics = [m for m in metrics if m in rows.columns]
    if not metrics:
        raise ValueError("nothing to plot: the summary has none of the requested metrics")
    scenarios = [s for s in scenarios if s in set(rows["scenario"])]
    models = sorted(rows["model"].unique())
    offsets = _dodge(len(models), 0.4)
    # Scenarios on the y axis (top to bottom) so their names read horizontally, once.
    fig, axes = panel_grid(
        len(metrics),
        max_cols=3,
        panel_width=2.25,
        panel_height=0.5 + 0.28 * len(scenarios),
        sharey=True,
        sharex=False,
        legend_room=0.2,
    )
    y_of = {s: len(scenarios) - 1 - i for i, s in enumerate(scenarios)}
    for ax, metric in zip(axes, metrics):
        for model, dy in zip(models, offsets):
            part = rows[rows["model"] == model]
            y = part["scenario"].map(y_of).to_numpy(float) - dy
            ax.errorbar(
                part[metric],
                y,
                xerr=ci_errors(part, metric),
                fmt="o",
                ms=3.5,
                color=model_color(model),
                capsize=1.5,
                lw=0.9,
                label=model,
            )
        ax.set_xlabel(metric_label(metric))
        if metric in ("accuracy", "mean_confidence"):
            ax.set_xlim(0, 1.02)
        ax.grid(axis="y", color="0.92", lw=0.5)
    axes[0].set_yticks(range(len(scenarios)), [scenario_label(s) for s in reversed(scenarios)])
    axes[0].set_ylim(-0.6, len(scenarios) - 0.4)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(4, len(models)))
    return save_figure(fig, out_stem, dpi)


def entropy_shift(
    records: pd.DataFrame, *, baseline: str = "image", conditions=None, readout: str | None = "letter_restricted"
) -> pd.DataFrame:
    """Per item: entropy with a description minus entropy with the image alone.

    ``conditions`` maps a label to the scenario to compare (default: consistent and conflicting
    descriptions). Items are matched on (model, dataset, prompt, readout, item_id); items missing
    from either scenario are left out. Columns: model, dataset, prompt, readout, condition,
    item_id, cluster_id, entropy_base, entropy, delta_entropy.
    """
    conditions = dict(conditions or DESCRIPTION_CONDITIONS)
    rows = scorable(select(records, readout=readout))
    # an item's rows in the two scenarios: its group keys bar the scenario
    keys = [c for c in (*GROUP_KEYS, "item_id") if c != "scenario" and c in rows.columns]
    base = rows[rows["scenario"] == baseline][keys + ["entropy"]].rename(columns={"entropy": "entropy_base"})
    parts = []
    for label, scenario in conditions.items():
        other = rows[rows["scenario"] == scenario][keys + ["cluster_id", "entropy"]]
        merged = other.merge(base, on=keys, how="inner")
        merged["condition"] = label
        parts.append(merged)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if out.empty:
        return out
    out["delta_entropy"] = out["entropy"].astype(float) - out["entropy_base"].astype(float)
    return out


@styled
def plot_entropy_shift(
    records: pd.DataFrame,
    out_stem: Path,
    *,
    baseline: str = "image",
    conditions=None,
    readout: str | None = "letter_restricted",
    n_boot: int = 200,
    seed: int = 0,
    dpi: int = 200,
) -> list[Path]:
    """Per model and condition: items' entropy change (points) and its mean with a
    cluster-bootstrap 95 % CI; below zero = adding the description made the model surer."""
    shifts = require(
        entropy_shift(records, baseline=baseline, conditions=conditions, readout=readout),
        f"entropy shifts against scenario {baseline!r}",
    )
    models = sorted(shifts["model"].unique())
    labels = list(dict.fromkeys(shifts["condition"]))
    offsets = _dodge(len(labels), 0.45)
    rng = np.random.default_rng(seed)
    fig, ax = panel_grid(1, panel_height=2.2, legend_room=0.15)
    ax = ax[0]
    ax.axhline(0, color=NEUTRAL_COLOR, lw=0.7, ls="--", zorder=1)
    for k, (label, dx) in enumerate(zip(labels, offsets)):
        color = PALETTE[(k + 2) % len(PALETTE)]  # green / purple: not a model colour
        for i, model in enumerate(models):
            part = shifts[(shifts["model"] == model) & (shifts["condition"] == label)]
            if part.empty:
                continue
            jitter = rng.uniform(-0.06, 0.06, len(part))
            ax.plot(i + dx + jitter, part["delta_entropy"], ".", ms=2, alpha=0.25, color=color, zorder=2)
            mean, lo, hi = cluster_mean_ci(part["delta_entropy"], part["cluster_id"], n_boot, seed)
            ax.errorbar(
                i + dx,
                mean,
                yerr=[[mean - lo], [hi - mean]],
                fmt="o",
                ms=4,
                color=color,
                markeredgecolor="black",
                markeredgewidth=0.5,
                capsize=2,
                lw=1.0,
                zorder=3,
                label=f"{label} description" if i == 0 else None,
            )
    ax.set_xticks(range(len(models)), models, fontsize=7)
    ax.set_xlim(-0.6, len(models) - 0.4)
    ax.set_ylabel(f"Entropy change vs {baseline!r} (nats)")
    fig.legend(loc="outside upper center", ncol=len(labels))
    return save_figure(fig, out_stem, dpi)

"""Letter-position bias: does accuracy or confidence depend on where the gold option sits?

Reads records of the option-shift scenarios (options rotated by k; ``image`` is k = 0).
``position_bias`` gives accuracy and mean confidence by gold letter; ``permutation_average``
averages each item's option distribution over the rotations (mapped back to the original option
order), which removes any preference for a letter (cf. Zheng et al. 2024, "Large language
models are not robust multiple choice selectors").
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.engine.scenarios import rotation, rotation_rows
from mmcal.figures.frames import cluster_mean_ci, option_shift, require
from mmcal.figures.style import NEUTRAL_COLOR, model_color, panel_grid, save_figure, styled
from mmcal.records import GROUP_KEYS, option_probs, parse_meta, scorable, select


def shift_scenarios(records: pd.DataFrame, baseline: str = "image") -> list[str]:
    """The baseline plus every scenario whose name says it shifts the options."""
    names = list(dict.fromkeys(records["scenario"]))
    return [s for s in names if s == baseline or "shift" in str(s)]


def position_bias(records: pd.DataFrame, *, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Accuracy and mean confidence (cluster-bootstrap 95 % CIs) per model and gold position."""
    rows = scorable(records)
    out = []
    for (model, gold), part in rows.groupby(["model", "gold"], sort=True):
        acc = cluster_mean_ci(part["correct"].astype(float), part["cluster_id"], n_boot, seed)
        conf = cluster_mean_ci(part["confidence"], part["cluster_id"], n_boot, seed)
        out.append(
            {
                "model": model,
                "gold": int(gold),
                "n": len(part),
                "accuracy": acc[0],
                "accuracy_lo": acc[1],
                "accuracy_hi": acc[2],
                "mean_confidence": conf[0],
                "mean_confidence_lo": conf[1],
                "mean_confidence_hi": conf[2],
            }
        )
    return pd.DataFrame(out)


def permutation_average(records: pd.DataFrame) -> pd.DataFrame:
    """Per item: mean confidence / accuracy over its rotations, and the confidence / correctness
    of the permutation-averaged distribution: each of an n-option item's n rotations counted once
    (a shift beyond n repeats a rotation). Items not seen under all their rotations are left out,
    counted in ``attrs['left_out']``."""
    rows = scorable(records)
    rows = rows[rows["gold"].astype(int) >= 0]
    # an item's rows under every rotation: its group keys bar the scenario
    keys = [c for c in (*GROUP_KEYS, "item_id") if c != "scenario" and c in rows.columns]
    out, left_out = [], 0
    for key, part in rows.groupby(keys, sort=True):
        n = len(part["option_scores"].iloc[0])
        shifts = [option_shift(s, parse_meta(m, i)) for s, m, i in zip(part["scenario"], part["meta"], part["item_id"])]
        picked = rotation_rows(shifts, n)
        if picked is None or n < 2:
            left_out += 1
            continue
        part = part.iloc[picked]
        aligned = []
        probs = option_probs(part, renormalise=True)
        for j, (scenario, scores, meta, item_id, gold) in enumerate(
            zip(part["scenario"], part["option_scores"], part["meta"], part["item_id"], part["gold"])
        ):
            p = probs[j, : len(scores)]
            k = rotation(option_shift(scenario, parse_meta(meta, item_id)), len(p))
            aligned.append(np.roll(p, -k))  # shifted option (i + k) mod n is original option i
            original_gold = (int(gold) - k) % len(p)
        mean_p = np.mean(aligned, axis=0)
        out.append(
            {
                **dict(zip(keys, key)),
                "cluster_id": part["cluster_id"].iloc[0],
                "n_rotations": len(part),
                "mean_confidence": part["confidence"].mean(),
                "mean_accuracy": part["correct"].astype(float).mean(),
                "averaged_confidence": float(mean_p.max()),
                "averaged_correct": bool(int(np.argmax(mean_p)) == original_gold),
            }
        )
    columns = [*keys, "cluster_id", "n_rotations", "mean_confidence", "mean_accuracy"]
    # the columns even when no item was seen under all its rotations (a run with only some shifts)
    averaged = pd.DataFrame(out, columns=[*columns, "averaged_confidence", "averaged_correct"])
    averaged.attrs["left_out"] = left_out
    return averaged


def _per_rotation(rows: pd.DataFrame, averaged: pd.DataFrame, model: str, scenarios, n_boot, seed):
    """(labels, [(acc, lo, hi)], [(conf, lo, hi)]) per rotation plus the permutation average."""
    labels, acc, conf = [], [], []
    for scenario in scenarios:
        part = rows[(rows["model"] == model) & (rows["scenario"] == scenario)]
        if part.empty:
            continue
        k = option_shift(scenario, parse_meta(part["meta"].iloc[0], part["item_id"].iloc[0]) if "meta" in part else {})
        labels.append(f"+{k}" if k else "0")
        acc.append(cluster_mean_ci(part["correct"].astype(float), part["cluster_id"], n_boot, seed))
        conf.append(cluster_mean_ci(part["confidence"], part["cluster_id"], n_boot, seed))
    avg = averaged[averaged["model"] == model]
    if not avg.empty:
        labels.append("avg.")
        acc.append(cluster_mean_ci(avg["averaged_correct"].astype(float), avg["cluster_id"], n_boot, seed))
        conf.append(cluster_mean_ci(avg["averaged_confidence"], avg["cluster_id"], n_boot, seed))
    return labels, acc, conf


def _errorbar(ax, x, stats, **kw):
    stats = np.asarray(stats, dtype=float).reshape(-1, 3)
    yerr = np.vstack([stats[:, 0] - stats[:, 1], stats[:, 2] - stats[:, 0]]).clip(0)
    ax.errorbar(x, stats[:, 0], yerr=yerr, capsize=1.5, lw=0.9, ms=3.5, **kw)


@styled
def plot_position_bias(
    records: pd.DataFrame,
    out_stem: Path,
    *,
    scenarios=None,
    baseline: str = "image",
    readout: str | None = "letter_restricted",
    n_boot: int = 200,
    seed: int = 0,
    dpi: int = 200,
) -> list[Path]:
    """Three panels: accuracy and mean confidence by gold letter (pooled over rotations), and
    per rotation vs the permutation-averaged prediction."""
    rows = select(records, readout=readout)
    scenarios = list(scenarios) if scenarios is not None else shift_scenarios(rows, baseline)
    rows = require(scorable(select(rows, scenario=scenarios)), "the position-bias figure")
    bias = position_bias(rows, n_boot=n_boot, seed=seed)
    averaged = permutation_average(rows)
    models = sorted(rows["model"].unique())
    offsets = np.zeros(1) if len(models) == 1 else np.linspace(-0.15, 0.15, len(models))
    fig, axes = panel_grid(
        3, max_cols=3, panel_width=2.25, panel_height=1.9, sharex=False, sharey=True, legend_room=0.2
    )
    n_letters = int(bias["gold"].max()) + 1
    for model, dx in zip(models, offsets):
        color = model_color(model)
        part = bias[bias["model"] == model]
        x = part["gold"].to_numpy(float) + dx
        _errorbar(axes[0], x, part[["accuracy", "accuracy_lo", "accuracy_hi"]], fmt="o", color=color, label=model)
        _errorbar(
            axes[1], x, part[["mean_confidence", "mean_confidence_lo", "mean_confidence_hi"]], fmt="o", color=color
        )
        labels, acc, conf = _per_rotation(rows, averaged, model, scenarios, n_boot, seed)
        x = np.arange(len(labels)) + dx
        _errorbar(axes[2], x - 0.08, acc, fmt="o", color=color)
        _errorbar(axes[2], x + 0.08, conf, fmt="D", color=color, markerfacecolor="white")
        axes[2].set_xticks(range(len(labels)), labels)
    letters = list(string.ascii_uppercase[:n_letters])
    for ax, title in zip(axes[:2], ("Accuracy by gold position", "Confidence by gold position")):
        ax.set_xticks(range(n_letters), letters)
        ax.set_xlabel("Gold option letter")
        ax.set_title(title)
    axes[0].set_ylabel("Accuracy / mean confidence")
    axes[2].set_xlabel("Option rotation")
    axes[2].set_title("Rotations vs permutation average", fontsize=7.5)
    axes[2].plot([], [], "o", color=NEUTRAL_COLOR, label="accuracy")
    axes[2].plot([], [], "D", color=NEUTRAL_COLOR, markerfacecolor="white", label="confidence")
    axes[2].legend(loc="lower right")
    axes[0].set_ylim(0, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(4, len(models)))
    return save_figure(fig, out_stem, dpi)

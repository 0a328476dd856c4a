"""Prompt search: how ECE and accuracy of the candidate prompts evolve over the rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmcal.figures.frames import require
from mmcal.figures.style import NEUTRAL_COLOR, metric_label, model_color, panel_grid, save_figure, styled


def best_per_round(trajectory: pd.DataFrame) -> pd.DataFrame:
    """The round's best candidate: rank 1 where ranks are given (the search's own criterion,
    ECE within accuracy bands), else the lowest ECE."""
    if "rank" in trajectory.columns and trajectory["rank"].notna().any():
        ordered = trajectory.sort_values(["round", "rank", "ece_10"])
    else:
        ordered = trajectory.sort_values(["round", "ece_10"])
    return ordered.groupby("round", sort=True).head(1)


def _as_frames(trajectories) -> dict[str, pd.DataFrame]:
    if isinstance(trajectories, pd.DataFrame):
        if "model" in trajectories.columns:
            return {str(m): g for m, g in trajectories.groupby("model", sort=True)}
        return {"": trajectories}
    return {str(k): v for k, v in trajectories.items()}


@styled
def plot_prompt_trajectory(
    trajectories, out_stem: Path, *, best: dict | None = None, seed: int = 0, dpi: int = 200
) -> list[Path]:
    """ECE (top) and accuracy (bottom) of every candidate per round (small points; survivors
    outlined) and of each round's best (line). ``trajectories``: one trajectory frame, or a dict
    model -> frame; ``best``: the best-prompt JSON (or a dict model -> JSON), whose test-split
    values are drawn as a final point with its CI."""
    frames = {m: require(df, f"the prompt-search trajectory {m}".strip()) for m, df in _as_frames(trajectories).items()}
    if best is not None and "test" in best:
        best = {m: best for m in frames}
    rng = np.random.default_rng(seed)
    fig, axes = panel_grid(
        2, max_cols=1, panel_width=3.3, panel_height=1.35, sharex=True, sharey=False, legend_room=0.15
    )
    last_round = max(int(df["round"].max()) for df in frames.values())
    for model, df in frames.items():
        color = model_color(model) if model else model_color("prompt search")
        top = best_per_round(df)
        survived = df["survived"].astype(bool).to_numpy() if "survived" in df.columns else np.zeros(len(df), bool)
        x = df["round"].to_numpy(float) + rng.uniform(-0.12, 0.12, len(df))
        for ax, metric in zip(axes, ("ece_10", "accuracy")):
            y = df[metric].to_numpy(float)
            ax.plot(x[~survived], y[~survived], ".", ms=3, color=NEUTRAL_COLOR, alpha=0.5, zorder=2)
            ax.plot(
                x[survived], y[survived], "o", ms=3, color=color, markerfacecolor="none", markeredgewidth=0.7, zorder=3
            )
            ax.plot(
                top["round"],
                top[metric],
                "-o",
                ms=3,
                color=color,
                lw=1.1,
                zorder=4,
                label=f"{model} best (calib)".strip() if metric == "ece_10" else None,
            )
            test = (best or {}).get(model, {}).get("test", {})
            if metric in test:
                lo, hi = test.get(f"{metric}_lo", test[metric]), test.get(f"{metric}_hi", test[metric])
                ax.errorbar(
                    [last_round + 0.6],
                    [test[metric]],
                    yerr=[[test[metric] - lo], [hi - test[metric]]],
                    fmt="*",
                    ms=6,
                    color=color,
                    capsize=1.5,
                    lw=0.8,
                    zorder=5,
                    label=f"{model} best (test)".strip() if metric == "ece_10" else None,
                )
    axes[0].plot([], [], ".", color=NEUTRAL_COLOR, label="candidate")
    axes[0].plot([], [], "o", color=NEUTRAL_COLOR, markerfacecolor="none", label="survivor")
    axes[0].set_ylabel(metric_label("ece_10"))
    axes[1].set_ylabel(metric_label("accuracy"))
    axes[1].set_xlabel("Search round")
    axes[1].set_xticks(range(0, last_round + 1))
    fig.legend(loc="outside upper center", ncol=2)
    return save_figure(fig, out_stem, dpi)

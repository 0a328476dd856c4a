"""Risk-coverage curves of selective prediction: answer only the most confident items."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mmcal.figures.frames import group_label, require, varying
from mmcal.figures.style import ONE_COLUMN, group_styles, save_figure, styled
from mmcal.records import GROUP_KEYS, scorable


def risk_coverage_curve(confidence, correct) -> pd.DataFrame:
    """Coverage and selective risk at every distinct confidence threshold (most confident first).

    Items with the same confidence can only be accepted together, so the curve has one point
    per tie group; ``aurc`` (returned in ``attrs``) is the mean over items of the risk at which
    each item is accepted, as in ``mmcal.analysis.metrics``.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    errors = 1.0 - np.asarray(correct, dtype=np.float64)
    levels, inverse = np.unique(-confidence, return_inverse=True)  # ascending -conf = most confident first
    count = np.cumsum(np.bincount(inverse, minlength=len(levels)))
    err = np.cumsum(np.bincount(inverse, weights=errors, minlength=len(levels)))
    risk = err / count
    curve = pd.DataFrame({"threshold": -levels, "coverage": count / len(confidence), "risk": risk})
    curve.attrs["aurc"] = float(risk[inverse].mean())
    return curve


@styled
def plot_risk_coverage(
    records: pd.DataFrame, out_stem: Path, *, width: float = ONE_COLUMN, dpi: int = 200
) -> list[Path]:
    """Risk-coverage curves of every records group on one axis, AURC in the legend."""
    rows = require(scorable(records), "the risk-coverage curves")
    present = [c for c in GROUP_KEYS if c in rows.columns]
    label_cols = varying(rows, present) or present[:1]
    groups = [(dict(zip(present, k if isinstance(k, tuple) else (k,))), g) for k, g in rows.groupby(present, sort=True)]
    styles = group_styles([keys for keys, _ in groups])
    fig, ax = plt.subplots(figsize=(width, 2.4), layout="constrained")
    for (keys, group), style in zip(groups, styles):
        curve = risk_coverage_curve(group["confidence"], group["correct"])
        ax.plot(
            curve["coverage"],
            curve["risk"],
            lw=1.1,
            **style,
            label=f"{group_label(keys, label_cols)} (AURC {curve.attrs['aurc']:.3f})",
        )
    ax.set(xlim=(0, 1), ylim=(0, None), xlabel="Coverage", ylabel="Selective risk (error rate)")
    # Below the axis: curves can run anywhere inside it.
    fig.legend(loc="outside lower center", ncol=1, fontsize=6.5, handlelength=2.0)
    return save_figure(fig, out_stem, dpi)

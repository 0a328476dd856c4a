"""One look for every figure of the study: fonts, sizes, colours and how figures are saved.

Sizes are chosen for a paper page: ``ONE_COLUMN`` (3.3 in) and ``TWO_COLUMN`` (6.8 in) wide,
8 pt serif text, so a figure placed at its natural width needs no scaling. Colours are the
Okabe & Ito (2008) colour-blind-safe palette; a model keeps its colour in every figure (see
``set_model_order``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are rendered in batch jobs without a display

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

ONE_COLUMN = 3.3  # inches
TWO_COLUMN = 6.8

# Okabe-Ito, yellow left out (unreadable on white); black last.
PALETTE = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
)
CORRECT_COLOR = "#0072B2"
INCORRECT_COLOR = "#D55E00"
NEUTRAL_COLOR = "#7F7F7F"
MARKERS = ("o", "s", "^", "D", "v", "P", "X")

RC = {
    "font.family": "serif",
    "font.serif": ["DejaVu Serif", "Times New Roman", "Times"],
    "mathtext.fontset": "dejavuserif",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "figure.dpi": 100,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    # Embed TrueType fonts: Type 3 fonts are rejected by some publishers' PDF checks.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "mean_confidence": "Mean confidence",
    "overconfidence": "Overconfidence",
    "mean_entropy": "Mean entropy (nats)",
    "ece_10": "ECE (10 bins)",
    "ece_15": "ECE (15 bins)",
    "ece_adaptive_15": "Adaptive ECE",
    "ece_debiased": "Debiased ECE",
    "smece": "smECE",
    "mce_10": "MCE",
    "brier": "Brier score",
    "brier_top": "Top-label Brier",
    "nll": "NLL",
    "auroc": "AUROC",
    "aurc": "AURC",
    "augrc": "AUGRC",
    "acc_at_cov_50": "Acc. @ 50% cov.",
    "acc_at_cov_80": "Acc. @ 80% cov.",
    "acc_at_cov_90": "Acc. @ 90% cov.",
    "admit_rate": "Admit rate (unknowable)",
    "false_idk_rate": "False-IDK rate (answerable)",
}

SCENARIO_LABELS = {
    "image": "Image",
    "blind": "No image",
    "text-desc": "Description only",
    "image-desc-consistent": "Image + agreeing descr.",
    "image-desc-conflicting": "Image + conflicting descr.",
}

LINESTYLES = ("-", "--", ":", "-.")

_model_order: list[str] = []


def set_model_order(models) -> None:
    """Fix which colour each model gets (in this order); call once with the study's model list.

    Models not listed get the next free colour on first use, so one process is always
    consistent; listing the models makes separate figure jobs agree too.
    """
    _model_order.clear()
    for name in models:
        if str(name) not in _model_order:
            _model_order.append(str(name))


def model_color(model: str) -> str:
    model = str(model)
    if model not in _model_order:
        _model_order.append(model)
    return PALETTE[_model_order.index(model) % len(PALETTE)]


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def styled(plot_fn):
    """Decorator: run a plotting function inside the study's rc settings (no global change)."""

    @functools.wraps(plot_fn)
    def wrapper(*args, **kwargs):
        with sns.axes_style("ticks"), plt.rc_context(RC):
            return plot_fn(*args, **kwargs)

    return wrapper


def save_figure(fig, out_stem, dpi: int = 200) -> list[Path]:
    """Write ``<out_stem>.pdf`` (vector) and ``<out_stem>.png`` and close the figure."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_name(out_stem.name + ".pdf"), out_stem.with_name(out_stem.name + ".png")]
    # PDF metadata carries a creation date by default; drop it so reruns give identical files.
    fig.savefig(paths[0], metadata={"CreationDate": None})
    fig.savefig(paths[1], dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return paths


def panel_grid(
    n_panels: int,
    *,
    max_cols: int = 4,
    panel_width: float = 1.75,
    panel_height: float = 1.6,
    sharex=True,
    sharey=True,
    legend_room: float = 0.0,
):
    """A constrained-layout grid of ``n_panels`` small panels (wrapping after ``max_cols``);
    returns the figure and the used axes in reading order (unused cells are hidden)."""
    ncols = max(1, min(max_cols, n_panels))
    nrows = -(-n_panels // ncols)
    width = min(TWO_COLUMN, max(ONE_COLUMN, panel_width * ncols))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width, panel_height * nrows + legend_room),
        sharex=sharex,
        sharey=sharey,
        squeeze=False,
        layout="constrained",
    )
    fig.get_layout_engine().set(wspace=0.06)  # keeps neighbouring tick labels ("1" | "0") apart
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def scenario_label(scenario: str) -> str:
    if scenario in SCENARIO_LABELS:
        return SCENARIO_LABELS[scenario]
    if str(scenario).startswith("image-shift"):
        return f"Shift {str(scenario)[len('image-shift') :]}"
    return str(scenario)


def group_styles(groups: list[dict]) -> list[dict]:
    """Line styles for groups on one axis: colour = model when models differ (so a model looks
    the same in every figure), line style = the other keys that differ; otherwise colour by group."""
    keys = [k for k in (groups[0] if groups else {}) if len({str(g[k]) for g in groups}) > 1]
    others = [k for k in keys if k != "model"]
    other_levels = sorted({tuple(str(g[k]) for k in others) for g in groups})
    styles = []
    for g in groups:
        level = tuple(str(g[k]) for k in others)
        if "model" in keys:
            color = model_color(g["model"])
            ls = LINESTYLES[other_levels.index(level) % len(LINESTYLES)]
        else:
            color = PALETTE[other_levels.index(level) % len(PALETTE)]
            ls = "-"
        styles.append({"color": color, "ls": ls})
    return styles

"""Every figure of the study. Each ``plot_*`` function takes pandas frames (records, metric
tables) and ``out_stem``, writes ``<out_stem>.pdf`` (vector) and ``<out_stem>.png`` (``dpi``),
and returns the two paths. The look is defined once in :mod:`mmcal.figures.style`."""

from mmcal.figures.confidence import plot_confidence_histograms
from mmcal.figures.forest import plot_forest
from mmcal.figures.idk import idk_items, plot_idk_confidence, plot_idk_tradeoff
from mmcal.figures.option_order import permutation_average, plot_position_bias, position_bias
from mmcal.figures.promptopt import best_per_round, plot_prompt_trajectory
from mmcal.figures.recalibration import (
    plot_recalibration_ece,
    plot_recalibration_metric,
    plot_recalibration_reliability,
)
from mmcal.figures.reliability import (
    plot_reliability,
    plot_reliability_groups,
    plot_reliability_pair,
    plot_reliability_panels,
    reliability_band,
    reliability_bins,
)
from mmcal.figures.risk_coverage import plot_risk_coverage, risk_coverage_curve
from mmcal.figures.style import set_model_order
from mmcal.figures.text_image import entropy_shift, plot_entropy_shift, plot_text_vs_image

__all__ = [
    "best_per_round",
    "entropy_shift",
    "idk_items",
    "permutation_average",
    "plot_confidence_histograms",
    "plot_entropy_shift",
    "plot_forest",
    "plot_idk_confidence",
    "plot_idk_tradeoff",
    "plot_position_bias",
    "plot_prompt_trajectory",
    "plot_recalibration_ece",
    "plot_recalibration_metric",
    "plot_recalibration_reliability",
    "plot_reliability",
    "plot_reliability_groups",
    "plot_reliability_pair",
    "plot_reliability_panels",
    "plot_risk_coverage",
    "plot_text_vs_image",
    "position_bias",
    "reliability_band",
    "reliability_bins",
    "risk_coverage_curve",
    "set_model_order",
]

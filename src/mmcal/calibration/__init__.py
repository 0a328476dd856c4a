"""Post-hoc recalibration from records: fit on a calibration part, apply anywhere, never re-run a model.

- :mod:`~mmcal.calibration.base`: the ``Recalibrator`` interface, its registry and JSON persistence;
- :mod:`~mmcal.calibration.scaling`: temperature (continuous or the reference grid) and vector scaling;
- :mod:`~mmcal.calibration.top_label`: Platt scaling, histogram binning, isotonic regression;
- :mod:`~mmcal.calibration.records_adapter`: records rows <-> score matrices, fit on and apply to records;
- :mod:`~mmcal.calibration.splits`: cluster-level calib/test splits, repeated splits;
- :mod:`~mmcal.calibration.study`: the ``recalibrate`` rule's study (before/after with CIs and tests).
"""

from mmcal.calibration.base import METHODS, READOUT_MODES, Calibrated, Recalibrator, make_recalibrator, pad_ragged
from mmcal.calibration.records_adapter import apply_to_records, default_readout_mode, fit_on_records, records_to_scores
from mmcal.calibration.scaling import TemperatureScaling, VectorScaling
from mmcal.calibration.splits import ClusterSplit, calib_test_split, repeated_splits, summarise_splits
from mmcal.calibration.top_label import (
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
    TopLabelRecalibrator,
    pool_adjacent_violators,
    spread_confidence,
    top_label,
)

__all__ = [
    "METHODS",
    "READOUT_MODES",
    "Calibrated",
    "ClusterSplit",
    "HistogramBinning",
    "IsotonicCalibration",
    "PlattScaling",
    "Recalibrator",
    "TemperatureScaling",
    "TopLabelRecalibrator",
    "VectorScaling",
    "apply_to_records",
    "calib_test_split",
    "default_readout_mode",
    "fit_on_records",
    "make_recalibrator",
    "pad_ragged",
    "pool_adjacent_violators",
    "records_to_scores",
    "repeated_splits",
    "spread_confidence",
    "summarise_splits",
    "top_label",
]

"""ls-seq: label smoothing you can see and measure.

Losses (:func:`label_smoothed_cross_entropy` and friends), the calibration metrics core
(:class:`ls_seq.metrics.TokenCalibration`, :func:`expected_calibration_error`, :func:`fit_temperature`) and the
paper's information measures (:func:`smoothness_index`, :func:`gaussian_mutual_information`).
"""

from ls_seq.functional import (
    confidence_penalty_loss,
    distillation_loss,
    expected_calibration_error,
    fit_temperature,
    gaussian_mutual_information,
    label_smoothed_cross_entropy,
    smoothing_weights,
    smoothness_index,
)
from ls_seq.losses import LabelSmoothedCrossEntropy
from ls_seq.metrics import TokenCalibration

__version__ = "0.1.0"

__all__ = [
    "LabelSmoothedCrossEntropy",
    "TokenCalibration",
    "confidence_penalty_loss",
    "distillation_loss",
    "expected_calibration_error",
    "fit_temperature",
    "gaussian_mutual_information",
    "label_smoothed_cross_entropy",
    "smoothing_weights",
    "smoothness_index",
]

"""Pure functions: the loss and calibration math that every other layer of ls-seq calls."""

from ls_seq.functional.calibration import expected_calibration_error
from ls_seq.functional.information import gaussian_mutual_information, smoothness_index
from ls_seq.functional.losses import (
    confidence_penalty_loss,
    distillation_loss,
    label_smoothed_cross_entropy,
    smoothing_weights,
)
from ls_seq.functional.temperature import fit_temperature

__all__ = [
    "confidence_penalty_loss",
    "distillation_loss",
    "expected_calibration_error",
    "fit_temperature",
    "gaussian_mutual_information",
    "label_smoothed_cross_entropy",
    "smoothing_weights",
    "smoothness_index",
]

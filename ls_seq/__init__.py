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

__version__ = "0.1.0"

# What imports torchmetrics (which loads transformers), transformers, datasets, matplotlib or evaluate loads on
# first use, so that `import ls_seq` costs little more than `import torch` (benchmarks/bench_import.py).
_LAZY = {
    "TokenCalibration": "ls_seq.metrics",
    "CalibrationResult": "ls_seq.functional.measures",
    "LabelSmoothingTrainer": "ls_seq.trainer",
    "LabelSmoothingTrainingArguments": "ls_seq.trainer",
    "LabelSmoothingSeq2SeqTrainer": "ls_seq.trainer",
    "LabelSmoothingSeq2SeqTrainingArguments": "ls_seq.trainer",
    "NonFiniteLossError": "ls_seq.errors",
    "label_smoothing_loss_func": "ls_seq.loss_func",
    "LabelSmoothingLossFunc": "ls_seq.loss_func",
    "use_label_smoothing": "ls_seq.loss_func",
    "estimate_unigram_prior": "ls_seq.prior",
    "model_io": "ls_seq.model_io",
    "token_ece_path": "ls_seq.evaluate_metrics",
    "CalibrationCallback": "ls_seq.callbacks",
    "CalibrationMetrics": "ls_seq.calibration_metrics",
    "BeamSearchTemperature": "ls_seq.generation",
    "generate_with_temperature": "ls_seq.generation",
    "fused_linear_label_smoothed_cross_entropy": "ls_seq.functional.fused",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ls_seq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))

__all__ = [
    "BeamSearchTemperature",
    "CalibrationCallback",
    "CalibrationMetrics",
    "CalibrationResult",
    "LabelSmoothedCrossEntropy",
    "LabelSmoothingLossFunc",
    "LabelSmoothingSeq2SeqTrainer",
    "LabelSmoothingSeq2SeqTrainingArguments",
    "LabelSmoothingTrainer",
    "LabelSmoothingTrainingArguments",
    "NonFiniteLossError",
    "TokenCalibration",
    "confidence_penalty_loss",
    "distillation_loss",
    "estimate_unigram_prior",
    "expected_calibration_error",
    "fit_temperature",
    "fused_linear_label_smoothed_cross_entropy",
    "generate_with_temperature",
    "gaussian_mutual_information",
    "label_smoothed_cross_entropy",
    "label_smoothing_loss_func",
    "use_label_smoothing",
    "model_io",
    "smoothing_weights",
    "smoothness_index",
    "token_ece_path",
]

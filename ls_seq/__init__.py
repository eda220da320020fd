"""ls-seq: label smoothing you can see and measure.

Losses (:func:`label_smoothed_cross_entropy` and friends), the calibration metrics core
(:class:`ls_seq.calibration.metric.TokenCalibration`, :func:`expected_calibration_error`, :func:`fit_temperature`) and the
paper's information measures (:func:`smoothness_index`, :func:`gaussian_mutual_information`).
"""

from typing import TYPE_CHECKING, Any

from ls_seq import _deprecation
from ls_seq._version import __version__
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

_deprecation.install()  # the module paths of 0.1 keep importing, with a warning, until 0.3

# What imports torchmetrics (which loads transformers), transformers, datasets, matplotlib or evaluate loads on
# first use, so that `import ls_seq` costs little more than `import torch` (benchmarks/bench_import.py). The
# TYPE_CHECKING block below names the same objects for type checkers and IDEs.
_LAZY = {
    "TokenCalibration": "ls_seq.calibration.metric",
    "CalibrationResult": "ls_seq.calibration.result",
    "LabelSmoothingTrainer": "ls_seq.hf.trainer",
    "LabelSmoothingTrainingArguments": "ls_seq.hf.trainer",
    "LabelSmoothingSeq2SeqTrainer": "ls_seq.hf.trainer",
    "LabelSmoothingSeq2SeqTrainingArguments": "ls_seq.hf.trainer",
    "NonFiniteLossError": "ls_seq.errors",
    "label_smoothing_loss_func": "ls_seq.hf.loss_func",
    "LabelSmoothingLossFunc": "ls_seq.hf.loss_func",
    "use_label_smoothing": "ls_seq.hf.loss_func",
    "estimate_unigram_prior": "ls_seq.prior",
    "ModelIO": "ls_seq.hf.model_io",
    "model_io_of": "ls_seq.hf.model_io",
    "token_ece_path": "ls_seq.evaluate_metrics",
    "CalibrationCallback": "ls_seq.hf.callbacks",
    "CalibrationComputeMetrics": "ls_seq.hf.compute_metrics",
    "BeamSearchTemperature": "ls_seq.hf.generation",
    "generate_with_temperature": "ls_seq.hf.generation",
    "fused_linear_label_smoothed_cross_entropy": "ls_seq.functional.fused",
}
# Renamed in 0.2, served with a DeprecationWarning until 0.3: the old name -> the new one.
_RENAMED = {
    "CalibrationMetrics": "CalibrationComputeMetrics",  # a compute_metrics pair, not a torchmetrics Metric
    "model_io": "model_io_of",  # the function shared its name with its module
}

if TYPE_CHECKING:
    from ls_seq.calibration.metric import TokenCalibration
    from ls_seq.calibration.result import CalibrationResult
    from ls_seq.errors import NonFiniteLossError
    from ls_seq.evaluate_metrics import token_ece_path
    from ls_seq.functional.fused import fused_linear_label_smoothed_cross_entropy
    from ls_seq.hf.callbacks import CalibrationCallback
    from ls_seq.hf.compute_metrics import CalibrationComputeMetrics
    from ls_seq.hf.generation import BeamSearchTemperature, generate_with_temperature
    from ls_seq.hf.loss_func import LabelSmoothingLossFunc, label_smoothing_loss_func, use_label_smoothing
    from ls_seq.hf.model_io import ModelIO, model_io_of
    from ls_seq.hf.trainer import (
        LabelSmoothingSeq2SeqTrainer,
        LabelSmoothingSeq2SeqTrainingArguments,
        LabelSmoothingTrainer,
        LabelSmoothingTrainingArguments,
    )
    from ls_seq.prior import estimate_unigram_prior


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(
            f"`ls_seq.{name}` was renamed `ls_seq.{new}` in ls-seq 0.2; the old name is deprecated and will be "
            f"removed in {_deprecation.REMOVED_IN}",
            DeprecationWarning,
            stacklevel=2,
        )
        return __getattr__(new)
    raise AttributeError(f"module 'ls_seq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


# The stable surface (docs/api.md): these names keep their meaning within a minor version; a change is a
# deprecation first, for one release. Everything else is importable but may change.
__all__ = [
    "BeamSearchTemperature",
    "CalibrationCallback",
    "CalibrationComputeMetrics",
    "CalibrationResult",
    "LabelSmoothedCrossEntropy",
    "LabelSmoothingLossFunc",
    "LabelSmoothingSeq2SeqTrainer",
    "LabelSmoothingSeq2SeqTrainingArguments",
    "LabelSmoothingTrainer",
    "LabelSmoothingTrainingArguments",
    "ModelIO",
    "NonFiniteLossError",
    "TokenCalibration",
    "__version__",
    "confidence_penalty_loss",
    "distillation_loss",
    "estimate_unigram_prior",
    "expected_calibration_error",
    "fit_temperature",
    "fused_linear_label_smoothed_cross_entropy",
    "gaussian_mutual_information",
    "generate_with_temperature",
    "label_smoothed_cross_entropy",
    "label_smoothing_loss_func",
    "model_io_of",
    "smoothing_weights",
    "smoothness_index",
    "token_ece_path",
    "use_label_smoothing",
]

r"""Calibration errors from binned sums, equal-mass bins, and the functional expected calibration error.

:func:`expected_calibration_error` is one batch of what :class:`ls_seq.calibration.metric.TokenCalibration`
streams: the statistics of :mod:`ls_seq.functional.statistics`, binned, then :func:`binned_errors`. Equal-mass bins
are merged from a fine grid of bins uniform in ``logit(c)`` (:func:`merge_equal_mass`).
"""

from __future__ import annotations

import torch

from ls_seq.checks import check_choice, check_logits_labels, check_positive_int
from ls_seq.functional.statistics import TokenStatistics, binned_sums, fine_bins, token_statistics, width_bins

__all__ = [
    "NORMS",
    "TokenStatistics",
    "binned_errors",
    "binned_sums",
    "expected_calibration_error",
    "fine_bins",
    "merge_equal_mass",
    "token_statistics",
    "width_bins",
]

NORMS = ("l1", "l2", "max")


def binned_errors(count: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Calibration errors from per-bin sums over the last dimension (the bins); each of the leading shape.

    With ``n_b`` values, ``s_b`` summed confidence and ``c_b`` summed correctness in bin ``b`` of ``N``:
    ``ece = sum_b |c_b - s_b| / N``; ``mce = max_{b: n_b > 0} |c_b - s_b| / n_b``;
    ``rms = sqrt(sum_b n_b (acc_b - conf_b)^2 / N)``; and the debiased estimate of the squared error of Kumar,
    Liang & Ma (2019, "Verified uncertainty calibration"): ``rms_debiased = sqrt(max(0, sum_b n_b / N
    [(acc_b - conf_b)^2 - acc_b (1 - acc_b) / (n_b - 1)]))``, bins with fewer than two values adding 0.
    """
    n = count.sum(-1).clamp_min(1)
    gap = (correct - confidence).abs()  # n_b |acc_b - conf_b|
    safe_count = count.clamp_min(1)
    per_bin_gap = torch.where(count > 0, gap / safe_count, torch.zeros_like(gap))  # |acc_b - conf_b|
    acc = correct / safe_count
    two_or_more = count > 1
    variance = torch.where(two_or_more, acc * (1 - acc) / (count - 1).clamp_min(1), torch.zeros_like(acc))
    debiased = torch.where(two_or_more, per_bin_gap.square() - variance, torch.zeros_like(acc))
    return {
        "ece": gap.sum(-1) / n,
        "mce": per_bin_gap.max(-1).values,
        "rms": torch.sqrt((per_bin_gap * gap).sum(-1) / n),
        "rms_debiased": torch.sqrt(((count * debiased).sum(-1) / n).clamp_min(0)),
    }


def merge_equal_mass(
    count: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge fine bins (last dimension, in confidence order) into ``n_bins`` bins of about equal counts.

    Fine bin ``j`` goes wholly to bin ``floor(n_bins * (C_j - n_j / 2) / N)``, the share of its middle rank
    (``C_j`` the cumulative count, ``n_j`` its count), so every bin holds about ``N / n_bins`` values, bins
    never overlap in confidence, and a fine bin heavier than ``N / n_bins`` stays whole.
    """
    cumulative = count.cumsum(-1)
    n = cumulative[..., -1:].clamp_min(1)
    target = (n_bins * (cumulative - count / 2) / n).floor().long().clamp_(0, n_bins - 1)  # (..., F)
    shape = count.shape[:-1] + (n_bins,)

    def merge(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(shape, dtype=values.dtype, device=values.device).scatter_add_(-1, target, values)

    return merge(count), merge(confidence), merge(correct)


def expected_calibration_error(
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    norm: str = "l1",
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Top-label calibration error of (token) predictions with ``n_bins`` equal-width bins.

    Args:
        logits: ``(..., V)`` scores, any float dtype (computed in float32); must be finite where not ignored.
        labels: ``(...)`` class indices, ``ignore_index`` for padding.
        n_bins: number of equal-width confidence bins (>= 1).
        norm: ``"l1"`` (ECE, ``sum_b n_b/N |acc_b - conf_b|``), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).
        ignore_index: label value of padding; those positions are not counted.

    Returns:
        A float64 scalar tensor.

    Raises:
        TypeError: ``logits`` / ``labels`` are not tensors of the right kinds, or ``n_bins`` is not an int.
        ValueError: the shapes do not match, ``n_bins < 1``, ``norm`` is unknown, a counted logit is not
            finite, or every label is ``ignore_index`` (the error of no token is undefined).

    Examples:
        >>> import torch
        >>> from ls_seq import expected_calibration_error
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
        >>> labels = torch.tensor([0, 1, 1])
        >>> round(float(expected_calibration_error(logits, labels, n_bins=10)), 4)  # conf 0.982, acc 2/3
        0.3153
    """
    check_logits_labels(logits, labels, ignore_index)
    check_positive_int(n_bins, "n_bins")
    check_choice(norm, "norm", NORMS)
    stats = token_statistics(logits, labels, torch.ones(1, dtype=torch.float64), ignore_index=ignore_index)
    if stats.n == 0:
        raise ValueError("`labels` hold no token other than ignore_index: the calibration error is undefined")
    sums = binned_sums(width_bins(stats.confidence, n_bins), stats.confidence, stats.correct, n_bins)
    return binned_errors(*sums)[{"l1": "ece", "l2": "rms", "max": "mce"}[norm]][0]


# fit_temperature lived here in 0.1.
from ls_seq._deprecation import moved_attributes  # noqa: E402

__getattr__ = moved_attributes(__name__, {"fit_temperature": "ls_seq.functional.temperature"})

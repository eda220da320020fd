"""The plugin's only door into ls-seq's calibration core: per-bin sums of a batch, and metrics from summed ones.

Every use of :mod:`ls_seq.functional.calibration`'s private stages is in this file, so a change of that
core's names or layout is a change here alone. The sums are float64 and add across batches and workers
(``bin_count``, ``bin_confidence``, ``bin_correct``: ``(T, n_bins)``; ``nll_sum``: ``(T,)`` in nats;
``n_tokens``, ``n_correct``: scalars).
"""

from __future__ import annotations

import torch

from ls_seq.functional.calibration import _calibration_compute, _calibration_update, _reliability

__all__ = ["STAT_NAMES", "batch_sums", "metrics_from_sums", "reliability_from_sums"]

STAT_NAMES = ("bin_count", "bin_confidence", "bin_correct", "nll_sum", "n_tokens", "n_correct")


def batch_sums(
    logits: torch.Tensor, target: torch.Tensor, n_bins: int, ignore_index: int, temperatures: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-bin sums of one batch at every temperature (``temperatures``: float64 ``(T,)``)."""
    return _calibration_update(logits, target, n_bins, ignore_index, temperatures)


def metrics_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``ece``, ``mce``, ``rms``, ``nll`` (nats), ``accuracy``, ``mean_confidence``, ``n_tokens``: each ``(T,)``."""
    return _calibration_compute(sums)


def reliability_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-bin ``lower``, ``upper``, ``confidence``, ``accuracy``, ``count``: each ``(T, n_bins)``."""
    return _reliability(sums)

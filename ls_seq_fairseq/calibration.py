"""The plugin's only door into ls-seq's calibration core: per-bin sums of a batch, and metrics from summed ones.

Every use of :mod:`ls_seq.calibration.measures` (the calibration schema) is in this file, so a change of that
core's names or layout is a change here alone. The plugin logs the equal-width measure: the sums are float64
and add across batches and workers (``bin_count``, ``bin_confidence``, ``bin_correct``: ``(T, n_bins)``;
``nll_sum``: ``(T,)`` in nats; ``n_tokens``, ``n_correct``: scalars).
"""

from __future__ import annotations

import torch

from ls_seq.calibration.schema import CalibrationSchema, make_config

__all__ = ["STAT_NAMES", "batch_sums", "metrics_from_sums", "reliability_from_sums"]

STAT_NAMES = ("bin_count", "bin_confidence", "bin_correct", "nll_sum", "n_tokens", "n_correct")
# The plugin's names for the schema's states of the `tokens` and `width` measures.
_SCHEMA_NAMES = {
    "bin_count": "width_count",
    "bin_confidence": "width_confidence",
    "bin_correct": "width_correct",
    "nll_sum": "tokens_nll",
    "n_tokens": "tokens_n",
    "n_correct": "tokens_correct",
}


def _schema(n_bins: int, n_temperatures: int, ignore_index: int = -100, temperatures=None) -> CalibrationSchema:
    temps = tuple(temperatures) if temperatures is not None else (1.0,) * n_temperatures  # labels only in compute
    return CalibrationSchema(make_config(n_bins, ignore_index, temps, measures=("width",)))


def batch_sums(
    logits: torch.Tensor, target: torch.Tensor, n_bins: int, ignore_index: int, temperatures: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-bin sums of one batch at every temperature (``temperatures``: float64 ``(T,)``)."""
    schema = _schema(n_bins, temperatures.numel(), ignore_index, temperatures.tolist())
    state = schema.batch_state(logits, target)
    return {name: state[_SCHEMA_NAMES[name]] for name in STAT_NAMES}


def _state(sums: dict[str, torch.Tensor]) -> tuple[CalibrationSchema, dict[str, torch.Tensor]]:
    count = sums["bin_count"]
    schema = _schema(count.shape[-1], count.shape[0])
    state = {_SCHEMA_NAMES[name]: sums[name] for name in STAT_NAMES}
    state["tokens_confidence"] = sums["bin_confidence"].sum(-1)  # every token is in one bin
    return schema, state


def metrics_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``ece``, ``mce``, ``rms``, ``nll`` (nats), ``accuracy``, ``mean_confidence``, ``n_tokens``: each ``(T,)``."""
    schema, state = _state(sums)
    return dict(schema.compute(state))


def reliability_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-bin ``lower``, ``upper``, ``confidence``, ``accuracy``, ``count``: each ``(T, n_bins)``."""
    schema, state = _state(sums)
    return schema.reliability(state, "width")

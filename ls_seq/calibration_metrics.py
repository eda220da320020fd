"""Token calibration inside any Trainer's own evaluation loop: a ``preprocess_logits_for_metrics`` +
``compute_metrics`` pair.

HF's evaluation loop gathers what ``preprocess_logits_for_metrics`` returns for every batch across processes
(dropping the samples accelerate repeats to even out the last batch) and hands it to ``compute_metrics``.
Gathering ``(B, L, V)`` logits would be gigabytes; here each batch is reduced on its device to a few hundred
numbers *per sample*: that sample's calibration sums at every temperature (per-bin token counts, summed
confidences and correct tokens, summed NLL). Sums over samples are exact, so whatever HF gathers, concatenates
or pads, the total over the evaluation set is that of :class:`ls_seq.metrics.TokenCalibration` on all of it.

    metrics = CalibrationMetrics(temperatures=[0.8, 1.0, 1.25], model=model)
    trainer = Trainer(model=model, args=TrainingArguments(..., batch_eval_metrics=True),
                      eval_dataset=val, **metrics.trainer_kwargs())
    trainer.evaluate()["eval_ece"]

Works with ``batch_eval_metrics=True`` (one batch at a time, constant memory) and without it (HF keeps the
per-sample sums of the whole set, ``N x state_size`` floats, then calls once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ls_seq._validation import check_logits_labels, check_positive_int, check_temperatures
from ls_seq.functional.calibration import _calibration_compute, _calibration_update, _reliability
from ls_seq.model_io import model_io, scored_labels

__all__ = ["CalibrationMetrics", "calibration_log_values"]

_STATES = ("bin_count", "bin_confidence", "bin_correct", "nll_sum", "n_tokens", "n_correct")


def calibration_log_values(values: dict[str, torch.Tensor], temperatures: Sequence[float] | None) -> dict[str, float]:
    """The reported calibration values (unprefixed names) from ``TokenCalibration.compute()``-style results.

    ``ece``, ``mce``, ``rms_ce``, ``nll``, ``token_accuracy``, ``mean_confidence`` at T = 1 and ``n_tokens``;
    with a grid also ``best_temperature`` (lowest NLL), ``ece_at_best_temperature``, ``nll_at_best_temperature``.
    """
    values = {k: torch.atleast_1d(v) for k, v in values.items()}
    temps = [1.0] if temperatures is None else list(temperatures)
    i1, best = temps.index(1.0), int(torch.argmin(values["nll"]))
    logs = {
        "ece": float(values["ece"][i1]),
        "mce": float(values["mce"][i1]),
        "rms_ce": float(values["rms"][i1]),
        "nll": float(values["nll"][i1]),
        "token_accuracy": float(values["accuracy"][i1]),
        "mean_confidence": float(values["mean_confidence"][i1]),
        "n_tokens": int(values["n_tokens"][0]),
    }
    if temperatures is not None:
        logs["best_temperature"] = temps[best]
        logs["ece_at_best_temperature"] = float(values["ece"][best])
        logs["nll_at_best_temperature"] = float(values["nll"][best])
    return logs


class CalibrationMetrics:
    """``preprocess_logits_for_metrics`` and ``compute_metrics`` that measure token calibration in HF's loop.

    Args:
        n_bins: equal-width confidence bins, ``[k/B, (k+1)/B)``, confidence 1 in the last.
        temperatures: optional grid ``T > 0`` (1.0 is added), all measured on the same logits.
        model: the model evaluated, which says how its logits align with the labels (a causal LM's shift);
            or give ``shift_labels`` (True: logits at t score the label at t + 1). One of the two is required.
        ignore_index: label value of padding and masked prompt tokens.

    ``compute_metrics`` returns the values of :func:`calibration_log_values` (HF prefixes them with ``eval_``).
    """

    def __init__(
        self,
        n_bins: int = 15,
        temperatures: Sequence[float] | None = None,
        *,
        model: torch.nn.Module | None = None,
        shift_labels: bool | None = None,
        ignore_index: int = -100,
    ) -> None:
        self.n_bins = check_positive_int(n_bins, "n_bins")
        self.temperatures = None if temperatures is None else sorted(set(check_temperatures(temperatures)) | {1.0})
        if model is None and shift_labels is None:
            raise ValueError(
                "CalibrationMetrics needs to know how logits align with labels: pass model=model, or "
                "shift_labels=True (causal LM) / False (encoder-decoder)"
            )
        self.shift_labels = model_io(model, shift_labels=shift_labels).shifts_labels if model is not None else bool(shift_labels)
        self.ignore_index = ignore_index
        self._temps = torch.tensor([1.0] if self.temperatures is None else self.temperatures, dtype=torch.float64)
        self._sum: torch.Tensor | None = None

    @property
    def state_size(self) -> int:
        """Floats per sample: ``3 * T * n_bins + T + 2``."""
        n_temps = self._temps.numel()
        return 3 * n_temps * self.n_bins + n_temps + 2

    def trainer_kwargs(self) -> dict[str, Any]:
        """``{"preprocess_logits_for_metrics": ..., "compute_metrics": ...}`` for a Trainer's constructor."""
        return {"preprocess_logits_for_metrics": self.preprocess_logits_for_metrics, "compute_metrics": self.compute_metrics}

    def preprocess_logits_for_metrics(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """One batch's ``(B, state_size)`` float64 per-sample calibration sums, computed on the logits' device."""
        if isinstance(logits, (tuple, list)):  # extra outputs (past_key_values, ...) after the logits
            logits = logits[0]
        if isinstance(labels, (tuple, list)):
            if len(labels) != 1:
                raise ValueError(f"CalibrationMetrics needs exactly one label tensor, got {len(labels)}")
            labels = labels[0]
        scored = scored_labels(labels, self.shift_labels, ignore_index=self.ignore_index)
        check_logits_labels(logits, scored, self.ignore_index)
        temps = self._temps.to(logits.device)
        stats = _calibration_update(logits.detach(), scored, self.n_bins, self.ignore_index, temps, per_row=True)
        return torch.cat([stats[name].reshape(scored.shape[0], -1) for name in _STATES], dim=1)  # (B, S)

    def _unflatten(self, total: torch.Tensor) -> dict[str, torch.Tensor]:
        n_temps, n_bins = self._temps.numel(), self.n_bins
        sizes = [n_temps * n_bins] * 3 + [n_temps, 1, 1]
        shapes = [(n_temps, n_bins)] * 3 + [(n_temps,), (), ()]
        parts = torch.split(total, sizes)
        return {name: part.reshape(shape) for name, part, shape in zip(_STATES, parts, shapes)}

    def compute_metrics(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        """Sum the per-sample sums (this batch's, with ``batch_eval_metrics``) and, at the end, report."""
        rows = torch.as_tensor(eval_pred.predictions, dtype=torch.float64).reshape(-1, self.state_size)
        batch = rows.sum(0).cpu()
        self._sum = batch if self._sum is None else self._sum + batch
        if not compute_result:
            return {}
        total, self._sum = self._sum, None
        stats = self._unflatten(total)
        self.last_reliability = _reliability(stats)  # (T, n_bins) curves, for a diagram
        return calibration_log_values(_calibration_compute(stats), self.temperatures)

"""Token calibration inside any Trainer's own evaluation loop: a ``preprocess_logits_for_metrics`` +
``compute_metrics`` pair.

HF's evaluation loop gathers what ``preprocess_logits_for_metrics`` returns for every batch across processes
(dropping the samples accelerate repeats to even out the last batch) and hands it to ``compute_metrics``.
Gathering ``(B, L, V)`` logits would be gigabytes; here each batch is reduced on its device to a few hundred
numbers *per sample*: that sample's calibration sums at every temperature (per-bin token counts, summed
confidences and correct tokens, summed NLL). Sums over samples are exact, so whatever HF gathers, concatenates
or pads, the total over the evaluation set is that of :class:`ls_seq.calibration.metric.TokenCalibration` on all of it.

    metrics = CalibrationComputeMetrics(temperatures=[0.8, 1.0, 1.25], model=model)
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

from ls_seq.calibration.result import CalibrationResult
from ls_seq.calibration.schema import CalibrationSchema, make_config
from ls_seq.checks import check_logits_labels
from ls_seq.hf.model_io import model_io_of, scored_labels

__all__ = ["PER_SAMPLE_MEASURES", "CalibrationComputeMetrics", "calibration_log_values", "require_tokens"]

# Per-sample state travels through HF's gathers: the measures whose state is small (a few hundred floats
# per sample at 5 temperatures). `mass` (a fine histogram) and `bootstrap` (replicates) are too large for that.
PER_SAMPLE_MEASURES = ("width", "brier", "top_k", "sequence")


def require_tokens(n_tokens: int, prefix: str = "eval") -> None:
    """Refuse to report calibration of nothing: an empty or all-masked ``eval_dataset`` (every route)."""
    if not n_tokens:
        raise ValueError(
            f"`eval_dataset` has no scored tokens ({prefix}): it is empty or every label is ignore_index, so there is "
            "no calibration to measure"
        )


def calibration_log_values(result: CalibrationResult) -> dict[str, float]:
    """The logged calibration values (unprefixed names): every field at T = 1, and with a grid also
    ``best_temperature`` (lowest NLL), ``ece_at_best_temperature``, ``nll_at_best_temperature`` and
    ``best_ece_temperature`` (lowest ECE: above 1 means the model is over-confident)."""
    logs = result.at(1.0)
    logs["n_tokens"] = int(logs["n_tokens"])
    if "n_sequences" in logs:
        logs["n_sequences"] = int(logs["n_sequences"])
    if result.temperatures is not None and len(result.temperatures) > 1:
        best = result.best_temperature("nll")
        at_best = result.at(best)
        logs |= {
            "best_temperature": best,
            "ece_at_best_temperature": at_best["ece"],
            "nll_at_best_temperature": at_best["nll"],
            "best_ece_temperature": result.best_temperature("ece"),
        }
    return logs


class CalibrationComputeMetrics:
    """``preprocess_logits_for_metrics`` and ``compute_metrics`` that measure token calibration in HF's loop.

    Args:
        n_bins: equal-width confidence bins, ``[k/B, (k+1)/B)``, confidence 1 in the last.
        temperatures: optional grid ``T > 0`` (1.0 is added), all measured on the same logits.
        model: the model evaluated, which says how its logits align with the labels (a causal LM's shift);
            or give ``shift_labels``. One of the two is required.
        shift_labels: how the logits align with the labels when ``model`` is not given, or to override it
            (True: logits at t score the label at t + 1, a causal LM; False: an encoder-decoder).
        ignore_index: label value of padding and masked prompt tokens.
        measures: names from :data:`ls_seq.calibration.measures.MEASURES` (default :data:`PER_SAMPLE_MEASURES`).
        **options: the measures' options (``top_k``, ``classes``, ...), as for :class:`ls_seq.calibration.metric.TokenCalibration`.

    Raises:
        ValueError: neither ``model`` nor ``shift_labels`` is given, or a bin count, temperature, measure or
            option is out of range (checked here, not at the first evaluation).

    ``compute_metrics`` returns the values of :func:`calibration_log_values` (HF prefixes them with ``eval_``);
    :attr:`last_result` holds the whole :class:`~ls_seq.calibration.result.CalibrationResult` and
    :attr:`last_reliability` the equal-width reliability curves ``(T, n_bins)``.
    """

    def __init__(
        self,
        n_bins: int = 15,
        temperatures: Sequence[float] | None = None,
        *,
        model: torch.nn.Module | None = None,
        shift_labels: bool | None = None,
        ignore_index: int = -100,
        measures: Sequence[str] | None = PER_SAMPLE_MEASURES,
        **options: Any,
    ) -> None:
        if model is None and shift_labels is None:
            raise ValueError(
                "CalibrationComputeMetrics needs to know how logits align with labels: pass model=model, or "
                "shift_labels=True (causal LM) / False (encoder-decoder)"
            )
        grid = None if temperatures is None else sorted(set(temperatures) | {1.0})
        self.schema = CalibrationSchema(make_config(n_bins, ignore_index, grid, measures, **options))
        self.temperatures = self.schema.config.temperatures
        self.shift_labels = (
            model_io_of(model, shift_labels=shift_labels).shifts_labels if model is not None else bool(shift_labels)
        )
        self.ignore_index = ignore_index
        self._sum: torch.Tensor | None = None
        self.last_result: CalibrationResult | None = None
        self.last_reliability: dict[str, torch.Tensor] | None = None

    @property
    def state_size(self) -> int:
        """Floats per sample (``3 T n_bins + 4 T + 2`` for the equal-width bins and the token sums, more per measure)."""
        return self.schema.state_size()

    def trainer_kwargs(self) -> dict[str, Any]:
        """``{"preprocess_logits_for_metrics": ..., "compute_metrics": ...}`` for a Trainer's constructor."""
        return {"preprocess_logits_for_metrics": self.preprocess_logits_for_metrics, "compute_metrics": self.compute_metrics}

    def preprocess_logits_for_metrics(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """One batch's ``(B, state_size)`` float64 per-sample calibration sums, computed on the logits' device."""
        if isinstance(logits, (tuple, list)):  # extra outputs (past_key_values, ...) after the logits
            logits = logits[0]
        if isinstance(labels, (tuple, list)):
            if len(labels) != 1:
                raise ValueError(f"CalibrationComputeMetrics needs exactly one label tensor, got {len(labels)}")
            labels = labels[0]
        scored = scored_labels(labels, self.shift_labels, ignore_index=self.ignore_index)
        check_logits_labels(logits, scored, self.ignore_index)
        state = self.schema.batch_state(logits.detach(), scored, per_row=True)
        return self.schema.flatten(state, per_row=True)  # (B, S)

    def compute_metrics(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        """Sum the per-sample sums (this batch's, with ``batch_eval_metrics``) and, at the end, report."""
        rows = torch.as_tensor(eval_pred.predictions, dtype=torch.float64).reshape(-1, self.state_size)
        batch = rows.sum(0).cpu()
        self._sum = batch if self._sum is None else self._sum + batch
        if not compute_result:
            return {}
        total, self._sum = self._sum, None
        state = self.schema.unflatten(total)
        require_tokens(int(state["tokens_n"]))
        self.last_result = self.schema.compute(state)
        self.last_reliability = self.schema.reliability(state, "width")
        return calibration_log_values(self.last_result)


# Renamed in 0.2: it is a compute_metrics pair, not a torchmetrics Metric (that is TokenCalibration).
from ls_seq._deprecation import moved_attributes  # noqa: E402

__getattr__ = moved_attributes(__name__, {}, renamed={"CalibrationMetrics": "CalibrationComputeMetrics"})

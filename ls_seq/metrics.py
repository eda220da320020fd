"""Streaming, distributed token calibration metrics (a ``torchmetrics.Metric`` over the functional core)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from ls_seq._validation import check_logits_labels, check_positive_int, check_temperatures
from ls_seq.functional.calibration import _calibration_compute, _calibration_update, _reliability

__all__ = ["TokenCalibration"]

_STATE_NAMES = ("bin_count", "bin_confidence", "bin_correct", "nll_sum", "n_tokens", "n_correct")


class TokenCalibration(Metric):
    r"""Token-level calibration (ECE, MCE, RMS), NLL and accuracy, at one or many temperatures in one pass.

    ``update(logits, labels)`` takes logits ``(..., V)`` (any float dtype, computed in float32) and labels
    ``(...)`` with ``ignore_index`` for padding. The state is per-bin sums (count, confidence, correctness)
    and the summed NLL per temperature, float64, declared with ``dist_reduce_fx="sum"``: its size is
    ``O(len(temperatures) * n_bins)`` whatever the number of tokens, and processes sync by summing it.

    ``compute()`` returns a dict of float64 tensors: ``ece`` (L1), ``mce`` (max), ``rms`` (L2), ``nll``,
    ``accuracy``, ``mean_confidence``, ``n_tokens``: 0-dim without ``temperatures``, else shape ``(T,)``.
    With ``n_b`` tokens, summed confidence ``s_b`` and ``c_b`` correct in bin ``b`` of ``N`` tokens:
    ``ece = sum_b |c_b - s_b| / N``. Bins are ``[k/B, (k+1)/B)``, confidence 1 in the last bin
    (see :mod:`ls_seq.functional.calibration`).

    Args:
        n_bins: number of equal-width confidence bins.
        ignore_index: label value of padding tokens.
        temperatures: optional sequence of temperatures ``T > 0``; every value is measured on
            ``softmax(logits / T)`` in the same pass.
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    Example:
        >>> import torch
        >>> from ls_seq.metrics import TokenCalibration
        >>> metric = TokenCalibration(n_bins=10, temperatures=[1.0, 2.0])
        >>> metric.update(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0]))
        >>> out = metric.compute()
        >>> out["accuracy"].tolist(), [round(v, 4) for v in out["ece"].tolist()]
        ([0.5, 0.5], [0.482, 0.3808])
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        n_bins: int = 15,
        ignore_index: int = -100,
        temperatures: Sequence[float] | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_bins = check_positive_int(n_bins, "n_bins")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}")
        self.ignore_index = ignore_index
        self._scalar = temperatures is None
        temps = [1.0] if temperatures is None else check_temperatures(temperatures)
        self.register_buffer("_temperatures", torch.tensor(temps, dtype=torch.float64), persistent=False)
        n_temps = len(temps)
        zeros_tb = torch.zeros(n_temps, self.n_bins, dtype=torch.float64)
        self.add_state("bin_count", default=zeros_tb.clone(), dist_reduce_fx="sum")
        self.add_state("bin_confidence", default=zeros_tb.clone(), dist_reduce_fx="sum")
        self.add_state("bin_correct", default=zeros_tb.clone(), dist_reduce_fx="sum")
        self.add_state("nll_sum", default=torch.zeros(n_temps, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_tokens", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_correct", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def temperatures(self) -> torch.Tensor | None:
        """The temperatures measured (float64, shape ``(T,)``), or None when constructed without them."""
        return None if self._scalar else self._temperatures

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch; raises ``ValueError`` for NaN/infinite logits at non-ignored positions."""
        check_logits_labels(logits, labels, self.ignore_index)
        batch = _calibration_update(logits, labels, self.n_bins, self.ignore_index, self._temperatures)
        for name in _STATE_NAMES:
            setattr(self, name, getattr(self, name) + batch[name])

    def _states(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _STATE_NAMES}

    def _squeeze(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in values.items()} if self._scalar else values

    def _wrap_compute(self, compute: Any) -> Any:
        # torchmetrics' compute wrapper (sync, cache) squeezes one-element results to 0-dim, which would take a
        # one-temperature grid's (1,) shape away; the shape is put back around it (also after copy/pickle,
        # which wrap compute again).
        synced = super()._wrap_compute(compute)

        @functools.wraps(synced)
        def shaped(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            values = synced(*args, **kwargs)
            n_temps = self._temperatures.numel()
            return values if self._scalar else {k: v.reshape(n_temps) for k, v in values.items()}

        return shaped

    def compute(self) -> dict[str, torch.Tensor]:
        """The metrics over every token seen (on every process); a ``RuntimeError`` before any token."""
        return self._squeeze(_calibration_compute(self._states()))

    def reliability(self) -> dict[str, torch.Tensor]:
        """Per-bin ``lower``/``upper`` edges, mean ``confidence``, ``accuracy`` and ``count`` for reliability diagrams.

        Synced across processes like ``compute()``. Confidence and accuracy are 0 in empty bins (count 0).
        Shapes ``(n_bins,)``, or ``(T, n_bins)`` with temperatures.
        """
        if float(self.n_tokens) <= 0 and not self._to_sync:
            raise RuntimeError("reliability() needs at least one non-ignored token: call update() first")
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            process_group=self.process_group,
            should_sync=self._to_sync and not self._is_synced,
            should_unsync=self._should_unsync,
        ):
            if float(self.n_tokens) <= 0:
                raise RuntimeError("reliability() needs at least one non-ignored token: call update() first")
            return self._squeeze(_reliability(self._states()))

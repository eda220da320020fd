"""Streaming, distributed token calibration: a ``torchmetrics.Metric`` over the calibration schema.

``TokenCalibration`` declares one ``add_state(..., dist_reduce_fx="sum")`` per state of the enabled measures of
:mod:`ls_seq.calibration.measures`, so its memory is fixed by the configuration, not the number of tokens, and
processes sync by summing.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from ls_seq.calibration.measures import CalibrationConfig
from ls_seq.calibration.result import CalibrationResult
from ls_seq.calibration.schema import CalibrationSchema, make_config
from ls_seq.checks import check_logits_labels

__all__ = ["TokenCalibration"]


class TokenCalibration(Metric):
    r"""Token-level calibration at one or many temperatures in one pass: every measure of the schema.

    ``update(logits, labels)`` takes logits ``(..., V)`` (any float dtype, computed in float32) and labels
    ``(...)`` with ``ignore_index`` for padding; a row (the first dimension of 2-D labels) is one sequence
    for the ``sequence`` measure. ``compute()`` returns a :class:`~ls_seq.calibration.result.CalibrationResult`:
    a read-only mapping (and attributes) of float64 tensors, 0-dim without ``temperatures``, else ``(T,)``.
    By default: ``n_tokens``, ``accuracy``, ``mean_confidence``, ``nll``; ``ece``, ``mce``, ``rms``,
    ``rms_debiased`` on equal-width bins ``[k/B, (k+1)/B)`` (confidence 1 in the last); the same with
    ``_mass`` on equal-mass bins; ``brier``; ``ece_low``, ``ece_high``, ``ece_std`` (Poisson bootstrap);
    ``topk_ece``, ``topk_accuracy``, ``topk_mass``; ``sequence_ece``, ``sequence_token_ece``,
    ``exact_match``, ``n_sequences``; with ``classes`` also ``classwise_ece``. With ``n_b`` tokens, summed
    confidence ``s_b`` and ``c_b`` correct in bin ``b`` of ``N`` tokens: ``ece = sum_b |c_b - s_b| / N``.

    Args:
        n_bins: confidence bins (equal-width and equal-mass).
        ignore_index: label value of padding tokens.
        temperatures: optional sequence of temperatures ``T > 0``; every value is measured on
            ``softmax(logits / T)`` in the same pass.
        measures: names from :data:`ls_seq.calibration.measures.MEASURES` (default: every measure that needs no
            configuration, plus ``classwise`` when ``classes`` are given).
        **kwargs: the measures' options (``fine_bins``, ``bootstrap_replicates``, ``bootstrap_level``, ``seed``,
            ``top_k``, ``classes``), then those of :class:`torchmetrics.Metric` (``sync_on_compute``, ...).

    Examples:
        >>> import torch
        >>> from ls_seq.calibration.metric import TokenCalibration
        >>> metric = TokenCalibration(n_bins=10, temperatures=[1.0, 2.0])
        >>> metric.update(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0]))
        >>> out = metric.compute()
        >>> out.accuracy.tolist(), [round(v, 4) for v in out["ece"].tolist()]
        ([0.5, 0.5], [0.482, 0.3808])
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    tokens_n: torch.Tensor  # one of the states add_state declares in __init__ (the schema's)

    _OPTIONS = ("fine_bins", "bootstrap_replicates", "bootstrap_level", "seed", "top_k", "classes")

    def __init__(
        self,
        n_bins: int = 15,
        ignore_index: int = -100,
        temperatures: Sequence[float] | torch.Tensor | None = None,
        measures: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        options = {k: kwargs.pop(k) for k in self._OPTIONS if k in kwargs}
        super().__init__(**kwargs)
        self.schema = CalibrationSchema(make_config(n_bins, ignore_index, temperatures, measures, **options))
        for name, default in self.schema.zero_state().items():
            self.add_state(name, default=default, dist_reduce_fx="sum")

    @property
    def config(self) -> CalibrationConfig:
        return self.schema.config

    @property
    def n_bins(self) -> int:
        return self.config.n_bins

    @property
    def ignore_index(self) -> int:
        return self.config.ignore_index

    @property
    def temperatures(self) -> torch.Tensor | None:
        """The temperatures measured (float64, shape ``(T,)``), or None when constructed without them."""
        return None if self.config.temperatures is None else self.config.temperature_tensor()

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch; raises ``ValueError`` for NaN/infinite logits at non-ignored positions."""
        check_logits_labels(logits, labels, self.ignore_index)
        for name, value in self.schema.batch_state(logits, labels).items():
            setattr(self, name, getattr(self, name) + value)

    def _states(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.schema.state_shapes()}

    def compute(self) -> CalibrationResult:
        """The fields over every token seen (on every process); a ``RuntimeError`` before any token."""
        # A plain dict for torchmetrics' wrapper, which the CalibrationResult the caller gets is made from (below).
        return dict(self.schema.compute(self._states()))  # type: ignore[return-value]

    def _wrap_compute(self, compute: Any) -> Any:
        # torchmetrics' compute wrapper (sync, cache) turns mappings into plain dicts and squeezes one-element
        # tensors to 0-dim, which would take a one-temperature grid's (1,) shape away: the typed result is
        # rebuilt around it (also after copy/pickle, which wrap compute again).
        synced = super()._wrap_compute(compute)

        @functools.wraps(synced)
        def typed(*args: Any, **kwargs: Any) -> CalibrationResult:
            values = synced(*args, **kwargs)
            if self.config.temperatures is not None:
                values = {k: v.reshape(self.config.n_temperatures) for k, v in values.items()}
            return CalibrationResult(self.config.temperatures, values, self.schema.fields)

        return typed

    def reliability(self, binning: str = "width") -> dict[str, torch.Tensor]:
        """Per-bin ``lower``/``upper`` edges, mean ``confidence``, ``accuracy`` and ``count`` of one binning.

        ``binning``: ``"width"`` (equal-width bins), ``"mass"`` (equal-mass bins: ``lower == upper`` is each
        bin's mean confidence) or ``"sequence"`` (sequences against exact match). Synced across processes
        like ``compute()``. Confidence and accuracy are 0 in empty bins. Shapes ``(n_bins,)``, or
        ``(T, n_bins)`` with temperatures.
        """
        return self.schema.reliability(self._synced_states("reliability()"), binning)

    def _synced_states(self, caller: str) -> dict[str, torch.Tensor]:
        """The state summed over every process (as ``compute()`` sees it); a ``RuntimeError`` before any token."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            process_group=self.process_group,
            should_sync=self._to_sync and not self._is_synced,
            should_unsync=self._should_unsync,
        ):
            if float(self.tokens_n) <= 0:
                raise RuntimeError(f"{caller} needs at least one non-ignored token: call update() first")
            return {name: value.clone() for name, value in self._states().items()}

    def bootstrap_replicates(self) -> dict[str, torch.Tensor]:
        """The ``bootstrap`` measure's replicates: ``ece``, ``accuracy``, ``nll``, each ``(R, T)`` (``(R,)``
        without a grid), synced across processes like ``compute()``.

        A token's bootstrap weights depend on the token only, so replicate ``r`` of two metrics filled on the
        same evaluation set is one resample: ``b["ece"] - a["ece"]`` is a paired bootstrap of the difference
        (:func:`ls_seq.studies.intervals.paired_interval`).
        """
        from ls_seq.calibration.measures import bootstrap_replicates

        if "bootstrap" not in self.config.measures:
            raise ValueError(f"bootstrap_replicates() needs the 'bootstrap' measure; `measures` is {list(self.config.measures)}")
        replicates = bootstrap_replicates(self._synced_states("bootstrap_replicates()"))
        if self.config.temperatures is None:
            replicates = {k: v[:, 0] for k, v in replicates.items()}
        return replicates

    @property
    def state_size(self) -> int:
        """Floats of state, fixed by the configuration (not by the number of tokens)."""
        return self.schema.state_size()

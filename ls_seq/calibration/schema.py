"""The enabled measures of a configuration, run together: state shapes, one batch's state, the result.

:class:`CalibrationSchema` is pure functions over state dicts; :class:`ls_seq.calibration.metric.TokenCalibration`
keeps its state summed across processes, :class:`ls_seq.CalibrationComputeMetrics` per sample, the fairseq
criterion in its logging outputs. :func:`make_config` is the configuration with ls-seq's default measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ls_seq.calibration.measures import (
    DEFAULT_MEASURES,
    MEASURES,
    CalibrationConfig,
    Field,
    Groups,
    State,
)
from ls_seq.calibration.result import CalibrationResult
from ls_seq.checks import check_temperatures
from ls_seq.functional.statistics import TokenStatistics, token_statistics

__all__ = ["CalibrationSchema", "make_config"]


class CalibrationSchema:
    """The enabled measures of a :class:`CalibrationConfig`: state shapes, one batch's state, results.

    Pure functions over state dicts: :class:`ls_seq.calibration.metric.TokenCalibration` keeps the state (summed across
    processes), :class:`ls_seq.CalibrationComputeMetrics` keeps it per sample, a fairseq criterion in its logging
    outputs.
    """

    def __init__(self, config: CalibrationConfig) -> None:
        self.config = config
        self.measures = [MEASURES[name] for name in config.measures]
        self._needs = set().union(*(m.needs for m in self.measures))

    @property
    def fields(self) -> dict[str, Field]:
        return {f.name: f for m in self.measures for f in m.fields}

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for m in self.measures for name, shape in m.state(self.config).items()}

    def state_size(self) -> int:
        """Floats of one (summed or per-sample) state."""
        return sum(math.prod(shape) for shape in self.state_shapes().values())

    def zero_state(self, device: Any = None) -> State:
        return {name: torch.zeros(shape, dtype=torch.float64, device=device) for name, shape in self.state_shapes().items()}

    def statistics(self, logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None) -> TokenStatistics:
        config = self.config
        classes = (
            None if config.classes is None or "classes" not in self._needs else torch.tensor(config.classes, device=logits.device)
        )
        return token_statistics(
            logits,
            labels,
            config.temperature_tensor(logits.device),
            ignore_index=config.ignore_index,
            brier="brier" in self._needs,
            top_k=config.top_k if "top_k" in self._needs else None,
            classes=classes,
            chunk_rows=chunk_rows,
        )

    def batch_state(
        self, logits: torch.Tensor, labels: torch.Tensor, per_row: bool = False, chunk_rows: int | None = None
    ) -> State:
        """One batch's state (inputs unchecked); with ``per_row``, kept apart for each row (a leading dim)."""
        stats = self.statistics(logits, labels, chunk_rows)
        groups = None
        if per_row:
            rows = torch.arange(stats.n_rows, device=stats.row.device)
            groups = Groups(stats.row, rows, stats.n_rows)
        state: State = {}
        for m in self.measures:
            state.update(m.update(stats, self.config, groups))
        return state

    def flatten(self, state: State, per_row: bool = False) -> torch.Tensor:
        """The state as one float64 vector (``(rows, size)`` with ``per_row``), in :meth:`state_shapes` order."""
        shapes = self.state_shapes()
        if per_row:
            rows = next(iter(state.values())).shape[0]
            return torch.cat([state[name].reshape(rows, -1) for name in shapes], dim=1)
        return torch.cat([state[name].reshape(-1) for name in shapes])

    def unflatten(self, flat: torch.Tensor) -> State:
        state, start = {}, 0
        for name, shape in self.state_shapes().items():
            size = math.prod(shape)
            state[name] = flat[start : start + size].reshape(shape)
            start += size
        return state

    def compute(self, state: State) -> CalibrationResult:
        """The fields of summed state; ``RuntimeError`` before any scored token."""
        if float(state["tokens_n"]) <= 0:
            raise RuntimeError(
                "calibration metrics are undefined before any non-ignored token was seen: call update() with at "
                "least one label that is not ignore_index before compute()"
            )
        values: State = {}
        for m in self.measures:
            values.update(m.compute(state, self.config))
        if self.config.temperatures is None:
            values = {k: v.reshape(-1)[0] for k, v in values.items()}
        return CalibrationResult(self.config.temperatures, values, self.fields)

    def binnings(self) -> list[str]:
        """The measures that give reliability curves (``width``, ``mass``, ``sequence``)."""
        return [m.name for m in self.measures if m.reliability is not None]

    def reliability(self, state: State, binning: str = "width") -> State:
        """Per-bin curves ``lower``, ``upper``, ``confidence``, ``accuracy``, ``count`` of one binning, ``(T, B)``
        (``(B,)`` without a grid). For equal-mass bins ``lower == upper`` is the bin's mean confidence."""
        if binning not in self.binnings():
            raise ValueError(f"`binning` must be one of {self.binnings()} (the enabled measures with bins), got {binning!r}")
        reliability = MEASURES[binning].reliability
        assert reliability is not None  # binnings() has only the measures with curves
        curves = reliability(state, self.config)
        return {k: v[0] for k, v in curves.items()} if self.config.temperatures is None else curves


def make_config(
    n_bins: int = 15,
    ignore_index: int = -100,
    temperatures: Sequence[float] | torch.Tensor | None = None,
    measures: Sequence[str] | None = None,
    **options: Any,
) -> CalibrationConfig:
    """A :class:`CalibrationConfig`, ``measures`` defaulting to :data:`DEFAULT_MEASURES` (+ ``classwise`` with classes)."""
    if temperatures is not None:
        temperatures = check_temperatures(temperatures)  # a string or a number is refused here, not split
    if measures is None:
        measures = DEFAULT_MEASURES + (("classwise",) if options.get("classes") else ())
    return CalibrationConfig(
        n_bins=n_bins,
        temperatures=None if temperatures is None else tuple(temperatures),
        ignore_index=ignore_index,
        measures=tuple(measures),
        **options,
    )

"""The result of a calibration pass: every reported field over the temperature grid, read-only."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ls_seq.calibration.measures import Field

__all__ = ["CalibrationResult"]


class CalibrationResult(Mapping[str, torch.Tensor]):
    """The fields of a calibration pass: a read-only mapping ``name -> tensor`` with attribute access.

    Each value has shape ``(T,)`` over :attr:`temperatures` (0-dim when the pass had no grid). The names are
    the :class:`Field` names of the measures that ran (``result.ece``, ``result["ece"]``, ``result.describe("ece")``).
    Built by :meth:`ls_seq.calibration.metric.TokenCalibration.compute` (and the schema it runs); not by hand.

    Args:
        temperatures: the grid the values run over, or None when the pass had none (0-dim values).
        values: field name -> float64 tensor, ``(T,)`` over the grid or 0-dim.
        fields: field name -> its :class:`Field` (what :meth:`describe` returns the documentation of).
    """

    def __init__(
        self, temperatures: tuple[float, ...] | None, values: Mapping[str, torch.Tensor], fields: Mapping[str, Field]
    ) -> None:
        self._temperatures = temperatures
        self._values = dict(values)
        self._fields = dict(fields)

    @property
    def temperatures(self) -> tuple[float, ...] | None:
        return self._temperatures

    @property
    def fields(self) -> dict[str, Field]:
        return dict(self._fields)

    def describe(self, name: str) -> str:
        return self._fields[name].doc

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> torch.Tensor:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"no calibration field {name!r}; the fields are {sorted(values)}")

    def at(self, temperature: float) -> dict[str, float]:
        """Every field at one temperature of the grid, as Python numbers."""
        temps = self._temperatures or (1.0,)
        matches = [i for i, t in enumerate(temps) if math.isclose(t, temperature, rel_tol=1e-12)]
        if not matches:
            raise ValueError(f"`temperature` {temperature} is not on the grid {list(temps)}")
        i = matches[0]
        return {k: float(torch.atleast_1d(v)[i]) for k, v in self._values.items()}

    def best_temperature(self, name: str = "nll") -> float:
        """The temperature of the grid with the lowest ``name`` (first on ties)."""
        temps = self._temperatures or (1.0,)
        return temps[int(torch.atleast_1d(self._values[name]).argmin())]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the grid and every field as lists (or numbers without a grid)."""
        return {
            "temperatures": None if self._temperatures is None else list(self._temperatures),
            **{k: v.tolist() for k, v in self._values.items()},
        }

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v.tolist()}" for k, v in self._values.items())
        return f"CalibrationResult(temperatures={self._temperatures}, {inner})"

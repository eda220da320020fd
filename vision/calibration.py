"""Calibration of hard-target, temperature-scaled and label-smoothed networks (Müller et al. 2019, Fig. 2, Table 3).

The three rows of the paper's comparison, all measured on the test split with the shared metric core
(``ls_seq.metrics.TokenCalibration``, 15 equal-width bins):

* ``hard targets``: the network trained with ``alpha = 0``, logits as they are;
* ``hard targets + temperature scaling``: the same logits divided by ``T`` fitted with
  ``ls_seq.fit_temperature`` on the *validation* split (never on the test split);
* ``label smoothing``: the network trained with ``alpha > 0``, logits as they are (``T = 1``).

The temperature that would best calibrate the label-smoothed network is recorded too (``fitted_temperature``
of that row): the paper's point is that it is close to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ls_seq import fit_temperature
from ls_seq.metrics import TokenCalibration

__all__ = ["CalibrationRow", "calibration_row", "calibration_table"]

HARD = "hard targets"
HARD_TS = "hard targets + temperature scaling"
SMOOTHED = "label smoothing"


@dataclass
class CalibrationRow:
    """Test-split calibration of one model: metrics (floats), the temperature applied and the reliability bins."""

    name: str
    temperature: float
    fitted_temperature: float
    metrics: dict[str, float]
    reliability: dict[str, torch.Tensor]

    def as_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "fitted_temperature": self.fitted_temperature,
            **self.metrics,
            "reliability": {k: v.tolist() for k, v in self.reliability.items()},
        }


def calibration_row(
    name: str,
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    fitted_temperature: float = float("nan"),
    n_bins: int = 15,
) -> CalibrationRow:
    """Calibration metrics and reliability bins of ``softmax(test_logits / temperature)``."""
    metric = TokenCalibration(n_bins=n_bins)
    metric.update(test_logits.float() / temperature, test_labels)
    metrics = {k: float(v) for k, v in metric.compute().items()}
    return CalibrationRow(name, float(temperature), float(fitted_temperature), metrics, metric.reliability())


def calibration_table(
    hard_val: tuple[torch.Tensor, torch.Tensor],
    hard_test: tuple[torch.Tensor, torch.Tensor],
    smoothed_val: tuple[torch.Tensor, torch.Tensor],
    smoothed_test: tuple[torch.Tensor, torch.Tensor],
    *,
    n_bins: int = 15,
) -> dict[str, CalibrationRow]:
    """The Table-3 comparison: hard targets, hard targets + temperature scaling, label smoothing.

    Args:
        hard_val, hard_test: ``(logits (N, K), labels (N,))`` of the ``alpha = 0`` network on the validation
            and test splits; ``smoothed_val``, ``smoothed_test`` the same for the label-smoothed network.
        n_bins: equal-width confidence bins (15 in the paper).

    Returns:
        ``{row name: CalibrationRow}`` in the paper's order. ECE is ``sum_b n_b/N |acc_b - conf_b|``.
    """
    t_hard = fit_temperature(*hard_val)
    t_smoothed = fit_temperature(*smoothed_val)
    return {
        HARD: calibration_row(HARD, *hard_test, fitted_temperature=t_hard, n_bins=n_bins),
        HARD_TS: calibration_row(HARD_TS, *hard_test, temperature=t_hard, fitted_temperature=t_hard, n_bins=n_bins),
        SMOOTHED: calibration_row(SMOOTHED, *smoothed_test, fitted_temperature=t_smoothed, n_bins=n_bins),
    }

"""Calibration of hard-target, temperature-scaled and label-smoothed networks (Müller et al. 2019, Fig. 2, Table 3).

The three rows of the paper's comparison, all measured on the test split with the shared metric core
(``ls_seq.calibration.metric.TokenCalibration``, 15 equal-width bins):

* ``hard targets``: the network trained with ``alpha = 0``, logits as they are;
* ``hard targets + temperature scaling``: the same logits divided by ``T`` fitted with
  ``ls_seq.fit_temperature`` on the *validation* split (never on the test split);
* ``label smoothing``: the network trained with ``alpha > 0``, logits as they are (``T = 1``).

The temperature that would best calibrate the label-smoothed network is recorded too (``fitted_temperature``
of that row): the paper's point is that it is close to 1.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ls_seq import fit_temperature
from ls_seq.calibration.metric import TokenCalibration
from ls_seq.studies.claims import SeedEvidence
from ls_seq.studies.trajectory import TrajectoryPoint, trajectory_from_log

__all__ = [
    "TRAJECTORY_TEMPERATURES",
    "CalibrationAlongTraining",
    "CalibrationRow",
    "calibration_row",
    "calibration_table",
    "paired_evidence",
    "trajectory_points",
]

# The grid of the calibration along training: wide enough for an under-confident label-smoothed network.
TRAJECTORY_TEMPERATURES: tuple[float, ...] = tuple(round(0.5 + 0.1 * i, 1) for i in range(26))  # 0.5 ... 3.0

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
    # (R,) bootstrap replicates of ece, accuracy and nll; replicate r of every row is the same resample of the
    # test images (ls_seq.studies.intervals), so two rows' difference has a paired interval
    replicates: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "fitted_temperature": self.fitted_temperature,
            **self.metrics,
            "reliability": {k: v.tolist() for k, v in self.reliability.items()},
            "replicates": self.replicates,
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
    replicates = {k: v.tolist() for k, v in metric.bootstrap_replicates().items()}
    return CalibrationRow(name, float(temperature), float(fitted_temperature), metrics, metric.reliability(), replicates)


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


class CalibrationAlongTraining:
    """A :mod:`vision.train` callback: the validation calibration of the network every ``every`` epochs.

    At each such epoch it records, in the epoch's history entry, ``val_ece``, ``val_nll``, ``val_accuracy``,
    ``val_mean_confidence`` (T = 1), ``val_best_ece_temperature`` / ``val_best_temperature`` (lowest ECE /
    NLL on ``temperatures``, 1.0 included; the names of :func:`ls_seq.hf.compute_metrics.calibration_log_values`); the history is saved in each checkpoint, so a resumed run keeps
    the earlier points. Every process measures the whole split, so all of them record the same numbers.
    :attr:`seconds` adds up its wall-clock in this process (the history holds only deterministic numbers).
    """

    def __init__(
        self, dataset: Any, every: int, *, n_bins: int = 15, temperatures: Sequence[float] = TRAJECTORY_TEMPERATURES
    ) -> None:
        from ls_seq.checks import check_positive_int, check_temperatures

        self.dataset = dataset
        self.every = check_positive_int(every, "calibration_every")
        self.n_bins = check_positive_int(n_bins, "n_bins")
        self.temperatures = sorted(set(check_temperatures(temperatures)) | {1.0})
        self.seconds = 0.0

    def on_epoch_end(self, epoch: int, model: torch.nn.Module) -> dict[str, float] | None:
        if epoch % self.every:
            return None
        from vision.train import collect_outputs

        start = time.perf_counter()
        outputs = collect_outputs(model, self.dataset)
        metric = TokenCalibration(n_bins=self.n_bins, temperatures=self.temperatures, measures=("width",))  # ECE, NLL, accuracy
        metric.update(outputs.logits, outputs.labels)
        result = metric.compute()
        i1 = self.temperatures.index(1.0)
        self.seconds += time.perf_counter() - start
        return {
            "val_ece": float(result["ece"][i1]),
            "val_nll": float(result["nll"][i1]),
            "val_accuracy": float(result["accuracy"][i1]),
            "val_mean_confidence": float(result["mean_confidence"][i1]),
            "val_best_ece_temperature": self.temperatures[int(torch.argmin(result["ece"]))],
            "val_best_temperature": self.temperatures[int(torch.argmin(result["nll"]))],
        }


def trajectory_points(history: Sequence[dict[str, float]]) -> list[TrajectoryPoint]:
    """The :class:`~ls_seq.studies.trajectory.TrajectoryPoint` of each history entry that
    :class:`CalibrationAlongTraining` measured (``step`` and ``epoch`` are both the epoch)."""
    return trajectory_from_log(history, prefix="val_", step="epoch")


def paired_evidence(rows: dict[str, dict], a: str, b: str, key: str, seed: int) -> SeedEvidence:
    """One seed's evidence for a claim on ``rows[b][key] - rows[a][key]`` (results.json calibration rows): the
    difference and its paired bootstrap interval over the test images, when both rows hold replicates."""
    from ls_seq.studies.intervals import paired_evidence as evidence

    replicates = [rows[name].get("replicates", {}).get(key) for name in (a, b)]
    return evidence(seed, rows[b][key] - rows[a][key], *replicates)

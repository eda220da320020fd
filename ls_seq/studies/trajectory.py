"""Calibration along training: when does a model turn over-confident? One compute and one plot function.

Both studies measure, every ``calibration_every`` steps (EN-DE: the Trainer's evaluation with
:class:`ls_seq.CalibrationCallback`; vision: epochs, the same :class:`ls_seq.calibration.metric.TokenCalibration`), the
validation ECE, NLL, accuracy and the temperatures of the grid with the lowest ECE and NLL. A lowest-ECE
temperature above 1 means the model is over-confident there (dividing its logits by ``T > 1`` calibrates it).

* :class:`TrajectoryPoint`: one measurement.
* :func:`overconfident_from`: the step from which the model stays over-confident.
* :func:`trajectory_curves` (compute) and :func:`plot_trajectory` (plot): per label (an alpha, a method),
  the mean over seeds of ECE and of the best-ECE temperature against the step, with the seeds' range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ls_seq._extras import require

__all__ = [
    "TrajectoryCurve",
    "TrajectoryPoint",
    "overconfident_from",
    "plot_trajectory",
    "trajectory_curves",
    "trajectory_from_log",
]


@dataclass(frozen=True)
class TrajectoryPoint:
    """Calibration of a model on its validation split at one point of training (``step``: optimizer steps, or
    epochs for the vision loop; ``epoch``: passes over the training set)."""

    step: float
    epoch: float
    ece: float
    nll: float
    accuracy: float
    mean_confidence: float
    best_ece_temperature: float
    best_nll_temperature: float
    ece_low: float | None = None
    ece_high: float | None = None


def trajectory_from_log(log: Sequence[Mapping], *, prefix: str = "eval_", step: str = "step") -> list[TrajectoryPoint]:
    """The points of a training log whose entries hold :func:`ls_seq.hf.compute_metrics.calibration_log_values`'
    names under ``prefix`` (``eval_ece``, ``eval_best_temperature``, ...), one per ``step`` key, in step order."""
    points = {}
    for h in log:
        if f"{prefix}ece" not in h:
            continue
        points[h[step]] = TrajectoryPoint(
            step=h[step],
            epoch=round(float(h.get("epoch") or 0.0), 4),
            ece=h[f"{prefix}ece"],
            nll=h[f"{prefix}nll"],
            accuracy=h[f"{prefix}accuracy"],
            mean_confidence=h[f"{prefix}mean_confidence"],
            best_ece_temperature=h.get(f"{prefix}best_ece_temperature", 1.0),
            best_nll_temperature=h.get(f"{prefix}best_temperature", 1.0),
            ece_low=h.get(f"{prefix}ece_low"),
            ece_high=h.get(f"{prefix}ece_high"),
        )
    return [points[k] for k in sorted(points)]


def overconfident_from(points: Sequence[TrajectoryPoint]) -> float | None:
    """The first step from which every later measurement has a best-ECE temperature above 1 (the model turned
    over-confident and stayed so); None if the last one does not. An early stretch of over-confidence that
    ends (a model near its uniform start) does not count."""
    start = None
    for point in sorted(points, key=lambda p: p.step):
        if point.best_ece_temperature > 1.0:
            start = point.step if start is None else start
        else:
            start = None
    return start


@dataclass(frozen=True)
class TrajectoryCurve:
    """One label's trajectory over seeds: means and ranges at each step measured by every seed."""

    label: str
    steps: list[float]
    ece: list[float]
    ece_min: list[float]
    ece_max: list[float]
    best_ece_temperature: list[float]
    best_ece_temperature_min: list[float]
    best_ece_temperature_max: list[float]
    overconfident_from: dict[int, float | None]  # per seed


def trajectory_curves(runs: Mapping[str, Mapping[int, Sequence[TrajectoryPoint]]]) -> list[TrajectoryCurve]:
    """``{label: {seed: points}}`` -> one :class:`TrajectoryCurve` per label, at the steps every seed measured."""
    curves = []
    for label, points in runs.items():
        by_seed = {s: {p.step: p for p in pts} for s, pts in points.items() if pts}
        if not by_seed:
            continue
        steps = sorted(set.intersection(*(set(pts) for pts in by_seed.values())))
        ece = [[pts[s].ece for pts in by_seed.values()] for s in steps]
        temp = [[pts[s].best_ece_temperature for pts in by_seed.values()] for s in steps]
        curves.append(
            TrajectoryCurve(
                label,
                steps,
                [sum(v) / len(v) for v in ece],
                [min(v) for v in ece],
                [max(v) for v in ece],
                [sum(v) / len(v) for v in temp],
                [min(v) for v in temp],
                [max(v) for v in temp],
                {seed: overconfident_from(list(pts.values())) for seed, pts in by_seed.items()},
            )
        )
    return curves


def plot_trajectory(curves: Sequence[TrajectoryCurve], *, x_label: str = "optimizer step", title: str | None = None):
    """Two panels: validation ECE against the step, and the best-ECE temperature against the step with T = 1
    marked (above: over-confident); per curve the mean over seeds, shaded between the seeds' extremes."""
    Figure = require("matplotlib.figure", extra="plots", feature="the calibration trajectory figure").Figure

    if not curves:
        raise ValueError("`curves` must hold at least one trajectory")
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ece_ax, t_ax = fig.subplots(1, 2)
    for curve in curves:
        n_seeds = len(curve.overconfident_from)
        label = curve.label + (f" ({n_seeds} seeds)" if n_seeds > 1 else "")
        (line,) = ece_ax.plot(curve.steps, curve.ece, marker="o", markersize=3, label=label)
        t_ax.plot(curve.steps, curve.best_ece_temperature, marker="o", markersize=3, color=line.get_color(), label=label)
        if n_seeds > 1:
            ece_ax.fill_between(curve.steps, curve.ece_min, curve.ece_max, color=line.get_color(), alpha=0.2)
            t_ax.fill_between(
                curve.steps, curve.best_ece_temperature_min, curve.best_ece_temperature_max, color=line.get_color(), alpha=0.2
            )
    t_ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    t_ax.text(0.01, 0.98, "above T = 1: over-confident", transform=t_ax.transAxes, va="top", fontsize="small")
    ece_ax.set(xlabel=x_label, ylabel="validation ECE (T = 1)", title="ECE along training")
    t_ax.set(xlabel=x_label, ylabel="lowest-ECE temperature", title="Best temperature along training")
    ece_ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig

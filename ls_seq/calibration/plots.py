"""Figures shared by the translation and vision studies.

Figures are built with :class:`matplotlib.figure.Figure` directly (not ``pyplot``), so they render headless
without switching the user's backend; save them with :func:`ls_seq.io.atomic_savefig`. matplotlib comes with
``pip install 'ls-seq[plots]'``; without it a plot function raises :class:`ls_seq.errors.MissingExtraError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ls_seq._extras import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_reliability_diagram", "plot_temperature_sweep", "reliability_ece"]


def reliability_ece(reliability: Mapping[str, Any]) -> float:
    """ECE recomputed from a reliability dict: ``sum_b count_b |acc_b - conf_b| / sum_b count_b``."""
    count = torch.as_tensor(reliability["count"], dtype=torch.float64)
    gap = (torch.as_tensor(reliability["accuracy"]) - torch.as_tensor(reliability["confidence"])).abs()
    total = count.sum()
    if float(total) <= 0:
        raise ValueError("`reliability` has no tokens (every bin count is 0)")
    return float((count * gap).sum() / total)


def plot_reliability_diagram(
    reliabilities: Mapping[str, Mapping[str, Any]],
    *,
    title: str | None = None,
    ax: Any = None,
    show_counts: bool = True,
) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one curve per entry, and under it the
    confidence histogram (the share of tokens in each bin), as in Guo et al. (2017).

    Args:
        reliabilities: ``{label: TokenCalibration.reliability(binning)}`` at one temperature each (1-D per-bin
            tensors ``lower, upper, confidence, accuracy, count``). The legend shows each curve's ECE.
            Equal-mass bins (``lower == upper``, the bin's mean confidence) are drawn at their means.
        title: optional axes title.
        ax: draw into these axes instead of a new figure.
        show_counts: add the histogram panel below (log scale), which tells a well-populated bin from an
            empty one. Ignored when ``ax`` is given.

    Returns:
        The matplotlib ``Figure``.
    """
    Figure = require("matplotlib.figure", extra="plots", feature="the reliability diagram").Figure

    if not reliabilities:
        raise ValueError("`reliabilities` must hold at least one curve, got an empty mapping")
    for label, rel in reliabilities.items():
        shape = tuple(torch.as_tensor(rel["count"]).shape)
        if len(shape) != 1:
            raise ValueError(
                f"`reliabilities[{label!r}]` must be per-bin 1-D tensors (one temperature); got count of shape {shape}"
            )
    hist_ax = None
    if ax is None:
        fig = Figure(figsize=(4.8, 5.6) if show_counts else (4.8, 4.4))
        if show_counts:
            ax, hist_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
        else:
            ax = fig.subplots()
    else:
        fig = ax.figure
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    n_curves = len(reliabilities)
    for k, (label, rel) in enumerate(reliabilities.items()):
        count = torch.as_tensor(rel["count"], dtype=torch.float64)
        keep = count > 0
        conf = torch.as_tensor(rel["confidence"], dtype=torch.float64)[keep]
        acc = torch.as_tensor(rel["accuracy"], dtype=torch.float64)[keep]
        (line,) = ax.plot(
            conf.tolist(), acc.tolist(), marker="o", markersize=3, label=f"{label} (ECE {reliability_ece(rel):.3f})"
        )
        if hist_ax is not None:
            lower = torch.as_tensor(rel["lower"], dtype=torch.float64)[keep]
            upper = torch.as_tensor(rel["upper"], dtype=torch.float64)[keep]
            width = torch.where(upper > lower, upper - lower, torch.full_like(lower, 1.0 / max(len(count), 1)))
            # side by side within each bin, one slot per curve
            slot = width / n_curves
            left = torch.where(upper > lower, lower, lower - width / 2) + k * slot
            hist_ax.bar(
                left.tolist(),
                (count[keep] / count.sum()).tolist(),
                width=slot.tolist(),
                align="edge",
                color=line.get_color(),
                alpha=0.8,
            )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower right", fontsize="small")  # the curves start at the lower left and rise
    if title:
        ax.set_title(title)
    if hist_ax is not None:
        hist_ax.set_yscale("log")
        hist_ax.set_ylabel("share of tokens")
        hist_ax.set_xlabel("confidence")
    else:
        ax.set_xlabel("confidence")
    return fig


def plot_temperature_sweep(
    points: Sequence[Mapping[str, Any]], *, title: str | None = None, fitted_temperature: float | None = None
) -> Figure:
    """NLL, ECE (with its bootstrap interval when the points have ``ece_low``/``ece_high``) and, when measured,
    BLEU against the temperature: one panel each.

    Args:
        points: one mapping per temperature with ``temperature``, ``nll``, ``ece`` and optionally
            ``ece_low``, ``ece_high``, ``bleu`` (None where not measured).
        title: the figure's title.
        fitted_temperature: drawn as a vertical line in every panel (the NLL-optimal temperature).

    Returns:
        The matplotlib ``Figure``.
    """
    Figure = require("matplotlib.figure", extra="plots", feature="the temperature sweep figure").Figure

    if not points:
        raise ValueError("`points` must hold at least one temperature, got none")
    points = sorted(points, key=lambda p: p["temperature"])
    temps = [float(p["temperature"]) for p in points]
    panels = [("nll", "token NLL (nats)"), ("ece", "token ECE")]
    if any(p.get("bleu") is not None for p in points):
        panels.append(("bleu", "BLEU (beam search)"))
    fig = Figure(figsize=(3.6 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels):
        have = [(t, p[key]) for t, p in zip(temps, points) if p.get(key) is not None]
        ax.plot([t for t, _ in have], [v for _, v in have], marker="o", markersize=3)
        if key == "ece" and all("ece_low" in p and "ece_high" in p for p in points):
            ax.fill_between(
                temps, [p["ece_low"] for p in points], [p["ece_high"] for p in points], alpha=0.25, label="bootstrap interval"
            )
            ax.legend(fontsize="small")
        ax.axvline(1.0, color="0.7", linewidth=1, linestyle=":")
        if fitted_temperature is not None:
            ax.axvline(fitted_temperature, color="C3", linewidth=1, linestyle="--")
        ax.set_xlabel("temperature T")
        ax.set_ylabel(label)
    if title:
        fig.suptitle(title)
    return fig

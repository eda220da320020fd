"""Figures shared by the translation and vision studies.

Figures are built with :class:`matplotlib.figure.Figure` directly (not ``pyplot``), so they render headless
without switching the user's backend; save them with :func:`ls_seq.io.atomic_savefig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["plot_reliability_diagram", "reliability_ece"]


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
):
    """Reliability diagram: accuracy against mean confidence per bin, one curve per entry.

    Args:
        reliabilities: ``{label: TokenCalibration.reliability()}`` at one temperature each (1-D per-bin
            tensors ``lower, upper, confidence, accuracy, count``). The legend shows each curve's ECE.
        title: optional axes title.
        ax: draw into these axes instead of a new figure.
        show_counts: add a lower panel with the share of tokens per bin (log scale), which is what tells a
            well-populated bin from an empty one. Ignored when ``ax`` is given.

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

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
        fig = Figure(figsize=(4.8, 5.4) if show_counts else (4.8, 4.4))
        if show_counts:
            ax, hist_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        else:
            ax = fig.subplots()
    else:
        fig = ax.figure
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    for label, rel in reliabilities.items():
        count = torch.as_tensor(rel["count"], dtype=torch.float64)
        keep = count > 0
        conf = torch.as_tensor(rel["confidence"], dtype=torch.float64)[keep]
        acc = torch.as_tensor(rel["accuracy"], dtype=torch.float64)[keep]
        (line,) = ax.plot(conf.tolist(), acc.tolist(), marker="o", markersize=3, label=f"{label} (ECE {reliability_ece(rel):.3f})")
        if hist_ax is not None:
            centers = ((torch.as_tensor(rel["lower"]) + torch.as_tensor(rel["upper"])) / 2)[keep]
            hist_ax.plot(centers.tolist(), (count[keep] / count.sum()).tolist(), marker=".", color=line.get_color())
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

"""Figures of the vision studies (reliability diagrams come from ``ls_seq.calibration.plots``).

Built on :class:`matplotlib.figure.Figure` (no pyplot state, renders headless); save with
``ls_seq.io.atomic_savefig``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from vision.distillation import CURVES, DistillationPoint

__all__ = ["plot_distillation", "plot_mutual_information", "plot_projection"]


def plot_projection(
    panels: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    classes: Sequence[int],
    *,
    class_names: Sequence[str] | None = None,
    ncols: int = 2,
    title: str | None = None,
):
    """Scatter plots of template-plane projections (Fig. 1), one panel per entry.

    Args:
        panels: ``{title: (points (N, 2), labels (N,), template_points (3, 2))}``, e.g. train/validation x
            hard targets/label smoothing; the templates are drawn as black crosses.
        classes: the three classes, in the order of ``template_points``.
        class_names: legend names per class index.
        title: figure title above the panels.

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("`panels` must hold at least one projection, got an empty mapping")
    nrows = (len(panels) + ncols - 1) // ncols
    fig = Figure(figsize=(4.2 * ncols, 4.0 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax, (panel_title, (points, labels, tmpl)) in zip(axes, panels.items()):
        for k in classes:
            mask = labels == k
            name = class_names[k] if class_names is not None else str(k)
            ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.5, label=f"class {name}")
        ax.scatter(tmpl[:, 0], tmpl[:, 1], marker="x", c="black", s=60, label="templates")
        ax.set_title(panel_title, fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    return fig


def plot_distillation(points: Sequence[DistillationPoint], *, title: str | None = None):
    """Test accuracy against ``alpha``/``gamma`` for the four curves of Fig. 5."""
    from matplotlib.figure import Figure

    if not points:
        raise ValueError("`points` must hold at least one DistillationPoint, got none")
    fig = Figure(figsize=(5.6, 4.2))
    ax = fig.subplots()
    styles = {CURVES[0]: "o-", CURVES[1]: "s-", CURVES[2]: "^--", CURVES[3]: "v--"}
    for curve in CURVES:
        pts = sorted((p for p in points if p.curve == curve), key=lambda p: p.gamma)
        if pts:
            ax.plot([p.gamma for p in pts], [100 * p.accuracy for p in pts], styles[curve], label=curve)
    return _finish(fig, ax, "alpha (LS training) / smoothness index gamma (distillation)", "test accuracy (%)", title)


def plot_mutual_information(
    histories: Mapping[str, Sequence[Mapping[str, float]]], *, upper_bound: float | None = None, title: str | None = None
):
    """``mutual_information`` against epoch, one curve per training history (Fig. 6); ``upper_bound`` = log N."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.subplots()
    for name, history in histories.items():
        rows = [h for h in history if "mutual_information" in h]
        if not rows:
            raise ValueError(f"history {name!r} has no `mutual_information` entry; train with MutualInformationCallback")
        ax.plot([h["epoch"] for h in rows], [h["mutual_information"] for h in rows], "o-", ms=3, label=name)
    if upper_bound is not None:
        ax.axhline(upper_bound, color="gray", ls=":", label="log N (upper bound)")
    return _finish(fig, ax, "epoch", "I(X; Y) estimate (nats)", title)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str | None):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig

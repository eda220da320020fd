"""Figures of the EN-DE study, drawn from ``results.json["models"]`` entries (matplotlib, no pyplot).

* :func:`plot_fig3`: reliability diagrams of all models in one figure (paper Fig. 3).
* :func:`plot_fig4`: per model, BLEU and ECE against temperature; then NLL against temperature for all
  models (paper Fig. 4: three panels for two models).
* :func:`plot_table3`: the Table-3 row as a small table image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ls_seq.calibration.plots import plot_reliability_diagram

__all__ = ["plot_fig3", "plot_fig4", "plot_table3"]


def plot_fig3(models: Sequence[dict[str, Any]]):
    """Reliability (15 bins, T = 1) of every model; each entry needs ``alpha`` and ``reliability``."""
    return plot_reliability_diagram(
        {f"alpha={m['alpha']}": m["reliability"] for m in models}, title="Token reliability, test set (T = 1)"
    )


def plot_fig4(models: Sequence[dict[str, Any]]):
    """``len(models) + 1`` panels: BLEU (left axis) and ECE (right axis) vs T per model, then NLL vs T.

    Each entry needs ``alpha`` and ``sweep`` (a list of ``{temperature, bleu, nll, ece}``; ``bleu`` may be
    None for points not yet measured).
    """
    from matplotlib.figure import Figure

    if not models:
        raise ValueError("`models` must hold at least one model with a sweep")
    fig = Figure(figsize=(4.2 * (len(models) + 1), 3.6), layout="constrained")
    axes = fig.subplots(1, len(models) + 1)
    for ax, m in zip(axes, models):
        sweep = m["sweep"]
        temps = [p["temperature"] for p in sweep]
        bleu = [(p["temperature"], p["bleu"]) for p in sweep if p["bleu"] is not None]
        ax.plot([t for t, _ in bleu], [b for _, b in bleu], marker="o", color="tab:blue", label="BLEU")
        ax.set_xlabel("temperature T")
        ax.set_ylabel("BLEU (beam search)", color="tab:blue")
        ax.set_title(f"alpha = {m['alpha']}")
        ece_ax = ax.twinx()
        ece_ax.plot(temps, [p["ece"] for p in sweep], marker="s", color="tab:red", label="ECE")
        ece_ax.set_ylabel("token ECE", color="tab:red")
    nll_ax = axes[-1]
    for m in models:
        nll_ax.plot(
            [p["temperature"] for p in m["sweep"]], [p["nll"] for p in m["sweep"]], marker="o", label=f"alpha={m['alpha']}"
        )
    nll_ax.set_xlabel("temperature T")
    nll_ax.set_ylabel("token NLL (teacher-forced)")
    nll_ax.set_title("NLL")
    nll_ax.legend(fontsize="small")
    return fig


def table3_cells(row: dict[str, Any]) -> list[str]:
    """The Table-3 row's four cells as text: baseline ECE, temperature-scaled ECE / T (T chosen on validation,
    and on test), label-smoothed ECE / alpha; the keys of :func:`ls_seq.studies.en_de.summary.table3_row`."""

    def fmt(value):
        return "-" if value is None else f"{value:.4f}"

    return [
        fmt(row["baseline_ece"]),
        f"{fmt(row.get('temperature_scaling_ece_validation_T'))} / {row.get('temperature_scaling_T_validation', '-')}",
        f"{fmt(row['temperature_scaling_ece'])} / {row['temperature_scaling_T']}",
        f"{fmt(row.get('label_smoothing_ece'))} / {row.get('label_smoothing_alpha', '-')}",
    ]


def plot_table3(row: dict[str, Any]):
    """The Table-3 row (:func:`table3_cells`) as a figure."""
    from matplotlib.figure import Figure

    cells = [table3_cells(row)]
    fig = Figure(figsize=(8.4, 1.2))
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        colLabels=["Baseline ECE", "Temp. scaling ECE / T (val.)", "Temp. scaling ECE / T (test)", "Label smoothing ECE / alpha"],
        rowLabels=["EN-DE"],
        loc="center",
    )
    table.scale(1, 1.6)
    return fig

"""The files of a calibration measurement: ``calibration.json``, the figures and ``report.md``, written as one set.

Shared by ``ls-seq calibrate`` (saved logits) and ``ls-seq evaluate`` (a checkpoint): both measure with
:class:`ls_seq.calibration.metric.TokenCalibration` and hand the result here. Every file is written to a temporary name
first and renamed only when all are written (:func:`ls_seq.io.atomic_write_files`), ``calibration.json``
last, so a reader never sees a half set, and a full disk leaves the previous set as it was.
"""

from __future__ import annotations

import importlib.metadata
import platform
import warnings
from pathlib import Path
from typing import Any

import torch

from ls_seq._extras import require
from ls_seq.calibration.result import CalibrationResult
from ls_seq.errors import LsSeqWarning, MissingExtraError
from ls_seq.io import atomic_write_files, figure_bytes, json_bytes

__all__ = ["calibration_document", "versions", "write_calibration_outputs"]

# The columns of report.md's table, in order, when the pass measured them.
TABLE_FIELDS = ("ece", "ece_low", "ece_high", "mce", "rms_debiased", "ece_mass", "nll", "brier", "accuracy", "mean_confidence")


def versions() -> dict[str, str]:
    """The versions a result depends on (those installed; transformers only when it was imported)."""
    import sys

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for package, module in (("ls-seq", "ls_seq"), ("transformers", "transformers"), ("torchmetrics", "torchmetrics")):
        if module in sys.modules or package == "ls-seq":
            try:
                out[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                out[package] = "not installed"
    return out


def calibration_document(
    result: CalibrationResult,
    reliability: dict[str, dict[str, torch.Tensor]],
    *,
    fitted_temperature: float | None,
    fit_on: str,
    bleu: dict[float, float] | None = None,
    about: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``calibration.json``'s content: the grid, every field at every temperature, the fitted temperature.

    Args:
        result: the pass's fields over its grid (1.0 included).
        reliability: ``{binning: curves}`` of each binning at T = 1 (1-D per-bin tensors).
        fitted_temperature: the NLL-optimal temperature (:func:`ls_seq.fit_temperature`), None if not fitted.
        fit_on: what it was fitted on ("the evaluated tokens", a split name, ...).
        bleu: ``{T: BLEU}`` of a beam-search sweep, if any.
        about: what was measured (command, model, data, sizes), copied to the top.
    """
    temps = list(result.temperatures or (1.0,))
    sweep = []
    for t in temps:
        point: dict[str, float | None] = {"temperature": t, **result.at(t)}
        if bleu is not None:
            point["bleu"] = bleu.get(t)
        sweep.append(point)
    doc: dict[str, Any] = dict(about or {})
    doc |= {
        "versions": versions(),
        "fields": {name: field.doc for name, field in result.fields.items()},
        "temperatures": temps,
        "at_temperature_1": result.at(1.0),
        "nll_optimal_temperature": fitted_temperature,
        "fit_on": fit_on,
        "best_temperature": {"nll": result.best_temperature("nll"), "ece": result.best_temperature("ece")},
        "sweep": sweep,
        "reliability": {name: {k: v.tolist() for k, v in curves.items()} for name, curves in reliability.items()},
    }
    if bleu is not None:
        doc["best_temperature"]["bleu"] = max(bleu, key=lambda t: bleu[t])
    return doc


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _report(doc: dict[str, Any], figures: list[str]) -> str:
    columns = [f for f in TABLE_FIELDS if f in doc["at_temperature_1"]] + (["bleu"] if "bleu" in doc["sweep"][0] else [])
    lines = ["# Calibration report", ""]
    if doc.get("command"):
        lines += [f"Command: `{doc['command']}`", ""]
    for key in ("model", "model_type", "data", "split", "n_examples", "n_tokens", "dtype", "num_processes", "n_bins"):
        if doc.get(key) is not None:
            lines.append(f"- {key}: {doc[key]}")
    fitted = doc["nll_optimal_temperature"]
    lines += [
        f"- NLL-optimal temperature: {_fmt(fitted)} (fitted on {doc['fit_on']})"
        if fitted is not None
        else "- NLL-optimal temperature: not fitted",
        f"- lowest NLL on the grid at T = {doc['best_temperature']['nll']}, lowest ECE at T = {doc['best_temperature']['ece']}",
        "",
        "## Temperature sweep",
        "",
        "| T | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for point in doc["sweep"]:
        lines.append(
            f"| {point['temperature']:g} | " + " | ".join(_fmt(point.get(c), 2 if c == "bleu" else 4) for c in columns) + " |"
        )
    lines += ["", "Bins: equal-width `[k/B, (k+1)/B)` (confidence 1 in the last); `_mass` fields use equal-mass bins.", ""]
    lines += ["## Fields", ""] + [f"- `{name}`: {doc_}" for name, doc_ in doc["fields"].items()]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    lines += ["", "## Versions", "", "```", *(f"{k} {v}" for k, v in doc["versions"].items()), "```", ""]
    return "\n".join(lines)


def write_calibration_outputs(output_dir: str | Path, doc: dict[str, Any], *, title: str) -> list[Path]:
    """Write ``reliability.png`` (each binning at T = 1), ``temperature_sweep.png`` (with a grid), ``report.md``
    and ``calibration.json`` into ``output_dir`` as one set; returns the paths written.

    Without matplotlib (a core install, no ``ls-seq[plots]``) the figures are left out with one
    :class:`~ls_seq.errors.LsSeqWarning` that says so: the numbers do not need them.
    """
    from ls_seq.calibration.plots import plot_reliability_diagram, plot_temperature_sweep

    out = Path(output_dir)
    files: dict[Path, bytes | str] = {}
    figures = ["reliability.png"] + (["temperature_sweep.png"] if len(doc["sweep"]) > 1 else [])
    try:
        require("matplotlib", extra="plots", feature=f"drawing {' and '.join(figures)}")
    except MissingExtraError as err:
        warnings.warn(f"{err}; writing calibration.json and report.md without them", LsSeqWarning, stacklevel=2)
        figures = []
    names = {"width": "equal-width bins", "mass": "equal-mass bins"}
    curves = {names[k]: v for k, v in doc["reliability"].items() if k in names}
    if "reliability.png" in figures:
        files[out / "reliability.png"] = figure_bytes(plot_reliability_diagram(curves, title=f"{title}, T = 1"), dpi=150)
    if "temperature_sweep.png" in figures:
        fig = plot_temperature_sweep(doc["sweep"], title=title, fitted_temperature=doc["nll_optimal_temperature"])
        files[out / "temperature_sweep.png"] = figure_bytes(fig, dpi=150)
    files[out / "report.md"] = _report(doc, [p.name for p in files])
    files[out / "calibration.json"] = json_bytes(doc)  # last: its presence means the set is complete
    return atomic_write_files(files)

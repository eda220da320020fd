"""What the EN-DE study writes from its results: ``results.json`` / ``results.csv``, ``report.md`` and its
figures, and the warnings about models that ignore their source."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import torch

from ls_seq.io import atomic_write_files, csv_bytes, figure_bytes, json_bytes
from ls_seq.studies.en_de.evaluation import SOURCE_DISTINCT_MIN, SOURCE_NLL_GAP_MIN
from ls_seq.studies.trajectory import TrajectoryPoint, plot_trajectory, trajectory_curves

__all__ = ["source_warnings", "trajectory_lines", "write_report"]


def _write_results(output_dir: Path, results: dict[str, Any]) -> None:
    """``results.csv`` and ``results.json`` as one set (the JSON last): a reader never sees one without the other."""
    rows = [{"alpha": m["alpha"], **p} for m in results["models"] for p in m.get("sweep", [])]
    atomic_write_files(
        {
            output_dir / "results.csv": csv_bytes(rows, fieldnames=["alpha", "temperature", "bleu", "nll", "ece"]),
            output_dir / "results.json": json_bytes(results),
        }
    )


def _versions() -> dict[str, str]:
    import accelerate
    import sacrebleu
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "tokenizers": tokenizers.__version__,
        "sacrebleu": sacrebleu.__version__,
        "ls_seq": importlib.metadata.version("ls-seq"),
    }


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _interval(bounds: list[float] | None, digits: int) -> str:
    return "" if not bounds else f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def source_warnings(models: list[dict[str, Any]]) -> list[str]:
    """One line per model that does not use its source (the first lines of the report)."""
    lines = []
    for m in models:
        sc = m.get("source_check")
        if sc is not None and "uses_source" in sc and not sc["uses_source"]:
            lines.append(
                f"WARNING: the alpha={m['alpha']} model IGNORES ITS SOURCE: shuffling the test sources changes its "
                f"token NLL by {sc['nll_gap']:+.3f} nats (needs >= {SOURCE_NLL_GAP_MIN}) and "
                f"{sc['share_distinct_outputs']:.1%} of its translations are distinct (needs >= {SOURCE_DISTINCT_MIN:.0%}). "
                "Its BLEU/NLL/ECE describe a language model, not a translator; lower the learning rate or lengthen warm-up."
            )
    return lines


def trajectory_lines(models: list[dict[str, Any]], cfg: dict[str, Any]) -> list[str]:
    """The report's section on calibration along training: per model, the step it turned over-confident and
    its validation ECE and best-ECE temperature at each point."""
    preset = cfg["preset"]
    n = (
        cfg["validation_sentences"]
        if preset.get("calibration_samples") is None
        else min(preset["calibration_samples"], cfg["validation_sentences"])
    )
    lines = [
        "",
        "## Calibration along training (validation)",
        "",
        f"Every {preset['calibration_every']} steps on {n} validation sentences (teacher-forced, T grid "
        f"{preset['calibration_temperatures'][0]}-{preset['calibration_temperatures'][-1]}). A lowest-ECE temperature "
        "above 1 means the model is over-confident there; *over-confident from* is the first step from which it "
        "stays so.",
        "",
    ]
    for m in models:
        if "calibration_along_training" not in m:
            continue
        along = m["calibration_along_training"]
        start = along["overconfident_from_step"]
        lines.append(
            f"- alpha={m['alpha']}: "
            + (f"over-confident from step {start}" if start is not None else "not over-confident at the last point")
        )
    lines += [
        "",
        "| alpha | step | epoch | ECE | NLL | accuracy | confidence | best-ECE T | best-NLL T |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        for p in m.get("calibration_along_training", {}).get("points", []):
            lines.append(
                f"| {m['alpha']} | {p['step']} | {p['epoch']} | {_fmt(p['ece'], 4)} | {_fmt(p['nll'])} | {_fmt(p['accuracy'])} | "
                f"{_fmt(p['mean_confidence'])} | {p['best_ece_temperature']} | {p['best_nll_temperature']} |"
            )
    return lines


def write_report(output_dir: Path, results: dict[str, Any], timings: dict[str, Any]) -> None:
    """``report.md`` and the figures, from ``results.json``'s content."""
    from ls_seq.studies.en_de.plots import plot_fig3, plot_fig4, plot_table3, table3_cells

    models = [m for m in results["models"] if "sweep" in m]
    warnings = source_warnings(models)
    lines = ["# EN-DE label smoothing study (Müller et al. 2019, Fig. 3, Fig. 4, Table 3)", ""]
    if warnings:
        lines += [f"**{w}**" for w in warnings] + [""]
    else:
        skipped = sorted({m["source_check"]["skipped"] for m in models if "skipped" in m.get("source_check", {})})
        checks = ", ".join(
            f"alpha={m['alpha']}: NLL gap {m['source_check']['nll_gap']:+.2f}, "
            f"{m['source_check']['share_distinct_outputs']:.0%} distinct outputs"
            for m in models
            if "uses_source" in m.get("source_check", {})
        )
        if skipped:
            lines += [f"Source check skipped: {'; '.join(skipped)}.", ""]
        else:
            lines += [f"Source check: every model uses its source ({checks}).", ""]
    cfg = results["config"]
    lines += [
        f"Command: `{cfg['command']}`" + "".join(f"; resumed with `{c}`" for c in cfg.get("resumed_with", [])),
        "",
        (
            f"Preset `{cfg['preset_name']}`; test split: {cfg['test_sentences']} sentences; BLEU sweep on the first "
            f"{models[0]['sweep_bleu_sentences'] if models else '-'}; beam {cfg['preset']['num_beams']}; "
            f"{cfg['n_bins']} calibration bins; seed {cfg['seed']}."
        ),
        "",
        "## Test metrics (T = 1)",
        "",
        "| alpha | steps | epochs | BLEU | NLL | ECE [95% bootstrap] | token acc. [95% bootstrap] | NLL, shuffled sources | distinct outputs | best-NLL T | best-ECE T | best-ECE T on validation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        t, sc, tr = m["test"], m.get("source_check", {}), m.get("train", {})
        lines.append(
            f"| {m['alpha']} | {tr.get('steps', '-')} | {tr.get('epochs', '-')} | {_fmt(t['bleu'], 2)} | {_fmt(t['nll'])} | "
            f"{_fmt(t['ece'], 4)}{_interval(t.get('ece_interval'), 4)} | {_fmt(t['token_accuracy'])}"
            f"{_interval(t.get('accuracy_interval'), 3)} | {_fmt(sc.get('nll_shuffled_sources'))} | "
            f"{_fmt(sc.get('share_distinct_outputs'))} | {m['best_nll_temperature']} | {m['best_ece_temperature']} | "
            f"{m.get('validation', {}).get('best_ece_temperature', '-')} |"
        )
    lines += ["", "## Temperature sweep (BLEU: beam search at T; NLL/ECE: teacher-forced at T)", ""]
    lines += ["| alpha | T | BLEU | NLL | ECE |", "|---|---|---|---|---|"]
    for m in models:
        for p in m["sweep"]:
            lines.append(f"| {m['alpha']} | {p['temperature']} | {_fmt(p['bleu'], 2)} | {_fmt(p['nll'])} | {_fmt(p['ece'], 4)} |")
    row = results.get("table3")
    if row:
        lines += [
            "",
            "## Table 3 row (test ECE)",
            "",
            "Temperature scaling: T chosen on the validation split (first number), and the lowest test ECE over the",
            "grid (an upper bound of what scaling can give).",
            "",
            "| baseline ECE | temperature scaling ECE / T (validation-chosen) | ... (test-chosen) | label smoothing ECE / alpha |",
            "|---|---|---|---|",
            "| " + " | ".join(table3_cells(row)) + " |",
        ]
    figures: dict[Path, bytes] = {}
    if models and all("reliability" in m for m in models):
        figures[output_dir / "reliability.png"] = figure_bytes(plot_fig3(models))
        figures[output_dir / "temperature_sweep.png"] = figure_bytes(plot_fig4(models))
        if row:
            figures[output_dir / "table3.png"] = figure_bytes(plot_table3(row))
    along = {
        f"alpha {m['alpha']}": {cfg["seed"]: [TrajectoryPoint(**p) for p in m["calibration_along_training"]["points"]]}
        for m in models
        if "calibration_along_training" in m
    }
    if along:
        lines += trajectory_lines(models, cfg)
        figures[output_dir / "calibration_along_training.png"] = figure_bytes(
            plot_trajectory(trajectory_curves(along), title="Validation calibration along training")
        )
    captions = {
        "reliability.png": "Fig. 3: reliability",
        "temperature_sweep.png": "Fig. 4: temperature sweep",
        "table3.png": "Table 3 row",
        "calibration_along_training.png": "Calibration along training",
    }
    lines += ["", "## Figures", ""] + [f"![{captions[p.name]}]({p.name})" for p in figures]
    lines += ["", "## Wall-clock", "", "```", json.dumps(timings, indent=1), "```"]
    lines += ["", "## Versions", "", "```", json.dumps(results["versions"], indent=1), "```", ""]
    # The figures first, the report that shows them last: a report.md is never without its figures.
    atomic_write_files({**figures, output_dir / "report.md": "\n".join(lines)})

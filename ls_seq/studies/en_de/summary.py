"""One model's entry of ``results.json`` from its training summary and (possibly partial) evaluation, and
the EN-DE row of the paper's Table 3 from those entries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ls_seq.hf.sweeps import best_temperature
from ls_seq.studies.en_de.evaluation import check_source_use
from ls_seq.studies.en_de.records import Evaluation
from ls_seq.studies.trajectory import TrajectoryPoint, overconfident_from

__all__ = ["summarize_model", "table3_row"]


def summarize_model(
    alpha: float, evaluation: Evaluation | Mapping[str, Any], train_summary: dict[str, Any] | None, grid: list[float]
) -> dict[str, Any]:
    """One entry of ``results.json["models"]`` from the evaluation stages done so far.

    ``evaluation``: the :class:`~ls_seq.studies.en_de.records.Evaluation`, or the content of an
    ``evaluation.json`` (read with :meth:`~ls_seq.studies.en_de.records.Evaluation.from_json`).
    """
    if not isinstance(evaluation, Evaluation):
        evaluation = Evaluation.from_json(evaluation)
    entry: dict[str, Any] = {"alpha": alpha}
    if train_summary is not None:
        entry["train"] = {k: train_summary.get(k) for k in ("steps", "epochs", "final_loss", "final_nll_loss")}
        points = train_summary.get("calibration_trajectory") or []
        if points:  # validation calibration along training; above T = 1 from this step on: over-confident
            entry["calibration_along_training"] = {
                "points": points,
                "overconfident_from_step": overconfident_from([TrajectoryPoint(**p) for p in points]),
            }
    tf, sweep = evaluation.teacher_forced, evaluation.sweep_bleu
    if tf is None:
        return entry
    i1 = tf.at(1.0)
    entry["test"] = {
        "bleu": None if evaluation.test_bleu is None else evaluation.test_bleu.bleu,
        "nll": tf.nll[i1],
        "ece": tf.ece[i1],
        "mce": tf.mce[i1],
        "token_accuracy": tf.accuracy[i1],
        "mean_confidence": tf.mean_confidence[i1],
        "n_tokens": tf.n_tokens,
    }
    for name in ("ece", "accuracy"):  # 95% bootstrap interval over the test tokens
        if f"{name}_low" in tf.intervals:
            entry["test"][f"{name}_interval"] = [tf.intervals[f"{name}_low"][i1], tf.intervals[f"{name}_high"][i1]]
    if tf.replicates is not None:  # stored per temperature: (T, R)
        entry["test"]["replicates"] = {k: v[i1] for k, v in tf.replicates.items()}
    entry["sweep"] = [
        {"temperature": t, "bleu": None if sweep is None else sweep.bleu(t), "nll": tf.nll[tf.at(t)], "ece": tf.ece[tf.at(t)]}
        for t in grid
    ]
    entry["sweep_bleu_sentences"] = None if sweep is None else sweep.sentences
    entry["best_nll_temperature"] = best_temperature(entry["sweep"], "nll")
    entry["best_ece_temperature"] = best_temperature(entry["sweep"], "ece")
    if tf.replicates is not None:  # the ECE replicates at the best-ECE temperature (temperature scaling's)
        entry["best_ece_replicates"] = tf.replicates["ece"][tf.at(entry["best_ece_temperature"])]
    entry["best_ece"] = min(p["ece"] for p in entry["sweep"])
    val = evaluation.validation
    if val is not None:  # a temperature chosen without looking at the test set, and what it gives there
        val_points = [{"temperature": t, "nll": n, "ece": e} for t, n, e in zip(val.temperatures, val.nll, val.ece)]
        t_ece = best_temperature(val_points, "ece")
        entry["validation"] = {
            "sweep": val_points,
            "best_nll_temperature": best_temperature(val_points, "nll"),
            "best_ece_temperature": t_ece,
            "test_ece_at_best_ece_temperature": tf.ece[tf.at(t_ece)],
        }
    shuffled = evaluation.shuffled_sources
    if shuffled is not None and shuffled.skipped is not None:
        entry["source_check"] = {"skipped": shuffled.skipped}
    elif shuffled is not None and evaluation.test_bleu is not None:
        assert shuffled.nll is not None  # measured: it is None only when skipped
        entry["source_check"] = check_source_use(entry["test"]["nll"], shuffled.nll, evaluation.test_bleu.share_distinct_outputs)
    entry["reliability"] = tf.reliability
    return entry


def table3_row(models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Paper Table 3 for one dataset: baseline ECE (alpha=0, T=1); temperature scaling: the alpha=0 model's
    lowest ECE over the grid and its T; label smoothing: the lowest T=1 ECE among alpha>0 models and its alpha.
    """
    base = next((m for m in models if m["alpha"] == 0.0 and "sweep" in m), None)
    smoothed = [m for m in models if m["alpha"] > 0.0 and "test" in m]
    if base is None:
        return None
    row = {
        "baseline_ece": base["test"]["ece"],
        "temperature_scaling_ece": base["best_ece"],
        "temperature_scaling_T": base["best_ece_temperature"],
    }
    if "validation" in base:  # T chosen on the validation split: what temperature scaling gives in practice
        row["temperature_scaling_ece_validation_T"] = base["validation"]["test_ece_at_best_ece_temperature"]
        row["temperature_scaling_T_validation"] = base["validation"]["best_ece_temperature"]
    if smoothed:
        best = min(smoothed, key=lambda m: m["test"]["ece"])
        row.update(label_smoothing_ece=best["test"]["ece"], label_smoothing_alpha=best["alpha"])
    return row

"""The vision study's ``report.md``: what ran, and each study's numbers and figures in the paper's terms."""

from __future__ import annotations

from ls_seq.studies.claims import markdown_cell
from vision.config import VisionStudyConfig

__all__ = ["study_report"]


def study_report(cfg: VisionStudyConfig, results: dict, studies: set[str]) -> str:
    lines = [f"# Vision study: {cfg.dataset}, studies: {', '.join(sorted(studies))}", ""]
    d = results["data"]
    lines += [
        f"{d['num_classes']} classes; {d['n_train']} train / {d['n_val']} validation / {d['n_test']} test examples. "
        f"Model {cfg.model}, {cfg.epochs} epochs, alpha={cfg.alpha:g}, seed {cfg.seed}."
        + (f" Both base networks train on MixUp (a={cfg.mixup:g}) targets." if cfg.mixup else "")
        + (f" Both base networks train on CutMix (a={cfg.cutmix:g}) targets." if cfg.cutmix else ""),
        "",
    ]
    if "runs" in results:
        lines += ["## Base networks", "", "| run | final train acc | val acc | val NLL |", "|---|---|---|---|"]
        for name, hist in results["runs"].items():
            last = hist[-1]
            lines.append(f"| {name} | {last['train_accuracy']:.4f} | {last['eval_accuracy']:.4f} | {last['eval_nll']:.4f} |")
        lines.append("")
    if "calibration" in results:
        lines += [
            "## Calibration (test split)",
            "",
            "| | accuracy | ECE | NLL | T applied | T fitted on val |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in results["calibration"]["rows"].items():
            lines.append(
                f"| {name} | {r['accuracy']:.4f} | {r['ece']:.4f} | {r['nll']:.4f} | {r['temperature']:.2f} | "
                f"{r['fitted_temperature']:.2f} |"
            )
        lines += ["", "![reliability](reliability.png)", ""]
        along = results["calibration"].get("along_training")
        if along:
            lines += [
                "## Calibration along training (validation)",
                "",
                f"Every {along['every']} epochs. A lowest-ECE temperature above 1: over-confident there.",
                "",
            ]
            lines += [
                f"- {name}: "
                + (
                    f"over-confident from epoch {r['overconfident_from_epoch']}"
                    if r["overconfident_from_epoch"] is not None
                    else "not over-confident at the last point"
                )
                for name, r in along["runs"].items()
            ]
            lines += ["", "| run | epoch | ECE | NLL | accuracy | best-ECE T | best-NLL T |", "|---|---|---|---|---|---|---|"]
            for name, r in along["runs"].items():
                lines += [
                    f"| {name} | {p['epoch']:g} | {p['ece']:.4f} | {p['nll']:.4f} | {p['accuracy']:.4f} | "
                    f"{p['best_ece_temperature']} | {p['best_nll_temperature']} |"
                    for p in r["points"]
                ]
            lines += ["", "![calibration along training](calibration_along_training.png)", ""]
    if "projection" in results:
        lines += [
            "## Projection",
            "",
            f"Classes {results['projection']['classes']}; tightness = mean distance to own "
            "class mean / mean distance between class means (lower = tighter).",
            "",
            "| run | split | plane | full (D+1) |",
            "|---|---|---|---|",
        ]
        for run, splits in results["projection"]["tightness"].items():
            for split, t in splits.items():
                lines.append(f"| {run} | {split} | {t['plane']:.3f} | {t['full']:.3f} |")
        lines += ["", "![projection](projection.png)", ""]
    if "distillation" in results:
        lines += ["## Distillation", "", "| curve | alpha | T | gamma | test accuracy |", "|---|---|---|---|---|"]
        for p in results["distillation"]["points"]:
            lines.append(f"| {p['curve']} | {p['alpha']:g} | {p['temperature']:g} | {p['gamma']:.3f} | {p['accuracy']:.4f} |")
        lines += ["", "![distillation](distillation.png)", ""]
    if "mutual_info" in results:
        mi = results["mutual_info"]
        lines += [
            "## Mutual information",
            "",
            f"N={mi['n_examples']}, L={mi['n_augmentations']}, log N = {mi['log_n']:.3f} nats.",
            "",
            "| epoch | " + " | ".join(mi["curves"]) + " |",
            "|---" * (len(mi["curves"]) + 1) + "|",
        ]
        epochs = [e for e, _ in next(iter(mi["curves"].values()))]
        for i, e in enumerate(epochs):
            lines.append(f"| {e} | " + " | ".join(f"{c[i][1]:.3f}" for c in mi["curves"].values()) + " |")
        lines += ["", "![mutual information](mutual_information.png)", ""]
    lines += [
        "## The paper's claims against this run",
        "",
        "Calibration claims: the sign of the difference between two models on the same test images, decided from "
        "its 95% paired bootstrap interval (the metric's 200 Poisson replicates, the same resamples for every "
        "model): *agrees* when it lies wholly on the claimed side of 0 (of the margin, where one is stated), "
        "*disagrees* when wholly on the other, *inconclusive* when it holds it or there is no interval (the fitted "
        "temperatures: decide it over seeds with --seeds). Other claims: tightness or mutual information within 5% "
        "of each other, accuracies within two binomial standard errors are inconclusive (one run, one seed; --seeds "
        "decides them by the t-interval over seeds).",
        "",
        "| claim | measured | difference [95% interval] | verdict |",
        "|---|---|---|---|",
    ]
    for c in results["claims"]:
        interval = "-"
        if "difference" in c:
            interval = f"{c['difference']:+.4f}" + (
                f" [{c['low']:+.4f}, {c['high']:+.4f}]" if c["low"] is not None else " (no interval)"
            )
        lines.append(f"| {c['claim']} | {markdown_cell(c['measured'])} | {interval} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


# What decides the numbers, beside the data: everything but where things are written, shown or cached.

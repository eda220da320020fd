"""The vision study over several seeds: one complete study per seed, then mean, spread and the paper's claims.

``--seeds 0 1 2`` runs :func:`vision.study.run_study` once per seed in ``output_dir/seed_<s>/`` (each a whole
single-seed run: its own ``results.json``, report, figures, checkpoints and ``--resume``), then writes, in
``output_dir``:

* ``results.json``: per calibration row (hard targets, hard targets + temperature scaling, label smoothing) and
  metric the values of every seed, their mean, standard deviation and 95% Student-t interval; the calibration
  claims decided with the rule of :mod:`ls_seq.studies.claims` (per seed: the paired bootstrap interval of the
  difference over the test images, :mod:`ls_seq.studies.intervals`; over seeds: the t-interval); the projection,
  distillation and mutual-information claims by the same t-interval over seeds (:mod:`vision.claims`);
* ``report.md`` and ``calibration_along_training.png`` (the trajectories over seeds).

With one seed the study is the single-seed study in ``output_dir`` itself. ``--resume`` continues every seed:
finished seeds are kept, the killed one resumes, new seeds may be added.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ls_seq.io import atomic_write_files, json_bytes
from ls_seq.studies.claims import VERDICT_RULE, Claim, SeedEvidence, claims_table, decide
from ls_seq.studies.seeds import TRAJECTORY_FIGURE, report_header, run_seed_loop, summarise, summary_table, trajectory_png
from vision.calibration import HARD, HARD_TS, SMOOTHED, paired_evidence, trajectory_points
from vision.claims import seed_comparison_claims
from vision.study import _NOT_CONFIGURATION, VisionStudyConfig, run_study

__all__ = ["METRICS", "aggregate", "run_seeds", "seed_claims"]

# Per calibration row, the numbers summarised over seeds (name in results.json: key in the row).
METRICS: dict[str, tuple[str, ...]] = {
    "ece": ("ece",),
    "accuracy": ("accuracy",),
    "nll": ("nll",),
    "fitted_temperature": ("fitted_temperature",),
    "temperature_applied": ("temperature",),
}
ROWS = (HARD, HARD_TS, SMOOTHED)


def _config(cfg: VisionStudyConfig) -> dict[str, Any]:
    """What the top-level ``run_config.json`` records: the per-seed configuration without the seed."""
    skip = set(_NOT_CONFIGURATION) | {"seed"}
    return {
        "seeds": list(cfg.seeds),
        "study": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip},
        "studies": sorted(cfg.studies()),
    }


def run_seeds(cfg: VisionStudyConfig, command: str | None = None) -> dict[str, Any]:
    """The study for ``cfg.seeds`` (or the one ``cfg.seed``); returns the top-level results."""
    if not isinstance(cfg, VisionStudyConfig):
        raise TypeError(f"`cfg` must be a VisionStudyConfig, got {type(cfg).__name__}")
    seeds = cfg.seeds or [cfg.seed]
    if len(seeds) == 1:
        return run_study(dataclasses.replace(cfg, seed=seeds[0], seeds=None), command=command)
    command = command or " ".join(sys.argv)

    def run_seed(seed: int, directory: Path, resume: bool, config: Mapping[str, Any]) -> dict[str, Any]:
        one = dataclasses.replace(
            cfg, seed=seed, seeds=None, output_dir=str(directory), overwrite_output_dir=False, resume=resume
        )
        return run_study(one, command=f"{command}  # seed {seed}")

    return run_seed_loop(
        cfg.output_dir,
        "vision_seeds",
        _config(cfg),
        command=command,
        resume=cfg.resume,
        overwrite=cfg.overwrite_output_dir,
        extendable={"seeds": "append", "studies": "sort"},
        run_seed=run_seed,
        aggregate=lambda results, commands: aggregate(results, command=commands),
        write_report=write_seed_report,
    )


def _evidence(results: dict[int, dict[str, Any]], a: str, b: str, key: str) -> list[SeedEvidence]:
    """Per seed: ``row b - row a`` of ``key``, with its paired bootstrap interval."""
    return [paired_evidence(res["calibration"]["rows"], a, b, key, seed) for seed, res in sorted(results.items())]


def seed_claims(results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's calibration claims (Table 3, Sec. 3) for the smoothed network against hard targets, over seeds."""
    with_calibration = {s: r for s, r in results.items() if "calibration" in r}
    if not with_calibration:
        return []

    def log_t(seed_results: dict[str, Any], row: str) -> float:
        return abs(math.log(seed_results["calibration"]["rows"][row]["fitted_temperature"]))

    rows = [
        decide(
            "Table 3: label smoothing lowers the test ECE of hard targets",
            "ECE(LS) - ECE(hard)",
            "lower",
            _evidence(with_calibration, HARD, SMOOTHED, "ece"),
        ),
        decide(
            "Table 3: label smoothing calibrates about as well as temperature scaling (within 0.01)",
            "ECE(LS) - ECE(hard, fitted T)",
            "lower",
            _evidence(with_calibration, HARD_TS, SMOOTHED, "ece"),
            margin=0.01,
        ),
        decide(
            "Sec. 3: a label-smoothed network needs less temperature scaling (fitted T nearer 1)",
            "|log T(LS)| - |log T(hard)|",
            "lower",
            [SeedEvidence(s, log_t(r, SMOOTHED) - log_t(r, HARD)) for s, r in sorted(with_calibration.items())],
        ),
        decide(
            "Label smoothing does not cost accuracy (test accuracy not lower by more than 0.01)",
            "accuracy(LS) - accuracy(hard)",
            "higher",
            _evidence(with_calibration, HARD, SMOOTHED, "accuracy"),
            margin=-0.01,
        ),
        decide(
            "Label smoothing lowers the test NLL",
            "NLL(LS) - NLL(hard)",
            "lower",
            _evidence(with_calibration, HARD, SMOOTHED, "nll"),
        ),
    ]
    return [dataclasses.asdict(c) for c in rows]


def aggregate(results: dict[int, dict[str, Any]], *, command: list[str]) -> dict[str, Any]:
    """The top-level ``results.json`` content from each seed's results (see the module docstring)."""
    rows = []
    for row in ROWS:
        by_seed = {s: r["calibration"]["rows"][row] for s, r in results.items() if "calibration" in r}
        if by_seed:
            rows.append({"row": row, "metrics": summarise(by_seed, METRICS)})
    over = {}
    for seed, res in results.items():
        along = res.get("calibration", {}).get("along_training")
        if along:
            for name, r in along["runs"].items():
                over.setdefault(name, {})[str(seed)] = r["overconfident_from_epoch"]
    first = next(iter(results.values()))["config"]
    return {
        "config": {
            "command": command[0],
            "resumed_with": command[1:],
            "seeds": list(results),
            **{
                k: first[k]
                for k in ("dataset", "preset", "model", "epochs", "alpha", "mixup", "cutmix", "max_train_samples", "studies")
            },
            "n_test": next(iter(results.values()))["data"]["n_test"],
        },
        "runs": {str(s): f"seed_{s}" for s in results},
        "calibration": rows,
        "overconfident_from_epoch": over,
        "claims": seed_claims(results),
        "other_claims": seed_comparison_claims(results),
        "verdict_rule": VERDICT_RULE,
    }


def write_seed_report(output_dir: Path, summary: dict[str, Any], results: dict[int, dict[str, Any]]) -> None:
    """``report.md``, ``results.json`` and ``calibration_along_training.png`` (over seeds), as one set."""
    cfg = summary["config"]
    seeds = cfg["seeds"]
    setting = (
        f"{cfg['dataset']}, preset `{cfg['preset']}`, {cfg['model']}, {cfg['epochs']} epochs, alpha={cfg['alpha']:g}"
        + (f", MixUp {cfg['mixup']:g}" if cfg["mixup"] else "")
        + (f", CutMix {cfg['cutmix']:g}" if cfg["cutmix"] else "")
        + f", {cfg['n_test']} test images"
    )
    lines = report_header("Vision label smoothing study", cfg, setting)
    if summary["calibration"]:
        lines += [
            "## Test calibration over seeds: mean ± std [95% t-interval]",
            "",
            *summary_table([(r["row"], r["metrics"]) for r in summary["calibration"]], list(METRICS), label="model"),
            "",
        ]
    if summary["overconfident_from_epoch"]:
        lines += [
            "Over-confident from (validation, first epoch from which the best-ECE T stays above 1): "
            + "; ".join(
                f"{name}: " + ", ".join(f"seed {s} {'never' if e is None else f'epoch {e}'}" for s, e in by_seed.items())
                for name, by_seed in summary["overconfident_from_epoch"].items()
            ),
            "",
        ]

    def table(rows: list[dict[str, Any]]) -> list[str]:
        return claims_table([Claim(**{**c, "seeds": [SeedEvidence(**e) for e in c["seeds"]]}) for c in rows])

    if summary["claims"]:
        lines += [
            "## The paper's calibration claims",
            "",
            summary["verdict_rule"],
            "Per seed, the interval is the paired bootstrap of the difference over the test images (the metric's "
            "200 Poisson replicates, the same resamples for every model).",
            "",
            *table(summary["claims"]),
            "",
        ]
    if summary["other_claims"]:
        lines += [
            "## The projection, distillation and mutual-information claims",
            "",
            "The same rule over seeds. These quantities have no resampling test of their own, so each seed's verdict "
            "comes from its noise band: two binomial standard errors of an accuracy difference, 5% of the mean for "
            "tightness and mutual information.",
            "",
            *table(summary["other_claims"]),
            "",
        ]
    figures: dict[Path, bytes] = {}
    along: dict[str, dict[int, Any]] = {}
    for seed, res in results.items():
        for name, history in res.get("runs", {}).items():
            points = trajectory_points(history)
            if points:
                along.setdefault(name, {})[seed] = points
    if along:
        figures[output_dir / TRAJECTORY_FIGURE] = trajectory_png(along, len(seeds), x_label="epoch")
        lines += [f"![Calibration along training]({TRAJECTORY_FIGURE})", ""]
    atomic_write_files({**figures, output_dir / "report.md": "\n".join(lines), output_dir / "results.json": json_bytes(summary)})

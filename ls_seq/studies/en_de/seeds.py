"""The EN-DE study over several seeds: one complete study per seed, then mean, spread and the paper's claims.

``--seeds 42 43 44`` runs :func:`ls_seq.studies.en_de.study.run_study` once per seed in ``output_dir/seed_<s>/``
(each a whole single-seed run: its own ``results.json``, report, figures, checkpoints and ``--resume``), then
writes, in ``output_dir``:

* ``results.json``: per alpha and metric the values of every seed, their mean, standard deviation and 95%
  Student-t interval (:func:`ls_seq.studies.significance.seed_interval`); the claims with their verdicts
  (:mod:`ls_seq.studies.claims`); per seed the paired bootstrap test of the BLEU difference of each smoothed
  model against the hard-target one (:func:`ls_seq.studies.significance.paired_bootstrap_bleu`, on the whole test set
  at T = 1);
* ``report.md`` and ``calibration_along_training.png`` (the trajectories, mean and range over seeds).

With one seed the study is the single-seed study in ``output_dir`` itself (the layout of ``--seed``).
``--resume`` continues every seed: finished seeds are kept, the killed one resumes, new seeds may be added.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ls_seq.io import atomic_write_files, json_bytes
from ls_seq.studies.claims import VERDICT_RULE, SeedEvidence, claims_table, decide
from ls_seq.studies.intervals import paired_evidence
from ls_seq.studies.seeds import (
    TRAJECTORY_FIGURE,
    report_header,
    run_seed_loop,
    seed_dir,
    summarise,
    summary_table,
    trajectory_png,
)
from ls_seq.studies.trajectory import TrajectoryPoint

__all__ = ["METRICS", "aggregate", "run_seeds", "seed_claims"]

# The per-model numbers summarised over seeds: (name in results.json, where it is in a model entry).
METRICS: dict[str, tuple[str, ...]] = {
    "bleu": ("test", "bleu"),
    "nll": ("test", "nll"),
    "ece": ("test", "ece"),
    "token_accuracy": ("test", "token_accuracy"),
    "best_ece_temperature": ("best_ece_temperature",),
    "best_nll_temperature": ("best_nll_temperature",),
    "best_ece": ("best_ece",),
}


def run_seeds(data_args, model_args, study_args, command: str | None = None) -> dict[str, Any]:
    """The study for ``study_args.seeds`` (or the one ``study_args.seed``); returns the top-level results."""
    from ls_seq.studies.en_de.processes import _Processes
    from ls_seq.studies.en_de.study import run_study

    seeds = study_args.seeds or [study_args.seed]
    if len(seeds) == 1:
        return run_study(data_args, model_args, dataclasses.replace(study_args, seed=seeds[0], seeds=None), command=command)
    command = command or " ".join(sys.argv)
    output_dir = Path(study_args.output_dir)
    per_seed = {
        k: v
        for k, v in {**dataclasses.asdict(data_args), **dataclasses.asdict(model_args), **dataclasses.asdict(study_args)}.items()
        if k not in ("data_dir", "cache_dir", "output_dir", "resume", "overwrite_output_dir", "seed", "seeds", "cpu_threads")
    }

    def run_seed(seed: int, directory: Path, resume: bool, config: Mapping[str, Any]) -> dict[str, Any]:
        args = dataclasses.replace(
            study_args,
            seed=seed,
            seeds=None,
            output_dir=str(directory),
            alphas=config["study"]["alphas"],
            resume=resume,
            overwrite_output_dir=False,
        )
        return run_study(data_args, model_args, args, command=f"{command}  # seed {seed}")

    return run_seed_loop(
        output_dir,
        "en_de_seeds",
        {"seeds": seeds, "study": per_seed},
        command=command,
        resume=study_args.resume,
        overwrite=study_args.overwrite_output_dir,
        extendable={"seeds": "append", "study.alphas": "append"},
        run_seed=run_seed,
        aggregate=lambda results, commands: aggregate(results, output_dir, data_args, command=commands),
        write_report=write_seed_report,
        processes=_Processes(),
    )


def _bleu_tests(results: dict[int, dict[str, Any]], output_dir: Path, data_args) -> dict[str, dict[str, Any]]:
    """Per seed and smoothed alpha: sacrebleu's paired bootstrap of its test BLEU (T = 1) against alpha = 0's."""
    from ls_seq.studies.en_de.data import load_corpora
    from ls_seq.studies.significance import paired_bootstrap_bleu

    test = load_corpora(
        data_args.dataset,
        data_dir=data_args.data_dir,
        cache_dir=data_args.cache_dir,
        split_names={"train": data_args.train_split, "validation": data_args.validation_split, "test": data_args.test_split},
        max_samples={"train": 1, "validation": 1, "test": data_args.max_eval_samples},
    )["test"]
    tests: dict[str, dict[str, Any]] = {}
    for seed, res in results.items():
        alphas = [m["alpha"] for m in res["models"]]
        if 0.0 not in alphas:
            continue

        def hyps(alpha: float, seed: int = seed) -> list[str]:
            text = (seed_dir(output_dir, seed) / f"alpha_{alpha}" / "test_translations.txt").read_text(encoding="utf-8")
            return text.split("\n")[: len(test)]

        for alpha in alphas:
            if alpha > 0:
                tests[f"{seed}:{alpha}"] = paired_bootstrap_bleu(hyps(0.0), hyps(alpha), test.target, seed=seed)
    return tests


def seed_claims(models: dict[float, dict[int, dict[str, Any]]], bleu_tests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's EN-DE claims for every smoothed alpha against alpha = 0, decided over seeds.

    ``models[alpha][seed]`` is that seed's ``results.json`` model entry. Each claim is a per-seed difference
    (smoothed - hard) with a claimed sign; see :data:`ls_seq.studies.claims.VERDICT_RULE`.
    """
    if 0.0 not in models:
        return []
    hard = models[0.0]
    claims = []
    for alpha, by_seed in models.items():
        if alpha == 0.0:
            continue
        seeds = sorted(set(by_seed) & set(hard))

        def evidence(diff, p_value=None, replicates=None, by_seed=by_seed, seeds=seeds):
            """Per seed: ``diff(smoothed, hard)``, with the paired bootstrap interval over the test tokens when
            ``replicates(smoothed, hard)`` gives both models' replicates."""
            out = []
            for s in seeds:
                smoothed_reps, hard_reps = (None, None) if replicates is None else replicates(by_seed[s], hard[s])
                out.append(
                    paired_evidence(
                        s, diff(by_seed[s], hard[s]), hard_reps, smoothed_reps, p_value=None if p_value is None else p_value(s)
                    )
                )
            return out

        def test_replicates(name):
            return lambda a, h: (a["test"].get("replicates", {}).get(name), h["test"].get("replicates", {}).get(name))

        def ts_bleu(m):  # the hard model's best BLEU over the temperature sweep (temperature scaling at decoding)
            return max(p["bleu"] for p in m["sweep"] if p["bleu"] is not None)

        def sweep_bleu_1(m):
            return next(p["bleu"] for p in m["sweep"] if p["temperature"] == 1.0)

        rows = [
            decide(
                f"alpha={alpha}: LS lowers the test ECE at T = 1 (Table 3)",
                "ECE(LS) - ECE(hard)",
                "lower",
                evidence(lambda a, h: a["test"]["ece"] - h["test"]["ece"], replicates=test_replicates("ece")),
            ),
            decide(
                f"alpha={alpha}: LS raises BLEU (beam search, T = 1)",
                "BLEU(LS) - BLEU(hard)",
                "higher",
                evidence(
                    lambda a, h: a["test"]["bleu"] - h["test"]["bleu"],
                    lambda s, alpha=alpha: bleu_tests.get(f"{s}:{alpha}", {}).get("p_value"),
                ),
            ),
            decide(
                f"alpha={alpha}: LS worsens the test NLL (the paper's EN-DE finding)",
                "NLL(LS) - NLL(hard)",
                "higher",
                evidence(lambda a, h: a["test"]["nll"] - h["test"]["nll"], replicates=test_replicates("nll")),
            ),
            decide(
                f"alpha={alpha}: temperature scaling of the hard model does not reach LS's BLEU",
                "BLEU(LS, T=1) - max over T of BLEU(hard, T)",
                "higher",
                evidence(lambda a, h: sweep_bleu_1(a) - ts_bleu(h)),
            ),
            decide(
                f"alpha={alpha}: LS needs a temperature nearer 1 than hard targets (best-ECE T)",
                "|log T(LS)| - |log T(hard)|",
                "lower",
                evidence(lambda a, h: abs(math.log(a["best_ece_temperature"])) - abs(math.log(h["best_ece_temperature"]))),
            ),
            decide(
                f"alpha={alpha}: LS calibrates about as well as temperature scaling (Table 3, within 0.01)",
                "ECE(LS) - ECE(hard, best T)",
                "lower",
                evidence(
                    lambda a, h: a["test"]["ece"] - h["best_ece"],
                    replicates=lambda a, h: (a["test"].get("replicates", {}).get("ece"), h.get("best_ece_replicates")),
                ),
                margin=0.01,
            ),
        ]
        claims += [dataclasses.asdict(c) for c in rows]
    return claims


def aggregate(results: dict[int, dict[str, Any]], output_dir: Path, data_args, *, command: list[str]) -> dict[str, Any]:
    """The top-level ``results.json`` content from each seed's results (see the module docstring)."""
    models: dict[float, dict[int, dict[str, Any]]] = {}
    for seed, res in results.items():
        for m in res["models"]:
            if "test" in m:
                models.setdefault(m["alpha"], {})[seed] = m
    summary_models = []
    for alpha, by_seed in models.items():
        metrics = summarise(by_seed, METRICS)
        over = {str(s): m.get("calibration_along_training", {}).get("overconfident_from_step") for s, m in by_seed.items()}
        summary_models.append({"alpha": alpha, "metrics": metrics, "overconfident_from_step": over})
    bleu_tests = _bleu_tests(results, output_dir, data_args)
    first = next(iter(results.values()))["config"]
    return {
        "config": {
            "command": command[0],
            "resumed_with": command[1:],
            "seeds": list(results),
            "preset_name": first["preset_name"],
            "preset": first["preset"],
            "alphas": first["alphas"],
            "test_sentences": first["test_sentences"],
        },
        "runs": {str(s): f"seed_{s}" for s in results},
        "models": summary_models,
        "bleu_paired_bootstrap": bleu_tests,
        "claims": seed_claims(models, bleu_tests),
        "verdict_rule": VERDICT_RULE,
    }


def write_seed_report(output_dir: Path, summary: dict[str, Any], results: dict[int, dict[str, Any]]) -> None:
    """``report.md``, ``results.json`` and ``calibration_along_training.png`` (over seeds), as one set."""
    from ls_seq.studies.claims import Claim

    cfg = summary["config"]
    seeds = cfg["seeds"]
    lines = [
        *report_header("EN-DE label smoothing study", cfg, f"Preset `{cfg['preset_name']}`"),
        "## Test metrics over seeds (T = 1): mean ± std [95% t-interval]",
        "",
        *summary_table([(str(m["alpha"]), m["metrics"]) for m in summary["models"]], list(METRICS), label="alpha"),
    ]
    lines += [
        "",
        "Over-confident from (validation, first step from which the best-ECE T stays above 1): "
        + "; ".join(f"alpha={m['alpha']}: {m['overconfident_from_step']}" for m in summary["models"]),
        "",
    ]
    if summary["bleu_paired_bootstrap"]:
        lines += [
            "## BLEU: paired bootstrap per seed (sacrebleu, 1000 resamples, whole test set, T = 1)",
            "",
            "| seed:alpha | BLEU hard | BLEU LS | difference | p-value |",
            "|---|---|---|---|---|",
        ]
        for key, t in summary["bleu_paired_bootstrap"].items():
            lines.append(
                f"| {key} | {t['baseline_bleu']:.2f} | {t['system_bleu']:.2f} | {t['difference']:+.2f} | {t['p_value']:.4f} |"
            )
        lines.append("")
    if summary["claims"]:
        claims = [Claim(**{**c, "seeds": [SeedEvidence(**e) for e in c["seeds"]]}) for c in summary["claims"]]
        lines += ["## The paper's claims", "", summary["verdict_rule"], "", *claims_table(claims), ""]
    figures: dict[Path, bytes] = {}
    along: dict[str, dict[int, list[TrajectoryPoint]]] = {}
    for seed, res in results.items():
        for m in res["models"]:
            points = m.get("calibration_along_training", {}).get("points")
            if points:
                along.setdefault(f"alpha {m['alpha']}", {})[seed] = [TrajectoryPoint(**p) for p in points]
    if along:
        figures[output_dir / TRAJECTORY_FIGURE] = trajectory_png(along, len(seeds), x_label="optimizer step")
        lines += [f"![Calibration along training]({TRAJECTORY_FIGURE})", ""]
    atomic_write_files({**figures, output_dir / "report.md": "\n".join(lines), output_dir / "results.json": json_bytes(summary)})

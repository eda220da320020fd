"""The EN-DE study of Müller et al. (2019) with fairseq as the trainer: same data, same results, same report.

For every alpha: train a Transformer with ``fairseq-train`` and the ls-seq criterion, then measure on the
test split what the HF study measures (:mod:`ls_seq.studies.en_de.study`), with fairseq's own tools:

* teacher-forced NLL/ECE at every temperature and the reliability diagram: fairseq's validation loop with
  the ls-seq criterion (:func:`.evaluate.calibration_sums`), on the test set, on the test set with
  deranged sources (the source check) and on the validation set (a temperature chosen without the test set);
* BLEU: ``fairseq-generate`` (beam search) on the test set, and ``fairseq-generate --temperature T`` on its
  first ``max_bleu_samples`` sentences for every T of the grid (:func:`.evaluate.generate`).

:func:`evaluation_from_fairseq` turns those outputs into the HF study's evaluation record, and the HF
study's own functions write ``results.json``/``results.csv`` (:func:`summarize_model`, :func:`table3_row`),
``report.md`` and the figures, so both trainers' results share one schema and one report.

Data, tokenizer and presets are the HF study's: :func:`ls_seq.studies.en_de.data.load_corpora`, the joint BPE
tokenizer, the presets' architecture and schedule translated into ``fairseq-train`` flags
(:func:`.train.train_arguments`). Work is resumable: fairseq resumes training from ``checkpoint_last.pt``, and
every finished evaluation stage is a file that a ``--resume`` keeps.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ls_seq.errors import InputError
from ls_seq.hf.sweeps import corpus_bleu, distinct_share
from ls_seq.io import atomic_write_json, atomic_write_text, read_json
from ls_seq.studies import RunDirectory, stage_boundary
from ls_seq.studies.en_de.arguments import DataArguments, ModelArguments, resolve_preset
from ls_seq.studies.en_de.data import ParallelCorpus, load_corpora
from ls_seq.studies.en_de.evaluation import _derangement, source_check_skipped
from ls_seq.studies.en_de.presets import Preset
from ls_seq.studies.en_de.records import (
    Evaluation,
    ShuffledSources,
    SweepBleu,
    TeacherForced,
    TestBleu,
    ValidationSweep,
    evaluation_store,
)
from ls_seq.studies.en_de.report import _versions, _write_results, source_warnings, write_report
from ls_seq.studies.en_de.study import RESUME_EXTENDABLE, run_config
from ls_seq.studies.en_de.summary import summarize_model, table3_row
from ls_seq.studies.en_de.tokenizer import load_or_train_tokenizer

from .arguments import FairseqStudyArguments
from .calibration import metrics_from_sums, reliability_from_sums
from .data import binarize, is_binarized, write_token_files
from .evaluate import calibration_sums, generate
from .train import check_train_arguments, gpu_count, train_arguments, train_model

__all__ = ["FairseqStudyArguments", "evaluation_from_fairseq", "evaluate_model", "run_study"]  # the arguments: .arguments


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def _as_tensors(stats: dict[str, Any]) -> tuple[list[float], dict[str, torch.Tensor]]:
    temps = [float(t) for t in stats["temperatures"]]
    return temps, {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items() if k != "temperatures"}


def evaluation_from_fairseq(
    calibration: dict[str, Any],
    test: ParallelCorpus,
    test_translations: list[str] | None,
    sweep_translations: dict[float, list[str]],
    grid: list[float],
    n_bleu: int,
) -> Evaluation:
    """The HF study's evaluation records (what its ``evaluate_model`` returns) from fairseq's outputs.

    Args:
        calibration: :func:`.evaluate.calibration_sums` of the subsets done so far: ``test`` (at the grid and
            1), ``test1`` (the test set with deranged sources) and ``valid``; ``source_check_skipped``: why
            the source check does not apply (:func:`ls_seq.studies.en_de.evaluation.source_check_skipped`), if so.
        test: the test corpus (references: its raw targets).
        test_translations: detokenized ``fairseq-generate`` output on the whole test set (T = 1), or None.
        sweep_translations: temperature -> detokenized ``fairseq-generate --temperature T`` output on the
            first ``n_bleu`` test sentences.
        grid: the study's temperatures; n_bleu: the sentences of the BLEU sweep.

    Returns:
        The :class:`~ls_seq.studies.en_de.records.Evaluation` of the stages the input covers (None for the
        others), which :func:`ls_seq.studies.en_de.summary.summarize_model` reads. NLLs in nats. The
        teacher-forced record has no bootstrap intervals: fairseq's validation logs carry per-bin sums only.
    """
    teacher_forced = shuffled = validation = test_bleu = None
    if "test" in calibration:
        temps, stats = _as_tensors(calibration["test"])
        values, rel = metrics_from_sums(stats), reliability_from_sums(stats)
        i1 = temps.index(1.0)
        measured = ("nll", "ece", "mce", "rms", "accuracy", "mean_confidence")
        per_temperature: dict[str, Any] = {k: tuple(values[k].tolist()) for k in measured}
        teacher_forced = TeacherForced(
            temperatures=tuple(temps),
            **per_temperature,
            n_tokens=int(values["n_tokens"][i1]),
            reliability={k: v[i1].tolist() for k, v in rel.items()},
            intervals={},
        )
    if "source_check_skipped" in calibration:
        shuffled = ShuffledSources(nll=None, skipped=calibration["source_check_skipped"])
    elif "test1" in calibration:
        temps, stats = _as_tensors(calibration["test1"])
        shuffled = ShuffledSources(nll=float(metrics_from_sums(stats)["nll"][temps.index(1.0)]))
    if test_translations is not None:
        test_bleu = TestBleu(corpus_bleu(test_translations, test.target), distinct_share(test_translations))
    refs = test.target[:n_bleu]
    bleu = {float(t): corpus_bleu(h, refs) for t, h in sweep_translations.items()}
    if test_translations is not None and 1.0 in grid:  # beam search at T = 1 already translated these
        bleu[1.0] = corpus_bleu(test_translations[:n_bleu], refs)
    sweep = SweepBleu(sentences=n_bleu, points=tuple((float(t), bleu[float(t)]) for t in grid if float(t) in bleu))
    if "valid" in calibration:
        temps, stats = _as_tensors(calibration["valid"])
        values = metrics_from_sums(stats)
        at = [temps.index(float(t)) for t in grid]
        validation = ValidationSweep(
            temperatures=tuple(float(t) for t in grid),
            nll=tuple(float(values["nll"][i]) for i in at),
            ece=tuple(float(values["ece"][i]) for i in at),
        )
    return Evaluation(teacher_forced, shuffled, test_bleu, sweep, validation)


def _detokenize(tokenizer: Any, hypotheses: list[str]) -> list[str]:
    """fairseq's token strings back to text with the HF study's decoder (special tokens dropped, as there)."""
    ids = [tokenizer.convert_tokens_to_ids(h.split()) for h in hypotheses]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def evaluate_model(
    checkpoint: Path,
    data_dir: Path,
    tokenizer: Any,
    test: ParallelCorpus,
    preset: Preset,
    model_dir: Path,
    args: FairseqStudyArguments,
    on_progress,
    *,
    source_check_skip: str | None = None,
) -> Evaluation:
    """Calibration passes, the test translation and the BLEU sweep of one model, each stage kept on disk.

    ``model_dir/calibration.json`` (summed statistics per subset), ``test_translations.txt`` and
    ``sweep/T<t>.txt`` are written atomically when their stage is done, so ``--resume`` skips them (the
    calibration is measured again when the grid has grown); ``on_progress(ev)`` is called after every stage,
    and ``evaluation.json`` holds the latest record. After each stage comes a
    :func:`~ls_seq.studies.stage_boundary` named ``<model>/evaluated:<stage>``.
    """
    grid = list(preset.temperatures)
    tf_grid = sorted(set(grid) | {1.0})
    n_bleu = len(test) if preset.max_bleu_samples is None else min(preset.max_bleu_samples, len(test))
    cal_path = model_dir / "calibration.json"
    calibration: dict[str, Any] = read_json(cal_path) if cal_path.is_file() else {}
    test_path = model_dir / "test_translations.txt"
    sweep: dict[float, list[str]] = {}

    def lines(path: Path) -> list[str]:
        return path.read_text(encoding="utf-8").split("\n")[:-1]

    def progress(stage: str) -> Evaluation:
        ev = evaluation_from_fairseq(calibration, test, lines(test_path) if test_path.is_file() else None, sweep, grid, n_bleu)
        store = evaluation_store(model_dir / "evaluation.json")  # rebuilt from the stage files: never resumed from
        for record in ev.records():
            store.put(record)
        store.save()
        on_progress(ev)
        stage_boundary(f"{model_dir.name}/evaluated:{stage}")
        return ev

    if calibration.get("test", {}).get("temperatures") != tf_grid:
        calibration = calibration_sums(
            checkpoint, data_dir, ["test", "test1", "valid"], tf_grid, n_bins=args.n_bins, max_tokens=args.eval_max_tokens
        )
        if source_check_skip is not None:
            calibration["source_check_skipped"] = source_check_skip
        atomic_write_json(cal_path, calibration)
        progress("teacher_forced")
    gen = {"beam": preset.num_beams, "max_len_b": preset.max_length, "batch_size": preset.generate_batch_size}
    if not test_path.is_file():
        hyps = generate(checkpoint, data_dir, "test", model_dir / "generate", temperature=None, n_sentences=len(test), **gen)
        atomic_write_text(test_path, "".join(h + "\n" for h in _detokenize(tokenizer, hyps)))
        progress("test_bleu")
    for t in grid:
        if float(t) == 1.0:
            continue  # the first n_bleu sentences of the test translation
        path = model_dir / "sweep" / f"T{float(t)!r}.txt"
        if not path.is_file():
            hyps = generate(checkpoint, data_dir, "test2", model_dir / "generate", temperature=t, n_sentences=n_bleu, **gen)
            atomic_write_text(path, "".join(h + "\n" for h in _detokenize(tokenizer, hyps)))
        sweep[float(t)] = lines(path)
        progress(f"sweep_bleu_{float(t)!r}")
    return progress("done")


# ----------------------------------------------------------------------------------------------------------
# The study


def _versions_with_fairseq() -> dict[str, str]:
    import fairseq

    return {**_versions(), "fairseq": fairseq.__version__}


def _quiet_root_logger() -> None:
    """fairseq's import sets the root logger to DEBUG (fairseq/models/wav2vec/wav2vec2_classification.py,
    ``logging.basicConfig(level=logging.DEBUG)``), and every library then logs at DEBUG; put it at fairseq's
    own default (INFO) unless ``$LOGLEVEL`` asks for DEBUG."""
    import logging

    root = logging.getLogger()
    if root.level == logging.DEBUG and "LOGLEVEL" not in os.environ:
        root.setLevel(logging.INFO)


def run_study(
    data_args: DataArguments, model_args: ModelArguments, study_args: FairseqStudyArguments, command: str | None = None
) -> dict[str, Any]:
    """Train one fairseq model per alpha, evaluate it, and write the HF study's results; returns ``results.json``.

    The order of the HF study (:func:`ls_seq.studies.en_de.study.run_study`): ``output_dir`` is checked writable,
    the data read and checked and every fairseq-train command line parsed by fairseq before anything is
    written; then the directory is opened as a :class:`~ls_seq.studies.RunDirectory` (locked; its configuration
    saved, or compared on ``--resume``: alphas and temperatures may be added).
    """
    _quiet_root_logger()
    study_start = time.time()
    run = RunDirectory(study_args.output_dir, "en_de_fairseq")  # refuses an unusable output_dir before any work
    preset = resolve_preset(model_args, study_args, data_args)
    preset = dataclasses.replace(preset, temperatures=tuple(sorted(set(preset.temperatures))))
    if preset.warmup_steps < 1:
        raise InputError(f"`warmup_steps` must be >= 1 for fairseq's inverse_sqrt schedule, got {preset.warmup_steps}")
    corpora = load_corpora(
        data_args.dataset,
        data_dir=data_args.data_dir,
        cache_dir=data_args.cache_dir,
        split_names={"train": data_args.train_split, "validation": data_args.validation_split, "test": data_args.test_split},
        max_samples={
            "train": preset.max_train_samples,
            "validation": data_args.max_eval_samples,
            "test": data_args.max_eval_samples,
        },
    )
    if len(corpora["test"]) < 2:
        raise InputError(f"the test split needs at least 2 pairs (the source check deranges them), got {len(corpora['test'])}")
    for alpha in study_args.alphas:  # fairseq's parser refuses a bad --fairseq_train_args now (exit 2), not mid-study
        check_train_arguments(
            train_arguments(alpha, preset, model_args.preset, run.path / "data-bin", run.path / "x", study_args)
        )
    fp16 = (gpu_count() > 0) if study_args.fp16 is None else study_args.fp16
    config = {
        **run_config(data_args, model_args, study_args, preset, corpora, bf16=False, num_processes=max(1, gpu_count())),
        "trainer": "fairseq",
        "fp16": fp16,
        "ls_convention": study_args.ls_convention,
        "fairseq_train_args": study_args.fairseq_train_args,
    }
    config = run.open(
        config,
        command=command or " ".join(sys.argv),
        resume=study_args.resume,
        overwrite=study_args.overwrite_output_dir,
        extendable=RESUME_EXTENDABLE,
    )
    try:
        return _run(run, config, preset, model_args.preset, corpora, study_args, start=study_start)
    finally:
        run.close()


def _run(run, config, preset, preset_name, corpora, study_args, *, start) -> dict[str, Any]:
    """The study in an opened run directory, with ``config``'s (possibly extended) alphas and temperatures."""
    output_dir = run.path
    preset = dataclasses.replace(preset, temperatures=tuple(config["preset"]["temperatures"]))
    test = corpora["test"]
    tokenizer = load_or_train_tokenizer(
        output_dir / "tokenizer", corpora["train"].source + corpora["train"].target, preset.vocab_size
    )
    sources = tokenizer(test.source, truncation=True, max_length=preset.max_length)["input_ids"]
    perm = _derangement(len(test), config["seed"])
    data_dir = output_dir / "data-bin"
    if not is_binarized(data_dir):
        n_cal = len(corpora["validation"]) if preset.calibration_samples is None else preset.calibration_samples
        n_bleu = len(test) if preset.max_bleu_samples is None else min(preset.max_bleu_samples, len(test))
        splits = {
            "train": corpora["train"],
            "valid": corpora["validation"],
            "valid1": corpora["validation"].head(n_cal),
            "test": test,
            "test1": ParallelCorpus([test.source[j] for j in perm], list(test.target)),
            "test2": test.head(n_bleu),
        }
        write_token_files(splits, tokenizer, output_dir / "text", preset.max_length)
        # fairseq-preprocess's worker processes pay off on WMT's millions of pairs, not on Multi30k's 29k
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        binarize(output_dir / "text", data_dir, workers=1 if len(corpora["train"]) < 100_000 else min(16, cores))
        stage_boundary("binarized")

    timings_path = output_dir / "timings.json"
    earlier = read_json(timings_path) if (study_args.resume and timings_path.is_file()) else {}
    timings: dict[str, Any] = {"earlier_runs": [*earlier.pop("earlier_runs", []), earlier] if earlier else []}
    timings["device"] = "cuda" if gpu_count() else "cpu"
    timings["num_processes"] = config["num_processes"]
    results_config = {"command": run.commands[0], "resumed_with": run.commands[1:], **config}
    results: dict[str, Any] = {"config": results_config, "versions": _versions_with_fairseq(), "models": []}
    grid = list(preset.temperatures)
    for alpha in config["alphas"]:
        model_dir = output_dir / f"alpha_{alpha}"
        flags = train_arguments(alpha, preset, preset_name, data_dir, model_dir / "checkpoints", study_args)
        t0 = time.time()
        summary = train_model(alpha, preset, flags, model_dir, study_args)
        stage_boundary(f"{model_dir.name}/trained")
        timings[f"alpha_{alpha}"] = {"train_seconds": summary["seconds"]}
        if summary.get("calibration_trajectory"):  # included in train_seconds, as in the HF study
            timings[f"alpha_{alpha}"]["calibration_along_training_seconds"] = summary["calibration_seconds"]
            timings[f"alpha_{alpha}"]["calibration_share_of_training"] = round(
                summary["calibration_seconds"] / max(summary["seconds"], 1e-9), 4
            )
        results["models"].append({"alpha": alpha})

        def on_progress(ev: Evaluation, alpha: float = alpha, summary: dict[str, Any] = summary) -> None:
            results["models"][-1] = summarize_model(alpha, ev, summary, grid)
            results["table3"] = table3_row(results["models"])
            _write_results(output_dir, results)

        t1 = time.time()
        evaluate_model(
            model_dir / "checkpoints" / "checkpoint_last.pt",
            data_dir,
            tokenizer,
            test,
            preset,
            model_dir,
            study_args,
            on_progress,
            source_check_skip=source_check_skipped(sources, perm),
        )
        timings[f"alpha_{alpha}"]["eval_seconds_this_run"] = round(time.time() - t1, 1)
        timings[f"alpha_{alpha}"]["train_and_eval_seconds_this_run"] = round(time.time() - t0, 1)
        atomic_write_json(timings_path, timings)
    stage_boundary("report")
    timings["total_seconds_this_run"] = round(time.time() - start, 1)
    atomic_write_json(timings_path, timings)
    write_report(output_dir, results, timings)
    for line in source_warnings(results["models"]):
        print(line, file=sys.stderr)
    return results

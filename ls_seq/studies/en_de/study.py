"""The EN-DE study of Müller, Kornblith & Hinton (2019), Fig. 3, Fig. 4 and the EN-DE row of Table 3.

For every alpha: train a Transformer (``LabelSmoothingSeq2SeqTrainer``), then on the test split measure

* teacher-forced token NLL, ECE (15 bins) and accuracy, and the reliability diagram (Fig. 3);
* a temperature sweep: beam-search BLEU at each T (:func:`ls_seq.hf.sweeps.beam_search_sweep`) and
  teacher-forced NLL/ECE at each T (:func:`ls_seq.hf.sweeps.teacher_forced_sweep`) (Fig. 4);
* whether the model uses its source: NLL with the sources shuffled against the targets (a translator
  gets much worse, a language model does not) and the share of distinct beam outputs.

Outputs (``output_dir``): ``results.json`` / ``results.csv`` (rewritten after every step of the sweep),
``report.md``, ``reliability.png`` (Fig. 3), ``temperature_sweep.png`` (Fig. 4), ``table3.png``,
``timings.json`` (wall-clock, kept apart so that ``results.json`` is a deterministic function of the seed),
and per model ``alpha_<a>/`` with the checkpoints, the final model (safetensors), ``evaluation.json`` (the
progress ``--resume`` continues from) and the test translations.

This module is the driver: :func:`run_study` opens the run directory and :func:`_run` runs the stages, each
in its own module: the arguments (:mod:`.arguments`), the processes of the run (:mod:`.processes`),
tokenized data (:mod:`.data`), training (:mod:`.training`), evaluation (:mod:`.evaluation`), one model's
results (:mod:`.summary`) and what is written from them (:mod:`.report`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
import warnings
from typing import Any

import torch

from ls_seq.errors import InputError, LsSeqWarning
from ls_seq.io import atomic_write_json, read_json
from ls_seq.studies import RunDirectory, stage_boundary
from ls_seq.studies.en_de.arguments import DataArguments, ModelArguments, StudyArguments, StudyOptions, resolve_preset
from ls_seq.studies.en_de.data import ParallelCorpus, _tokenize, load_corpora
from ls_seq.studies.en_de.evaluation import evaluate_model
from ls_seq.studies.en_de.presets import Preset
from ls_seq.studies.en_de.processes import _Processes
from ls_seq.studies.en_de.records import Evaluation
from ls_seq.studies.en_de.report import _versions, _write_results, source_warnings, write_report
from ls_seq.studies.en_de.summary import summarize_model, table3_row
from ls_seq.studies.en_de.tokenizer import load_or_train_tokenizer
from ls_seq.studies.en_de.training import train_model

__all__ = ["RESUME_EXTENDABLE", "DataArguments", "ModelArguments", "StudyArguments", "run_config", "run_study"]


def _corpora_digest(corpora: dict[str, ParallelCorpus]) -> str:
    """SHA-256 of every sentence the study reads (after ``max_*_samples``): what ``--resume`` checks the data by."""
    digest = hashlib.sha256()
    for split in ("train", "validation", "test"):
        for side in (corpora[split].source, corpora[split].target):
            digest.update("\n".join(side).encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()


def run_config(
    data_args: DataArguments,
    model_args: ModelArguments,
    study_args: StudyOptions,
    preset: Preset,
    corpora: dict[str, ParallelCorpus],
    *,
    bf16: bool,
    num_processes: int,
) -> dict[str, Any]:
    """Everything that decides ``results.json``: what ``run_config.json`` holds and ``--resume`` compares.

    The data enter by content (sentence counts and a digest), not by path, so a moved corpus still resumes;
    thread counts, cache and output paths are left out (they change no result beyond float rounding).
    """
    return {
        "preset_name": model_args.preset,
        "preset": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(preset).items()},
        "alphas": study_args.alphas,
        "seed": study_args.seed,
        "n_bins": study_args.n_bins,
        "bf16": bf16,
        "logging_steps": study_args.logging_steps,
        "num_processes": num_processes,
        "train_sentences": len(corpora["train"]),
        "validation_sentences": len(corpora["validation"]),
        "test_sentences": len(corpora["test"]),
        "data": {
            "max_train_samples": preset.max_train_samples,
            "max_eval_samples": data_args.max_eval_samples,
            "sha256": _corpora_digest(corpora),
        },
    }


# ``--resume`` may add alphas (new models) and temperatures (new sweep points); it never drops any.
RESUME_EXTENDABLE = {"alphas": "append", "preset.temperatures": "sort"}


def run_study(
    data_args: DataArguments, model_args: ModelArguments, study_args: StudyArguments, command: str | None = None
) -> dict[str, Any]:
    """Train one model per alpha, evaluate, and write the results; returns ``results.json``'s content.

    ``output_dir`` is checked writable before anything else, and nothing is written before the data is read
    and checked, so bad input leaves it untouched. Then it is opened as a :class:`~ls_seq.studies.RunDirectory`:
    locked for the run, its configuration saved (or, with ``--resume``, compared with the saved one:
    alphas and temperatures may be added, anything else that differs is refused).
    Under several processes (``accelerate launch --multi_gpu``, ``torchrun``) training is data-parallel,
    evaluation is sharded without duplicates, and only the main process writes.
    """
    study_start = time.time()
    run = RunDirectory(study_args.output_dir, "en_de")  # refuses an unusable output_dir before any work
    preset = resolve_preset(model_args, study_args, data_args)
    preset = dataclasses.replace(preset, temperatures=tuple(sorted(set(preset.temperatures))))
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
    state = _Processes()
    cpu_threads = state.set_cpu_threads(study_args.cpu_threads)
    bf16 = study_args.bf16 if study_args.bf16 is not None else bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    config = run_config(data_args, model_args, study_args, preset, corpora, bf16=bf16, num_processes=state.num_processes)
    command = command or " ".join(sys.argv)
    if state.is_main_process:
        config = run.open(
            config,
            command=command,
            resume=study_args.resume,
            overwrite=study_args.overwrite_output_dir,
            extendable=RESUME_EXTENDABLE,
        )
    state.wait_for_everyone()
    try:
        if not state.is_main_process:
            config = read_json(run.config_path)["config"]
            run.commands = read_json(run.config_path)["commands"]
        return _run(run, config, preset, corpora, study_args, state, cpu_threads=cpu_threads, bf16=bf16, start=study_start)
    finally:
        run.close()


def _run(run, config, preset, corpora, study_args, state, *, cpu_threads, bf16, start) -> dict[str, Any]:
    """The study in an opened run directory, with ``config``'s (possibly extended) alphas and temperatures."""
    output_dir = run.path
    preset = dataclasses.replace(preset, temperatures=tuple(config["preset"]["temperatures"]))
    alphas = config["alphas"]
    with state.main_process_first():  # the main process trains the tokenizer, the others load it
        tokenizer = load_or_train_tokenizer(
            output_dir / "tokenizer", corpora["train"].source + corpora["train"].target, preset.vocab_size
        )
    train_dataset = _tokenize(corpora["train"], tokenizer, preset.max_length)
    test_dataset = _tokenize(corpora["test"], tokenizer, preset.max_length)
    validation_dataset = _tokenize(corpora["validation"], tokenizer, preset.max_length)
    n_along = len(validation_dataset) if preset.calibration_samples is None else preset.calibration_samples
    calibration_dataset = validation_dataset.select(range(min(n_along, len(validation_dataset))))

    timings_path = output_dir / "timings.json"
    earlier: dict[str, Any] = {}
    if study_args.resume and timings_path.is_file():
        try:
            earlier = read_json(timings_path)
        except InputError as exc:  # wall-clock only: say so and start a new record
            warnings.warn(f"{exc}; earlier wall-clock times are lost", LsSeqWarning, stacklevel=2)
    # Each invocation's wall-clock is kept: a resumed run's times alone would hide what the first one took.
    timings: dict[str, Any] = {"earlier_runs": [*earlier.pop("earlier_runs", []), earlier] if earlier else []}
    timings["device"] = str(state.device)
    timings["cpu_threads_per_process"] = cpu_threads
    timings["num_processes"] = state.num_processes
    # A resumed run keeps the command that started it and lists the ones that continued it.
    results_config = {"command": run.commands[0], "resumed_with": run.commands[1:], **config}
    results: dict[str, Any] = {"config": results_config, "versions": _versions(), "models": []}
    grid = list(preset.temperatures)
    for alpha in alphas:
        model_dir = output_dir / f"alpha_{alpha}"
        t0 = time.time()
        model, summary = train_model(
            alpha,
            preset,
            tokenizer,
            train_dataset,
            model_dir,
            seed=config["seed"],
            resume=study_args.resume,
            bf16=bf16,
            logging_steps=config["logging_steps"],
            state=state,
            calibration_dataset=calibration_dataset,
            n_bins=config["n_bins"],
        )
        timings[f"alpha_{alpha}"] = {"train_seconds": summary["seconds"]}
        if summary.get("calibration_trajectory"):  # included in train_seconds
            timings[f"alpha_{alpha}"]["calibration_along_training_seconds"] = summary["calibration_seconds"]
            timings[f"alpha_{alpha}"]["calibration_share_of_training"] = round(
                summary["calibration_seconds"] / max(summary["seconds"], 1e-9), 4
            )
        results["models"].append({"alpha": alpha})

        def on_progress(evaluation: Evaluation, alpha: float = alpha, summary: dict[str, Any] = summary) -> None:
            results["models"][-1] = summarize_model(alpha, evaluation, summary, grid)
            results["table3"] = table3_row(results["models"])
            if state.is_main_process:
                _write_results(output_dir, results)

        t1 = time.time()
        model.to(state.device)
        evaluation = evaluate_model(
            model,
            tokenizer,
            corpora["test"],
            test_dataset,
            preset,
            model_dir,
            n_bins=config["n_bins"],
            seed=config["seed"],
            state=state,
            on_progress=on_progress,
            validation_dataset=validation_dataset,
        )
        state.wait_for_everyone()
        on_progress(evaluation)
        timings[f"alpha_{alpha}"]["eval_seconds_this_run"] = round(time.time() - t1, 1)
        timings[f"alpha_{alpha}"]["train_and_eval_seconds_this_run"] = round(time.time() - t0, 1)
        if state.is_main_process:  # after every model, so a killed run's times are kept too
            atomic_write_json(timings_path, timings)
        del model
    stage_boundary("report")
    timings["total_seconds_this_run"] = round(time.time() - start, 1)
    if state.is_main_process:
        atomic_write_json(timings_path, timings)
        write_report(output_dir, results, timings)
        for line in source_warnings(results["models"]):
            print(line, file=sys.stderr)
    state.wait_for_everyone()
    return results

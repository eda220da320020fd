"""The EN-DE study of Müller et al. (2019) with fairseq as the trainer: same data, same results, same report.

For every alpha: train a Transformer with ``fairseq-train`` and the ls-seq criterion, then measure on the
test split what the HF study measures (:mod:`ls_seq.translation.study`), with fairseq's own tools:

* teacher-forced NLL/ECE at every temperature and the reliability diagram: fairseq's validation loop with
  the ls-seq criterion (:func:`.evaluate.calibration_sums`), on the test set, on the test set with
  deranged sources (the source check) and on the validation set (a temperature chosen without the test set);
* BLEU: ``fairseq-generate`` (beam search) on the test set, and ``fairseq-generate --temperature T`` on its
  first ``max_bleu_samples`` sentences for every T of the grid (:func:`.evaluate.generate`).

:func:`evaluation_from_fairseq` turns those outputs into the HF study's evaluation record, and the HF
study's own functions write ``results.json``/``results.csv`` (:func:`summarize_model`, :func:`table3_row`),
``report.md`` and the figures, so both trainers' results share one schema and one report.

Data, tokenizer and presets are the HF study's: :func:`ls_seq.translation.data.load_corpora`, the joint BPE
tokenizer, the presets' architecture and schedule translated into ``fairseq-train`` flags
(:func:`train_arguments`). Work is resumable: fairseq resumes training from ``checkpoint_last.pt``, and
every finished evaluation stage is a file that a ``--resume`` keeps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ls_seq._validation import check_alpha, check_choice, check_positive_int, check_temperatures
from ls_seq.checkpoints import first_verified, verify_torch_archive
from ls_seq.errors import CheckpointError, InputError, LsSeqError
from ls_seq.functional.losses import CONVENTIONS
from ls_seq.io import atomic_write_json, atomic_write_text, read_json
from ls_seq.study import RunDirectory, stage_boundary
from ls_seq.sweeps import corpus_bleu, distinct_share
from ls_seq.translation.data import ParallelCorpus, load_corpora
from ls_seq.translation.presets import Preset
from ls_seq.translation.study import (
    RESUME_EXTENDABLE,
    DataArguments,
    ModelArguments,
    _check_optional_ints,
    _derangement,
    _versions,
    _write_results,
    resolve_preset,
    run_config,
    source_check_skipped,
    source_warnings,
    summarize_model,
    table3_row,
    write_report,
)
from ls_seq.translation.tokenizer import load_or_train_tokenizer

from . import PLUGIN_DIR
from .calibration import metrics_from_sums, reliability_from_sums
from .criterion import CRITERION_NAME
from .data import binarize, write_token_files
from .evaluate import calibration_sums, generate, trusted_checkpoints

__all__ = [
    "ARCHITECTURES",
    "FairseqStudyArguments",
    "evaluation_from_fairseq",
    "run_study",
    "train_arguments",
    "train_summary_from_log",
]

# fairseq architecture of each preset; every dimension is also passed explicitly, so the name only says
# which of fairseq's registered Transformers the preset is (base and big: Vaswani et al.'s, the paper's).
ARCHITECTURES = {"base": "transformer_wmt_en_de", "big": "transformer_vaswani_wmt_en_de_big"}
_LN2 = math.log(2.0)


@dataclass
class FairseqStudyArguments:
    """Alphas, the smoothing convention, schedule, temperature grid, output and resume (fairseq trainer)."""

    output_dir: str = field(default="outputs/ende_fairseq", metadata={"help": "Where results, figures and models go."})
    alphas: list[float] = field(
        default_factory=lambda: [0.0, 0.1], metadata={"help": "Label-smoothing alphas, one model each, in [0, 1)."}
    )
    ls_convention: str = field(
        default="uniform",
        metadata={"help": "Meaning of alpha: 'uniform' (the paper, the HF study) or 'fairseq' (eps / (V - 1))."},
    )
    temperatures: list[float] | None = field(default=None, metadata={"help": "Temperature grid (default: the preset's)."})
    num_beams: int | None = field(default=None, metadata={"help": "Beam size (default: the preset's)."})
    max_steps: int | None = field(default=None, metadata={"help": "Updates per model, fairseq's --max-update (default: the preset's)."})
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Linear warm-up updates before inverse-sqrt decay (>= 1)."})
    batch_size: int | None = field(default=None, metadata={"help": "Sentences per update (all GPUs together)."})
    eval_max_tokens: int = field(default=4096, metadata={"help": "Tokens per batch of the teacher-forced passes."})
    generate_batch_size: int | None = field(default=None, metadata={"help": "Sentences per fairseq-generate batch (default: the preset's)."})
    save_steps: int | None = field(default=None, metadata={"help": "Checkpoint every n updates (what --resume continues from)."})
    n_bins: int = field(default=15, metadata={"help": "Calibration bins (the paper: 15)."})
    seed: int = field(default=42, metadata={"help": "fairseq's --seed: initialisation, data order, dropout."})
    resume: bool = field(default=False, metadata={"help": "Continue a killed run in output_dir: finished work is kept."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start over in a non-empty output_dir."})
    fp16: bool | None = field(default=None, metadata={"help": "fairseq's --fp16 (default: on when a GPU is there)."})
    logging_steps: int = field(default=50, metadata={"help": "fairseq's --log-interval."})
    cpu_threads: int | None = field(default=None, metadata={"help": "OMP_NUM_THREADS of fairseq-train (default: as set)."})
    fairseq_train_args: str = field(
        default="", metadata={"help": "More fairseq-train flags, appended last (e.g. '--max-tokens 4096 --update-freq 2')."}
    )

    def __post_init__(self):
        if not self.alphas:
            raise ValueError("`alphas` must hold at least one value in [0, 1)")
        self.alphas = [check_alpha(a, f"alphas[{i}]", allow_one=False) for i, a in enumerate(self.alphas)]
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"`alphas` must be distinct, got {self.alphas}")
        check_choice(self.ls_convention, "ls_convention", CONVENTIONS)
        if self.temperatures is not None:
            self.temperatures = check_temperatures(self.temperatures)
        # warm-up >= 1: fairseq's inverse_sqrt schedule divides by it
        _check_optional_ints(self, ("num_beams", "max_steps", "batch_size", "save_steps", "generate_batch_size", "cpu_threads", "warmup_steps"))
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}")
        for name in ("eval_max_tokens", "n_bins", "logging_steps"):
            check_positive_int(getattr(self, name), name)
        try:
            shlex.split(self.fairseq_train_args)
        except ValueError as err:
            raise ValueError(f"`fairseq_train_args` must be shell-quoted flags, got {self.fairseq_train_args!r}: {err}") from err


# ----------------------------------------------------------------------------------------------------------
# Training


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_arguments(
    alpha: float, preset: Preset, preset_name: str, data_dir: Path, save_dir: Path, args: FairseqStudyArguments
) -> list[str]:
    """The ``fairseq-train`` command line (without the program) of one model of the study.

    The preset's Transformer (tied embeddings, sinusoidal positions, scaled embeddings, as the HF study's
    Marian model) and schedule: Adam (0.9, 0.98, eps 1e-9), inverse-sqrt decay after linear warm-up, gradient
    norm clipped at 1, ``batch_size`` sentences per update over all GPUs, and the ls-seq criterion logging
    calibration at the study's temperatures in every validation.
    """
    gpus = _gpus()
    fp16 = (gpus > 0) if args.fp16 is None else args.fp16
    grid = ",".join(repr(float(t)) for t in preset.temperatures)
    flags = [
        str(data_dir), "--user-dir", PLUGIN_DIR, "--task", "translation", "--source-lang", "en", "--target-lang", "de",
        "--arch", ARCHITECTURES.get(preset_name, "transformer"), "--share-all-embeddings",
        "--encoder-layers", str(preset.encoder_layers), "--decoder-layers", str(preset.decoder_layers),
        "--encoder-embed-dim", str(preset.d_model), "--decoder-embed-dim", str(preset.d_model),
        "--encoder-ffn-embed-dim", str(preset.ffn_dim), "--decoder-ffn-embed-dim", str(preset.ffn_dim),
        "--encoder-attention-heads", str(preset.attention_heads), "--decoder-attention-heads", str(preset.attention_heads),
        "--dropout", repr(preset.dropout), "--attention-dropout", "0.0", "--activation-dropout", "0.0",
        "--criterion", CRITERION_NAME, "--label-smoothing", repr(alpha), "--ls-convention", args.ls_convention,
        "--calibration-bins", str(args.n_bins), "--calibration-temperatures", grid,
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-09", "--weight-decay", "0.0",
        "--clip-norm", "1.0", "--lr", repr(preset.learning_rate), "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", str(preset.warmup_steps), "--warmup-init-lr", "0.0",
        "--batch-size", str(max(1, preset.batch_size // max(1, gpus))), "--max-update", str(preset.max_steps),
        "--seed", str(args.seed), "--save-dir", str(save_dir), "--save-interval-updates", str(preset.save_steps),
        "--keep-interval-updates", "1", "--no-epoch-checkpoints",
        "--log-format", "json", "--log-interval", str(args.logging_steps), "--log-file", str(save_dir / "train.log"),
        "--num-workers", "0",
    ]  # fmt: skip
    if gpus == 0:
        flags.append("--cpu")
    if fp16:
        flags.append("--fp16")
    return flags + shlex.split(args.fairseq_train_args)


def check_train_arguments(flags: list[str]) -> None:
    """Parse ``flags`` with fairseq-train's own parser, so a bad flag fails before any training (exit 2)."""
    from fairseq import options

    options.parse_args_and_arch(options.get_training_parser(), flags)


def train_summary_from_log(log_file: Path, steps: int) -> dict[str, Any]:
    """Steps, epochs, final loss and the loss curve from fairseq's JSON log (fairseq logs base 2; here nats).

    ``--log-file`` holds one JSON object per line: the training windows (``train_inner``: ``num_updates``,
    ``loss``, ...) every ``--log-interval`` updates and an epoch summary (``train_num_updates``,
    ``train_loss``, ...) at the end of every epoch and of training. A resumed run appends and repeats the
    updates after its checkpoint: the last line of each update counts. ``final_loss`` / ``final_nll_loss``
    are the last logged window (the last epoch summary when no window was logged), as in the HF study;
    ``steps`` (the final checkpoint's updates) scales the epoch progress of that window.
    """
    windows: dict[int, dict[str, Any]] = {}
    epochs: list[dict[str, Any]] = []
    with open(log_file, encoding="utf-8") as f:
        for line in f:
            text = line.split(" | ")[-1].strip()  # the console form prefixes "<time> | INFO | train_inner | "
            if not text.startswith("{"):
                continue
            try:
                stats = json.loads(text)
            except json.JSONDecodeError:
                continue  # fairseq also logs its configuration as a Python dict
            if "num_updates" in stats and "loss" in stats:
                windows[int(stats["num_updates"])] = stats
            elif "train_num_updates" in stats:
                epochs.append(stats)
    if not windows and not epochs:
        raise LsSeqError(f"{str(log_file)!r} holds no training log line: did fairseq-train run?")
    curve = [
        {"step": step, "loss": float(s["loss"]) * _LN2, "nll_loss": float(s["nll_loss"]) * _LN2}
        for step, s in sorted(windows.items())
    ]
    if curve:
        last = windows[curve[-1]["step"]]
        # fairseq's "update" is the epoch progress at that update (1.333: a third into the second epoch)
        done = float(last["update"]) * steps / int(last["num_updates"])
        final_loss, final_nll = curve[-1]["loss"], curve[-1]["nll_loss"]
    else:
        done = float(epochs[-1]["epoch"])
        final_loss, final_nll = float(epochs[-1]["train_loss"]) * _LN2, float(epochs[-1]["train_nll_loss"]) * _LN2
    return {"steps": steps, "epochs": round(done, 4), "final_loss": final_loss, "final_nll_loss": final_nll, "loss_curve": curve}


def _updates_in(checkpoint: Path) -> int:
    """The updates a fairseq checkpoint holds; :class:`CheckpointError` naming it when it is damaged."""
    from fairseq import checkpoint_utils

    verify_torch_archive(checkpoint)  # the zip's CRC, before unpickling anything
    with trusted_checkpoints():
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    try:
        return int(state["optimizer_history"][-1]["num_updates"])
    except (KeyError, IndexError, TypeError) as exc:
        raise CheckpointError(f"{str(checkpoint)!r} holds no fairseq training state ({exc!r})") from exc


def restore_point(save_dir: Path) -> int | None:
    """The updates in ``checkpoint_last.pt``, which fairseq-train resumes from; None when there is none.

    fairseq writes its interval checkpoints (``checkpoint_<epoch>_<updates>.pt``) atomically but copies them to
    ``checkpoint_last.pt`` in place, so a kill during the copy leaves a damaged one. It is set aside (with a
    warning) and the newest interval checkpoint that is whole takes its place.
    """
    last = save_dir / "checkpoint_last.pt"

    def updates_in_name(path: Path) -> int:
        tail = path.stem.rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    intervals = sorted(save_dir.glob("checkpoint_*_*.pt"), key=updates_in_name, reverse=True)
    found = first_verified([last, *intervals], _updates_in)
    if found is None:
        return None
    path, updates = found
    if path != last:
        tmp = save_dir / "checkpoint_last.pt.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, last)
    return updates


def _die_with_parent() -> None:
    """In the fairseq-train child: receive SIGKILL when the study's process dies, however it dies (Linux), so
    a killed study leaves no training that writes on into its run directory."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def train_model(alpha: float, preset: Preset, flags: list[str], model_dir: Path, args: FairseqStudyArguments) -> dict[str, Any]:
    """Run ``fairseq-train`` (resuming from ``checkpoint_last.pt`` when there is one) and return its summary.

    ``model_dir/train_summary.json`` marks a finished model; a resumed study does not train it again, nor one
    whose ``checkpoint_last.pt`` already holds every update (killed before the summary was written: fairseq
    would take one more update).
    """
    summary_path = model_dir / "train_summary.json"
    if summary_path.is_file():
        return read_json(summary_path)
    save_dir = model_dir / "checkpoints"
    save_dir.mkdir(parents=True, exist_ok=True)
    resumed_at = restore_point(save_dir)
    start = time.time()
    if resumed_at is None or resumed_at < preset.max_steps:
        env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # fairseq resumes from its own pickles
        if args.cpu_threads is not None:
            env["OMP_NUM_THREADS"] = str(args.cpu_threads)
        linux = sys.platform.startswith("linux")
        proc = subprocess.run(
            [sys.executable, "-m", "fairseq_cli.train", *flags], env=env, check=False,
            preexec_fn=_die_with_parent if linux else None,
        )  # fmt: skip
        if proc.returncode != 0:
            raise LsSeqError(
                f"fairseq-train of the alpha={alpha} model exited with {proc.returncode} (its log: "
                f"{save_dir / 'train.log'}); fix the cause and run again with --resume"
            )
    steps = restore_point(save_dir)
    if steps != preset.max_steps:
        raise LsSeqError(f"fairseq-train stopped at update {steps} of {preset.max_steps}; see {save_dir / 'train.log'}")
    summary = {"alpha": alpha, **train_summary_from_log(save_dir / "train.log", steps)}
    summary["resumed_from"] = None if resumed_at is None else f"checkpoint_last.pt (update {resumed_at})"
    summary["seconds"] = round(time.time() - start, 1)
    atomic_write_json(summary_path, summary)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def _as_tensors(stats: dict[str, Any]) -> tuple[list[float], dict[str, torch.Tensor]]:
    temps = [float(t) for t in stats["temperatures"]]
    return temps, {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items() if k != "temperatures"}


def evaluation_from_fairseq(
    calibration: dict[str, dict[str, Any]],
    test: ParallelCorpus,
    test_translations: list[str] | None,
    sweep_translations: dict[float, list[str]],
    grid: list[float],
    n_bleu: int,
) -> dict[str, Any]:
    """The HF study's evaluation record (what its ``evaluate_model`` returns) from fairseq's outputs.

    Args:
        calibration: :func:`.evaluate.calibration_sums` of the subsets done so far: ``test`` (at the grid and
            1), ``test1`` (the test set with deranged sources) and ``valid``; ``source_check_skipped``: why
            the source check does not apply (:func:`ls_seq.translation.study.source_check_skipped`), if so.
        test: the test corpus (references: its raw targets).
        test_translations: detokenized ``fairseq-generate`` output on the whole test set (T = 1), or None.
        sweep_translations: temperature -> detokenized ``fairseq-generate --temperature T`` output on the
            first ``n_bleu`` test sentences.
        grid: the study's temperatures; n_bleu: the sentences of the BLEU sweep.

    Returns:
        The keys :func:`ls_seq.translation.study.summarize_model` reads (a partial record for partial
        input): ``teacher_forced``, ``reliability``, ``nll_shuffled_sources``, ``test_bleu``,
        ``share_distinct_outputs``, ``sweep_bleu``, ``sweep_bleu_sentences``, ``validation_teacher_forced``.
        NLLs in nats.
    """
    ev: dict[str, Any] = {}
    if "test" in calibration:
        temps, stats = _as_tensors(calibration["test"])
        values, rel = metrics_from_sums(stats), reliability_from_sums(stats)
        i1 = temps.index(1.0)
        ev["teacher_forced"] = {
            "temperatures": temps,
            **{k: values[k].tolist() for k in ("nll", "ece", "mce", "rms", "accuracy", "mean_confidence")},
            "n_tokens": int(values["n_tokens"][i1]),
        }
        ev["reliability"] = {k: v[i1].tolist() for k, v in rel.items()}
    if "source_check_skipped" in calibration:
        ev["nll_shuffled_sources"], ev["source_check_skipped"] = None, calibration["source_check_skipped"]
    elif "test1" in calibration:
        temps, stats = _as_tensors(calibration["test1"])
        ev["nll_shuffled_sources"] = float(metrics_from_sums(stats)["nll"][temps.index(1.0)])
    if test_translations is not None:
        ev["test_bleu"] = corpus_bleu(test_translations, test.target)
        ev["share_distinct_outputs"] = distinct_share(test_translations)
    refs = test.target[:n_bleu]
    sweep = {repr(float(t)): corpus_bleu(h, refs) for t, h in sweep_translations.items()}
    if test_translations is not None and 1.0 in grid:  # beam search at T = 1 already translated these
        sweep[repr(1.0)] = corpus_bleu(test_translations[:n_bleu], refs)
    ev["sweep_bleu"] = {repr(float(t)): sweep[repr(float(t))] for t in grid if repr(float(t)) in sweep}
    ev["sweep_bleu_sentences"] = n_bleu
    if "valid" in calibration:
        temps, stats = _as_tensors(calibration["valid"])
        values = metrics_from_sums(stats)
        at = [temps.index(float(t)) for t in grid]
        ev["validation_teacher_forced"] = {
            "temperatures": list(grid),
            "nll": [float(values["nll"][i]) for i in at],
            "ece": [float(values["ece"][i]) for i in at],
        }
    return ev


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
) -> dict[str, Any]:
    """Calibration passes, the test translation and the BLEU sweep of one model, each stage kept on disk.

    ``model_dir/calibration.json`` (summed statistics per subset), ``test_translations.txt`` and
    ``sweep/T<t>.txt`` are written atomically when their stage is done, so ``--resume`` skips them (the
    calibration is measured again when the grid has grown); ``on_progress(ev)`` is called after every stage,
    and ``evaluation.json`` holds the latest record. After each stage comes a
    :func:`~ls_seq.study.stage_boundary` named ``<model>/evaluated:<stage>``.
    """
    grid = list(preset.temperatures)
    tf_grid = sorted(set(grid) | {1.0})
    n_bleu = len(test) if preset.max_bleu_samples is None else min(preset.max_bleu_samples, len(test))
    cal_path = model_dir / "calibration.json"
    calibration = read_json(cal_path) if cal_path.is_file() else {}
    test_path = model_dir / "test_translations.txt"
    sweep: dict[float, list[str]] = {}

    def lines(path: Path) -> list[str]:
        return path.read_text(encoding="utf-8").split("\n")[:-1]

    def progress(stage: str) -> dict[str, Any]:
        ev = evaluation_from_fairseq(calibration, test, lines(test_path) if test_path.is_file() else None, sweep, grid, n_bleu)
        atomic_write_json(model_dir / "evaluation.json", ev)
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

    The order of the HF study (:func:`ls_seq.translation.study.run_study`): ``output_dir`` is checked writable,
    the data read and checked and every fairseq-train command line parsed by fairseq before anything is
    written; then the directory is opened as a :class:`~ls_seq.study.RunDirectory` (locked; its configuration
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
        max_samples={"train": data_args.max_train_samples, "validation": data_args.max_eval_samples, "test": data_args.max_eval_samples},
    )
    if len(corpora["test"]) < 2:
        raise InputError(f"the test split needs at least 2 pairs (the source check deranges them), got {len(corpora['test'])}")
    for alpha in study_args.alphas:  # fairseq's parser refuses a bad --fairseq_train_args now (exit 2), not mid-study
        check_train_arguments(train_arguments(alpha, preset, model_args.preset, run.path / "data-bin", run.path / "x", study_args))
    fp16 = (_gpus() > 0) if study_args.fp16 is None else study_args.fp16
    config = {
        **run_config(data_args, model_args, study_args, preset, corpora, bf16=False, num_processes=max(1, _gpus())),
        "trainer": "fairseq",
        "fp16": fp16,
        "ls_convention": study_args.ls_convention,
        "fairseq_train_args": study_args.fairseq_train_args,
    }
    config = run.open(
        config, command=command or " ".join(sys.argv), resume=study_args.resume,
        overwrite=study_args.overwrite_output_dir, extendable=RESUME_EXTENDABLE,
    )  # fmt: skip
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
    if not (data_dir / "dict.de.txt").is_file():
        n_bleu = len(test) if preset.max_bleu_samples is None else min(preset.max_bleu_samples, len(test))
        splits = {
            "train": corpora["train"],
            "valid": corpora["validation"],
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
    timings["device"] = "cuda" if _gpus() else "cpu"
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
        results["models"].append({"alpha": alpha})

        def on_progress(ev: dict[str, Any], alpha: float = alpha, summary: dict[str, Any] = summary) -> None:
            results["models"][-1] = summarize_model(alpha, ev, summary, grid)
            results["table3"] = table3_row(results["models"])
            _write_results(output_dir, results)

        t1 = time.time()
        evaluate_model(
            model_dir / "checkpoints" / "checkpoint_last.pt", data_dir, tokenizer, test, preset, model_dir, study_args,
            on_progress, source_check_skip=source_check_skipped(sources, perm),
        )  # fmt: skip
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

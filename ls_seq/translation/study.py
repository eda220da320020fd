"""The EN-DE study of Müller, Kornblith & Hinton (2019), Fig. 3, Fig. 4 and the EN-DE row of Table 3.

For every alpha: train a Transformer (``LabelSmoothingSeq2SeqTrainer``), then on the test split measure

* teacher-forced token NLL, ECE (15 bins) and accuracy, and the reliability diagram (Fig. 3);
* a temperature sweep: beam-search BLEU at each T (:func:`ls_seq.sweeps.beam_search_sweep`) and
  teacher-forced NLL/ECE at each T (:func:`ls_seq.sweeps.teacher_forced_sweep`) (Fig. 4);
* whether the model uses its source: NLL with the sources shuffled against the targets (a translator
  gets much worse, a language model does not) and the share of distinct beam outputs.

Outputs (``output_dir``): ``results.json`` / ``results.csv`` (rewritten after every step of the sweep),
``report.md``, ``reliability.png`` (Fig. 3), ``temperature_sweep.png`` (Fig. 4), ``table3.png``,
``timings.json`` (wall-clock, kept apart so that ``results.json`` is a deterministic function of the seed),
and per model ``alpha_<a>/`` with the checkpoints, the final model (safetensors), ``evaluation.json`` (the
progress ``--resume`` continues from) and the test translations.

Layout of the code: argument dataclasses (validated in ``__post_init__``), data preparation, training,
evaluation, results/report; :func:`run_study` wires them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ls_seq._validation import (
    check_alpha,
    check_choice,
    check_positive_int,
    check_seeds,
    check_temperatures,
)
from ls_seq.callbacks import CalibrationCallback
from ls_seq.checkpoints import (
    check_finite_weights,
    checkpoint_steps,
    latest_good_checkpoint,
    set_aside,
    verify_checkpoint,
    write_checksums,
)
from ls_seq.errors import CheckpointError, InputError, LsSeqWarning, writing_to
from ls_seq.io import (
    apply_umask_modes,
    atomic_write_files,
    atomic_write_json,
    atomic_write_text,
    csv_bytes,
    figure_bytes,
    json_bytes,
    read_json,
)
from ls_seq.study import RunDirectory, stage_boundary
from ls_seq.study.trajectory import (
    TrajectoryPoint,
    overconfident_from,
    plot_trajectory,
    trajectory_curves,
    trajectory_from_log,
)
from ls_seq.sweeps import (
    beam_search_sweep,
    best_temperature,
    corpus_bleu,
    dist_info,
    distinct_share,
    teacher_forced_sweep,
)
from ls_seq.translation.data import ParallelCorpus, load_corpora
from ls_seq.translation.presets import (
    PRESETS,
    Preset,
    apply_overrides,
    build_model_config,
    get_preset,
)
from ls_seq.translation.tokenizer import load_or_train_tokenizer


def _check_optional_ints(args: Any, names: tuple[str, ...], minimum: int = 1) -> None:
    """``check_positive_int`` on each field of ``args`` in ``names`` that was given (not None)."""
    for name in names:
        if getattr(args, name) is not None:
            check_positive_int(getattr(args, name), name, minimum=minimum)

__all__ = [
    "SOURCE_DISTINCT_MIN",
    "SOURCE_NLL_GAP_MIN",
    "DataArguments",
    "ModelArguments",
    "StudyArguments",
    "check_source_use",
    "resolve_preset",
    "run_study",
    "training_arguments",
]

# A model "uses its source" when shuffling the sources raises its token NLL by at least this much (nats) and
# at least this share of its test translations differ. The collapsed reference run had a gap of 0.00 and
# 1/1000 distinct outputs; the healthy one a gap of 2.57 and nearly all distinct.
SOURCE_NLL_GAP_MIN = 0.25
SOURCE_DISTINCT_MIN = 0.5
# Below this many test sentences the shuffled-source NLL says nothing (one sentence cannot be shuffled).
SOURCE_CHECK_MIN_SENTENCES = 10


# ----------------------------------------------------------------------------------------------------------
# Arguments


@dataclass
class DataArguments:
    """Which corpus, which splits, how much of it."""

    dataset: str = field(default="multi30k", metadata={"help": "'multi30k' (downloaded with checksums) or 'wmt14'."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Local corpus: {split}.{en,de}[.gz], one sentence per line (overrides --dataset)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Download/cache directory (default ~/.cache/ls_seq)."})
    train_split: str = field(default="train", metadata={"help": "File stem of the training split in --data_dir."})
    validation_split: str = field(default="val", metadata={"help": "File stem of the validation split in --data_dir."})
    test_split: str = field(default="test_2016_flickr", metadata={"help": "File stem of the test split in --data_dir."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep the first n training pairs (default: the preset's; tiny-lowdata: 3000)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep the first n test pairs for every test measurement."}
    )
    max_bleu_samples: int | None = field(
        default=None, metadata={"help": "Beam-search BLEU sweep on the first n test pairs (default: the preset's)."}
    )

    def __post_init__(self):
        check_choice(self.dataset, "dataset", ["multi30k", "wmt14"])
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ValueError(f"`data_dir` must be an existing directory, got {self.data_dir!r}")
        _check_optional_ints(self, ("max_train_samples", "max_eval_samples", "max_bleu_samples"))


@dataclass
class ModelArguments:
    """A preset and the fields to override in it (None keeps the preset's value)."""

    preset: str = field(default="tiny", metadata={"help": f"One of {sorted(PRESETS)}."})
    vocab_size: int | None = field(default=None, metadata={"help": "Joint BPE vocabulary size."})
    d_model: int | None = field(default=None, metadata={"help": "Model width."})
    encoder_layers: int | None = field(default=None, metadata={"help": "Encoder layers."})
    decoder_layers: int | None = field(default=None, metadata={"help": "Decoder layers."})
    attention_heads: int | None = field(default=None, metadata={"help": "Attention heads (encoder and decoder)."})
    ffn_dim: int | None = field(default=None, metadata={"help": "Feed-forward width."})
    dropout: float | None = field(default=None, metadata={"help": "Dropout probability."})

    def __post_init__(self):
        check_choice(self.preset, "preset", sorted(PRESETS))
        _check_optional_ints(self, ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim"))
        if self.dropout is not None:
            check_alpha(self.dropout, "dropout", allow_one=False)


@dataclass
class StudyArguments:
    """Alphas, training schedule, temperature grid, output and resume."""

    output_dir: str = field(default="outputs/ende", metadata={"help": "Where results, figures and models go."})
    alphas: list[float] = field(
        default_factory=lambda: [0.0, 0.1], metadata={"help": "Label-smoothing alphas, one model each, in [0, 1)."}
    )
    temperatures: list[float] | None = field(
        default=None, metadata={"help": "Temperature grid of the sweep (default: the preset's)."}
    )
    num_beams: int | None = field(default=None, metadata={"help": "Beam size (default: the preset's, 4)."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps per model (default: the preset's)."})
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Linear warm-up steps before inverse-sqrt decay."})
    batch_size: int | None = field(default=None, metadata={"help": "Sentences per optimizer step (all processes)."})
    eval_batch_size: int | None = field(default=None, metadata={"help": "Sentences per evaluation batch."})
    generate_batch_size: int | None = field(
        default=None, metadata={"help": "Sequences per beam-search generate call (default: the preset's)."}
    )
    temperatures_per_call: int | None = field(
        default=None,
        metadata={"help": "BLEU sweep: temperatures decoded together in one generate call (default: the preset's)."},
    )
    save_steps: int | None = field(default=None, metadata={"help": "Checkpoint every n steps (what --resume continues from)."})
    n_bins: int = field(default=15, metadata={"help": "Calibration bins (the paper: 15)."})
    calibration_every: int | None = field(
        default=None,
        metadata={"help": "Calibration along training: validation ECE/NLL/best temperature every n steps (0: off; "
                  "default: the preset's)."},
    )
    calibration_samples: int | None = field(
        default=None, metadata={"help": "Calibration along training on the first n validation pairs (default: the preset's)."}
    )
    calibration_temperatures: list[float] | None = field(
        default=None, metadata={"help": "Temperature grid of the calibration along training (default: the preset's)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of model initialisation, data order and dropout."})
    seeds: list[int] | None = field(
        default=None,
        metadata={"help": "Several seeds (replaces --seed): every model is trained per seed in seed_<s>/, and the "
                  "top-level report gives mean, std and t-intervals over seeds and the claims' verdicts."},
    )
    resume: bool = field(default=False, metadata={"help": "Continue a killed run in output_dir: finished work is kept."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start over in a non-empty output_dir."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on when a GPU supports it)."})
    logging_steps: int = field(default=50, metadata={"help": "Log the training loss every n steps."})
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "Intra-op threads per process when running on CPU (default: the cores this process may use, "
            "divided among the processes on this machine; `accelerate launch` without a config pins 1)."
        },
    )

    def __post_init__(self):
        if not self.alphas:
            raise ValueError("`alphas` must hold at least one value in [0, 1)")
        self.alphas = [check_alpha(a, f"alphas[{i}]", allow_one=False) for i, a in enumerate(self.alphas)]
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"`alphas` must be distinct, got {self.alphas}")
        if self.temperatures is not None:
            self.temperatures = check_temperatures(self.temperatures)
        if self.calibration_temperatures is not None:
            self.calibration_temperatures = check_temperatures(self.calibration_temperatures, "calibration_temperatures")
        _check_optional_ints(self, ("num_beams", "max_steps", "batch_size", "eval_batch_size", "save_steps",
                                    "generate_batch_size", "temperatures_per_call", "cpu_threads"))
        _check_optional_ints(self, ("warmup_steps", "calibration_every"), minimum=0)
        _check_optional_ints(self, ("calibration_samples",))
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}")
        check_positive_int(self.n_bins, "n_bins")
        check_positive_int(self.seed, "seed", minimum=0)
        if self.seeds is not None:
            self.seeds = check_seeds(self.seeds)
        check_positive_int(self.logging_steps, "logging_steps")
        if self.resume and self.overwrite_output_dir:
            raise ValueError("`resume` and `overwrite_output_dir` exclude each other: keep the run or start over")


class _Processes:
    """Rank, world size, barriers and device of this run, from ``torch.distributed`` itself.

    accelerate's ``PartialState`` initialises the process group under ``torchrun`` on CPU but then reports
    one process (``DistributedType.NO``, accelerate 1.15), while the Trainer does train on all of them; so the
    study asks the process group directly, which is right under torchrun and ``accelerate launch`` alike.
    """

    def __init__(self):
        from accelerate import PartialState

        self.device = PartialState().device  # also initialises the process group when launched with several
        self.rank, self.num_processes = dist_info()
        self.is_main_process = self.rank == 0

    def set_cpu_threads(self, requested: int | None) -> int | None:
        """On CPU: use ``requested`` intra-op threads, by default this process's share of the usable cores.

        ``accelerate launch`` without a config on a machine with no GPU sets ``OMP_NUM_THREADS=1`` (accelerate
        1.15), which makes the tiny preset take 31.5 instead of 18.6 minutes on 2 cores (docs/en_de.md); the
        study chooses its own count instead. Returns the count, or None on an accelerator.
        """
        if self.device.type != "cpu":
            return None
        if requested is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.num_processes))
            requested = max(1, cores // max(1, local))
        torch.set_num_threads(requested)
        return requested

    def wait_for_everyone(self) -> None:
        if self.num_processes > 1:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_process_first(self):
        if not self.is_main_process:
            self.wait_for_everyone()
        yield
        if self.is_main_process:
            self.wait_for_everyone()


def resolve_preset(model_args: ModelArguments, study_args: StudyArguments, data_args: DataArguments) -> Preset:
    """The preset named by ``model_args.preset`` with every flag that was given applied on top.

    A flag overrides the preset field of the same name, whichever argument dataclass declares it.
    """
    preset_fields = {f.name for f in dataclasses.fields(Preset)}
    overrides = {
        f.name: getattr(args, f.name)
        for args in (model_args, study_args, data_args)
        for f in dataclasses.fields(args)
        if f.name in preset_fields
    }
    return apply_overrides(get_preset(model_args.preset), **overrides)


# ----------------------------------------------------------------------------------------------------------
# Data


def _tokenize(corpus: ParallelCorpus, tokenizer: Any, max_length: int):
    """A ``datasets.Dataset`` of ``input_ids``, ``labels`` and ``length`` (for length-grouped batches)."""
    import datasets

    src = tokenizer(corpus.source, truncation=True, max_length=max_length)["input_ids"]
    tgt = tokenizer(corpus.target, truncation=True, max_length=max_length)["input_ids"]
    return datasets.Dataset.from_dict(
        {"input_ids": src, "labels": tgt, "length": [max(len(s), len(t)) for s, t in zip(src, tgt)]}
    )


def _batches(dataset, indices: list[int], collator, batch_size: int):
    """Collated batches of ``dataset[indices]`` in order (the evaluation set of this process)."""
    for start in range(0, len(indices), batch_size):
        rows = dataset.select(indices[start : start + batch_size])
        yield collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])


def _derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation without fixed points: ``perm[i] != i`` for every i (n >= 2)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = [0] * n
    for k in range(n):  # each element of the shuffled cycle takes the next one's place
        perm[order[k]] = order[(k + 1) % n]
    return perm


# ----------------------------------------------------------------------------------------------------------
# Training


def training_arguments(alpha: float, preset: Preset, output_dir: str | os.PathLike, **overrides: Any):
    """The study's ``LabelSmoothingSeq2SeqTrainingArguments`` for one model: Adam(0.9, 0.98, eps 1e-9), linear
    warm-up then inverse-square-root decay, clipping 1.0, length-grouped batches, a checkpoint every
    ``preset.save_steps`` (the last two kept, so a damaged newest one has a fallback), no NaN filter on the
    logged loss (a NaN must stop the run, not be averaged away); ``overrides`` replace or add fields."""
    from ls_seq.trainer import LabelSmoothingSeq2SeqTrainingArguments

    values = {
        "output_dir": str(output_dir),
        "label_smoothing_factor": alpha,
        "per_device_train_batch_size": preset.batch_size,
        "learning_rate": preset.learning_rate,
        "lr_scheduler_type": "inverse_sqrt",
        "warmup_steps": preset.warmup_steps,
        "adam_beta1": 0.9,
        "adam_beta2": 0.98,
        "adam_epsilon": 1e-9,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "max_steps": preset.max_steps,
        # Batches of similar lengths: 1.10 padded slots per token on Multi30k instead of 2.08 (docs/en_de.md).
        "train_sampling_strategy": "group_by_length",
        "save_strategy": "steps",
        "save_steps": preset.save_steps,
        "save_total_limit": 2,
        "logging_nan_inf_filter": False,
        "eval_strategy": "no",
        "report_to": [],
        "dataloader_num_workers": 0,
        "remove_unused_columns": True,
    }
    return LabelSmoothingSeq2SeqTrainingArguments(**{**values, **overrides})


class _StageBoundaries(TrainerCallback):
    """Marks each step and checkpoint of one model as a stage boundary (the fault tests' kill points,
    :func:`ls_seq.study.stage_boundary`)."""

    def __init__(self, tag: str):
        self.tag = tag

    def on_step_end(self, args, state, control, **kwargs):
        stage_boundary(f"{self.tag}/step-{state.global_step}")

    def on_save(self, args, state, control, **kwargs):
        stage_boundary(f"{self.tag}/checkpoint-{state.global_step}")


def _training_summary(alpha: float, log_history: list[dict[str, Any]], global_step: int, epoch: float | None) -> dict[str, Any]:
    """``train_summary.json`` from a Trainer's whole log history (restored from the checkpoint on a resume).

    ``final_loss`` is the window that ends at the last step (the :class:`~ls_seq.guards.TrainingGuard` logs
    there and at every checkpoint, so no window spans a resume), never ``TrainOutput.training_loss``, which
    averages only the steps of the last session.
    """
    losses = [(h["step"], h["loss"], h.get("nll_loss")) for h in log_history if "loss" in h]
    trajectory = calibration_trajectory(log_history)
    return {
        "alpha": alpha,
        "steps": global_step,
        "epochs": round(float(epoch or 0.0), 4),
        "final_loss": losses[-1][1] if losses else None,
        "final_nll_loss": losses[-1][2] if losses else None,
        "loss_curve": [{"step": s, "loss": l, "nll_loss": n} for s, l, n in losses],
        "calibration_trajectory": [dataclasses.asdict(p) for p in trajectory],
        # The Trainer's evaluation time of those points (cost of the calibration along training).
        "calibration_seconds": round(sum(h.get("eval_runtime", 0.0) for h in log_history if "eval_ece" in h), 2),
    }


def calibration_trajectory(log_history: list[dict[str, Any]]) -> list[TrajectoryPoint]:
    """The calibration along training that :class:`ls_seq.CalibrationCallback` logged at each evaluation
    (``eval_ece``, ``eval_nll``, ``eval_best_ece_temperature``, ...), in step order, one point per step."""
    return trajectory_from_log(log_history)


def _finished_model(final_dir: Path, summary_path: Path):
    """The saved final model and its summary, when both are there and the model passes its checks.

    A damaged final model is set aside (``damaged-model``) with a warning; it is then rebuilt from the
    checkpoint at ``max_steps``.
    """
    from transformers import MarianMTModel

    if not (final_dir.is_dir() and summary_path.is_file()):
        return None
    try:
        verify_checkpoint(final_dir, require=("model.safetensors", "config.json"))
        summary = read_json(summary_path)
    except (CheckpointError, InputError) as exc:
        moved = set_aside(final_dir)
        warnings.warn(f"{exc}; set aside as {str(moved)!r}, rebuilding it from the checkpoints", LsSeqWarning, stacklevel=3)
        return None
    return MarianMTModel.from_pretrained(str(final_dir)), summary


def train_model(
    alpha: float,
    preset: Preset,
    tokenizer: Any,
    train_dataset,
    model_dir: Path,
    *,
    seed: int,
    resume: bool,
    bf16: bool,
    logging_steps: int,
    state: Any,
    calibration_dataset=None,
    n_bins: int = 15,
):
    """Train one model (or load it when ``model_dir/model`` is complete) and return ``(model, summary)``.

    With ``preset.calibration_every > 0`` and a ``calibration_dataset`` (validation pairs), the Trainer evaluates
    it every ``calibration_every`` steps with :class:`ls_seq.CalibrationCallback` on the
    ``preset.calibration_temperatures`` grid, inside its own evaluation loop; the summary's
    ``calibration_trajectory`` holds those points (:func:`calibration_trajectory`), restored with the log
    history on a resume.

    Checkpoints go to ``model_dir/checkpoints`` every ``preset.save_steps``; with ``resume`` training restarts
    from the newest checkpoint that passes :func:`ls_seq.checkpoints.verify_checkpoint` (weights, optimizer,
    scheduler, RNG and data position, HF Trainer's resume); damaged ones are set aside with a warning. A
    checkpoint at ``max_steps`` means training is finished: the model is loaded from it, no step is taken.
    A :class:`~ls_seq.guards.TrainingGuard` stops training at the first non-finite weight or loss, naming the
    step. The final model is checked finite, written to a temporary directory with its checksums and
    renamed, so ``model_dir/model`` exists only when complete.
    """
    from transformers import DataCollatorForSeq2Seq, MarianMTModel, set_seed
    from transformers.trainer_callback import TrainerState

    from ls_seq.guards import TrainingGuard
    from ls_seq.trainer import LabelSmoothingSeq2SeqTrainer

    final_dir, summary_path = model_dir / "model", model_dir / "train_summary.json"
    checkpoints, tag = model_dir / "checkpoints", model_dir.name
    # The main process checks what is saved and sets damaged files aside; the others then use what is left.
    finished = _finished_model(final_dir, summary_path) if state.is_main_process else None
    checkpoint = latest_good_checkpoint(checkpoints) if state.is_main_process and resume and finished is None else None
    state.wait_for_everyone()
    if not state.is_main_process:
        if (final_dir / "model.safetensors").is_file() and summary_path.is_file():
            finished = MarianMTModel.from_pretrained(str(final_dir)), read_json(summary_path)
        elif resume and checkpoint_steps(checkpoints):
            checkpoint = checkpoint_steps(checkpoints)[0][1]
    if finished is not None:
        return finished

    start = time.time()
    if checkpoint is not None and read_json(checkpoint / "trainer_state.json")["global_step"] >= preset.max_steps:
        # Training is finished: Trainer.train() would take one more step before it checks max_steps.
        trainer = None
        model = MarianMTModel.from_pretrained(str(checkpoint))
        trainer_state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        summary = _training_summary(alpha, trainer_state.log_history, trainer_state.global_step, trainer_state.epoch)
    else:
        set_seed(seed)
        model = MarianMTModel(build_model_config(preset, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id))
        use_gpu = torch.cuda.is_available()
        callbacks = [TrainingGuard(), _StageBoundaries(tag)]
        along = preset.calibration_every > 0 and calibration_dataset is not None
        evaluation = {}
        if along:
            evaluation = {
                "eval_strategy": "steps", "eval_steps": preset.calibration_every,
                "per_device_eval_batch_size": max(1, preset.eval_batch_size // state.num_processes),
            }  # fmt: skip
            callbacks.append(CalibrationCallback(n_bins, temperatures=list(preset.calibration_temperatures), plot=False))
        args = training_arguments(
            alpha, preset, checkpoints, seed=seed, logging_steps=logging_steps,
            per_device_train_batch_size=max(1, preset.batch_size // state.num_processes),
            bf16=bf16, use_cpu=not use_gpu, **evaluation,
        )  # fmt: skip
        trainer = LabelSmoothingSeq2SeqTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=calibration_dataset if along else None,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        with writing_to(checkpoints, "checkpoints"):
            trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
        model = trainer.accelerator.unwrap_model(trainer.model)
        summary = _training_summary(alpha, trainer.state.log_history, trainer.state.global_step, trainer.state.epoch)
    summary["resumed_from"] = None if checkpoint is None else checkpoint.name
    summary["seconds"] = round(time.time() - start, 1)
    check_finite_weights(model, f"of the final {tag} model", step=summary["steps"])
    tmp_dir = model_dir / "model.tmp"
    if state.is_main_process and tmp_dir.exists():  # left by a run killed while saving
        shutil.rmtree(tmp_dir)
    state.wait_for_everyone()
    with writing_to(tmp_dir, "final model"):
        if trainer is not None:
            trainer.save_model(str(tmp_dir))  # safetensors; every process must call it, the main one writes
        elif state.is_main_process:
            model.save_pretrained(str(tmp_dir))
            tokenizer.save_pretrained(str(tmp_dir))
        state.wait_for_everyone()
        if state.is_main_process:
            apply_umask_modes(tmp_dir)
            write_checksums(tmp_dir)
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.replace(tmp_dir, final_dir)
            atomic_write_json(summary_path, summary)
    state.wait_for_everyone()
    stage_boundary(f"{tag}/trained")
    return model, summary


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def check_source_use(nll: float, nll_shuffled: float, share_distinct: float) -> dict[str, Any]:
    """Does a model translate or ignore its input? Gap and distinct-output thresholds at the top of this module."""
    gap = nll_shuffled - nll
    return {
        "nll": nll,
        "nll_shuffled_sources": nll_shuffled,
        "nll_gap": gap,
        "share_distinct_outputs": share_distinct,
        "uses_source": bool(gap >= SOURCE_NLL_GAP_MIN and share_distinct >= SOURCE_DISTINCT_MIN),
    }


def source_check_skipped(sources: list[list[int]], perm: list[int]) -> str | None:
    """Why the source check cannot be trusted on this test split (None when it can).

    Shuffling the sources must change most of them: with fewer than ``SOURCE_CHECK_MIN_SENTENCES``
    sentences, or when repeated sources leave more than a tenth of them in place, the NLL gap would
    measure the split, not the model (one sentence: the "shuffled" source is the original, gap 0).
    """
    n = len(sources)
    moved = sum(sources[j] != sources[i] for i, j in enumerate(perm))
    if n < SOURCE_CHECK_MIN_SENTENCES:
        return f"the test split has {n} sentence(s); the source check needs at least {SOURCE_CHECK_MIN_SENTENCES}"
    if moved < 0.9 * n:
        return f"shuffling changed only {moved} of the {n} test sources (repeated sentences); it needs 90%"
    return None


def evaluate_model(
    model,
    tokenizer,
    test: ParallelCorpus,
    test_dataset,
    preset: Preset,
    model_dir: Path,
    *,
    n_bins: int,
    seed: int,
    state: Any,
    on_progress,
    validation_dataset,
) -> dict[str, Any]:
    """Test metrics, source check and temperature sweep of one model; progress kept in ``evaluation.json``.

    Stages run in order and each is saved when done (main process, atomically), so a resumed run skips
    what is there: (1) one teacher-forced pass at all temperatures (and 1.0) gives NLL/ECE/accuracy and the
    T=1 reliability diagram; (2) the same with sources deranged; (3) beam search at T=1 on the test set gives
    BLEU and the distinct-output share; (4) the BLEU sweep, ``preset.temperatures_per_call`` temperatures per ``generate`` call, each point saved
    as soon as its group is done;
    (5) teacher-forced NLL/ECE over the grid on ``validation_dataset``, to choose a temperature without the
    test set. A stage saved for fewer temperatures than ``preset.temperatures`` (a resume that added some) is
    measured again over the whole grid; the BLEU sweep measures only the new points. A damaged
    ``evaluation.json`` is set aside with a warning and the stages run again. After each saved stage comes
    a :func:`~ls_seq.study.stage_boundary` named ``<model>/evaluated:<stage>``.
    """
    from transformers import DataCollatorForSeq2Seq

    from ls_seq.sweeps import shard_indices

    path = model_dir / "evaluation.json"
    ev: dict[str, Any] = {}
    if path.is_file():
        try:
            ev = read_json(path)
        except InputError as exc:
            if state.is_main_process:
                moved = set_aside(path)
                warnings.warn(f"{exc}; set aside as {str(moved)!r}, evaluating again", LsSeqWarning, stacklevel=2)
        state.wait_for_everyone()
    grid = list(preset.temperatures)
    tf_grid = sorted(set(grid) | {1.0})
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    indices = shard_indices(len(test_dataset))
    bs = preset.eval_batch_size

    def save(stage: str):
        # Every process holds the same ev (metrics are synced, translations gathered); one writes it, and
        # the others wait, so files the main process writes (translations) are there for all to read.
        if state.is_main_process:
            atomic_write_json(path, ev)
        on_progress(ev)
        state.wait_for_everyone()
        stage_boundary(f"{model_dir.name}/evaluated:{stage}")

    if ev.get("teacher_forced", {}).get("temperatures") != tf_grid:
        metric = teacher_forced_sweep(model, _batches(test_dataset, indices, collator, bs), tf_grid, n_bins=n_bins)
        values = {k: torch.atleast_1d(v) for k, v in metric.compute().items()}
        rel = {k: v.reshape(len(tf_grid), -1) for k, v in metric.reliability().items()}
        i1 = tf_grid.index(1.0)
        ev["teacher_forced"] = {
            "temperatures": tf_grid,
            **{k: values[k].tolist() for k in ("nll", "ece", "mce", "rms", "accuracy", "mean_confidence")},
            # 95% token-level bootstrap intervals (ls_seq.functional.measures, "bootstrap")
            **{k: values[k].tolist() for k in ("ece_low", "ece_high", "accuracy_low", "accuracy_high") if k in values},
            "n_tokens": int(values["n_tokens"][i1]),
            # (R, T) bootstrap replicates: the same token resamples for every model (ls_seq.study.intervals)
            "replicates": {k: v.T.tolist() for k, v in metric.bootstrap_replicates().items()},
        }
        ev["reliability"] = {k: v[i1].tolist() for k, v in rel.items()}
        save("teacher_forced")

    if "nll_shuffled_sources" not in ev:
        sources = test_dataset["input_ids"]
        perm = _derangement(len(sources), seed) if len(sources) >= 2 else list(range(len(sources)))
        skipped = source_check_skipped(sources, perm)
        if skipped is None:
            shuffled = test_dataset.remove_columns("input_ids").add_column("input_ids", [sources[j] for j in perm])
            metric = teacher_forced_sweep(
                model, _batches(shuffled, indices, collator, bs), [1.0], n_bins=n_bins, desc="shuffled sources"
            )
            ev["nll_shuffled_sources"] = float(metric.compute()["nll"].reshape(-1)[0])
        else:
            ev["nll_shuffled_sources"], ev["source_check_skipped"] = None, skipped
        save("shuffled_sources")

    gen = {
        "num_beams": preset.num_beams, "batch_size": preset.generate_batch_size,
        "max_source_length": preset.max_length, "max_new_tokens": preset.max_length,
    }  # fmt: skip
    if "test_bleu" not in ev:
        hyps = beam_search_sweep(model, tokenizer, test.source, [1.0], **gen)[1.0]
        if state.is_main_process:
            atomic_write_text(model_dir / "test_translations.txt", "\n".join(hyps) + "\n")
        ev["test_bleu"] = corpus_bleu(hyps, test.target)
        ev["share_distinct_outputs"] = distinct_share(hyps)
        save("test_bleu")

    n_bleu = len(test) if preset.max_bleu_samples is None else min(preset.max_bleu_samples, len(test))
    ev.setdefault("sweep_bleu", {})
    ev["sweep_bleu_sentences"] = n_bleu
    todo = [t for t in grid if repr(float(t)) not in ev["sweep_bleu"]]
    if 1.0 in todo:  # beam search at T=1 already translated the test set: score its first n_bleu sentences
        hyps = (model_dir / "test_translations.txt").read_text(encoding="utf-8").split("\n")[:n_bleu]
        ev["sweep_bleu"][repr(1.0)] = corpus_bleu(hyps, test.target[:n_bleu])
        todo.remove(1.0)
        save("sweep_bleu_1.0")
    if todo:
        def record(temperature: float, hyps: list[str]) -> None:
            ev["sweep_bleu"][repr(float(temperature))] = corpus_bleu(hyps, test.target[:n_bleu])
            save(f"sweep_bleu_{float(temperature)!r}")

        beam_search_sweep(
            model, tokenizer, test.source[:n_bleu], todo, on_temperature=record,
            temperatures_per_call=preset.temperatures_per_call, **gen,
        )  # fmt: skip

    if ev.get("validation_teacher_forced", {}).get("temperatures") != grid:
        val_indices = shard_indices(len(validation_dataset))
        metric = teacher_forced_sweep(
            model, _batches(validation_dataset, val_indices, collator, bs), grid, n_bins=n_bins, desc="validation sweep"
        )
        values = {k: torch.atleast_1d(v) for k, v in metric.compute().items()}
        ev["validation_teacher_forced"] = {"temperatures": grid, "nll": values["nll"].tolist(), "ece": values["ece"].tolist()}
        save("validation")
    return ev


def summarize_model(alpha: float, ev: dict[str, Any], train_summary: dict[str, Any] | None, grid: list[float]) -> dict[str, Any]:
    """One entry of ``results.json["models"]`` from a (possibly partial) ``evaluation.json``."""
    entry: dict[str, Any] = {"alpha": alpha}
    if train_summary is not None:
        entry["train"] = {k: train_summary.get(k) for k in ("steps", "epochs", "final_loss", "final_nll_loss")}
        points = train_summary.get("calibration_trajectory") or []
        if points:  # validation calibration along training; above T = 1 from this step on: over-confident
            entry["calibration_along_training"] = {
                "points": points,
                "overconfident_from_step": overconfident_from([TrajectoryPoint(**p) for p in points]),
            }
    tf = ev.get("teacher_forced")
    if tf is None:
        return entry
    at = {t: i for i, t in enumerate(tf["temperatures"])}
    i1 = at[1.0]
    entry["test"] = {
        "bleu": ev.get("test_bleu"),
        "nll": tf["nll"][i1],
        "ece": tf["ece"][i1],
        "mce": tf["mce"][i1],
        "token_accuracy": tf["accuracy"][i1],
        "mean_confidence": tf["mean_confidence"][i1],
        "n_tokens": tf["n_tokens"],
    }
    for name in ("ece", "accuracy"):  # 95% bootstrap interval over the test tokens
        if f"{name}_low" in tf:
            entry["test"][f"{name}_interval"] = [tf[f"{name}_low"][i1], tf[f"{name}_high"][i1]]
    if "replicates" in tf:  # stored per temperature: (T, R)
        entry["test"]["replicates"] = {k: v[i1] for k, v in tf["replicates"].items()}
    entry["sweep"] = [
        {
            "temperature": t,
            "bleu": ev.get("sweep_bleu", {}).get(repr(float(t))),
            "nll": tf["nll"][at[t]],
            "ece": tf["ece"][at[t]],
        }
        for t in grid
    ]
    entry["sweep_bleu_sentences"] = ev.get("sweep_bleu_sentences")
    entry["best_nll_temperature"] = best_temperature(entry["sweep"], "nll")
    entry["best_ece_temperature"] = best_temperature(entry["sweep"], "ece")
    if "replicates" in tf:  # the ECE replicates at the best-ECE temperature (temperature scaling's)
        entry["best_ece_replicates"] = tf["replicates"]["ece"][at[entry["best_ece_temperature"]]]
    entry["best_ece"] = min(p["ece"] for p in entry["sweep"])
    val = ev.get("validation_teacher_forced")
    if val is not None:  # a temperature chosen without looking at the test set, and what it gives there
        val_points = [{"temperature": t, "nll": n, "ece": e} for t, n, e in zip(val["temperatures"], val["nll"], val["ece"])]
        t_ece = best_temperature(val_points, "ece")
        entry["validation"] = {
            "sweep": val_points,
            "best_nll_temperature": best_temperature(val_points, "nll"),
            "best_ece_temperature": t_ece,
            "test_ece_at_best_ece_temperature": tf["ece"][at[t_ece]],
        }
    if "source_check_skipped" in ev:
        entry["source_check"] = {"skipped": ev["source_check_skipped"]}
    elif "nll_shuffled_sources" in ev and "share_distinct_outputs" in ev:
        entry["source_check"] = check_source_use(entry["test"]["nll"], ev["nll_shuffled_sources"], ev["share_distinct_outputs"])
    entry["reliability"] = ev["reliability"]
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


# ----------------------------------------------------------------------------------------------------------
# Results and report


def _write_results(output_dir: Path, results: dict[str, Any]) -> None:
    """``results.csv`` and ``results.json`` as one set (the JSON last): a reader never sees one without the other."""
    rows = [{"alpha": m["alpha"], **p} for m in results["models"] for p in m.get("sweep", [])]
    atomic_write_files({
        output_dir / "results.csv": csv_bytes(rows, fieldnames=["alpha", "temperature", "bleu", "nll", "ece"]),
        output_dir / "results.json": json_bytes(results),
    })  # fmt: skip


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
    n = cfg["validation_sentences"] if preset.get("calibration_samples") is None else min(
        preset["calibration_samples"], cfg["validation_sentences"])  # fmt: skip
    lines = [
        "", "## Calibration along training (validation)", "",
        f"Every {preset['calibration_every']} steps on {n} validation sentences (teacher-forced, T grid "
        f"{preset['calibration_temperatures'][0]}-{preset['calibration_temperatures'][-1]}). A lowest-ECE temperature "
        "above 1 means the model is over-confident there; *over-confident from* is the first step from which it "
        "stays so.", "",
    ]  # fmt: skip
    for m in models:
        if "calibration_along_training" not in m:
            continue
        along = m["calibration_along_training"]
        start = along["overconfident_from_step"]
        lines.append(f"- alpha={m['alpha']}: " + (f"over-confident from step {start}" if start is not None else
                                                  "not over-confident at the last point"))  # fmt: skip
    lines += ["", "| alpha | step | epoch | ECE | NLL | accuracy | confidence | best-ECE T | best-NLL T |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in models:
        for p in m.get("calibration_along_training", {}).get("points", []):
            lines.append(
                f"| {m['alpha']} | {p['step']} | {p['epoch']} | {_fmt(p['ece'], 4)} | {_fmt(p['nll'])} | {_fmt(p['accuracy'])} | "
                f"{_fmt(p['mean_confidence'])} | {p['best_ece_temperature']} | {p['best_nll_temperature']} |"
            )
    return lines


def write_report(output_dir: Path, results: dict[str, Any], timings: dict[str, Any]) -> None:
    """``report.md`` and the figures, from ``results.json``'s content."""
    from ls_seq.translation.plots import plot_fig3, plot_fig4, plot_table3, table3_cells

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
            for m in models if "uses_source" in m.get("source_check", {})
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
    along = {f"alpha {m['alpha']}": {cfg["seed"]: [TrajectoryPoint(**p) for p in m["calibration_along_training"]["points"]]}
             for m in models if "calibration_along_training" in m}  # fmt: skip
    if along:
        lines += trajectory_lines(models, cfg)
        figures[output_dir / "calibration_along_training.png"] = figure_bytes(
            plot_trajectory(trajectory_curves(along), title="Validation calibration along training")
        )
    captions = {"reliability.png": "Fig. 3: reliability", "temperature_sweep.png": "Fig. 4: temperature sweep",
                "table3.png": "Table 3 row", "calibration_along_training.png": "Calibration along training"}  # fmt: skip
    lines += ["", "## Figures", ""] + [f"![{captions[p.name]}]({p.name})" for p in figures]
    lines += ["", "## Wall-clock", "", "```", json.dumps(timings, indent=1), "```"]
    lines += ["", "## Versions", "", "```", json.dumps(results["versions"], indent=1), "```", ""]
    # The figures first, the report that shows them last: a report.md is never without its figures.
    atomic_write_files({**figures, output_dir / "report.md": "\n".join(lines)})


def _corpora_digest(corpora: dict[str, ParallelCorpus]) -> str:
    """SHA-256 of every sentence the study reads (after ``max_*_samples``): what ``--resume`` checks the data by."""
    digest = hashlib.sha256()
    for split in ("train", "validation", "test"):
        for side in (corpora[split].source, corpora[split].target):
            digest.update("\n".join(side).encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()


def run_config(
    data_args: DataArguments, model_args: ModelArguments, study_args: StudyArguments, preset: Preset,
    corpora: dict[str, ParallelCorpus], *, bf16: bool, num_processes: int,
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
    and checked, so bad input leaves it untouched. Then it is opened as a :class:`~ls_seq.study.RunDirectory`:
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
        max_samples={"train": preset.max_train_samples, "validation": data_args.max_eval_samples, "test": data_args.max_eval_samples},
    )
    state = _Processes()
    cpu_threads = state.set_cpu_threads(study_args.cpu_threads)
    bf16 = study_args.bf16 if study_args.bf16 is not None else bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    config = run_config(data_args, model_args, study_args, preset, corpora, bf16=bf16, num_processes=state.num_processes)
    command = command or " ".join(sys.argv)
    if state.is_main_process:
        config = run.open(
            config, command=command, resume=study_args.resume, overwrite=study_args.overwrite_output_dir,
            extendable=RESUME_EXTENDABLE,
        )  # fmt: skip
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
            alpha, preset, tokenizer, train_dataset, model_dir,
            seed=config["seed"], resume=study_args.resume, bf16=bf16,
            logging_steps=config["logging_steps"], state=state,
            calibration_dataset=calibration_dataset, n_bins=config["n_bins"],
        )  # fmt: skip
        timings[f"alpha_{alpha}"] = {"train_seconds": summary["seconds"]}
        if summary.get("calibration_trajectory"):  # included in train_seconds
            timings[f"alpha_{alpha}"]["calibration_along_training_seconds"] = summary["calibration_seconds"]
            timings[f"alpha_{alpha}"]["calibration_share_of_training"] = round(
                summary["calibration_seconds"] / max(summary["seconds"], 1e-9), 4
            )
        results["models"].append({"alpha": alpha})

        def on_progress(ev: dict[str, Any], alpha: float = alpha, summary: dict[str, Any] = summary) -> None:
            results["models"][-1] = summarize_model(alpha, ev, summary, grid)
            results["table3"] = table3_row(results["models"])
            if state.is_main_process:
                _write_results(output_dir, results)

        t1 = time.time()
        model.to(state.device)
        ev = evaluate_model(
            model, tokenizer, corpora["test"], test_dataset, preset, model_dir,
            n_bins=config["n_bins"], seed=config["seed"], state=state, on_progress=on_progress,
            validation_dataset=validation_dataset,
        )  # fmt: skip
        state.wait_for_everyone()
        on_progress(ev)
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

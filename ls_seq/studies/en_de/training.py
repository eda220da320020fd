"""Training one EN-DE model: the study's training arguments, the Trainer run with its guards and stage
boundaries, resume from the newest good checkpoint, and ``train_summary.json``."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ls_seq.checkpoints import (
    check_finite_weights,
    checkpoint_steps,
    latest_good_checkpoint,
    set_aside,
    verify_checkpoint,
    write_checksums,
)
from ls_seq.errors import CheckpointError, InputError, LsSeqWarning
from ls_seq.hf.callbacks import CalibrationCallback
from ls_seq.io import apply_umask_modes, atomic_write_json, read_json, writing_to
from ls_seq.studies import stage_boundary
from ls_seq.studies.en_de.presets import Preset, build_model_config
from ls_seq.studies.trajectory import TrajectoryPoint, trajectory_from_log

__all__ = ["calibration_trajectory", "train_model", "training_arguments"]


def training_arguments(alpha: float, preset: Preset, output_dir: str | os.PathLike, **overrides: Any):
    """The study's ``LabelSmoothingSeq2SeqTrainingArguments`` for one model: Adam(0.9, 0.98, eps 1e-9), linear
    warm-up then inverse-square-root decay, clipping 1.0, length-grouped batches, a checkpoint every
    ``preset.save_steps`` (the last two kept, so a damaged newest one has a fallback), no NaN filter on the
    logged loss (a NaN must stop the run, not be averaged away); ``overrides`` replace or add fields."""
    from ls_seq.hf.trainer import LabelSmoothingSeq2SeqTrainingArguments

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
    :func:`ls_seq.studies.stage_boundary`)."""

    def __init__(self, tag: str):
        self.tag = tag

    def on_step_end(self, args, state, control, **kwargs):
        stage_boundary(f"{self.tag}/step-{state.global_step}")

    def on_save(self, args, state, control, **kwargs):
        stage_boundary(f"{self.tag}/checkpoint-{state.global_step}")


def _training_summary(alpha: float, log_history: list[dict[str, Any]], global_step: int, epoch: float | None) -> dict[str, Any]:
    """``train_summary.json`` from a Trainer's whole log history (restored from the checkpoint on a resume).

    ``final_loss`` is the window that ends at the last step (the :class:`~ls_seq.hf.training_guard.TrainingGuard` logs
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
    history on a resume. Those evaluations run inside :func:`ls_seq.rng.isolated_rng`: the model trained is bit
    for bit the one trained without them.

    Checkpoints go to ``model_dir/checkpoints`` every ``preset.save_steps``; with ``resume`` training restarts
    from the newest checkpoint that passes :func:`ls_seq.checkpoints.verify_checkpoint` (weights, optimizer,
    scheduler, RNG and data position, HF Trainer's resume); damaged ones are set aside with a warning. A
    checkpoint at ``max_steps`` means training is finished: the model is loaded from it, no step is taken.
    A :class:`~ls_seq.hf.training_guard.TrainingGuard` stops training at the first non-finite weight or loss, naming the
    step. The final model is checked finite, written to a temporary directory with its checksums and
    renamed, so ``model_dir/model`` exists only when complete.
    """
    from transformers import DataCollatorForSeq2Seq, MarianMTModel, set_seed
    from transformers.trainer_callback import TrainerState

    from ls_seq.hf.trainer import LabelSmoothingSeq2SeqTrainer
    from ls_seq.hf.training_guard import TrainingGuard

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
                "eval_strategy": "steps",
                "eval_steps": preset.calibration_every,
                "per_device_eval_batch_size": max(1, preset.eval_batch_size // state.num_processes),
            }
            callbacks.append(CalibrationCallback(n_bins, temperatures=list(preset.calibration_temperatures), plot=False))
        args = training_arguments(
            alpha,
            preset,
            checkpoints,
            seed=seed,
            logging_steps=logging_steps,
            per_device_train_batch_size=max(1, preset.batch_size // state.num_processes),
            bf16=bf16,
            use_cpu=not use_gpu,
            **evaluation,
        )
        trainer = LabelSmoothingSeq2SeqTrainer(  # its evaluations leave the training random streams untouched
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

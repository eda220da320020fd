"""A Trainer callback that keeps garbage out of training and out of its checkpoints.

:class:`TrainingGuard` (add it to any HF ``Trainer``'s ``callbacks``):

* after every optimizer step, checks that every weight is finite and otherwise raises
  :class:`ls_seq.errors.NonFiniteWeightsError` naming the step and the tensor, before the step is logged
  or saved, so no checkpoint and no final model holds a NaN;
* raises :class:`ls_seq.errors.NonFiniteLossError` when a logged ``loss`` is NaN or infinite (set
  ``logging_nan_inf_filter=False``: HF's filter replaces such a loss by the running mean, which hides it);
* logs at every checkpoint step and at ``max_steps``, so that no logging window spans a checkpoint: a
  run resumed from checkpoint N averages the same steps into each logged loss as an uninterrupted run
  (HF restarts its running loss at the resumed step);
* records the size and SHA-256 of every file of each checkpoint it saved (:func:`ls_seq.checkpoints.write_checksums`),
  which :func:`ls_seq.checkpoints.verify_checkpoint` checks before a resume, and gives the files the mode
  the umask gives ordinary files (transformers leaves ``model.safetensors`` at ``0o600``).

Cost: one ``isfinite`` pass over the parameters per step (one host sync); see docs/reliability.md.
"""

from __future__ import annotations

import math
import os
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ls_seq.checkpoints import check_finite_weights, write_checksums
from ls_seq.errors import NonFiniteLossError
from ls_seq.io import apply_umask_modes

__all__ = ["TrainingGuard"]


class TrainingGuard(TrainerCallback):
    """Stop on non-finite weights or loss, log at checkpoint steps, checksum each checkpoint (module docstring)."""

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        step = state.global_step
        if model is not None:
            check_finite_weights(model, f"after optimizer step {step}", step=step)
        save_step = args.save_strategy == "steps" and state.save_steps > 0 and step % state.save_steps == 0
        if save_step or step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss {loss} in the window ending at step {state.global_step} "
                "(lower the learning rate, or look for inf/NaN in the inputs)",
                step=state.global_step,
            )
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        assert args.output_dir is not None  # TrainingArguments sets a default
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(checkpoint):
            apply_umask_modes(checkpoint)
            write_checksums(checkpoint)
        return control

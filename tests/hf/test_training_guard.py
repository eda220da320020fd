"""TrainingGuard: a NaN stops training at its step and is never saved; logging windows never span a resume."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers.tiny import collate, tiny_config, tiny_dataset, training_args
from transformers import MarianMTModel, Seq2SeqTrainer, TrainerCallback, set_seed
from transformers.trainer_callback import TrainerControl, TrainerState

from ls_seq.checkpoints import CHECKSUMS_NAME, checkpoint_steps, verify_checkpoint
from ls_seq.errors import NonFiniteLossError, NonFiniteTrainingError, NonFiniteWeightsError
from ls_seq.hf.training_guard import TrainingGuard


def _trainer(out, callbacks=(), **overrides):
    set_seed(0)
    model = MarianMTModel(tiny_config("marian"))
    args = training_args(
        str(out),
        optim="adamw_torch",
        learning_rate=1e-2,
        max_steps=5,
        save_strategy="steps",
        save_steps=2,
        logging_steps=3,
        logging_nan_inf_filter=False,
        **overrides,
    )
    return Seq2SeqTrainer(
        model=model, args=args, train_dataset=tiny_dataset(40), data_collator=collate, callbacks=[TrainingGuard(), *callbacks]
    )


class _PoisonAt(TrainerCallback):
    """Sets one weight to NaN before optimizer step ``step`` (as an overflow in the forward pass would)."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                model.model.shared.weight[5, 0] = float("nan")


def test_non_finite_weights_stop_training_at_their_step_and_are_never_saved(tmp_path):
    trainer = _trainer(tmp_path, callbacks=[_PoisonAt(3)])
    with pytest.raises(NonFiniteTrainingError, match=r"step 3") as info:
        trainer.train()
    assert info.value.step == 3 and isinstance(info.value, (NonFiniteWeightsError, NonFiniteLossError))
    assert [s for s, _ in checkpoint_steps(tmp_path)] == [2]  # saved before the NaN, nothing after
    verify_checkpoint(tmp_path / "checkpoint-2")  # and it is whole and finite


def test_a_non_finite_logged_loss_is_an_error_naming_the_step():
    state, control = TrainerState(global_step=7), TrainerControl()
    for bad in (math.nan, math.inf):
        with pytest.raises(NonFiniteLossError, match="at step 7"):
            TrainingGuard().on_log(None, state, control, logs={"loss": bad})
    TrainingGuard().on_log(None, state, control, logs={"loss": 2.5, "learning_rate": 1e-3})


def _losses(trainer):
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]


def test_a_resumed_run_logs_the_same_losses_as_an_uninterrupted_one(tmp_path):
    """logging_steps 3, checkpoints every 2: the guard also logs at 2, 4 and at max_steps 5, so resuming from
    checkpoint-2 (HF restarts its running loss there) averages the same steps into every logged loss."""
    whole = _trainer(tmp_path / "whole")
    whole.train()
    assert [s for s, _ in _losses(whole)] == [2, 3, 4, 5]
    _trainer(tmp_path / "part").train()  # the same run again; then resumed from its first checkpoint
    resumed = _trainer(tmp_path / "part")
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-2"))
    assert _losses(resumed) == _losses(whole)


def test_without_the_guard_a_window_that_spans_the_resume_changes_the_logged_loss(tmp_path):
    """The failure the guard prevents (HF alone): resumed at step 2, the loss logged at step 3 averages step 3 only."""

    def plain(out):
        set_seed(0)
        args = training_args(
            str(out), optim="adamw_torch", learning_rate=1e-2, max_steps=3, save_strategy="steps", save_steps=2, logging_steps=3
        )
        return Seq2SeqTrainer(
            model=MarianMTModel(tiny_config("marian")), args=args, train_dataset=tiny_dataset(40), data_collator=collate
        )

    whole = plain(tmp_path / "whole")
    whole.train()
    resumed = plain(tmp_path / "whole")
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    assert _losses(resumed)[-1][0] == _losses(whole)[-1][0] == 3
    assert _losses(resumed)[-1][1] != _losses(whole)[-1][1]


def test_every_checkpoint_records_its_checksums(tmp_path):
    _trainer(tmp_path).train()
    for step, path in checkpoint_steps(tmp_path):
        assert (path / CHECKSUMS_NAME).is_file(), step
        verify_checkpoint(path)

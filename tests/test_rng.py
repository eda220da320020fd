"""Measurement that never changes the experiment (#25): evaluations during training leave the training random
streams untouched. Reference: the same seed run without the evaluation (or without the block), compared bit for bit.

Fails before #25's change: ls_seq.rng did not exist; the HF test's third case shows on the same setup what an
evaluation did to training before (a different model from the same seed).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _helpers.tiny import collate, tiny_config, tiny_dataset, training_args
from torch.utils.data import DataLoader
from transformers import MarianMTModel, set_seed

from ls_seq.rng import IsolatedEvaluationMixin, isolated_rng


def _draws():
    return torch.rand(4), random.random(), np.random.rand(2)


def _same(a, b):
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_the_streams_continue_as_if_the_block_never_ran_even_when_it_raises():
    set_seed(3)
    reference = _draws()
    set_seed(3)
    with isolated_rng():
        _draws()
        next(iter(DataLoader(list(range(10)), batch_size=2)))  # an iterator draws its base seed from torch
    assert _same(_draws(), reference)
    set_seed(3)
    with pytest.raises(KeyError), isolated_rng():
        _draws()
        raise KeyError("evaluation failed")
    assert _same(_draws(), reference)
    set_seed(3)
    next(iter(DataLoader(list(range(10)), batch_size=2)))
    assert not _same(_draws(), reference)  # what the block protects against


def _train(tmp_path, name, *, evaluate, trainer_cls):
    from transformers import Seq2SeqTrainer

    from ls_seq.hf.callbacks import CalibrationCallback
    from ls_seq.hf.trainer import LabelSmoothingSeq2SeqTrainer, LabelSmoothingSeq2SeqTrainingArguments

    cls = {
        "hf": Seq2SeqTrainer,
        "hf_isolated": type("Isolated", (IsolatedEvaluationMixin, Seq2SeqTrainer), {}),
        "ls_seq": LabelSmoothingSeq2SeqTrainer,  # isolates its evaluations itself
    }[trainer_cls]
    set_seed(0)
    config = tiny_config("marian")
    config.dropout = 0.2  # dropout masks come from torch's global generator: what an evaluation used to shift
    evaluation = {"eval_strategy": "steps", "eval_steps": 2} if evaluate else {}
    args = training_args(
        str(tmp_path / name),
        cls=LabelSmoothingSeq2SeqTrainingArguments,
        label_smoothing_factor=0.1,
        max_steps=6,
        learning_rate=0.1,
        **evaluation,
    )
    model = MarianMTModel(config)

    def collate_with_decoder_inputs(features):  # HF's own trainer needs them with this tiny Marian (5.25)
        batch = collate(features)
        return {**batch, "decoder_input_ids": model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])}

    trainer = cls(
        model=model,
        args=args,
        train_dataset=tiny_dataset(48),
        data_collator=collate_with_decoder_inputs,
        eval_dataset=tiny_dataset(8, seed=1) if evaluate else None,
        callbacks=[CalibrationCallback(plot=False)] if evaluate else [],
    )
    trainer.train()
    if evaluate:
        assert [h["step"] for h in trainer.state.log_history if "eval_ece" in h] == [2, 4, 6]  # it did measure
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("trainer_cls", ["hf_isolated", "ls_seq"])
def test_a_trainer_with_isolated_evaluation_trains_the_model_of_a_run_without_evaluation(tmp_path, trainer_cls):
    unwatched = _train(tmp_path, "unwatched", evaluate=False, trainer_cls=trainer_cls)
    watched = _train(tmp_path, "watched", evaluate=True, trainer_cls=trainer_cls)
    for name, value in unwatched.items():
        assert torch.equal(value, watched[name]), name


def test_without_isolation_an_evaluation_changes_the_trained_model(tmp_path):
    """Control: HF's own Seq2SeqTrainer, watched and unwatched, trains two different models (the fault)."""
    unwatched = _train(tmp_path, "unwatched", evaluate=False, trainer_cls="hf")
    watched = _train(tmp_path, "watched", evaluate=True, trainer_cls="hf")
    assert any(not torch.equal(value, watched[name]) for name, value in unwatched.items())

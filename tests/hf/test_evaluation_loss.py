"""The evaluation loss is the exact token mean over the whole evaluation set, and the evaluation routes say
clearly when there is nothing to measure.

Reference: every evaluation example scored alone (no padding), its logits aligned by hand (a causal LM's
``logits[:-1]`` against ``labels[1:]``), ``F.cross_entropy(label_smoothing=0.1, reduction="sum")`` summed over
the set and divided by its scored tokens. Tolerance rtol 1e-5.

Failed before this change: GPT-2's ``eval_loss`` was about (N - B) / N of the truth (transformers' count of the
unshifted labels reached evaluation), and every family's moved with the evaluation batch size (HF averages
per-batch means); predict() reported no calibration; an all-masked evaluation set gave no clear error;
``alpha=np.float32(0.1)`` was refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers.families import CAUSAL, family_collate, family_dataset, family_examples, family_model
from _helpers.tiny import IGNORE, training_args

from ls_seq import CalibrationCallback, label_smoothing_loss_func
from ls_seq.hf.compute_metrics import CalibrationComputeMetrics
from ls_seq.hf.trainer import (
    LabelSmoothingSeq2SeqTrainer,
    LabelSmoothingSeq2SeqTrainingArguments,
    LabelSmoothingTrainer,
    LabelSmoothingTrainingArguments,
)

ALPHA = 0.1
N_EVAL = 13  # uneven for every batch size below


def ls_trainer(family, model, eval_dataset, tmp_path, callbacks=None, **overrides):
    causal = family in CAUSAL
    cls, args_cls = (
        (LabelSmoothingTrainer, LabelSmoothingTrainingArguments)
        if causal
        else (LabelSmoothingSeq2SeqTrainer, LabelSmoothingSeq2SeqTrainingArguments)
    )
    args = training_args(str(tmp_path), cls=args_cls, label_smoothing_factor=ALPHA, **overrides)
    return cls(model=model, args=args, eval_dataset=eval_dataset, data_collator=family_collate(family), callbacks=callbacks)


def token_mean_reference(family, model, examples):
    """Sum of smoothed token losses over every example scored alone, over the scored tokens."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for example in examples:
            batch = family_collate(family)([example])
            if family in CAUSAL:
                logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
                labels = batch["labels"][0, 1:]
            else:
                dec = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
                logits = model(input_ids=batch["input_ids"], decoder_input_ids=dec).logits[0]
                labels = batch["labels"][0]
            total += float(F.cross_entropy(logits, labels, ignore_index=IGNORE, label_smoothing=ALPHA, reduction="sum"))
            count += int((labels != IGNORE).sum())
    return total / count


@pytest.mark.parametrize("family", ["gpt2", "llama", "bart", "t5"])
def test_eval_loss_is_the_token_mean_at_every_batch_size(tmp_path, family):
    model = family_model(family, seed=3)
    expected = token_mean_reference(family, model, family_examples(family, N_EVAL, seed=11))
    for batch_size in (1, 3, 8):
        trainer = ls_trainer(
            family, model, family_dataset(family, N_EVAL, seed=11), tmp_path, per_device_eval_batch_size=batch_size
        )
        got = trainer.evaluate()["eval_loss"]
        assert got == pytest.approx(expected, rel=1e-5), f"{family}, eval batch size {batch_size}"


def test_eval_loss_with_generation_is_the_token_mean(tmp_path):
    """predict_with_generate scores the teacher-forced logits through the generation path's loss."""
    model = family_model("marian", seed=3)
    expected = token_mean_reference("marian", model, family_examples("marian", N_EVAL, seed=11))
    trainer = ls_trainer(
        "marian",
        model,
        family_dataset("marian", N_EVAL, seed=11),
        tmp_path,
        per_device_eval_batch_size=3,
        predict_with_generate=True,
        generation_max_length=6,
    )
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-5)


def all_masked(family, n=4):
    from datasets import Dataset

    ex = family_examples(family, n, seed=1)
    return Dataset.from_dict({"input_ids": [e["input_ids"] for e in ex], "labels": [[IGNORE] * len(e["labels"]) for e in ex]})


@pytest.mark.parametrize("route", ["ls_trainer", "ls_trainer_callback", "plain_callback", "plain_metrics"])
def test_an_all_masked_eval_set_is_one_clear_error_naming_eval_dataset(tmp_path, route):
    from transformers import Trainer

    model = family_model("gpt2", seed=3)
    data = all_masked("gpt2")
    collate = family_collate("gpt2")
    if route.startswith("ls_trainer"):
        callbacks = [CalibrationCallback(plot=False)] if route.endswith("callback") else None
        trainer = ls_trainer("gpt2", model, data, tmp_path, callbacks=callbacks)
    elif route == "plain_callback":
        trainer = Trainer(
            model=model,
            args=training_args(str(tmp_path)),
            eval_dataset=data,
            data_collator=collate,
            callbacks=[CalibrationCallback(plot=False)],
        )
    else:
        pair = CalibrationComputeMetrics(model=model)
        trainer = Trainer(
            model=model,
            args=training_args(str(tmp_path), batch_eval_metrics=True),
            eval_dataset=data,
            data_collator=collate,
            **pair.trainer_kwargs(),
        )
    with pytest.raises(ValueError, match="`eval_dataset` has no scored tokens"):
        trainer.evaluate()


def test_predict_reports_calibration_in_ls_seq_trainers_and_the_metrics_pair(tmp_path):
    """predict() measures the test set in the loop (test_ece, ...), equal to evaluate() on the same data."""
    from transformers import Trainer

    data = family_dataset("gpt2", N_EVAL, seed=11)
    model = family_model("gpt2", seed=3)
    callback = CalibrationCallback(n_bins=10, plot=False)
    trainer = ls_trainer("gpt2", model, data, tmp_path, callbacks=[callback], per_device_eval_batch_size=4)
    evaluated = trainer.evaluate()
    predicted = trainer.predict(data).metrics
    assert predicted["test_ece"] == pytest.approx(evaluated["eval_ece"], rel=1e-9)
    assert predicted["test_loss"] == pytest.approx(evaluated["eval_loss"], rel=1e-9)
    assert callback.last_metrics["test_ece"] == predicted["test_ece"]
    pair = CalibrationComputeMetrics(n_bins=10, model=model)
    plain = Trainer(
        model=model,
        args=training_args(str(tmp_path / "pair"), per_device_eval_batch_size=4),
        data_collator=family_collate("gpt2"),
        **pair.trainer_kwargs(),
    )
    assert plain.predict(data).metrics["test_ece"] == pytest.approx(evaluated["eval_ece"], rel=1e-6)


def test_predict_with_generate_reports_calibration(tmp_path):
    data = family_dataset("marian", N_EVAL, seed=11)
    trainer = ls_trainer(
        "marian",
        family_model("marian", seed=3),
        data,
        tmp_path,
        callbacks=[CalibrationCallback(plot=False)],
        predict_with_generate=True,
        generation_max_length=6,
    )
    assert trainer.predict(data).metrics["test_ece"] == pytest.approx(trainer.evaluate()["eval_ece"], rel=1e-9)


class _Wrapper(torch.nn.Module):
    """A custom causal LM wrapper ls-seq cannot place from its class: it returns a CausalLMOutput."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutput

        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return CausalLMOutput(loss=out.loss, logits=out.logits)


@pytest.mark.parametrize("shift_labels", [None, True])
def test_the_callback_places_a_custom_wrapper_like_the_loss_function(tmp_path, shift_labels):
    """From its output's class (CausalLMOutput), or from the same explicit argument the loss function takes."""
    from transformers import Trainer

    inner = family_model("gpt2", seed=3)
    data = family_dataset("gpt2", N_EVAL, seed=11)
    reference = ls_trainer("gpt2", inner, data, tmp_path / "ref", callbacks=[CalibrationCallback(plot=False)]).evaluate()
    callback = CalibrationCallback(plot=False, shift_labels=shift_labels)
    trainer = Trainer(
        model=_Wrapper(inner),
        args=training_args(str(tmp_path)),
        eval_dataset=data,
        data_collator=family_collate("gpt2"),
        callbacks=[callback],
    )
    trainer.evaluate()
    assert callback.last_metrics["eval_ece"] == pytest.approx(reference["eval_ece"], rel=1e-9)
    assert callback.last_metrics["eval_nll"] == pytest.approx(reference["eval_nll"], rel=1e-9)


def test_numpy_scalars_are_accepted_as_alpha(tmp_path):
    logits, labels = torch.randn(2, 3, 5), torch.tensor([[1, 2, -100], [0, 4, 3]])
    from transformers.modeling_outputs import Seq2SeqLMOutput

    loss = label_smoothing_loss_func(np.float32(0.1))(Seq2SeqLMOutput(logits=logits), labels)
    ref = F.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), label_smoothing=float(np.float32(0.1)))
    torch.testing.assert_close(loss, ref)
    args = training_args(str(tmp_path), cls=LabelSmoothingTrainingArguments, label_smoothing_factor=np.float64(0.1))
    assert LabelSmoothingTrainer(model=family_model("gpt2"), args=args).loss_fn.alpha == 0.1
    with pytest.raises(TypeError, match="`alpha` must be a real number"):
        label_smoothing_loss_func(np.bool_(True))

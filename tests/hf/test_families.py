"""Every family users train, with and without the fused loss, with and without gradient accumulation: one
optimizer step equals a hand-written SGD step on the true token-mean label-smoothed loss.

Reference (``_helpers.families.sgd_reference``): the model's own logits on the whole batch of 16 examples,
aligned here independently of ls-seq (a causal LM's ``logits[:, :-1]`` against ``labels[:, 1:]``), then
``torch.nn.functional.cross_entropy(label_smoothing=0.1)`` over every scored token, backward, ``p - lr * grad``.
Tolerance rtol 1e-5 / atol 1e-6 on every parameter.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _helpers.families import (
    CAUSAL,
    FAMILIES,
    family_collate,
    family_dataset,
    family_examples,
    family_model,
    sgd_reference,
)
from _helpers.tiny import IGNORE, LOG_TOL, checkpointing_args, is_checkpointing, training_args

from ls_seq.hf.trainer import (
    LabelSmoothingSeq2SeqTrainer,
    LabelSmoothingSeq2SeqTrainingArguments,
    LabelSmoothingTrainer,
    LabelSmoothingTrainingArguments,
)

ALPHA, LR = 0.1, 0.5
TOL = dict(rtol=1e-5, atol=1e-6)


def ls_trainer(family, model, train, tmp_path, **overrides):
    causal = family in CAUSAL
    cls, args_cls = (
        (LabelSmoothingTrainer, LabelSmoothingTrainingArguments)
        if causal
        else (LabelSmoothingSeq2SeqTrainer, LabelSmoothingSeq2SeqTrainingArguments)
    )
    args = training_args(str(tmp_path), cls=args_cls, learning_rate=LR, label_smoothing_factor=ALPHA, **overrides)
    return cls(model=model, args=args, train_dataset=train, data_collator=family_collate(family))


@pytest.mark.parametrize("accumulation", [1, 4])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("family", FAMILIES)
def test_one_step_equals_sgd_on_the_token_mean_loss(tmp_path, family, fused, accumulation):
    base = family_model(family, seed=2)
    ref, ref_loss, ref_nll = sgd_reference(family, base, family_examples(family, 16, seed=5), ALPHA, LR)
    model = copy.deepcopy(base)
    trainer = ls_trainer(
        family,
        model,
        family_dataset(family, 16, seed=5),
        tmp_path,
        fused_linear_loss=fused,
        fused_chunk_size=7,
        per_device_train_batch_size=16 // accumulation,
        gradient_accumulation_steps=accumulation,
    )
    trainer.train()
    params = dict(model.named_parameters())
    assert ref.keys() <= params.keys()
    for name, expected in ref.items():
        torch.testing.assert_close(params[name].detach(), expected, **TOL, msg=f"{family}: {name}")
    log = trainer.state.log_history[0]
    assert log["loss"] == pytest.approx(ref_loss, **LOG_TOL)
    assert log["nll_loss"] == pytest.approx(ref_nll, **LOG_TOL)


def test_the_matrix_can_fail_hf_counts_unshifted_labels_for_gpt2(tmp_path):
    """Control: HF's own count for GPT-2 (loss_type None) holds the first label of every unmasked row, so a
    loss normalised by it (what ls-seq did before it recounted) misses the reference by (N - B) / N."""
    from transformers import Trainer

    family = "gpt2"
    train = family_dataset(family, 16, seed=5)
    trainer = Trainer(
        model=family_model(family),
        args=training_args(str(tmp_path), per_device_train_batch_size=16),
        train_dataset=train,
        data_collator=family_collate(family),
    )
    batches, hf_count = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, torch.device("cpu"))
    scored = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
    unmasked_rows = sum(int((b["labels"][:, 0] != IGNORE).sum()) for b in batches)
    assert unmasked_rows == 8
    assert int(hf_count) == scored + unmasked_rows
    ls = ls_trainer(family, family_model(family), train, tmp_path / "ls", per_device_train_batch_size=16)
    _, ls_count = ls.get_batch_samples(iter(ls.get_train_dataloader()), 1, torch.device("cpu"))
    assert int(ls_count) == scored


def test_fused_loss_refuses_a_head_that_is_not_a_linear_layer(tmp_path):
    """Soft-capped and scaled heads run fused (tests/hf/test_model_loss.py); a head whose logits are not
    weight @ h + bias cannot, and is refused at construction."""
    model = family_model("llama")
    model.lm_head = torch.nn.Sequential()
    with pytest.raises(ValueError, match="not a plain torch.nn.Linear"):
        ls_trainer("llama", model, family_dataset("llama", 4), tmp_path, fused_linear_loss=True)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_fused_loss_with_gradient_checkpointing(tmp_path, family):
    base = family_model(family, seed=2)
    ref, _, _ = sgd_reference(family, base, family_examples(family, 16, seed=5), ALPHA, LR)
    model = copy.deepcopy(base)
    trainer = ls_trainer(
        family,
        model,
        family_dataset(family, 16, seed=5),
        tmp_path,
        fused_linear_loss=True,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        **checkpointing_args(),
    )
    trainer.train()
    assert is_checkpointing(model)
    params = dict(model.named_parameters())
    for name, expected in ref.items():
        torch.testing.assert_close(params[name].detach(), expected, **TOL, msg=f"{family}: {name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_fused_forward_never_builds_the_logits(tmp_path, family):
    """The output layer sees an empty slice of its input: the model's logits have zero positions."""
    model = family_model(family, seed=2).train()
    trainer = ls_trainer(family, model, None, tmp_path, fused_linear_loss=True)
    head_outputs = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: head_outputs.append(tuple(out.shape)))
    batch = family_collate(family)(family_examples(family, 4, seed=1))
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert head_outputs[-1][-2] == 0 and outputs["logits"].shape[-2] == 0
    assert outputs["loss"] is not None and loss.requires_grad

"""label_smoothing_loss_func in a plain HF Trainer: the shift decided from the model or its output, and the
Trainer's num_items_in_batch trusted only where it counts exactly the scored labels.

References: ``F.cross_entropy(label_smoothing=...)`` on the hand-aligned logits, and the hand-written SGD step of
``_helpers.families.sgd_reference`` (rtol 1e-5).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _helpers.families import causal_collate, causal_examples, family_model, sgd_reference
from _helpers.tiny import IGNORE, VOCAB, training_args
from transformers import Trainer
from transformers.modeling_outputs import CausalLMOutput, Seq2SeqLMOutput

from ls_seq.hf.loss_func import label_smoothing_loss_func

TOL = dict(rtol=1e-5, atol=1e-6)


def masked_first(examples):
    """Every row's first label masked, as with prompt masking (SFT): every token count agrees."""
    return [{**e, "labels": [IGNORE] + e["labels"][1:]} for e in examples]


def as_dataset(examples):
    from datasets import Dataset

    return Dataset.from_dict({k: [e[k] for e in examples] for k in ("input_ids", "labels")})


def plain_trainer(tmp_path, model, examples, loss_func, accumulation=4):
    args = training_args(
        str(tmp_path), per_device_train_batch_size=len(examples) // accumulation, gradient_accumulation_steps=accumulation
    )
    return Trainer(
        model=model, args=args, train_dataset=as_dataset(examples), data_collator=causal_collate, compute_loss_func=loss_func
    )


def assert_params(model, ref):
    params = dict(model.named_parameters())
    for name, expected in ref.items():
        torch.testing.assert_close(params[name].detach(), expected, **TOL, msg=name)


def test_shift_comes_from_the_output_type():
    logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    loss_func = label_smoothing_loss_func(0.1)
    causal = loss_func(CausalLMOutput(logits=logits), labels)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(causal, ref)
    seq2seq = loss_func(Seq2SeqLMOutput(logits=logits), labels)
    torch.testing.assert_close(seq2seq, F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), label_smoothing=0.1))
    with pytest.raises(ValueError, match="cannot tell from a dict"):
        loss_func({"logits": logits}, labels)


@pytest.mark.parametrize("with_model", [True, False])
def test_llama_in_a_plain_trainer_is_exact_under_accumulation(tmp_path, with_model):
    """Llama's loss_type is ForCausalLM, so the Trainer counts labels[..., 1:]: with model= the count is trusted."""
    examples = causal_examples(16, seed=5) if with_model else masked_first(causal_examples(16, seed=5))
    base = family_model("llama", seed=2)
    ref, _, _ = sgd_reference("llama", base, examples, 0.1, 0.5)
    model = copy.deepcopy(base)
    loss_func = label_smoothing_loss_func(0.1, model=model) if with_model else label_smoothing_loss_func(0.1)
    train_or_refused(plain_trainer(tmp_path, model, examples, loss_func), model, ref, unmasked=with_model)


def test_gpt2_with_a_count_that_holds_unscored_labels_is_refused(tmp_path):
    """GPT-2's loss_type is None: the Trainer counts the first label of each unmasked row, which no logit scores."""
    model = family_model("gpt2", seed=2)
    trainer = plain_trainer(tmp_path, model, causal_examples(16, seed=5), label_smoothing_loss_func(0.1, model=model))
    with pytest.raises(ValueError, match=r"counts them for GPT2LMHeadModel.*LabelSmoothingTrainer"):
        trainer.train()
    unknown = plain_trainer(tmp_path, model, causal_examples(16, seed=5), label_smoothing_loss_func(0.1))
    with pytest.raises(ValueError, match="cannot tell whether the Trainer counted them"):
        unknown.train()


@pytest.mark.parametrize("fix", ["loss_type", "masked_prompts"])
def test_gpt2_in_a_plain_trainer_is_exact_once_the_counts_agree(tmp_path, fix):
    examples = causal_examples(16, seed=5)
    if fix == "masked_prompts":
        examples = masked_first(examples)
    base = family_model("gpt2", seed=2)
    ref, _, _ = sgd_reference("gpt2", base, examples, 0.1, 0.5)
    model = copy.deepcopy(base)
    if fix == "loss_type":
        model.loss_type = "ForCausalLM"  # what GPT-2's loss_function falls back to; the Trainer then counts right
    trainer = plain_trainer(tmp_path, model, examples, label_smoothing_loss_func(0.1, model=model))
    train_or_refused(trainer, model, ref, unmasked=fix == "loss_type")


def train_or_refused(trainer, model, ref, unmasked: bool) -> None:
    """Exact where transformers' Trainer counts the scored labels (5.x, loss_type ForCausalLM); transformers 4.x
    counts every label, and a batch with unmasked first labels must then be refused, never silently scaled."""
    from ls_seq.hf.model_io import model_io_of

    if unmasked and not model_io_of(model).trainer_counts_scored_labels:
        with pytest.raises(ValueError, match="counts them"):
            trainer.train()
        return
    trainer.train()
    assert_params(model, ref)


def test_labels_outside_the_vocabulary_are_named():
    logits = torch.randn(2, 4, VOCAB)
    labels = torch.full((2, 4), 3)
    labels[1, 2] = VOCAB
    with pytest.raises(RuntimeError, match=rf"`labels` must be in \[0, {VOCAB}\)"):
        label_smoothing_loss_func(0.1, shift_labels=False)(CausalLMOutput(logits=logits), labels)


def test_an_all_masked_batch_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(2, 4, VOCAB, requires_grad=True)
    labels = torch.full((2, 4), IGNORE)
    loss = label_smoothing_loss_func(0.1)(CausalLMOutput(logits=logits), labels, num_items_in_batch=torch.tensor(0))
    loss.backward()
    assert float(loss.detach()) == 0.0 and bool(torch.isfinite(logits.grad).all()) and float(logits.grad.abs().max()) == 0.0

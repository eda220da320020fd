"""LabelSmoothingSeq2SeqTrainer, its arguments, label_smoothing_loss_func and estimate_unigram_prior.

References: ``torch.nn.functional.cross_entropy(label_smoothing=...)`` on the model's own logits, a dense
smoothed-target cross-entropy written out here, and a hand-computed SGD step on the whole batch.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from _helpers.tiny import (
    IGNORE,
    LOG_TOL,
    VOCAB,
    collate,
    model_logits,
    tiny_causal_lm,
    tiny_dataset,
    tiny_examples,
    tiny_model,
    tiny_tokenizer,
    training_args,
)
from transformers import Seq2SeqTrainer

from ls_seq.hf.loss_func import label_smoothing_loss_func
from ls_seq.hf.trainer import LabelSmoothingSeq2SeqTrainer, LabelSmoothingSeq2SeqTrainingArguments
from ls_seq.prior import estimate_unigram_prior

ARGS = LabelSmoothingSeq2SeqTrainingArguments
TOL = dict(rtol=1e-5, atol=1e-6)


def dense_smoothed_ce(logits, labels, target_fn):
    """Mean over non-ignored tokens of -sum_k target_k log p_k, with the dense target built by ``target_fn(y)``."""
    z, y = logits.reshape(-1, logits.shape[-1]).double(), labels.reshape(-1)
    keep = y != IGNORE
    logp = torch.log_softmax(z[keep], dim=-1)
    return -(target_fn(y[keep]) * logp).sum(-1).mean()


def fairseq_target(y, eps):
    """fairseq's target: 1 - eps on the true class, eps / (V - 1) on every other class."""
    t = torch.full((y.numel(), VOCAB), eps / (VOCAB - 1), dtype=torch.float64)
    return t.scatter(1, y[:, None], 1 - eps)


@pytest.fixture
def batch():
    return collate(tiny_examples(6, seed=1))


def make_trainer(tmp_path, model, cls=LabelSmoothingSeq2SeqTrainer, args_cls=ARGS, train=None, **arg_overrides):
    args = training_args(str(tmp_path), cls=args_cls, **arg_overrides)
    return cls(model=model, args=args, train_dataset=train, data_collator=collate)


@pytest.mark.parametrize("kind", ["marian", "bart"])
@pytest.mark.parametrize("args_cls", [ARGS, pytest.param(None, id="plain-Seq2SeqTrainingArguments")])
def test_trainer_loss_equals_torch_label_smoothing(tmp_path, batch, kind, args_cls):
    model = tiny_model(kind).eval()
    trainer = make_trainer(tmp_path, model, args_cls=args_cls, label_smoothing_factor=0.1)
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        logits = model_logits(model, batch)
    ref = F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(loss, ref, **TOL)
    # With HF's count of the accumulated batch the micro-batch returns sum / N, not its own mean.
    n_tokens = int((batch["labels"] != IGNORE).sum())
    loss_n = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(3 * n_tokens))
    torch.testing.assert_close(loss_n, ref / 3, **TOL)
    assert "labels" in batch, "compute_loss must not pop from the caller's batch"


def test_causal_lm_loss_is_shifted(tmp_path, batch):
    model = tiny_causal_lm().eval()
    trainer = make_trainer(tmp_path, model, label_smoothing_factor=0.1)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE),
    }
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        own = model(**inputs).loss  # GPT-2's own (shifted) token-mean NLL
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), inputs["labels"][:, 1:].reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(trainer.compute_loss(model, dict(inputs)), ref, **TOL)
    unsmoothed = make_trainer(tmp_path, model, label_smoothing_factor=0.0)
    torch.testing.assert_close(unsmoothed.compute_loss(model, dict(inputs)), own, **TOL)


def test_fairseq_convention_and_unigram_prior_match_dense_targets(tmp_path, batch):
    model = tiny_model("marian").eval()
    with torch.no_grad():
        logits = model_logits(model, batch)
    alpha = 0.2

    fairseq = make_trainer(tmp_path, model, label_smoothing_factor=alpha, label_smoothing_convention="fairseq")
    torch.testing.assert_close(
        fairseq.compute_loss(model, dict(batch)).double(),
        dense_smoothed_ce(logits, batch["labels"], lambda y: fairseq_target(y, alpha)),
        **TOL,
    )

    train = tiny_dataset(20, seed=3)
    unigram = make_trainer(tmp_path, model, train=train, label_smoothing_factor=alpha, label_smoothing_prior="unigram")
    counts = Counter(t for row in train["labels"] for t in row)
    q = torch.tensor([counts.get(k, 0) + 1.0 for k in range(VOCAB)], dtype=torch.float64)
    q /= q.sum()
    torch.testing.assert_close(unigram.loss_fn.prior, q)

    def unigram_target(y):
        return (1 - alpha) * F.one_hot(y, VOCAB).double() + alpha * q

    torch.testing.assert_close(
        unigram.compute_loss(model, dict(batch)).double(), dense_smoothed_ce(logits, batch["labels"], unigram_target), **TOL
    )


def test_generate_evaluation_loss_uses_ls_seq_loss(tmp_path):
    """predict_with_generate computes eval_loss with `label_smoother`: it must be ls-seq's (here fairseq's) loss."""
    model = tiny_model("marian").eval()
    val = tiny_dataset(4, seed=8)
    args = training_args(
        str(tmp_path),
        cls=ARGS,
        label_smoothing_factor=0.2,
        label_smoothing_convention="fairseq",
        predict_with_generate=True,
        generation_max_length=6,
        per_device_eval_batch_size=4,
    )
    trainer = LabelSmoothingSeq2SeqTrainer(model=model, args=args, eval_dataset=val, data_collator=collate)
    batch = collate(list(val))
    with torch.no_grad():
        logits = model_logits(model, batch)
    expected = dense_smoothed_ce(logits, batch["labels"], lambda y: fairseq_target(y, 0.2))
    assert trainer.evaluate()["eval_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_prior_from_file_or_tensor(tmp_path):
    from ls_seq.io import atomic_write_json

    q = torch.softmax(torch.randn(VOCAB, dtype=torch.float64), dim=0)
    atomic_write_json(tmp_path / "prior.json", q.tolist())
    model = tiny_model("marian")
    from_file = make_trainer(tmp_path, model, label_smoothing_factor=0.1, label_smoothing_prior=str(tmp_path / "prior.json"))
    torch.testing.assert_close(from_file.loss_fn.prior, q)
    from_tensor = LabelSmoothingSeq2SeqTrainer(model=model, args=training_args(str(tmp_path), cls=ARGS), prior=q)
    torch.testing.assert_close(from_tensor.loss_fn.prior, q)
    with pytest.raises(ValueError, match="not both"):
        LabelSmoothingSeq2SeqTrainer(
            model=model, prior=q, args=training_args(str(tmp_path), cls=ARGS, label_smoothing_prior=str(tmp_path / "prior.json"))
        )
    with pytest.raises(ValueError, match="shape"):
        LabelSmoothingSeq2SeqTrainer(model=model, args=training_args(str(tmp_path), cls=ARGS), prior=q[:-1] / q[:-1].sum())


def test_confidence_penalty_adds_minus_beta_entropy(tmp_path, batch):
    model = tiny_model("marian").eval()
    trainer = make_trainer(tmp_path, model, label_smoothing_factor=0.1, confidence_penalty=0.5)
    with torch.no_grad():
        logits = model_logits(model, batch)
    z, y = logits.reshape(-1, VOCAB).double(), batch["labels"].reshape(-1)
    keep = y != IGNORE
    logp = torch.log_softmax(z[keep], -1)
    ls = F.cross_entropy(z[keep], y[keep], label_smoothing=0.1)
    entropy = -(logp.exp() * logp).sum(-1).mean()
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)).double(), ls - 0.5 * entropy, **TOL)


def sgd_reference(model, examples, alpha, lr):
    """Parameters after one SGD step on the token-mean smoothed loss of all examples at once."""
    ref = copy.deepcopy(model).train()
    full = collate(examples)
    logits = model_logits(ref, full)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), full["labels"].reshape(-1), label_smoothing=alpha)
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), full["labels"].reshape(-1))
    loss.backward()
    with torch.no_grad():
        params = {n: p - lr * p.grad for n, p in ref.named_parameters() if p.grad is not None}
    return params, loss.item(), nll.item()


def one_step(tmp_path, model, train, **overrides):
    trainer = make_trainer(tmp_path, model, train=train, **overrides)
    trainer.train()
    return dict(model.named_parameters()), trainer.state.log_history[0]


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """Batch 16 == 4 x 4 accumulation == a hand-made SGD step, with padded sequences of different lengths."""
    train = tiny_dataset(16, seed=5)
    base = tiny_model("marian", seed=2)
    ref, ref_loss, ref_nll = sgd_reference(base, tiny_examples(16, seed=5), 0.1, 0.5)
    big, log_big = one_step(
        tmp_path / "a", copy.deepcopy(base), train, per_device_train_batch_size=16, label_smoothing_factor=0.1
    )
    acc, log_acc = one_step(
        tmp_path / "b",
        copy.deepcopy(base),
        train,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        label_smoothing_factor=0.1,
    )
    for name, p_ref in ref.items():
        torch.testing.assert_close(big[name], p_ref, rtol=1e-5, atol=1e-6, msg=f"batch 16: {name}")
        torch.testing.assert_close(acc[name], p_ref, rtol=1e-5, atol=1e-6, msg=f"4 x 4 accumulation: {name}")
    for log in (log_big, log_acc):  # logged loss and nll_loss are token-weighted means of the whole batch
        assert log["loss"] == pytest.approx(ref_loss, **LOG_TOL)
        assert log["nll_loss"] == pytest.approx(ref_nll, **LOG_TOL)


def test_hf_seq2seq_collator_path_is_exact_under_accumulation(tmp_path):
    """The documented few-lines setup: DataCollatorForSeq2Seq builds decoder_input_ids, the trainer uses them."""
    from transformers import DataCollatorForSeq2Seq

    train = tiny_dataset(16, seed=5)
    base = tiny_model("marian", seed=2)
    ref, _, _ = sgd_reference(base, tiny_examples(16, seed=5), 0.1, 0.5)
    model = copy.deepcopy(base)
    tok = tiny_tokenizer()
    trainer = LabelSmoothingSeq2SeqTrainer(
        model=model,
        args=training_args(str(tmp_path), cls=ARGS, label_smoothing_factor=0.1, gradient_accumulation_steps=4),
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tok, model=model),
        processing_class=tok,
    )
    trainer.train()
    params = dict(model.named_parameters())
    for name, p_ref in ref.items():
        torch.testing.assert_close(params[name], p_ref, rtol=1e-5, atol=1e-6, msg=name)


def test_compute_loss_func_for_plain_trainer_is_exact_under_accumulation(tmp_path):
    from transformers import DataCollatorForSeq2Seq

    train = tiny_dataset(16, seed=5)
    base = tiny_model("marian", seed=2)
    ref, _, _ = sgd_reference(base, tiny_examples(16, seed=5), 0.1, 0.5)
    model = copy.deepcopy(base)
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args(str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=4),
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tiny_tokenizer(), model=model),
        compute_loss_func=label_smoothing_loss_func(0.1),
    )
    trainer.train()
    params = dict(model.named_parameters())
    for name, p_ref in ref.items():
        torch.testing.assert_close(params[name], p_ref, rtol=1e-5, atol=1e-6, msg=name)


def test_plain_mean_loss_is_not_exact_so_the_accumulation_test_can_fail(tmp_path):
    """Control: Marian's own per-micro-batch mean loss breaks the equality the tests above check."""
    train = tiny_dataset(16, seed=5)
    base = tiny_model("marian", seed=2)
    ref, _, _ = sgd_reference(base, tiny_examples(16, seed=5), 0.0, 0.5)
    model = copy.deepcopy(base)
    trainer = Seq2SeqTrainer(
        model=model, args=training_args(str(tmp_path), gradient_accumulation_steps=4), train_dataset=train, data_collator=collate
    )
    trainer.train()
    diff = max(float((p.detach() - ref[n]).abs().max()) for n, p in model.named_parameters() if n in ref)
    assert diff > 1e-4


def test_loss_func_matches_cross_entropy_and_shifts_for_causal_lms():
    logits, labels = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    labels[0, 3:] = IGNORE
    loss = label_smoothing_loss_func(0.1, shift_labels=False)({"logits": logits}, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), label_smoothing=0.1))
    labels[:, 0] = IGNORE  # a masked first label (a prompt token): every count agrees, so num_items_in_batch is trusted
    shifted = label_smoothing_loss_func(0.1, shift_labels=True)({"logits": logits}, labels, num_items_in_batch=20)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(shifted, ref / 20)


def test_estimate_unigram_prior_matches_counts_for_every_input_form():
    examples = tiny_examples(30, seed=7)
    counts = Counter(t for e in examples for t in e["labels"])
    ref = torch.tensor([counts.get(k, 0) + 0.5 for k in range(VOCAB)], dtype=torch.float64)
    ref /= ref.sum()
    padded = [e["labels"] + [IGNORE] * 3 for e in examples]
    for data in (examples, padded, [torch.tensor(p) for p in padded], tiny_dataset(30, seed=7)):
        torch.testing.assert_close(estimate_unigram_prior(data, VOCAB, smoothing=0.5), ref)
    assert float(estimate_unigram_prior(examples, VOCAB).min()) > 0  # smoothing: no zero mass
    with pytest.raises(ValueError, match="vocab_size"):
        estimate_unigram_prior([[VOCAB]], VOCAB)


@pytest.mark.parametrize("kind", ["marian", "bart"])
def test_fused_linear_loss_matches_unfused_loss_and_gradients(tmp_path, batch, kind):
    pytest.importorskip("ls_seq.functional.fused")
    losses, grads = [], []
    for fused in (False, True):
        model = tiny_model(kind, seed=4).train()
        trainer = make_trainer(tmp_path, model, label_smoothing_factor=0.1, fused_linear_loss=fused, fused_chunk_size=7)
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(50))
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], **TOL)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_bad_arguments_raise_clear_errors(tmp_path):
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="label_smoothing_factor"):
            training_args(str(tmp_path), cls=ARGS, label_smoothing_factor=bad)
    model = tiny_model("marian")
    with pytest.raises(ValueError, match="label_smoothing_factor"):  # plain HF arguments accept it; we do not
        make_trainer(tmp_path, model, args_cls=None, label_smoothing_factor=1.0)
    with pytest.raises(ValueError, match="label_smoothing_convention"):
        training_args(str(tmp_path), cls=ARGS, label_smoothing_convention="torch")
    with pytest.raises(ValueError, match="label_smoothing_prior"):
        training_args(str(tmp_path), cls=ARGS, label_smoothing_prior="zipf")
    with pytest.raises(ValueError, match="convention='uniform'"):
        training_args(str(tmp_path), cls=ARGS, label_smoothing_prior="unigram", label_smoothing_convention="fairseq")
    with pytest.raises(ValueError, match="train_dataset"):
        make_trainer(tmp_path, model, label_smoothing_prior="unigram")
    with pytest.raises(ValueError, match="compute_loss_func"):
        LabelSmoothingSeq2SeqTrainer(
            model=model, args=training_args(str(tmp_path), cls=ARGS), compute_loss_func=label_smoothing_loss_func(0.1)
        )
    with pytest.raises(ValueError, match="logits"):
        label_smoothing_loss_func(0.1, shift_labels=False)({"loss": torch.tensor(1.0)}, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha"):
        label_smoothing_loss_func(1.0)


def test_model_output_without_logits_is_reported(tmp_path, batch):
    class NoLogits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, labels=None, **kwargs):
            return {"last_hidden_state": self.inner.model(**kwargs)[0]}

        def prepare_decoder_input_ids_from_labels(self, labels):
            return self.inner.prepare_decoder_input_ids_from_labels(labels=labels)

    model = tiny_model("marian")
    trainer = make_trainer(tmp_path, model, label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="no `logits`"):
        trainer.compute_loss(NoLogits(model), dict(batch))


def test_nll_loss_is_averaged_like_loss_over_several_steps(tmp_path):
    """With alpha = 0 the smoothed loss is the NLL, so the logged loss and nll_loss must agree at every log,
    also when batches of very different lengths are averaged over several steps with accumulation."""
    model = tiny_model("marian", seed=4)
    args = training_args(
        str(tmp_path),
        cls=ARGS,
        max_steps=6,
        logging_steps=3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=0.1,
        label_smoothing_factor=0.0,
    )
    trainer = LabelSmoothingSeq2SeqTrainer(model=model, args=args, train_dataset=tiny_dataset(24, seed=8), data_collator=collate)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "nll_loss" in h]
    assert len(logs) == 2
    for log in logs:
        assert log["nll_loss"] == pytest.approx(log["loss"], rel=1e-5)


# ---- bad input and faults on the trainers' hot path ----------------------------------------------------------


def causal_trainer(tmp_path, model=None, **overrides):
    from _helpers.families import family_collate, family_dataset, family_model

    from ls_seq.hf.trainer import LabelSmoothingTrainer, LabelSmoothingTrainingArguments

    args = training_args(str(tmp_path), cls=LabelSmoothingTrainingArguments, label_smoothing_factor=0.1, **overrides)
    model = family_model("gpt2", seed=2) if model is None else model
    return LabelSmoothingTrainer(
        model=model, args=args, train_dataset=family_dataset("gpt2", 8, seed=5), data_collator=family_collate("gpt2")
    )


def causal_batch(n=4):
    from _helpers.families import causal_collate, causal_examples

    return causal_collate(causal_examples(n, seed=1))


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_an_all_masked_batch_gives_zero_loss_and_zero_gradient(tmp_path, fused):
    trainer = causal_trainer(tmp_path, fused_linear_loss=fused)
    model = trainer.model.train()
    batch = causal_batch()
    batch["labels"].fill_(IGNORE)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(0))
    loss.backward()
    assert float(loss.detach()) == 0.0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) and float(g.abs().max()) == 0.0 for g in grads)


def test_labels_outside_the_vocabulary_and_missing_labels_are_named(tmp_path):
    trainer = causal_trainer(tmp_path)
    batch = causal_batch()
    batch["labels"][0, -1] = VOCAB
    with pytest.raises(RuntimeError, match=rf"`labels` must be in \[0, {VOCAB}\)"):
        trainer.compute_loss(trainer.model, batch)
    with pytest.raises(ValueError, match=r"needs `labels` \(TrainingArguments.label_names\)"):
        trainer.compute_loss(trainer.model, {k: v for k, v in batch.items() if k != "labels"})


def test_a_model_without_an_output_layer_cannot_be_fused(tmp_path):
    from _helpers.families import family_model

    model = family_model("gpt2")
    model.get_output_embeddings = lambda: None
    with pytest.raises(ValueError, match="has no output layer"):
        causal_trainer(tmp_path, model=model, fused_linear_loss=True)


def test_a_non_finite_loss_stops_training_naming_the_step(tmp_path):
    from _helpers.families import family_model

    from ls_seq.errors import NonFiniteLossError

    model = family_model("gpt2", seed=2)
    calls = []

    def poison(module, args, output):  # the third forward (step 3) makes NaN logits
        calls.append(1)
        return output * float("nan") if len(calls) == 3 else output

    model.get_output_embeddings().register_forward_hook(poison)
    trainer = causal_trainer(tmp_path, model=model, max_steps=5, per_device_train_batch_size=2)
    with pytest.raises(NonFiniteLossError, match="at step 3") as err:
        trainer.train()
    assert err.value.step == 3
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters()), "the NaN step must not be applied"

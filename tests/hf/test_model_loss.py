"""ls-seq replaces the token cross-entropy and nothing else the model computes (ls_seq.hf.model_loss).

References are written here with torch alone: ``F.cross_entropy(label_smoothing=alpha)`` on logits aligned by
hand (a causal LM's ``logits[:, :-1]`` against ``labels[:, 1:]``), plus ``router_aux_loss_coef * aux_loss`` as
the model's output reports it. Tolerances: rtol 1e-5 / atol 1e-6 on losses, 1e-4 / 1e-6 on gradients.

Every test of a mixture-of-experts model here failed before ls-seq put its token loss into the model's own
loss (the router term was dropped: 4.786 against the model's 5.789 on a tiny Mixtral at alpha 0).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _helpers.families import MOE, causal_collate, family_examples, tiny_gemma2, tiny_llama, tiny_moe
from _helpers.tiny import IGNORE, training_args

from ls_seq import label_smoothing_loss_func, use_label_smoothing
from ls_seq.hf.trainer import LabelSmoothingTrainer, LabelSmoothingTrainingArguments

LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)


def batch(n=4, seed=1):
    return causal_collate(family_examples("gpt2", n, seed=seed))


def reference(model, inputs, alpha):
    """The model's own loss with its token cross-entropy smoothed, and its gradients (torch only)."""
    model.zero_grad()
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    loss = F.cross_entropy(logits, inputs["labels"][:, 1:].reshape(-1), label_smoothing=alpha, ignore_index=IGNORE)
    if getattr(out, "aux_loss", None) is not None:
        loss = loss + model.router_aux_loss_coef * out.aux_loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def ls_loss(model, inputs, tmp_path, alpha, **args):
    model.zero_grad()
    trainer = LabelSmoothingTrainer(
        model=model, args=training_args(str(tmp_path), cls=LabelSmoothingTrainingArguments, label_smoothing_factor=alpha, **args)
    )
    loss = trainer.compute_loss(model, dict(inputs))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(got, expected):
    (loss, grads), (ref_loss, ref_grads) = got, expected
    torch.testing.assert_close(loss, ref_loss, **LOSS_TOL)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **GRAD_TOL, msg=name)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("alpha", [0.0, 0.1])
@pytest.mark.parametrize("kind", MOE)
def test_moe_models_keep_their_router_loss(tmp_path, kind, alpha, fused):
    model = tiny_moe(kind).train()
    inputs = batch()
    expected = reference(model, inputs, alpha)
    if alpha == 0.0:  # the reference is the model's own loss, every term
        own = model(**inputs).loss
        torch.testing.assert_close(own.detach(), expected[0], **LOSS_TOL)
    assert_same(ls_loss(model, inputs, tmp_path, alpha, fused_linear_loss=fused, fused_chunk_size=5), expected)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_moe_through_compute_loss_func_and_as_the_models_loss_function(tmp_path, alpha):
    """R3: Trainer(compute_loss_func=...) withholds the labels, so ls-seq adds the router term the model reports;
    R2: use_label_smoothing (model.loss_function) lets the model add it itself."""
    from transformers import Trainer

    model = tiny_moe("mixtral").train()
    inputs = batch()
    expected = reference(model, inputs, alpha)
    args = training_args(str(tmp_path), label_smoothing_factor=0.0)
    for route in ("compute_loss_func", "loss_function"):
        model.zero_grad()
        if route == "loss_function":
            use_label_smoothing(model, alpha)
            trainer = Trainer(model=model, args=args)
        else:
            trainer = Trainer(model=model, args=args, compute_loss_func=label_smoothing_loss_func(alpha, model=model))
        loss = trainer.compute_loss(model, dict(inputs))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert_same((loss.detach(), grads), expected)
        model.__dict__.pop("_loss_function", None)


def test_compute_loss_func_refuses_an_aux_loss_it_cannot_weigh():
    from transformers.modeling_outputs import MoeCausalLMOutputWithPast

    out = MoeCausalLMOutputWithPast(logits=torch.randn(1, 3, 5), aux_loss=torch.tensor(1.0))
    with pytest.raises(ValueError, match="model=model"):
        label_smoothing_loss_func(0.1, shift_labels=True)(out, torch.tensor([[1, 2, 3]]))


def test_a_plain_trainer_and_ls_seq_at_alpha_0_train_an_moe_model_alike(tmp_path):
    """Swapping Trainer for LabelSmoothingTrainer changes nothing at alpha 0: two SGD steps with 2 accumulation
    steps each give the same parameters (the router term included, accumulated as transformers does)."""
    from datasets import Dataset
    from transformers import Trainer

    from ls_seq.hf.model_io import model_io_of

    if not model_io_of(tiny_moe("mixtral")).trainer_counts_scored_labels:
        pytest.skip("transformers 4.x's own Trainer counts the unscored first labels: it is not the reference there")
    ex = family_examples("gpt2", 16, seed=5)
    data = Dataset.from_dict({"input_ids": [e["input_ids"] for e in ex], "labels": [e["labels"] for e in ex]})
    base = tiny_moe("mixtral")
    params = {}
    for name, cls, args_cls in (("hf", Trainer, None), ("ls", LabelSmoothingTrainer, LabelSmoothingTrainingArguments)):
        model = copy.deepcopy(base)
        args = training_args(
            str(tmp_path / name), cls=args_cls, max_steps=2, gradient_accumulation_steps=2, per_device_train_batch_size=4
        )
        cls(model=model, args=args, train_dataset=data, data_collator=causal_collate).train()
        params[name] = dict(model.named_parameters())
    for n, p in params["hf"].items():
        torch.testing.assert_close(params["ls"][n], p, **LOSS_TOL, msg=n)


@pytest.mark.parametrize("softcap", [5.0, 30.0])
def test_fused_soft_capped_gemma2_equals_unfused_once_logits_outgrow_the_cap(tmp_path, softcap):
    """Gemma 2 soft-caps after lm_head; with the head grown 50x the logits pass the cap (a tolerance check on
    small initial logits would have passed, then been wrong). Fused was refused before."""
    model = tiny_gemma2(softcap=softcap, head_scale=50.0).train()
    inputs = batch()
    expected = reference(model, inputs, 0.1)
    assert_same(ls_loss(model, inputs, tmp_path, 0.1), expected)
    assert_same(ls_loss(model, inputs, tmp_path, 0.1, fused_linear_loss=True, fused_chunk_size=7), expected)


@pytest.mark.parametrize("transform", ["double", "cohere", "clamp", "add"])
def test_fused_reads_the_logit_transform_from_the_graph(tmp_path, transform):
    """Whatever acts on the output layer's result is read from autograd: a known scale is applied by the
    kernel; anything else is refused, named, before a step is taken."""
    model = tiny_llama(seed=2).train()
    head = model.get_output_embeddings()
    op = {
        "double": lambda out: out * 2.0,
        "cohere": lambda out: out * 0.0625,
        "clamp": lambda out: out.clamp(-1, 1),
        "add": lambda out: out + torch.ones(out.shape[-1]),
    }[transform]
    head.register_forward_hook(lambda module, args, out: op(out))
    inputs = batch()
    expected = reference(model, inputs, 0.1)
    if transform in ("double", "cohere"):
        assert_same(ls_loss(model, inputs, tmp_path, 0.1, fused_linear_loss=True), expected)
    else:
        with pytest.raises(ValueError, match="Clamp" if transform == "clamp" else "adds a tensor"):
            ls_loss(model, inputs, tmp_path, 0.1, fused_linear_loss=True)


def test_fused_refuses_a_model_whose_loss_uses_its_logits(tmp_path):
    """A model that adds a z-loss of its own from its logits: the fused path never builds them."""
    from transformers import LlamaForCausalLM

    class ZLossLlama(LlamaForCausalLM):
        def forward(self, labels=None, **kwargs):
            out = super().forward(labels=labels, **kwargs)
            if labels is not None:
                out["loss"] = out["loss"] + 1e-3 * out["logits"].logsumexp(-1).pow(2).sum()
            return out

    model = ZLossLlama(tiny_llama().config).train()
    inputs = batch()
    model.zero_grad()
    own = model(**inputs)["loss"]
    # Unfused, the model's own term is kept: at alpha 0 ls-seq is the model's own loss.
    loss, _ = ls_loss(model, inputs, tmp_path, 0.0)
    torch.testing.assert_close(loss, own.detach(), **LOSS_TOL)
    with pytest.raises(ValueError, match="adds a term computed from its logits"):
        ls_loss(model, inputs, tmp_path, 0.0, fused_linear_loss=True)


def test_fused_under_bf16_autocast_matches_unfused(tmp_path):
    """Mixed precision: the fused loss runs (it was refused: 'transforms them further') and agrees with the
    unfused bf16 step within bf16 tolerance (2e-2 relative on the loss, on the gradients' norm)."""
    model = tiny_llama(seed=2).train()
    inputs = batch()
    results = []
    for fused in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(ls_loss(model, inputs, tmp_path, 0.1, fused_linear_loss=fused))
    (loss_u, grads_u), (loss_f, grads_f) = results
    torch.testing.assert_close(loss_f, loss_u, rtol=2e-2, atol=1e-3)
    for name in grads_u:
        diff = (grads_f[name].float() - grads_u[name].float()).norm() / grads_u[name].float().norm().clamp_min(1e-6)
        assert diff < 5e-2, f"{name}: relative gradient difference {float(diff):.3g}"


def test_fused_with_bf16_weights_matches_unfused(tmp_path):
    """A model held in bfloat16 (no autocast): the fused matmuls run in bf16, as the head would (no float32 copy
    of W), and agree with the unfused bf16 step within bf16 tolerance."""
    model = tiny_gemma2(softcap=5.0, head_scale=50.0).to(torch.bfloat16).train()
    inputs = batch()
    (loss_u, grads_u), (loss_f, grads_f) = (ls_loss(model, inputs, tmp_path, 0.1, fused_linear_loss=f) for f in (False, True))
    torch.testing.assert_close(loss_f, loss_u, rtol=2e-2, atol=1e-3)
    for name in grads_u:
        diff = (grads_f[name].float() - grads_u[name].float()).norm() / grads_u[name].float().norm().clamp_min(1e-6)
        assert diff < 5e-2, f"{name}: relative gradient difference {float(diff):.3g}"


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_z_loss_adds_the_mean_squared_log_partition(tmp_path, fused):
    """z_loss * logsumexp(z)^2 per scored token (PaLM, OLMo), on the soft-capped logits the loss sees."""
    model = tiny_gemma2(softcap=5.0, head_scale=50.0).train()
    inputs = batch()
    model.zero_grad()
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    logits, labels = out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), inputs["labels"][:, 1:].reshape(-1)
    keep = labels != IGNORE
    ref = F.cross_entropy(logits, labels, label_smoothing=0.1, ignore_index=IGNORE)
    ref = ref + 1e-2 * logits[keep].logsumexp(-1).pow(2).mean()
    ref.backward()
    expected = ref.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_same(ls_loss(model, inputs, tmp_path, 0.1, z_loss=1e-2, fused_linear_loss=fused), expected)


def test_use_label_smoothing_refuses_a_model_that_would_ignore_it():
    """BART builds its own CrossEntropyLoss: model.loss_function would be set and silently never called."""
    from _helpers.families import family_model

    with pytest.raises(ValueError, match="never calls self.loss_function"):
        use_label_smoothing(family_model("bart"), 0.1)


def test_a_custom_forward_that_computes_its_own_loss_keeps_its_terms(tmp_path):
    """A subclass that overrides forward, never calls self.loss_function and adds a term of its own: ls-seq
    keeps `its loss - the plain cross-entropy of its logits` (a constant 0.5 here) beside the smoothed term."""
    from transformers import LlamaForCausalLM

    class OwnLossLlama(LlamaForCausalLM):
        def forward(self, labels=None, **kwargs):
            out = super().forward(**kwargs)
            if labels is not None:
                logits = out["logits"][:, :-1].flatten(0, 1)
                out["loss"] = F.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=IGNORE) + 0.5
            return out

    model = OwnLossLlama(tiny_llama().config).train()
    inputs = batch()
    expected_loss, expected_grads = reference(model, inputs, 0.1)
    assert_same(ls_loss(model, inputs, tmp_path, 0.1), (expected_loss + 0.5, expected_grads))

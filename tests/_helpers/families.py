"""Tiny models of the families users train (GPT-2, Llama, BART, Marian, T5), built from configs in code, and
causal-LM data with masked prompts; shared by in-process tests and the torchrun scripts beside this file.

Imported as ``_helpers.families``: pytest puts ``tests/`` on the path (``pythonpath``), the torchrun
launcher in ``test_two_processes.py`` sets ``PYTHONPATH`` to it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from _helpers.tiny import (
    EOS,
    IGNORE,
    PAD,
    TEMPERATURES,
    VOCAB,
    collate,
    model_logits,
    tiny_causal_lm,
    tiny_dataset,
    tiny_examples,
    tiny_model,
    training_args,
)

CAUSAL = ("gpt2", "llama")
SEQ2SEQ = ("bart", "marian", "t5")
FAMILIES = CAUSAL + SEQ2SEQ
# Causal LMs of the distributed checks only: a mixture of experts (router loss) and a soft-capped head.
CAUSAL_EXTRA = ("mixtral", "gemma2")


def is_causal(family: str) -> bool:
    return family in CAUSAL or family in CAUSAL_EXTRA


def tiny_llama(seed: int = 0, vocab: int = VOCAB, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=EOS,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def tiny_t5(seed: int = 0):
    """T5 with tied embeddings: it rescales the decoder output by d_model ** -0.5 before lm_head."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
        tie_word_embeddings=True,
    )
    return T5ForConditionalGeneration(config)


def family_model(family: str, seed: int = 0):
    """A randomly initialised tiny model of ``family`` (no dropout, so two runs are bit-comparable)."""
    if family == "gpt2":
        return tiny_causal_lm(seed)
    if family == "llama":
        return tiny_llama(seed)
    if family == "t5":
        return tiny_t5(seed)
    if family == "mixtral":
        return tiny_moe("mixtral", seed)
    if family == "gemma2":
        return tiny_gemma2(seed, softcap=5.0, head_scale=50.0)
    return tiny_model(family, seed=seed)


def causal_examples(n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """``n`` causal-LM rows of varied length; every other row has its prompt masked to -100 (SFT-style), the
    others are plain LM rows whose first label is a token (which a causal LM never scores)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 11, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist() + [EOS]
        prompt = int(torch.randint(1, length, (1,), generator=g)) if i % 2 == 0 else 0
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


def causal_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` with PAD and ``labels`` with -100; the attention mask marks the real tokens."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.tensor([f["input_ids"] + [PAD] * (width - len(f["input_ids"])) for f in features])
    labels = torch.tensor([f["labels"] + [IGNORE] * (width - len(f["labels"])) for f in features])
    mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def family_examples(family: str, n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    return causal_examples(n, seed) if is_causal(family) else tiny_examples(n, seed)


def family_collate(family: str):
    return causal_collate if is_causal(family) else collate


def family_dataset(family: str, n: int, seed: int = 0):
    from datasets import Dataset

    ex = family_examples(family, n, seed)
    return Dataset.from_dict({"input_ids": [e["input_ids"] for e in ex], "labels": [e["labels"] for e in ex]})


def scored_logits_labels(family: str, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference alignment, written out here independently of ls-seq: ``(logits (N, V), labels (N,))``."""
    if is_causal(family):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
    logits = model_logits(model, batch)
    return logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1)


def sgd_reference(family: str, model, examples, alpha: float, lr: float) -> tuple[dict[str, torch.Tensor], float, float]:
    """Parameters after one SGD step on the token-mean smoothed loss of all ``examples`` at once, and the loss
    and NLL of that batch: ``F.cross_entropy(label_smoothing=alpha)`` over every scored token."""
    ref = copy.deepcopy(model).train()
    logits, labels = scored_logits_labels(family, ref, family_collate(family)(examples))
    loss = F.cross_entropy(logits, labels, label_smoothing=alpha, ignore_index=IGNORE)
    nll = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    loss.backward()
    with torch.no_grad():
        params = {n: p - lr * p.grad for n, p in ref.named_parameters() if p.grad is not None}
    return params, loss.item(), nll.item()


def calibration_routes(out_dir, plot: bool = True) -> dict[str, dict[str, float]]:
    """13 evaluation examples (seed 11) through the three calibration routes, each given the HF way (no attach):
    a CalibrationCallback in ls-seq's trainer (in-loop, GPT-2), in a plain Seq2SeqTrainer (its own pass,
    Marian), and CalibrationComputeMetrics in a plain Trainer's loop (GPT-2). Returns each route's ``evaluate()``."""
    from pathlib import Path

    from transformers import Seq2SeqTrainer, Trainer

    from ls_seq.hf.callbacks import CalibrationCallback
    from ls_seq.hf.compute_metrics import CalibrationComputeMetrics
    from ls_seq.hf.trainer import LabelSmoothingTrainer, LabelSmoothingTrainingArguments

    out_dir = Path(out_dir)
    out = {}
    args = training_args(
        str(out_dir / "in_loop"), cls=LabelSmoothingTrainingArguments, per_device_eval_batch_size=4, label_smoothing_factor=0.1
    )
    out["in_loop"] = LabelSmoothingTrainer(
        model=family_model("gpt2", seed=3),
        args=args,
        eval_dataset=family_dataset("gpt2", 13, seed=11),
        data_collator=causal_collate,
        callbacks=[CalibrationCallback(n_bins=10, temperatures=TEMPERATURES, plot=False)],
    ).evaluate()
    out["callback"] = Seq2SeqTrainer(
        model=tiny_model("marian", seed=3, scale=4.0),
        args=training_args(str(out_dir / "calib"), per_device_eval_batch_size=4),
        eval_dataset=tiny_dataset(13, seed=11),
        data_collator=collate,
        callbacks=[CalibrationCallback(n_bins=10, temperatures=TEMPERATURES, plot=plot)],
    ).evaluate()
    model = family_model("gpt2", seed=3)
    pair = CalibrationComputeMetrics(n_bins=10, temperatures=TEMPERATURES, model=model)
    out["metrics_pair"] = Trainer(
        model=model,
        args=training_args(str(out_dir / "pair"), per_device_eval_batch_size=4, batch_eval_metrics=True),
        eval_dataset=family_dataset("gpt2", 13, seed=11),
        data_collator=causal_collate,
        **pair.trainer_kwargs(),
    ).evaluate()
    return out


# ---- models whose loss is more than the token cross-entropy, or whose logits are transformed ----------------
MOE = ("mixtral", "qwen2_moe", "olmoe")


def tiny_moe(kind: str = "mixtral", seed: int = 0, coef: float = 0.5):
    """A 2-layer mixture-of-experts causal LM (4 experts, top 2) that adds ``coef * aux_loss`` to its loss."""
    import transformers

    config_cls, model_cls = {
        "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
        "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
        "olmoe": ("OlmoeConfig", "OlmoeForCausalLM"),
    }[kind]
    sizes = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        num_experts_per_tok=2,
        output_router_logits=True,
        router_aux_loss_coef=coef,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=EOS,
    )
    if kind == "mixtral":
        sizes["num_local_experts"] = 4
    else:
        sizes |= {"num_experts": 4, "moe_intermediate_size": 16}
    if kind == "qwen2_moe":
        sizes |= {"shared_expert_intermediate_size": 16}
    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**sizes))


def tiny_gemma2(seed: int = 0, softcap: float = 30.0, head_scale: float = 1.0):
    """A 1-layer Gemma 2, which soft-caps its logits (``softcap * tanh(z / softcap)``) after lm_head;
    ``head_scale`` grows the output layer so that the cap matters (logits far above it)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            final_logit_softcapping=softcap,
            pad_token_id=PAD,
            eos_token_id=EOS,
            bos_token_id=EOS,
            tie_word_embeddings=False,
        )
    )
    if head_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(head_scale)
    return model

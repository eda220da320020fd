"""Tiny seq2seq models and data built in code (no downloads), shared by in-process and torchrun tests.

Imported as ``_helpers.tiny`` from ``tests/`` and as ``tiny`` from the torchrun scripts beside it.
"""

from __future__ import annotations

from typing import Any

import torch

VOCAB = 96
PAD, EOS = 0, 1
IGNORE = -100


def tiny_config(kind: str = "marian", vocab: int = VOCAB):
    """A 1+1-layer encoder-decoder with d_model 16 and no dropout (so two runs are bit-comparable)."""
    from transformers import BartConfig, MarianConfig

    common = dict(
        vocab_size=vocab,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD if kind == "marian" else 2,
        forced_eos_token_id=None,
    )
    if kind == "marian":
        return MarianConfig(decoder_vocab_size=vocab, **common)
    if kind == "bart":
        return BartConfig(bos_token_id=2, **common)
    raise ValueError(f"kind must be 'marian' or 'bart', got {kind!r}")


def tiny_model(kind: str = "marian", seed: int = 0, scale: float = 1.0):
    """Randomly initialised tiny model; ``scale`` > 1 multiplies the output layer (peaky, non-flat predictions)."""
    from transformers import BartForConditionalGeneration, MarianMTModel

    torch.manual_seed(seed)
    cls = MarianMTModel if kind == "marian" else BartForConditionalGeneration
    model = cls(tiny_config(kind))
    if kind == "bart":  # a non-zero final_logits_bias exercises the bias path
        model.final_logits_bias.copy_(0.3 * torch.randn_like(model.final_logits_bias))
    if scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(scale)
    return model


def tiny_causal_lm(seed: int = 0):
    """A 1-layer GPT-2 with d_model 16: decoder-only, its logits at t predict the label at t + 1."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=EOS,
    )
    return GPT2LMHeadModel(config)


def tiny_examples(n: int, seed: int = 0, min_len: int = 2, max_len: int = 9) -> list[dict[str, list[int]]]:
    """``n`` (input_ids, labels) pairs of varied lengths; the target is a fixed function of the source."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        src = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        tgt = [(3 * t + 7) % (VOCAB - 3) + 3 for t in reversed(src)][: max(1, length - 1)]
        out.append({"input_ids": src + [EOS], "labels": tgt + [EOS]})
    return out


def tiny_dataset(n: int, seed: int = 0):
    from datasets import Dataset

    ex = tiny_examples(n, seed)
    return Dataset.from_dict({"input_ids": [e["input_ids"] for e in ex], "labels": [e["labels"] for e in ex]})


def tiny_tokenizer():
    """A word-level fast tokenizer over the tiny vocabulary ("t3" ... "t95"), for HF's own collators."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "</s>": EOS, "<unk>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad inputs with PAD and labels with -100; no decoder_input_ids (the trainer builds them)."""

    def pad(seqs, value):
        width = max(len(s) for s in seqs)
        return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)

    input_ids = pad([f["input_ids"] for f in features], PAD)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != PAD).long(),
        "labels": pad([f["labels"] for f in features], IGNORE),
    }


def training_args(output_dir: str, cls=None, **overrides):
    """CPU, SGD with a constant learning rate, no clipping, no reporting: one step is a plain SGD update."""
    from transformers import Seq2SeqTrainingArguments

    cls = cls or Seq2SeqTrainingArguments
    kwargs = dict(
        output_dir=output_dir,
        use_cpu=True,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        max_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return cls(**kwargs)


def model_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced logits computed directly (the reference the trainer and callback are checked against)."""
    dec = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec).logits


# ---- shared by ddp_checks.py and test_two_processes.py: the 1-process reference uses the same data ----
CALIB_SPLIT = 5  # rank 0 takes the first 5 rows (sequences), rank 1 the other 7
TEMPERATURES = [0.5, 1.0, 2.0]
CALIB_CLASSES = [0, 1, 2, 3]


def calibration_rows(n_rows: int = 12, vocab: int = 20, seed: int = 5):
    """Random (rows, length, V) logits and right-padded labels of varied lengths: 12 sequences of 3 to 14 tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 15, (n_rows,), generator=g)
    logits = torch.randn(n_rows, int(lengths.max()), vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (n_rows, int(lengths.max())), generator=g)
    labels[torch.arange(labels.shape[1])[None, :] >= lengths[:, None]] = IGNORE
    return logits, labels


# ---- what differs between transformers 4.x (the compatibility environment, .ci/compat) and 5.x ------------
# transformers 4.x rounds the losses it logs to 4 decimals.
LOG_TOL = dict(rel=1e-5, abs=5e-5)


def checkpointing_args() -> dict[str, bool]:
    """Activation checkpointing on, under the field name of the installed transformers (5.x renamed it)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing": True} if "activation_checkpointing" in fields else {"gradient_checkpointing": True}


def is_checkpointing(model) -> bool:
    return bool(getattr(model, "is_activation_checkpointing", None) or getattr(model, "is_gradient_checkpointing", False))

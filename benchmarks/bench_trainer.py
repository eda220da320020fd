"""Training throughput and peak memory: ls-seq's trainers against HF's with ``label_smoothing_factor=``.

Model (``--kind``): ``marian``, the ``tiny`` preset (d_model 192, 3+3 layers, V = 8000, dropout 0.1); or
``gpt2``, a causal LM of the same width and vocabulary (6 layers, dropout 0.1) trained on the German side;
built in code from the same seed for every case. Data: the first ``--pairs`` Multi30k training pairs
(synthetic sentences when ``../shared/data/multi30k`` is absent), batches of ``--batch-size`` sentences in the
same order for every case.

Cases:
- ``HF``: ``Seq2SeqTrainer`` / ``Trainer`` with ``label_smoothing_factor=alpha`` (its ``LabelSmoother``): the
  reference;
- ``ls-seq``: ``LabelSmoothingSeq2SeqTrainer`` / ``LabelSmoothingTrainer``: ls-seq's loss (single-pass
  kernel, scored-token counts), ``nll_loss`` logged beside ``loss``;
- ``ls-seq fused``: the same with ``fused_linear_loss=True``: the loss computed inside the model's forward,
  the (tokens, V) logits never stored.

Throughput: the first ``--warmup-steps`` steps are excluded; tokens/s counts the non-padded target tokens of
the timed steps. The cases alternate, ``--repeats`` times each, and the median is reported. Peak memory:
extra resident memory of ``trainer.train()`` in a fresh process (see benchmarks/common.py).

Run from the repository root:

    python -m benchmarks.bench_trainer                            # Marian, 3 repeats of 12 steps
    python -m benchmarks.bench_trainer --kind gpt2                # the causal LM
    python -m benchmarks.bench_trainer --steps 6 --repeats 1      # quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from benchmarks import common
from benchmarks.bench_sweep import corpus, setup
from ls_seq.hf.trainer import (
    LabelSmoothingSeq2SeqTrainer,
    LabelSmoothingSeq2SeqTrainingArguments,
    LabelSmoothingTrainer,
    LabelSmoothingTrainingArguments,
)

REFERENCE = "HF"
CASES = [REFERENCE, "ls-seq", "ls-seq fused"]


class _StepTimer(TrainerCallback):
    """Wall time of every optimizer step (only reads state)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def _dataset(tok, pairs: int, kind: str = "marian"):
    src, tgt, _ = corpus()
    if kind == "gpt2":  # a causal LM on the German sentences: labels are the inputs
        rows = [tok(t, truncation=True, max_length=128)["input_ids"] for t in tgt[:pairs]]
        return [{"input_ids": ids, "labels": ids} for ids in rows]
    return [
        {
            "input_ids": tok(s, truncation=True, max_length=128)["input_ids"],
            "labels": tok(t, truncation=True, max_length=128)["input_ids"],
        }
        for s, t in zip(src[:pairs], tgt[:pairs])
    ]


def _causal_lm(tok, dropout: float):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=192,
        n_layer=6,
        n_head=4,
        n_positions=256,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return GPT2LMHeadModel(config)


def build_trainer(name: str, steps: int, batch_size: int, pairs: int, alpha: float = 0.1, kind: str = "marian"):
    """A fresh tiny model (seed 0, dropout 0.1) and the trainer of case ``name``, not yet trained."""
    tok, model, _ = setup(dropout=0.1)
    if kind == "gpt2":
        model = _causal_lm(tok, 0.1)
    model.train()
    train = _dataset(tok, pairs, kind)
    common_args = {
        "output_dir": tempfile.mkdtemp(prefix="ls_seq_bench_"),
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "learning_rate": 6e-4,
        "warmup_steps": 0,
        "label_smoothing_factor": alpha,
        "save_strategy": "no",
        "report_to": [],
        "logging_steps": 10_000,
        "seed": 0,
        "data_seed": 0,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    collator = DataCollatorForSeq2Seq(tok, model=model if kind == "marian" else None)  # pads labels with -100
    hf, ls = (Trainer, LabelSmoothingTrainer) if kind == "gpt2" else (Seq2SeqTrainer, LabelSmoothingSeq2SeqTrainer)
    hf_args, ls_args = (
        (TrainingArguments, LabelSmoothingTrainingArguments)
        if kind == "gpt2"
        else (Seq2SeqTrainingArguments, LabelSmoothingSeq2SeqTrainingArguments)
    )
    if name == REFERENCE:
        return hf(model=model, args=hf_args(**common_args), train_dataset=train, data_collator=collator)
    args = ls_args(**common_args, fused_linear_loss=name.endswith("fused"))
    return ls(model=model, args=args, train_dataset=train, data_collator=collator)


def build_case(name: str, steps: int, batch_size: int, pairs: int, kind: str = "marian"):
    """For the peak-memory child: the trainer is built, ``train`` is what gets measured."""
    return build_trainer(name, steps, batch_size, pairs, kind=kind).train


def tokens_per_step(tok, pairs: int, batch_size: int, kind: str = "marian") -> float:
    """Expected scored target tokens of a batch drawn from the training pairs (mean length x batch)."""
    shift = 1 if kind == "gpt2" else 0  # a causal LM scores every token but the first
    lengths = [len(ex["labels"]) - shift for ex in _dataset(tok, pairs, kind)]
    return batch_size * sum(lengths) / len(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="marian", choices=["marian", "gpt2"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per step (the tiny preset's)")
    parser.add_argument("--pairs", type=int, default=2048, help="training pairs the batches are drawn from")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    if args.steps <= args.warmup_steps:
        parser.error("--steps must exceed --warmup-steps")

    step_times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name in CASES:
            trainer = build_trainer(name, args.steps, args.batch_size, args.pairs, kind=args.kind)
            timer = _StepTimer()
            trainer.add_callback(timer)
            trainer.train()
            step_times[name].append(sum(timer.times[args.warmup_steps :]))
    tok, _, _ = setup()
    tokens = tokens_per_step(tok, args.pairs, args.batch_size, args.kind) * (args.steps - args.warmup_steps)
    medians = {name: statistics.median(ts) for name, ts in step_times.items()}
    rows = []
    for name in CASES:
        row = {
            "case": name,
            "time of timed steps (s)": f"{medians[name]:.2f}",
            "tokens/s": f"{tokens / medians[name]:.0f}",
            "tokens/s vs HF": f"{medians[REFERENCE] / medians[name]:.2f}x",
        }
        if not args.no_memory:
            peak = common.peak_extra_memory(
                "benchmarks.bench_trainer",
                "build_case",
                name=name,
                steps=args.steps,
                batch_size=args.batch_size,
                pairs=args.pairs,
                kind=args.kind,
            )
            row["extra peak (train)"] = common.fmt_bytes(peak)
        rows.append(row)
    print(f"machine: {common.machine_summary()}")
    title = (
        f"training, {args.kind} (V={len(tok)}), batch {args.batch_size} sentences, "
        f"{args.steps - args.warmup_steps} timed steps, median of {args.repeats}"
    )
    cols = ["case", "time of timed steps (s)", "tokens/s", "tokens/s vs HF", "extra peak (train)"]
    common.print_table(title, rows, cols)
    print("\ntargets: ls-seq trainer tokens/s >= 1.0x HF's trainer; fused loss: lower peak memory")


if __name__ == "__main__":
    main()

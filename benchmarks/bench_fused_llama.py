"""The fused loss inside a causal LM's forward, on a tiny Llama with the Llama-3 vocabulary: one training step.

Model: ``LlamaConfig(hidden_size=--hidden, num_hidden_layers=2, vocab_size=128256)``, untied head, float32,
random weights (seed 0); batch ``--batch x --seq`` random token ids with ``labels = input_ids``. One case is one
``trainer.training_step`` (forward, loss, backward) of a ``LabelSmoothingTrainer`` on that batch, exactly what
``trainer.train()`` runs per micro-batch:

- ``unfused``: ``LabelSmoothingTrainer`` (alpha 0.1): the model's logits, then ls-seq's single-pass loss
  kernel (the reference the targets are stated against);
- ``fused``: the same with ``fused_linear_loss=True``: the output layer computes the loss inside the model's
  forward (``ls_seq.hf.fused_head``), the ``(tokens, V)`` logits never exist;
- ``HF model loss``: ``model(**batch).loss``, Llama's own unsmoothed cross-entropy, for scale.

Targets (issue 11): fused extra peak memory <= 0.2x the unfused step's, time <= 1.1x. Each case is measured
in its steady state: one step runs before (the parameters' gradients exist, the fused path's one-time
check is done). Extra peak: the step's resident memory above that, in a fresh process (benchmarks/common.py). Run from the repository root:

    python -m benchmarks.bench_fused_llama                      # 4 x 512 tokens, V = 128256
    python -m benchmarks.bench_fused_llama --seq 128 --repeats 2  # quick
    python -m benchmarks.bench_fused_llama --device cuda --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks import common

REFERENCE = "unfused"
CASES = [REFERENCE, "fused", "HF model loss"]


def build_case(name: str, batch: int, seq: int, hidden: int, vocab: int, device: str = "cpu", dtype: str = "float32"):
    """A fresh model, trainer and batch, and the callable running one training step of case ``name``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ls_seq.hf.trainer import LabelSmoothingTrainer, LabelSmoothingTrainingArguments

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=seq,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, dtype)).train()
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    if name == "HF model loss":

        def hf_step():
            model(**inputs).loss.backward()
            model.zero_grad(set_to_none=False)

        hf_step()
        return hf_step
    args = LabelSmoothingTrainingArguments(
        tempfile.mkdtemp(prefix="ls_seq_bench_"),
        label_smoothing_factor=0.1,
        fused_linear_loss=name == "fused",
        report_to=[],
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )
    trainer = LabelSmoothingTrainer(model=model, args=args)
    n_items = trainer.io.count(ids).to(device)

    def step():
        trainer.training_step(model, dict(inputs), num_items_in_batch=n_items)
        model.zero_grad(set_to_none=False)

    step()  # the steady state: gradients allocated, the fused path's one-time check done
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128256, help="Llama-3's vocabulary")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    sizes = dict(batch=args.batch, seq=args.seq, hidden=args.hidden, vocab=args.vocab, device=args.device, dtype=args.dtype)
    cases = {name: build_case(name, **sizes) for name in CASES}
    times = common.time_interleaved(cases, repeats=args.repeats, device=args.device)
    mems = (
        None
        if args.no_memory
        else {name: common.peak_extra_memory("benchmarks.bench_fused_llama", "build_case", name=name, **sizes) for name in CASES}
    )
    print(f"machine: {common.machine_summary()}")
    title = (
        f"one training step, tiny Llama (hidden {args.hidden}, 2 layers, V = {args.vocab}), "
        f"{args.batch} x {args.seq} tokens, {args.dtype}, median of {args.repeats}"
    )
    rows = common.ratio_rows(CASES, times, REFERENCE, "unfused", mems)
    cols = ["case", "time (s)", "time / unfused"] + ([] if mems is None else ["extra peak", "peak / unfused"])
    common.print_table(title, rows, cols)
    print("\ntargets: fused extra peak <= 0.2x unfused, time <= 1.1x")


if __name__ == "__main__":
    main()

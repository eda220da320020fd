"""``trainer.evaluate()`` with token calibration against ``evaluate()`` without it, for each route.

Model: the ``tiny`` preset's Marian (d_model 192, 3+3 layers, V = 8000; ``--kind marian``), the same with the
``base`` preset's architecture (Vaswani et al.'s transformer base: d_model 512, 6+6 layers, ffn 2048; ``--kind
marian-base``), or a GPT-2 as wide as the tiny preset (3 layers; ``--kind gpt2``), random weights. The metric's
work is per token and vocabulary entry, the model's grows with its size, so the ratio shrinks as the model
grows. Evaluation set: the first ``--pairs``
Multi30k training pairs (synthetic sentences without ``../shared/data``), batches of ``--batch-size``. The
temperature grid has 5 points (0.8, 1.0, 1.25, 1.5, 2.0).

Cases (each a fresh trainer; the cases alternate, ``--repeats`` times, median reported; wall-clock and the
process's CPU time, which a machine shared with other jobs disturbs less; run with OMP_NUM_THREADS=1 for the
CPU time to be the work):
- ``no calibration``: ``LabelSmoothing(Seq2Seq)Trainer.evaluate()`` (the reference);
- ``in-loop``: the same trainer with ``callbacks=[CalibrationCallback(temperatures=grid)]``: the Trainer's own
  evaluation loop feeds the metric (target <= 1.1x);
- ``CalibrationComputeMetrics``: a plain HF trainer with the ``preprocess_logits_for_metrics`` + ``compute_metrics``
  pair (``batch_eval_metrics=True``);
- ``callback, own pass``: a plain HF trainer with the callback, which runs a second teacher-forced pass (what
  every trainer did before: about 2x).

Run from the repository root:

    python -m benchmarks.bench_evaluate                 # Marian, 1024 pairs
    python -m benchmarks.bench_evaluate --kind gpt2
    python -m benchmarks.bench_evaluate --kind marian-base --pairs 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from benchmarks import common
from benchmarks.bench_sweep import corpus, setup

GRID = [0.8, 1.0, 1.25, 1.5, 2.0]
REFERENCE = "no calibration"
CASES = [REFERENCE, "in-loop", "CalibrationComputeMetrics", "callback, own pass"]


def _data(tok, kind: str, pairs: int) -> list[dict[str, list[int]]]:
    src, tgt, _ = corpus()
    rows = []
    for s, t in zip(src[:pairs], tgt[:pairs]):
        target = tok(t, truncation=True, max_length=128)["input_ids"]
        if kind == "gpt2":
            rows.append({"input_ids": target, "labels": target})
        else:
            rows.append({"input_ids": tok(s, truncation=True, max_length=128)["input_ids"], "labels": target})
    return rows


def _model(kind: str, tok):
    if kind == "marian":
        return setup()[1]
    if kind == "marian-base":
        from transformers import MarianMTModel

        from ls_seq.studies.en_de.presets import apply_overrides, build_model_config, get_preset

        torch.manual_seed(0)
        preset = apply_overrides(get_preset("base"), dropout=0.0, vocab_size=len(tok), max_length=128)
        return MarianMTModel(build_model_config(preset, len(tok), tok.pad_token_id, tok.eos_token_id))
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=192,
        n_layer=3,
        n_head=4,
        n_positions=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return GPT2LMHeadModel(config)


def build_trainer(case: str, kind: str, pairs: int, batch_size: int):
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        Trainer,
    )

    from ls_seq.hf.callbacks import CalibrationCallback
    from ls_seq.hf.compute_metrics import CalibrationComputeMetrics
    from ls_seq.hf.trainer import (
        LabelSmoothingSeq2SeqTrainer,
        LabelSmoothingSeq2SeqTrainingArguments,
        LabelSmoothingTrainer,
        LabelSmoothingTrainingArguments,
    )

    tok = setup()[0]
    model = _model(kind, tok).eval()
    data = _data(tok, kind, pairs)
    causal = kind == "gpt2"
    if causal:
        tok.pad_token = tok.pad_token or tok.eos_token
        collator = DataCollatorForLanguageModeling(tok, mlm=False)
        data = [{"input_ids": row["input_ids"]} for row in data]
    else:
        collator = DataCollatorForSeq2Seq(tok, model=model)
    common_args = dict(
        output_dir=tempfile.mkdtemp(prefix="ls_seq_bench_"),
        per_device_eval_batch_size=batch_size,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        label_smoothing_factor=0.1,
    )
    callback = CalibrationCallback(temperatures=GRID, plot=False)
    if case in (REFERENCE, "in-loop"):
        cls, args_cls = (
            (LabelSmoothingTrainer, LabelSmoothingTrainingArguments)
            if causal
            else (LabelSmoothingSeq2SeqTrainer, LabelSmoothingSeq2SeqTrainingArguments)
        )
        return cls(
            model=model,
            args=args_cls(**common_args),
            eval_dataset=data,
            data_collator=collator,
            callbacks=[callback] if case == "in-loop" else None,
        )
    cls, args_cls = (Trainer, Seq2SeqTrainingArguments) if causal else (Seq2SeqTrainer, Seq2SeqTrainingArguments)
    if case == "CalibrationComputeMetrics":
        pair = CalibrationComputeMetrics(temperatures=GRID, model=model)
        return cls(
            model=model,
            args=args_cls(**common_args, batch_eval_metrics=True),
            eval_dataset=data,
            data_collator=collator,
            **pair.trainer_kwargs(),
        )
    return cls(model=model, args=args_cls(**common_args), eval_dataset=data, data_collator=collator, callbacks=[callback])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="marian", choices=["marian", "marian-base", "gpt2"])
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trainers = {case: build_trainer(case, args.kind, args.pairs, args.batch_size) for case in CASES}
    for trainer in trainers.values():  # warm-up (and a check that every case reports the same ECE)
        trainer.evaluate()
    times: dict[str, list[float]] = {case: [] for case in CASES}
    cpu: dict[str, list[float]] = {case: [] for case in CASES}
    ece = {}
    for _ in range(args.repeats):
        for case, trainer in trainers.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            metrics = trainer.evaluate()
            times[case].append(time.perf_counter() - start)
            cpu[case].append(time.process_time() - start_cpu)
            ece[case] = metrics.get("eval_ece")
    medians = {case: statistics.median(ts) for case, ts in times.items()}
    cpu_medians = {case: statistics.median(ts) for case, ts in cpu.items()}
    rows = [
        {
            "case": case,
            "evaluate() (s)": f"{medians[case]:.2f}",
            "time / no calibration": f"{medians[case] / medians[REFERENCE]:.2f}x",
            "CPU time (s)": f"{cpu_medians[case]:.2f}",
            "CPU / no calibration": f"{cpu_medians[case] / cpu_medians[REFERENCE]:.2f}x",
            "eval_ece": "-" if ece[case] is None else f"{ece[case]:.6f}",
        }
        for case in CASES
    ]
    print(f"machine: {common.machine_summary()}")
    common.print_table(
        f"evaluate(), {args.kind}, {args.pairs} sequences, batch {args.batch_size}, 5 temperatures, median of {args.repeats}",
        rows,
        ["case", "evaluate() (s)", "time / no calibration", "CPU time (s)", "CPU / no calibration", "eval_ece"],
    )
    print("\ntarget: in-loop <= 1.1x no calibration")


if __name__ == "__main__":
    main()

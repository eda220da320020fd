"""Temperature sweeps (ls_seq.sweeps) against one pass per temperature, on the tiny Marian preset.

The model is the ``tiny`` preset's ``MarianConfig`` (d_model 192, 3+3 layers, V = 8000), randomly initialised
in code; the tokenizer is trained on the first Multi30k training sentences when ``../shared/data/multi30k``
is there, else on synthetic sentences, and cached in the system temp directory. Only time is measured, so
an untrained model is enough; it never emits ``</s>``, so every beam search runs to ``--max-new-tokens``.

NLL/ECE (teacher forcing, ``--batches`` batches of ``--batch-size`` random token sequences):
- ``one pass, T=1``: ``teacher_forced_sweep(model, batches, [1.0])`` (the reference);
- ``sweep, 13 temperatures``: ``teacher_forced_sweep(model, batches, 13 temperatures)`` (target <= 2x);
- ``13 separate passes``: ``teacher_forced_sweep(model, batches, [T])`` for each T.

BLEU (beam search over ``--sources`` Multi30k test sentences, ``--beams`` beams, K temperatures):
- ``K separate generate calls``: per temperature and batch, tokenize and ``model.generate(input_ids=...)``
  with ``BeamSearchTemperature(T)`` (the encoder runs K times; the reference);
- ``beam_search_sweep``: the encoder once per batch, then K decoder searches (target >= 1.3x faster);
- ``K temperatures in one generate call``: a prototype defined here, not in the library: the batch is
  repeated K times and a per-row temperature processor scores each copy at its own T, so the decoder's
  per-step overhead (large for a small model on a CPU) is paid once instead of K times.

Run from the repository root:

    python -m benchmarks.bench_sweep                      # defaults below
    python -m benchmarks.bench_sweep --sources 32 --repeats 1 --max-new-tokens 16   # quick
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList, MarianMTModel

from benchmarks import common
from ls_seq.generation import BeamSearchTemperature
from ls_seq.sweeps import beam_search_sweep, teacher_forced_sweep
from ls_seq.translation.presets import build_model_config, get_preset
from ls_seq.translation.tokenizer import load_or_train_tokenizer

SWEEP_TEMPERATURES = [round(0.8 + 0.1 * i, 1) for i in range(13)]  # the paper's grid, 0.8 ... 2.0
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"


def _lines(name: str, limit: int) -> list[str]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        return [line.strip() for _, line in zip(range(limit), f)]


def corpus(seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """English and German training sentences and English test sources (Multi30k, else synthetic words)."""
    if (DATA / "train.en.gz").exists():
        return _lines("train.en.gz", 20000), _lines("train.de.gz", 20000), _lines("test_2016_flickr.en.gz", 1000)
    g = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(6000)]
    texts = [" ".join(words[j] for j in torch.randint(0, 6000, (12,), generator=g).tolist()) for _ in range(40000)]
    return texts[:20000], texts[20000:], texts[:1000]


def setup(vocab_size: int = 8000, seed: int = 0, dropout: float = 0.0):
    """Tokenizer (cached under the system temp dir), tiny-preset Marian model and the test sources."""
    src, tgt, sources = corpus(seed)
    tok = load_or_train_tokenizer(Path(tempfile.gettempdir()) / f"ls_seq_bench_tok_{vocab_size}", src + tgt, vocab_size)
    torch.manual_seed(seed)
    cfg = build_model_config(get_preset("tiny"), len(tok), tok.pad_token_id, tok.eos_token_id)
    cfg.dropout = dropout
    model = MarianMTModel(cfg).eval()
    return tok, model, sources


def teacher_forced_batches(model, n_batches: int, batch_size: int, src_len: int, tgt_len: int, seed: int = 0):
    """Random token batches shaped like collated Multi30k pairs, with 10% of label positions padded."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    out = []
    for _ in range(n_batches):
        labels = torch.randint(2, vocab, (batch_size, tgt_len), generator=g)  # (B, L)
        labels[torch.rand(batch_size, tgt_len, generator=g) < 0.1] = -100
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels.clamp_min(0))
        out.append({
            "input_ids": torch.randint(2, vocab, (batch_size, src_len), generator=g),  # (B, S)
            "attention_mask": torch.ones(batch_size, src_len, dtype=torch.long),
            "decoder_input_ids": decoder_input_ids,
            "labels": labels,
        })
    return out


def separate_generate_calls(model, tok, sources, temperatures, num_beams, batch_size, max_new_tokens):
    """The baseline the sweep replaces: one full ``generate`` (encoder included) per temperature and batch."""
    results = {}
    for temperature in temperatures:
        outputs = []
        for start in range(0, len(sources), batch_size):
            enc = tok(sources[start : start + batch_size], padding=True, truncation=True, max_length=128,
                      return_tensors="pt")
            out = model.generate(
                **enc, num_beams=num_beams, do_sample=False, max_new_tokens=max_new_tokens,
                logits_processor=LogitsProcessorList([BeamSearchTemperature(temperature)]),
            )
            outputs += tok.batch_decode(out, skip_special_tokens=True)
        results[temperature] = outputs
    return results


class _RowTemperature(LogitsProcessor):
    """``log_softmax(scores / T_row)`` with one temperature per row of ``scores`` (batch * beams, V)."""

    def __init__(self, inv_t_rows: torch.Tensor) -> None:
        self.inv_t_rows = inv_t_rows  # (batch * beams, 1)

    def __call__(self, input_ids, scores):
        return torch.log_softmax(scores.float() * self.inv_t_rows, dim=-1).to(scores.dtype)


def batched_temperatures_generate(model, tok, sources, temperatures, num_beams, batch_size, max_new_tokens):
    """Prototype: every temperature of a batch in one ``generate`` call (rows repeated K times)."""
    results = {t: [] for t in temperatures}
    k = len(temperatures)
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        enc = tok(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
        inv_t = torch.tensor([1.0 / t for t in temperatures]).repeat_interleave(len(chunk))  # (K * B,)
        out = model.generate(
            input_ids=enc["input_ids"].repeat(k, 1), attention_mask=enc["attention_mask"].repeat(k, 1),
            num_beams=num_beams, do_sample=False, max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList([_RowTemperature(inv_t.repeat_interleave(num_beams)[:, None])]),
        )  # (K * B, L)
        decoded = tok.batch_decode(out, skip_special_tokens=True)
        for i, t in enumerate(temperatures):
            results[t] += decoded[i * len(chunk) : (i + 1) * len(chunk)]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=8, help="teacher-forced batches")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch (the preset's eval size)")
    parser.add_argument("--src-len", type=int, default=20)
    parser.add_argument("--tgt-len", type=int, default=20)
    parser.add_argument("--sources", type=int, default=64, help="sentences beam-searched per temperature")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--bleu-temperatures", type=float, nargs="+", default=[0.8, 1.0, 1.2, 1.5, 2.0],
                        help="the tiny preset's BLEU grid")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tok, model, sources = setup()
    batches = teacher_forced_batches(model, args.batches, args.batch_size, args.src_len, args.tgt_len)
    tf_cases = {
        "one pass, T=1": lambda: teacher_forced_sweep(model, batches, [1.0], progress=False),
        "sweep, 13 temperatures": lambda: teacher_forced_sweep(model, batches, SWEEP_TEMPERATURES, progress=False),
        "13 separate passes": lambda: [
            teacher_forced_sweep(model, batches, [t], progress=False) for t in SWEEP_TEMPERATURES
        ],
    }
    tf_times = common.time_interleaved(tf_cases, repeats=args.repeats)
    ref = tf_times["one pass, T=1"]
    tf_rows = [
        {"case": name, "time (s)": f"{t:.3f}", "time / one pass": f"{t / ref:.2f}x"} for name, t in tf_times.items()
    ]

    srcs = sources[: args.sources]
    temps = args.bleu_temperatures
    gen = {"num_beams": args.beams, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    bleu_cases = {
        f"{len(temps)} separate generate calls": lambda: separate_generate_calls(model, tok, srcs, temps, **gen),
        "beam_search_sweep": lambda: beam_search_sweep(model, tok, srcs, temps, progress=False, **gen),
        f"{len(temps)} temperatures in one generate call": lambda: batched_temperatures_generate(
            model, tok, srcs, temps, **gen
        ),
    }
    outputs = {name: fn() for name, fn in bleu_cases.items()}
    baseline_out = outputs[f"{len(temps)} separate generate calls"]
    same = {name: out == baseline_out for name, out in outputs.items()}
    bleu_times = common.time_interleaved(bleu_cases, repeats=args.repeats, warmup=0)
    base = bleu_times[f"{len(temps)} separate generate calls"]
    bleu_rows = [
        {"case": name, "time (s)": f"{t:.3f}", "speed-up vs separate": f"{base / t:.2f}x"}
        for name, t in bleu_times.items()
    ]

    print(f"machine: {common.machine_summary()}")
    print(f"model: tiny preset Marian, V={model.config.vocab_size}, d_model={model.config.d_model}")
    common.print_table(
        f"NLL/ECE sweep, {args.batches} batches x {args.batch_size} x {args.tgt_len} target tokens (forward included)",
        tf_rows, ["case", "time (s)", "time / one pass"],
    )
    common.print_table(
        f"BLEU sweep, {len(srcs)} sentences, {args.beams} beams, {args.max_new_tokens} new tokens, T={temps}",
        bleu_rows, ["case", "time (s)", "speed-up vs separate"],
    )
    print(f"\ntranslations identical to the separate calls: {same}")
    print("targets: NLL/ECE sweep <= 2x one pass; BLEU sweep >= 1.3x faster than separate generate calls")


if __name__ == "__main__":
    main()

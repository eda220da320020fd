"""Temperature sweeps (ls_seq.hf.sweeps) against one pass per temperature, on the tiny Marian preset.

The model is the ``tiny`` preset's ``MarianConfig`` (d_model 192, 3+3 layers, V = 8000), randomly initialised
in code; the tokenizer is trained on the first Multi30k training sentences when ``../shared/data/multi30k``
is there, else on synthetic sentences, and cached in the system temp directory. Only time is measured, so
an untrained model is enough; it never emits ``</s>``, so every beam search runs to ``--max-new-tokens``.

NLL/ECE (teacher forcing, ``--batches`` batches of ``--batch-size`` random token sequences):
- ``one pass, T=1``: ``teacher_forced_sweep(model, batches, [1.0])`` (the reference);
- ``sweep, 13 temperatures``: ``teacher_forced_sweep(model, batches, 13 temperatures)`` (target <= 2x);
- ``13 separate passes``: ``teacher_forced_sweep(model, batches, [T])`` for each T.

BLEU (beam search over ``--sources`` Multi30k test sentences, ``--beams`` beams, K temperatures):
- ``K separate generate calls``: per temperature and batch (in input order), tokenize and
  ``model.generate(input_ids=...)`` with ``BeamSearchTemperature(T)`` (the encoder runs K times): the
  reference at ``--batch-size`` and, since on a CPU a smaller batch can be faster, at ``--small-batch-size``
  (also length-sorted, to show what sorting alone is worth); the fastest of these is "best separate";
- ``beam_search_sweep`` at both batch sizes (input order, to isolate the encoder reuse, and length-sorted),
  and with all K temperatures in each call (``--grouped-batch-size`` sequences per call).
  Target: >= 1.3x faster than the separate calls.

An untrained model never emits ``</s>``, so every search runs to ``--max-new-tokens`` and sorting by length
cannot help; ``--model DIR`` (a trained ``MarianMTModel``, e.g. ``outputs/en_de_tiny/alpha_0.0/model`` from the
README's command, with its tokenizer in ``DIR/../../tokenizer``) gives real output lengths.

Run from the repository root:

    python -m benchmarks.bench_sweep                      # defaults below
    python -m benchmarks.bench_sweep --sources 32 --repeats 1 --max-new-tokens 16   # quick
    python -m benchmarks.bench_sweep --model outputs/en_de_tiny/alpha_0.0/model --sources 500 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import functools
import gzip
import tempfile
from pathlib import Path

import torch
from transformers import LogitsProcessorList, MarianMTModel, PreTrainedTokenizerFast

from benchmarks import common
from ls_seq.hf.generation import BeamSearchTemperature
from ls_seq.hf.sweeps import beam_search_sweep, teacher_forced_sweep
from ls_seq.studies.en_de.presets import PAPER_TEMPERATURES, apply_overrides, build_model_config, get_preset
from ls_seq.studies.en_de.tokenizer import load_or_train_tokenizer

SWEEP_TEMPERATURES = list(PAPER_TEMPERATURES)  # the paper's grid, 0.8 ... 2.0
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"


def _lines(name: str, limit: int) -> list[str]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        return [line.strip() for _, line in zip(range(limit), f)]


@functools.cache  # read once per process: bench_trainer builds a trainer per case and repeat
def corpus(seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """English and German training sentences and English test sources (Multi30k, else synthetic words)."""
    if (DATA / "train.en.gz").exists():
        return _lines("train.en.gz", 20000), _lines("train.de.gz", 20000), _lines("test_2016_flickr.en.gz", 1000)
    g = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(6000)]
    texts = [" ".join(words[j] for j in torch.randint(0, 6000, (12,), generator=g).tolist()) for _ in range(40000)]
    return texts[:20000], texts[20000:], texts[:1000]


def setup(vocab_size: int = 8000, seed: int = 0, dropout: float = 0.0, model_dir: str | None = None):
    """Tokenizer (cached under the system temp dir), tiny-preset Marian model and the test sources.

    With ``model_dir``: that trained model and the study's tokenizer beside it (``model_dir/../../tokenizer``).
    """
    src, tgt, sources = corpus(seed)
    if model_dir is not None:
        tok = PreTrainedTokenizerFast.from_pretrained(Path(model_dir).resolve().parents[1] / "tokenizer")
        return tok, MarianMTModel.from_pretrained(model_dir).eval(), sources
    tok = load_or_train_tokenizer(Path(tempfile.gettempdir()) / f"ls_seq_bench_tok_{vocab_size}", src + tgt, vocab_size)
    torch.manual_seed(seed)
    preset = apply_overrides(get_preset("tiny"), dropout=dropout)
    model = MarianMTModel(build_model_config(preset, len(tok), tok.pad_token_id, tok.eos_token_id)).eval()
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
        out.append(
            {
                "input_ids": torch.randint(2, vocab, (batch_size, src_len), generator=g),  # (B, S)
                "attention_mask": torch.ones(batch_size, src_len, dtype=torch.long),
                "decoder_input_ids": decoder_input_ids,
                "labels": labels,
            }
        )
    return out


def separate_generate_calls(model, tok, sources, temperatures, num_beams, batch_size, max_new_tokens, sort=False):
    """The baseline the sweep replaces: one full ``generate`` (encoder included) per temperature and batch.

    ``sort``: batches of similar source length (longest first), translations put back in input order.
    """
    order = list(range(len(sources)))
    if sort:
        lengths = [len(x) for x in tok(list(sources), truncation=True, max_length=128)["input_ids"]]
        order.sort(key=lambda i: -lengths[i])
    results = {}
    for temperature in temperatures:
        outputs = [""] * len(sources)
        for start in range(0, len(sources), batch_size):
            rows = order[start : start + batch_size]
            enc = tok([sources[i] for i in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
            out = model.generate(
                **enc,
                num_beams=num_beams,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                logits_processor=LogitsProcessorList([BeamSearchTemperature(temperature)]),
            )
            for i, text in zip(rows, tok.batch_decode(out, skip_special_tokens=True)):
                outputs[i] = text
        results[temperature] = outputs
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
    parser.add_argument(
        "--bleu-temperatures",
        type=float,
        nargs="+",
        default=[0.8, 1.2, 1.5, 2.0],
        help="the tiny preset's BLEU grid without T=1 (the study reuses its T=1 test translations)",
    )
    parser.add_argument("--small-batch-size", type=int, default=16, help="a second batch size for both methods")
    parser.add_argument(
        "--grouped-batch-size",
        type=int,
        default=32,
        help="sequences per call when all temperatures share it (the tiny preset's 32)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="a trained MarianMTModel directory (default: random tiny)")
    parser.add_argument("--skip-teacher-forced", action="store_true", help="only the BLEU sweep")
    args = parser.parse_args()

    tok, model, sources = setup(model_dir=args.model)
    batches = teacher_forced_batches(model, args.batches, args.batch_size, args.src_len, args.tgt_len)
    tf_cases = {
        "one pass, T=1": lambda: teacher_forced_sweep(model, batches, [1.0], progress=False),
        "sweep, 13 temperatures": lambda: teacher_forced_sweep(model, batches, SWEEP_TEMPERATURES, progress=False),
        "13 separate passes": lambda: [teacher_forced_sweep(model, batches, [t], progress=False) for t in SWEEP_TEMPERATURES],
    }
    tf_times = {} if args.skip_teacher_forced else common.time_interleaved(tf_cases, repeats=args.repeats)
    ref = tf_times.get("one pass, T=1")
    tf_rows = [{"case": name, "time (s)": f"{t:.3f}", "time / one pass": f"{t / ref:.2f}x"} for name, t in tf_times.items()]

    srcs = sources[: args.sources]
    temps = args.bleu_temperatures
    k, beams, new = len(temps), args.beams, args.max_new_tokens

    def separate(batch_size, **options):
        return lambda: separate_generate_calls(model, tok, srcs, temps, beams, batch_size, new, **options)

    def sweep(batch_size, **options):
        return lambda: beam_search_sweep(
            model,
            tok,
            srcs,
            temps,
            num_beams=beams,
            batch_size=batch_size,
            max_new_tokens=new,
            progress=False,
            **options,
        )

    big, small, grouped = args.batch_size, args.small_batch_size, args.grouped_batch_size
    reference = f"{k} separate generate calls, batch {big}"
    bleu_cases = {
        reference: separate(big),
        f"{k} separate generate calls, batch {small}": separate(small),
        f"{k} separate generate calls, batch {small}, length-sorted": separate(small, sort=True),
        f"beam_search_sweep, batch {big}, input order (encoder reuse only)": sweep(big, sort_by_length=False),
        f"beam_search_sweep, batch {big} (length-sorted)": sweep(big),
        f"beam_search_sweep, batch {small} (length-sorted)": sweep(small),
        f"beam_search_sweep, {grouped // k} sentences x {k} T per call (length-sorted)": sweep(grouped, temperatures_per_call=k),
    }
    outputs = {name: fn() for name, fn in bleu_cases.items()}
    baseline_out = outputs[reference]
    # Identical translations, or the share of (sentence, T) pairs that differ (batch padding moves last bits).
    same = {
        name: 1.0 - sum(a == b for t in temps for a, b in zip(out[t], baseline_out[t])) / (len(srcs) * k)
        for name, out in outputs.items()
    }
    bleu_times = common.time_interleaved(bleu_cases, repeats=args.repeats, warmup=0)
    base = bleu_times[reference]
    best = min(t for name, t in bleu_times.items() if "separate" in name)  # the best-tuned separate calls
    bleu_rows = [
        {
            "case": name,
            "time (s)": f"{t:.3f}",
            f"speed-up vs batch {big}": f"{base / t:.2f}x",
            "vs best separate": f"{best / t:.2f}x",
        }
        for name, t in bleu_times.items()
    ]

    print(f"machine: {common.machine_summary()}")
    trained = f"trained ({args.model})" if args.model else "random tiny-preset"
    print(f"model: {trained} Marian, V={model.config.vocab_size}, d_model={model.config.d_model}")
    if tf_times:
        common.print_table(
            f"NLL/ECE sweep, {args.batches} batches x {args.batch_size} x {args.tgt_len} target tokens (forward included)",
            tf_rows,
            ["case", "time (s)", "time / one pass"],
        )
    common.print_table(
        f"BLEU sweep, {len(srcs)} sentences, {args.beams} beams, {args.max_new_tokens} new tokens, T={temps}",
        bleu_rows,
        ["case", "time (s)", f"speed-up vs batch {big}", "vs best separate"],
    )
    print("\nshare of (sentence, T) translations that differ from the reference's:")
    for name, share in same.items():
        print(f"  {name}: {share:.4f}")
    print("targets: NLL/ECE sweep <= 2x one pass; BLEU sweep >= 1.3x faster than separate generate calls")


if __name__ == "__main__":
    main()

"""``ls-seq``: measure token calibration from the shell.

    ls-seq evaluate MODEL_DIR --data test.jsonl --temperatures 0.8 1.0 1.25 1.5 --output_dir out/
    ls-seq calibrate eval_logits.safetensors --temperatures 0.8 1.0 1.2 --output_dir out/
    fairseq-train ... --user-dir $(ls-seq fairseq-user-dir) --criterion ls_seq_label_smoothed_cross_entropy

Every bad input ends with exit status 2 and one line naming the argument or file; a fault (disk full) with 1;
``--debug`` (or ``LS_SEQ_DEBUG=1``) adds the traceback. Nothing is written unless everything was measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
from collections.abc import Sequence
from pathlib import Path

from ls_seq._extras import installed
from ls_seq.cli.runner import run_main
from ls_seq.errors import InputError

__all__ = ["build_parser", "main"]

MEASURED = """\
What is measured (every temperature of the grid in one pass; T = 1 is always added): the token NLL,
accuracy and mean confidence; the top-label ECE, MCE, RMS and debiased RMS (Kumar et al. 2019) on N_BINS
equal-width bins [k/B, (k+1)/B) (confidence 1 in the last bin) and the same on N_BINS equal-mass bins; the
Brier score; a Poisson-bootstrap 95%% interval of the ECE; top-5 calibration; sequence-level calibration (a
row is a sequence); and the NLL-optimal temperature (Guo et al. 2017)."""


def _calibrate(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ls_seq.calibration.metric import TokenCalibration
    from ls_seq.calibration.report import calibration_document, write_calibration_outputs
    from ls_seq.functional.temperature import fit_temperature
    from ls_seq.io import check_output_dir

    path = Path(args.path)
    out = None if args.output_dir is None else check_output_dir(args.output_dir, "--output_dir")
    if not path.is_file():
        raise InputError(f"`path` {str(path)!r}: no such file")
    try:
        tensors = load_file(str(path))  # safetensors holds tensors only: nothing in the file can execute
    except (SafetensorError, OSError, ValueError) as err:
        hint = (
            " (a .pt/.pth file is a pickle: save it with safetensors.torch.save_file instead)"
            if path.suffix in (".pt", ".pth")
            else ""
        )
        raise InputError(f"`path` {str(path)!r} is not a safetensors file{hint}: {' '.join(str(err).split())}") from err
    missing = [k for k in (args.logits_key, args.labels_key) if k not in tensors]
    if missing:
        raise InputError(f"`path` {str(path)!r} has no tensor named {missing[0]!r}; it holds {sorted(tensors)}")
    logits, labels = tensors[args.logits_key], tensors[args.labels_key]
    grid = sorted(set(args.temperatures or [1.0]) | {1.0})
    metric = TokenCalibration(n_bins=args.n_bins, ignore_index=args.ignore_index, temperatures=grid)
    metric.update(logits, labels)  # checks shapes, dtypes, label range and finiteness before anything is written
    if float(metric.tokens_n) == 0:
        raise InputError(f"`path` {str(path)!r}: every label is --ignore_index {args.ignore_index}: there is no token to measure")
    result = metric.compute()
    fitted = fit_temperature(logits, labels, ignore_index=args.ignore_index)
    print(f"{'T':>6} {'ECE':>8} {'NLL':>8} {'acc':>8}   ({int(result.at(1.0)['n_tokens'])} tokens, {args.n_bins} bins)")
    for t in grid:
        point = result.at(t)
        print(f"{t:>6.3g} {point['ece']:>8.4f} {point['nll']:>8.4f} {point['accuracy']:>8.4f}")
    print(f"NLL-optimal temperature: {fitted:.4f}")
    if out is not None:
        reliability = {b: {k: v[grid.index(1.0)] for k, v in metric.reliability(b).items()} for b in ("width", "mass")}
        about = {"command": args.command_line, "data": str(path), "n_bins": args.n_bins}
        doc = calibration_document(result, reliability, fitted_temperature=fitted, fit_on="the same tokens", about=about)
        written = write_calibration_outputs(out, doc, title=path.name)
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ls_seq.cli.evaluate import EvaluateConfig, evaluate_checkpoint

    names = {f for f in EvaluateConfig.__dataclass_fields__ if f not in ("command", "extra")}
    cfg = EvaluateConfig(**{k: v for k, v in vars(args).items() if k in names}, command=args.command_line)
    doc = evaluate_checkpoint(cfg)
    point = doc["at_temperature_1"]
    print(
        f"{doc['n_tokens']} tokens of {doc['n_examples']} examples: ECE {point['ece']:.4f}, NLL {point['nll']:.4f}, "
        f"accuracy {point['accuracy']:.4f}; NLL-optimal temperature {doc['nll_optimal_temperature']:.4f}"
    )
    out = Path(cfg.output_dir)
    figures = " and the figures" if installed("matplotlib") else ""  # without: a warning said so
    print(f"wrote {out / 'calibration.json'}, report.md{figures}")
    return 0


def _fairseq_user_dir(args: argparse.Namespace) -> int:
    # the folder of the installed package, found without importing it (its import imports fairseq)
    spec = importlib.util.find_spec("ls_seq_fairseq")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the fairseq plugin `ls_seq_fairseq` is not installed: pip install 'ls-seq[fairseq]'")
    print(Path(next(iter(spec.submodule_search_locations))).resolve())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ls-seq", description=__doc__.split("\n\n")[0], epilog=MEASURED, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of a fault (also LS_SEQ_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    ev = sub.add_parser(
        "evaluate",
        formatter_class=raw,
        help="calibration (and BLEU) of a saved checkpoint, in one teacher-forced pass",
        description="Measure a local HF checkpoint (save_pretrained output with its tokenizer; a causal LM or an "
        "encoder-decoder, told apart by its config) on evaluation data, and write calibration.json, reliability.png, "
        "temperature_sweep.png and report.md to --output_dir. Runs under torchrun / accelerate launch with several "
        "processes (the numbers of one).",
        epilog=MEASURED,
    )
    ev.add_argument("model", help="checkpoint directory (config.json, weights, tokenizer)")
    ev.add_argument(
        "--data",
        required=True,
        help="JSONL with prompt/completion or text (causal LM), source/target (encoder-"
        "decoder); a parallel-text directory {split}.{source_lang,target_lang}[.gz]; or a datasets.save_to_disk directory",
    )
    ev.add_argument("--output_dir", required=True, help="where the results go (checked writable before any work)")
    ev.add_argument("--tokenizer", default=None, help="tokenizer directory, when it is not beside the model")
    ev.add_argument("--split", default="test", help="split of a parallel-text directory or a saved DatasetDict (default: test)")
    ev.add_argument("--source_lang", default="en")
    ev.add_argument("--target_lang", default="de")
    ev.add_argument("--temperatures", type=float, nargs="+", default=None, help="the grid (default: 1 only)")
    ev.add_argument("--n_bins", type=int, default=15, help="equal-width and equal-mass bins (default 15)")
    ev.add_argument("--measures", nargs="+", default=None, help="measure names (default: all that need no option)")
    ev.add_argument(
        "--fit_split", default=None, help="fit the temperature on this split (or data file), not on the evaluated tokens"
    )
    ev.add_argument("--fit_max_gib", type=float, default=4.0, help="memory for the logits kept for the temperature fit")
    ev.add_argument("--bleu", action="store_true", help="beam-search BLEU at every temperature (encoder-decoders)")
    ev.add_argument("--num_beams", type=int, default=4)
    ev.add_argument("--generate_batch_size", type=int, default=32, help="sequences per generate call")
    ev.add_argument("--max_new_tokens", type=int, default=None, help="default: --max_length")
    ev.add_argument("--max_samples", type=int, default=None, help="evaluate the first N examples")
    ev.add_argument("--batch_size", type=int, default=16, help="examples per teacher-forced batch")
    ev.add_argument("--max_length", type=int, default=512, help="truncate sources, targets and texts to N tokens")
    ev.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    ev.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: this process's accelerator, else cpu)")
    ev.set_defaults(func=_evaluate)

    cal = sub.add_parser(
        "calibrate",
        formatter_class=raw,
        help="calibration of saved logits at one or more temperatures",
        description="Measure a safetensors file holding `logits` (..., V) and `labels` (...) (-100 for padding; a "
        "row of 2-D labels is a sequence); print ECE / NLL / accuracy per temperature and the NLL-optimal "
        "temperature; with --output_dir also write calibration.json, report.md and the figures.",
        epilog=MEASURED,
    )
    cal.add_argument("path", help="safetensors file with `logits` and `labels`")
    cal.add_argument("--temperatures", type=float, nargs="+", default=None, help="the grid (default: 1 only)")
    cal.add_argument("--n_bins", type=int, default=15)
    cal.add_argument("--ignore_index", type=int, default=-100)
    cal.add_argument("--logits_key", default="logits")
    cal.add_argument("--labels_key", default="labels")
    cal.add_argument("--output_dir", default=None, help="write calibration.json, report.md and the figures here")
    cal.set_defaults(func=_calibrate)

    udir = sub.add_parser(
        "fairseq-user-dir",
        help="print the folder to pass to fairseq's --user-dir (the ls-seq criterion); imports no fairseq",
        description="Print the ls-seq fairseq plugin folder: fairseq-train --user-dir $(ls-seq fairseq-user-dir) ...",
    )
    udir.set_defaults(func=_fairseq_user_dir)
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = "ls-seq " + shlex.join(argv)
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv, prog="ls-seq")


if __name__ == "__main__":
    raise SystemExit(main())

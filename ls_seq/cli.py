"""``ls-seq`` command line: measure calibration of saved logits without writing Python.

    ls-seq calibrate eval_logits.safetensors --temperatures 0.8 1.0 1.2 1.5 --output_dir out/

reads a safetensors file holding ``logits`` (..., V) and ``labels`` (...) (``-100`` for padding), prints the
ECE / NLL / accuracy at every temperature and the NLL-optimal temperature, and writes ``calibration.json``
and ``reliability.png`` atomically. The studies have their own recipes (``recipes/wmt_en_de.py``,
``recipes/vision_study.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _load_logits(path: Path, logits_key: str, labels_key: str):
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"`path`: no such file: {path}")
    tensors = load_file(str(path))  # safetensors holds tensors only: nothing in the file can execute
    missing = [k for k in (logits_key, labels_key) if k not in tensors]
    if missing:
        raise ValueError(f"`path`: {path} has no tensor named {missing[0]!r}; it holds {sorted(tensors)}")
    return tensors[logits_key], tensors[labels_key]


def _calibrate(args: argparse.Namespace) -> int:
    from ls_seq.functional.calibration import fit_temperature
    from ls_seq.io import atomic_savefig, atomic_write_json
    from ls_seq.metrics import TokenCalibration
    from ls_seq.plots import plot_reliability_diagram

    logits, labels = _load_logits(Path(args.path), args.logits_key, args.labels_key)
    temperatures = args.temperatures or [1.0]
    metric = TokenCalibration(n_bins=args.n_bins, ignore_index=args.ignore_index, temperatures=temperatures)
    metric.update(logits, labels)  # validates shapes, dtypes, label range and finiteness before anything is written
    result = metric.compute()
    fitted = fit_temperature(logits, labels, ignore_index=args.ignore_index)
    rows = [
        {key: float(result[key][i]) for key in ("ece", "mce", "rms", "nll", "accuracy", "mean_confidence")} | {"temperature": t}
        for i, t in enumerate(temperatures)
    ]
    print(f"{'T':>6} {'ECE':>8} {'NLL':>8} {'acc':>8}   ({int(result['n_tokens'][0])} tokens, {args.n_bins} bins)")
    for row in rows:
        print(f"{row['temperature']:>6.3g} {row['ece']:>8.4f} {row['nll']:>8.4f} {row['accuracy']:>8.4f}")
    print(f"NLL-optimal temperature: {fitted:.4f}")
    if args.output_dir:
        out = Path(args.output_dir)
        atomic_write_json(out / "calibration.json", {"n_bins": args.n_bins, "nll_optimal_temperature": fitted, "sweep": rows})
        rel = metric.reliability()
        curves = {f"T={t:g}": {k: v[i] for k, v in rel.items()} for i, t in enumerate(temperatures)}
        atomic_savefig(plot_reliability_diagram(curves, title=Path(args.path).name), out / "reliability.png", dpi=150)
        print(f"wrote {out / 'calibration.json'} and {out / 'reliability.png'}")
    return 0


def _fairseq_user_dir(args: argparse.Namespace) -> int:
    print(Path(__file__).resolve().parent / "ls_seq_fairseq")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ls-seq", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="ECE / NLL / accuracy of saved logits at one or more temperatures")
    cal.add_argument("path", help="safetensors file with `logits` (..., V) and `labels` (...)")
    cal.add_argument("--temperatures", type=float, nargs="+", default=None, help="temperatures to measure (default: 1)")
    cal.add_argument("--n_bins", type=int, default=15)
    cal.add_argument("--ignore_index", type=int, default=-100)
    cal.add_argument("--logits_key", default="logits")
    cal.add_argument("--labels_key", default="labels")
    cal.add_argument("--output_dir", default=None, help="write calibration.json and reliability.png here")
    cal.set_defaults(func=_calibrate)
    udir = sub.add_parser(
        "fairseq-user-dir",
        help="print the folder to pass to fairseq's --user-dir (the ls-seq criterion); imports no fairseq",
        description="Print the ls-seq fairseq plugin folder: fairseq-train --user-dir $(ls-seq fairseq-user-dir) ...",
    )
    udir.set_defaults(func=_fairseq_user_dir)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"ls-seq {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

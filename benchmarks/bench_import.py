"""What ``import ls_seq`` costs next to ``import torch``: fresh interpreters, median of ``--repeats``.

Each case runs ``python -X importtime -c "<statement>"`` in a new process and reads the cumulative times of
the top-level imports from its report (as CPython measures them), so interpreter start-up is left out.
``import torch`` varies by a second between runs on a loaded machine, so the cost of ls-seq itself is read in
the same process as torch: the ``ls_seq`` entry of ``import torch, ls_seq`` (torch already loaded). Cases:
``torch``; ``ls_seq`` (which imports torch); ls-seq on top of torch; and, for scale, transformers and
torchmetrics on top of torch. The target (issue 15): ls-seq at most 0.3 s more than ``import torch``: it loads
torchmetrics, transformers, datasets, matplotlib and evaluate only on first use (also checked below).

    python -m benchmarks.bench_import
    python -m benchmarks.bench_import --baseline /path/to/another/checkout   # + this tree against that one

With ``--baseline``, ``import torch, ls_seq`` is also timed with that checkout first on ``PYTHONPATH``
(alternating with this tree, run by run, so that a change of load hits both alike), and the ratio of the
medians is printed: the 0.2 layout's target was to cost no more than 0.1's (``git worktree add /tmp/old 981c8d0``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CASES = {
    "torch": ("import torch", None),
    "ls_seq": ("import ls_seq", None),
    "ls_seq after torch": ("import torch, ls_seq", "ls_seq"),
    "transformers after torch": ("import torch, transformers", "transformers"),
    "torchmetrics after torch": ("import torch, torchmetrics", "torchmetrics"),
}
HEAVY = ("torchmetrics", "transformers", "datasets", "matplotlib", "evaluate", "accelerate")


def import_seconds(statement: str, module: str | None = None, path: str | None = None) -> float:
    """Cumulative import time of the statement's top-level modules (their sum; only ``module``'s when given), in s;
    ``path`` first on ``PYTHONPATH`` (another checkout of ls-seq)."""
    env = (
        dict(os.environ)
        if path is None
        else {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))}
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=path or None,
    )
    total = 0
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        if not parts[2].startswith("  ") and (module is None or parts[2].strip() == module):  # top level: " name"
            total += int(parts[1])
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default=None, help="another checkout of ls-seq to time `import torch, ls_seq` against")
    args = parser.parse_args()
    if args.baseline is not None:
        here, there = [], []
        for _ in range(args.repeats):
            here.append(import_seconds("import torch, ls_seq", "ls_seq"))
            there.append(import_seconds("import torch, ls_seq", "ls_seq", path=args.baseline))
        this, base = statistics.median(here), statistics.median(there)
        print(
            f"ls_seq after torch: this tree {this:.3f} s, {args.baseline} {base:.3f} s (medians of {args.repeats}, "
            f"alternating): ratio {this / base:.2f}"
        )
    medians = {name: statistics.median(import_seconds(*case) for _ in range(args.repeats)) for name, case in CASES.items()}
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, ls_seq; print([m for m in {HEAVY!r} if m in sys.modules])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print("| import | seconds (median) |")
    print("|---|---|")
    for name, seconds in medians.items():
        print(f"| `{CASES[name][0]}`" + (f", `{CASES[name][1]}` only" if CASES[name][1] else "") + f" | {seconds:.3f} |")
    print(f"\nheavy modules loaded by `import ls_seq`: {loaded}")
    print(f"target: ls_seq after torch <= 0.3 s (measured {medians['ls_seq after torch']:.3f} s), and no heavy module loaded")


if __name__ == "__main__":
    main()

"""What ``import ls_seq`` costs next to ``import torch``: fresh interpreters, median of ``--repeats``.

Each case runs ``python -X importtime -c "<statement>"`` in a new process and reads the cumulative times of
the top-level imports from its report (as CPython measures them), so interpreter start-up is left out.
``import torch`` varies by a second between runs on a loaded machine, so the cost of ls-seq itself is read in
the same process as torch: the ``ls_seq`` entry of ``import torch, ls_seq`` (torch already loaded). Cases:
``torch``; ``ls_seq`` (which imports torch); ls-seq on top of torch; and, for scale, transformers and
torchmetrics on top of torch. The target (issue 15): ls-seq at most 0.3 s more than ``import torch``: it loads
torchmetrics, transformers, datasets, matplotlib and evaluate only on first use (also checked below).

    python -m benchmarks.bench_import
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CASES = {"torch": ("import torch", None), "ls_seq": ("import ls_seq", None),
         "ls_seq after torch": ("import torch, ls_seq", "ls_seq"),
         "transformers after torch": ("import torch, transformers", "transformers"),
         "torchmetrics after torch": ("import torch, torchmetrics", "torchmetrics")}  # fmt: skip
HEAVY = ("torchmetrics", "transformers", "datasets", "matplotlib", "evaluate", "accelerate")


def import_seconds(statement: str, module: str | None = None) -> float:
    """Cumulative import time of the statement's top-level modules (their sum; only ``module``'s when given), in s."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True, check=True)
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
    args = parser.parse_args()
    medians = {name: statistics.median(import_seconds(*case) for _ in range(args.repeats)) for name, case in CASES.items()}
    loaded = subprocess.run([sys.executable, "-c", f"import sys, ls_seq; print([m for m in {HEAVY!r} if m in sys.modules])"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    print("| import | seconds (median) |")
    print("|---|---|")
    for name, seconds in medians.items():
        print(f"| `{CASES[name][0]}`" + (f", `{CASES[name][1]}` only" if CASES[name][1] else "") + f" | {seconds:.3f} |")
    print(f"\nheavy modules loaded by `import ls_seq`: {loaded}")
    print(f"target: ls_seq after torch <= 0.3 s (measured {medians['ls_seq after torch']:.3f} s), and no heavy module loaded")


if __name__ == "__main__":
    main()

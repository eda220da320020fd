"""``TokenCalibration.update`` against torchmetrics' ``MulticlassCalibrationError`` on (4096, 32000) logits.

Cases (one batch: ``update`` then ``compute``, timed in one interleaved loop; the logits are 64 rows of 64
tokens, so the sequence-level measure has sequences):
- ``torchmetrics``: ``MulticlassCalibrationError(num_classes=V, n_bins=15, ignore_index=-100)`` on the raw
  logits (it applies the softmax itself), at one temperature. The reference of the ratios.
- ``ls-seq ECE, T=1``: ``TokenCalibration(n_bins=15, measures=["width"])``: what torchmetrics measures.
- ``ls-seq all measures, 5 temperatures``: ``TokenCalibration(n_bins=15, temperatures=5 values,
  classes=the 20 most frequent labels)``: every measure of the schema (equal-width and equal-mass bins,
  debiased RMS, Brier, 200 bootstrap replicates, class-wise, top-5, sequence-level) at every temperature in the
  same pass. Target: >= 3x faster than torchmetrics at one.
- ``ls-seq ECE, 13 temperatures``: the equal-width measure over 13 temperatures (compare with 13x T=1).

It also reports the state each metric holds after the batch: torchmetrics keeps every token's confidence
and accuracy (it grows with the tokens), ls-seq a fixed ``O(T * n_bins)`` set of sums.

Run from the repository root:

    python -m benchmarks.bench_calibration                 # N=4096, V=32000
    python -m benchmarks.bench_calibration --n 1024        # quick
    LS_SEQ_NATIVE=0 python -m benchmarks.bench_calibration # ls-seq's ATen path instead of its compiled kernels
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassCalibrationError

from benchmarks import common
from ls_seq.calibration.metric import TokenCalibration

IGNORE = -100
TEMPERATURES = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.5, 1.7, 2.0, 2.5]
GRID = [0.8, 1.0, 1.25, 1.5, 2.0]
REFERENCE = "torchmetrics"
ALL = "ls-seq all measures, 5 temperatures"


def make_inputs(n, v, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(n, v, generator=g)).to(device=device, dtype=dtype)  # (N, V)
    labels = torch.randint(0, v, (n,), generator=g).to(device)  # (N,)
    labels[::17] = IGNORE
    rows = 64 if n % 64 == 0 else 1  # rows of 64 tokens: sequences for the sequence-level measure
    return logits.reshape(rows, -1, v), labels.reshape(rows, -1)


def make_metric(name, v, device="cpu"):
    if name == REFERENCE:
        return MulticlassCalibrationError(num_classes=v, n_bins=15, norm="l1", ignore_index=IGNORE).to(device)
    if name == "ls-seq ECE, T=1":
        return TokenCalibration(n_bins=15, measures=["width"]).to(device)
    if name == ALL:
        return TokenCalibration(n_bins=15, temperatures=GRID, classes=list(range(20))).to(device)
    if name == "ls-seq ECE, 13 temperatures":
        return TokenCalibration(n_bins=15, temperatures=TEMPERATURES, measures=["width"]).to(device)
    raise KeyError(name)


def state_bytes(metric) -> int:
    total = 0
    for name in metric._defaults:
        value = getattr(metric, name)
        values = value if isinstance(value, list) else [value]
        total += sum(t.numel() * t.element_size() for t in values)
    return total


def make_step(name, logits, labels):
    def step():
        metric = make_metric(name, logits.shape[-1], str(logits.device))
        if name == REFERENCE:  # torchmetrics takes (N, V) and (N,)
            metric.update(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        else:
            metric.update(logits, labels)
        out = metric.compute()
        return metric, out if name == REFERENCE else out["ece"]

    return step


def build_case(name, n, v, dtype, device="cpu"):
    logits, labels = make_inputs(n, v, getattr(torch, dtype), device)
    return make_step(name, logits, labels)


CASES = [REFERENCE, "ls-seq ECE, T=1", ALL, "ls-seq ECE, 13 temperatures"]


def main() -> None:
    parser = common.benchmark_parser(__doc__, n=4096)
    args = parser.parse_args()

    logits, labels = make_inputs(args.n, args.v, getattr(torch, args.dtype), args.device)
    steps = {name: make_step(name, logits, labels) for name in CASES}
    results = {name: steps[name]() for name in CASES}
    times = common.time_interleaved(steps, repeats=args.repeats, device=args.device)
    del logits, labels, steps
    rows = []
    for name in CASES:
        metric, ece = results[name]
        row = {
            "case": name,
            "time (s)": f"{times[name]:.3f}",
            "time / torchmetrics": f"{times[name] / times[REFERENCE]:.2f}x",
            "speed-up": f"{times[REFERENCE] / times[name]:.1f}x",
            "state after batch": common.fmt_bytes(state_bytes(metric)),
            "ECE at T=1": f"{float(ece if ece.dim() == 0 else ece[(GRID if name == ALL else TEMPERATURES).index(1.0)]):.5f}",
        }
        if not args.no_memory:
            row["extra peak"] = common.fmt_bytes(
                common.peak_extra_memory(
                    "benchmarks.bench_calibration",
                    "build_case",
                    name=name,
                    n=args.n,
                    v=args.v,
                    dtype=args.dtype,
                    device=args.device,
                )
            )
        rows.append(row)
    print(f"machine: {common.machine_summary()}")
    cols = ["case", "time (s)", "time / torchmetrics", "speed-up", "extra peak", "state after batch", "ECE at T=1"]
    common.print_table(f"calibration update + compute, N={args.n}, V={args.v}, {args.dtype}, 15 bins", rows, cols)
    print("\ntarget: all measures at 5 temperatures >= 3x faster than torchmetrics at one; state independent of the tokens")


if __name__ == "__main__":
    main()

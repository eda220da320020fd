"""Fused linear + label-smoothed CE against ``hidden @ W.T + b`` followed by torch's native LS loss.

Cases, timed in one interleaved loop (forward + backward, gradients for hidden, weight and bias):
- ``hidden @ W.T + native``: materialised logits, ``F.cross_entropy(label_smoothing=alpha)`` (the reference);
- ``hidden @ W.T + ls-seq``: materialised logits, ls-seq's single-pass loss;
- ``ls-seq fused``: ``fused_linear_label_smoothed_cross_entropy`` (chunked, logits never materialised);
- ``Liger fused``: Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` (only with ``--device cuda`` and
  ``liger_kernel`` installed; skipped with a message otherwise).

Run from the repository root:

    python -m benchmarks.bench_fused                                   # N=4096, d=512, V=32000, float32
    python -m benchmarks.bench_fused --n 1024 --repeats 3              # quick
    python -m benchmarks.bench_fused --device cuda --dtype bfloat16    # GPU, with Liger when installed
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from benchmarks import common
from ls_seq import label_smoothed_cross_entropy
from ls_seq.functional.fused import fused_linear_label_smoothed_cross_entropy

IGNORE = -100
REFERENCE = "hidden @ W.T + native"


def liger_available(device: str) -> str | None:
    """None when Liger can run here, else the reason it is skipped."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "Liger-Kernel needs CUDA (Triton kernels); run with --device cuda on a GPU machine"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel is not installed (pip install liger-kernel)"
    return None


def make_inputs(n, d, v, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(device=device, dtype=dtype).requires_grad_()  # (N, d)
    weight = (torch.randn(v, d, generator=g) / d**0.5).to(device=device, dtype=dtype).requires_grad_()  # (V, d)
    bias = (0.1 * torch.randn(v, generator=g)).to(device=device, dtype=dtype).requires_grad_()  # (V,)
    labels = torch.randint(0, v, (n,), generator=g).to(device)  # (N,)
    labels[::17] = IGNORE
    return hidden, weight, bias, labels


def make_step(name, hidden, weight, bias, labels, alpha):
    """A callable running forward + backward of one case and clearing the gradients."""
    if name == REFERENCE:
        loss_fn = lambda: F.cross_entropy(hidden @ weight.T + bias, labels, label_smoothing=alpha)
    elif name == "hidden @ W.T + ls-seq":
        loss_fn = lambda: label_smoothed_cross_entropy(hidden @ weight.T + bias, labels, alpha)
    elif name == "ls-seq fused":
        loss_fn = lambda: fused_linear_label_smoothed_cross_entropy(hidden, weight, labels, alpha, bias=bias)
    elif name == "Liger fused":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, label_smoothing=alpha, reduction="mean")
        loss_fn = lambda: liger(weight, hidden, labels, bias)
    else:
        raise KeyError(name)

    def step():
        loss = loss_fn()
        loss.backward()
        for t in (hidden, weight, bias):
            t.grad = None
        return loss

    return step


def build_case(name, n, d, v, dtype, alpha, device="cpu"):
    """Inputs built (parameters and hidden states); returns the callable that runs one step."""
    return make_step(name, *make_inputs(n, d, v, getattr(torch, dtype), device), alpha)


def main() -> None:
    parser = common.benchmark_parser(__doc__, n=4096)
    parser.add_argument("--d", type=int, default=512, help="hidden size")
    parser.add_argument("--alpha", type=float, default=0.1)
    args = parser.parse_args()

    cases = [REFERENCE, "hidden @ W.T + ls-seq", "ls-seq fused"]
    skip = liger_available(args.device)
    if skip is None:
        cases.append("Liger fused")
    else:
        print(f"skipping Liger fused: {skip}")

    inputs = make_inputs(args.n, args.d, args.v, getattr(torch, args.dtype), args.device)
    steps = {name: make_step(name, *inputs, args.alpha) for name in cases}
    losses = {name: steps[name]().item() for name in cases}
    times = common.time_interleaved(steps, repeats=args.repeats, device=args.device)
    del inputs, steps
    mems = {}
    if not args.no_memory:
        for name in cases:
            mems[name] = common.peak_extra_memory(
                "benchmarks.bench_fused",
                "build_case",
                name=name,
                n=args.n,
                d=args.d,
                v=args.v,
                dtype=args.dtype,
                alpha=args.alpha,
                device=args.device,
            )
    rows = common.ratio_rows(list(cases), times, REFERENCE, "ref", mems=mems, losses=losses)
    print(f"machine: {common.machine_summary()}")
    cols = ["case", "time (s)", "time / ref", "extra peak", "peak / ref", "loss - ref"]
    title = f"fused linear + LS CE fwd+bwd, N={args.n}, d={args.d}, V={args.v}, {args.dtype}, alpha={args.alpha}"
    common.print_table(title, rows, cols)
    print("\ntargets: ls-seq fused time <= 1.1x ref, extra peak <= 0.25x ref")


if __name__ == "__main__":
    main()

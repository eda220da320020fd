"""ls-seq's fused loss against Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` on the heads of issue "the fused
loss for every head" (GPU only: Liger's kernels are Triton).

The two comparisons of ``bench_fused_bf16.py`` and ``bench_fused_softcap.py``, each with a third case:

- ``bf16``: a Llama-like head (V = 128256, no bias), one loss step (``hidden -> loss -> backward`` into hidden and
  weight) under bfloat16 autocast, float32 parameters; alpha 0.1;
- ``softcap``: a Gemma-2-shaped head (V = 256000, ``softcap=30``), the same step, also under bfloat16 autocast
  (``--no-autocast`` for float32).

Cases: the unfused reference (``F.linear`` under autocast, the cap in torch, ls-seq's loss), ls-seq fused
(``fused_linear_label_smoothed_cross_entropy``), Liger fused (``LigerFusedLinearCrossEntropyLoss(label_smoothing=
0.1, softcap=..., lse_square_scale=--z-loss)``; it casts its inputs to the autocast dtype itself). Both smooth with
``alpha / V`` on every class (PyTorch's convention) and add the z-loss on counted tokens only, so their losses
agree to bf16 accuracy (``loss - unfused`` column). Extra peak memory: ``torch.cuda.max_memory_allocated`` in a
fresh process per case (``benchmarks/common.py``). Targets for ls-seq fused: time <= 1.1x Liger's, extra peak
within 1.25x of Liger's (Liger materialises no logits either).

Without CUDA or without ``liger_kernel`` installed the script says so and exits (status 0). Run from the
repository root on a GPU machine with ``pip install liger-kernel``:

    python -m benchmarks.bench_liger --device cuda                         # both comparisons
    python -m benchmarks.bench_liger --device cuda --comparison softcap --d 2304 --n 8192
"""

from __future__ import annotations

import torch

from benchmarks import common
from benchmarks.bench_fused import liger_available
from benchmarks.bench_fused_bf16 import ALPHA, IGNORE, loss_fn, make_inputs

COMPARISONS = {  # name: (V, softcap)
    "bf16": (128256, None),
    "softcap": (256000, 30.0),
}
REFERENCE = "unfused"
CASES = [REFERENCE, "ls-seq fused", "Liger fused"]


def liger_loss(hidden, weight, labels, softcap=None, z_loss=0.0):
    """Liger-Kernel's fused linear cross-entropy with the same smoothing, cap and z-loss."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    liger = LigerFusedLinearCrossEntropyLoss(
        ignore_index=IGNORE, label_smoothing=ALPHA, lse_square_scale=z_loss, softcap=softcap, reduction="mean"
    )
    out = liger(weight, hidden, labels)
    return out if isinstance(out, torch.Tensor) else out[0]  # newer versions may return (loss, extras)


def make_step(name, hidden, weight, labels, device, autocast, softcap, z_loss):
    """A callable running forward + backward of one case and clearing the gradients."""

    def step():
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            if name == "Liger fused":
                loss = liger_loss(hidden, weight, labels, softcap=softcap, z_loss=z_loss)
            else:
                case = "fused" if name == "ls-seq fused" else "unfused"
                loss = loss_fn(case, hidden, weight, labels, softcap=softcap, z_loss=z_loss)
        loss.backward()
        hidden.grad = weight.grad = None
        return loss

    return step


def build_case(name, comparison, n, d, device, autocast, z_loss):
    vocab, softcap = COMPARISONS[comparison]
    return make_step(name, *make_inputs(n, d, vocab, device), device, autocast, softcap, z_loss)


def main() -> None:
    parser = common.benchmark_parser(__doc__, n=4 * 512)
    parser.add_argument("--d", type=int, default=64, help="hidden size")
    parser.add_argument("--comparison", choices=[*COMPARISONS, "both"], default="both")
    parser.add_argument("--z-loss", type=float, default=0.0, help="z-loss weight for every case (Liger: lse_square_scale)")
    parser.add_argument("--no-autocast", action="store_true", help="float32 instead of bfloat16 autocast")
    args = parser.parse_args()
    skip = liger_available(args.device)
    if skip is not None:
        print(f"bench_liger skipped: {skip}")
        return

    print(f"machine: {common.machine_summary()}")
    autocast = not args.no_autocast
    for comparison in COMPARISONS if args.comparison == "both" else [args.comparison]:
        vocab, softcap = COMPARISONS[comparison]
        inputs = make_inputs(args.n, args.d, vocab, args.device)
        steps = {name: make_step(name, *inputs, args.device, autocast, softcap, args.z_loss) for name in CASES}
        losses = {name: steps[name]().item() for name in CASES}
        times = common.time_interleaved(steps, repeats=args.repeats, warmup=0, device=args.device)  # the loss run warmed up
        del inputs, steps
        mems = {}
        if not args.no_memory:
            sizes = dict(comparison=comparison, n=args.n, d=args.d, device=args.device, autocast=autocast, z_loss=args.z_loss)
            mems = {name: common.peak_extra_memory("benchmarks.bench_liger", "build_case", name=name, **sizes) for name in CASES}
        rows = common.ratio_rows(CASES, times, REFERENCE, "unfused", mems=mems, losses=losses)
        for row in rows:  # ls-seq against Liger, the comparison this script is for
            row["time / Liger"] = f"{float(row['time (s)']) / times['Liger fused']:.2f}x"
            if mems:
                name = row["case"]
                row["peak / Liger"] = f"{mems[name] / mems['Liger fused']:.2f}x"
        precision = "bf16 autocast" if autocast else "float32"
        title = (
            f"{comparison}: loss step, N={args.n}, d={args.d}, V={vocab}, softcap={softcap}, z_loss={args.z_loss}, "
            f"{precision}, alpha={ALPHA}, median of {args.repeats}"
        )
        cols = ["case", "time (s)", "time / unfused", "time / Liger"]
        cols += ["extra peak", "peak / unfused", "peak / Liger"] if mems else []
        common.print_table(title, rows, cols + ["loss - unfused"])
    print("\ntargets: ls-seq fused time <= 1.1x Liger fused, extra peak <= 1.25x Liger's")


if __name__ == "__main__":
    main()

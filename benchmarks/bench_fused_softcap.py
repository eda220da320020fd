"""The fused loss with Gemma-2's final logit soft-capping against linear, ``30 * tanh(z / 30)``, then the loss.

A Gemma-2-shaped head: V = 256000 (Gemma 2/3's vocabulary), ``final_logit_softcapping = 30``, no bias. The hidden
size defaults to 64 (as in ``bench_fused_llama``), not Gemma-2-2B's 2304: at 2304 the float32 head and its gradient
take 4.7 GB and one step of 512 tokens ~1.8 TFLOP, minutes per run on the 2-core CPU box. Both cases must produce
the (V, d) gradient of the head, so a large ``d`` with few tokens makes that gradient dominate both peaks and
pushes the ratio towards 1 (``--n`` / ``--d`` to see it; benchmarks/README.md lists such runs).
One training step of the loss part: ``hidden -> loss -> backward`` into ``hidden`` and ``weight``:

- ``unfused``: ``F.linear`` (the head), ``30 * tanh(z / 30)`` in torch, then ``label_smoothed_cross_entropy``:
  the reference, which keeps the (N, V) logits, the capped logits and tanh's output for backward;
- ``fused``: ``fused_linear_label_smoothed_cross_entropy(..., softcap=30.0)``: the cap and its derivative
  ``1 - tanh**2`` applied chunk by chunk, no (N, V) tensor.

float32 by default; ``--autocast`` runs both under bfloat16 autocast. ``loss - unfused`` is printed as a sanity
check (the tests hold the accuracy). Targets: fused extra peak <= 0.25x unfused, time <= 1.1x. Extra peak:
``benchmarks/common.py`` (a fresh process per case, the resident-set high-water mark above the inputs). Run from
the repository root:

    OMP_NUM_THREADS=1 python -m benchmarks.bench_fused_softcap                  # N = 512, d = 64, V = 256000
    OMP_NUM_THREADS=1 python -m benchmarks.bench_fused_softcap --autocast       # under bf16 autocast
"""

from __future__ import annotations

from benchmarks import common
from benchmarks.bench_fused_bf16 import make_inputs, make_step

SOFTCAP = 30.0
REFERENCE = "unfused (linear, 30 tanh(z / 30), loss)"
CASES = [REFERENCE, "fused (softcap=30)"]


def build_case(name: str, n: int, d: int, v: int, autocast: bool, device: str = "cpu"):
    """Inputs built; returns the callable that runs one step (the memory child calls it once)."""
    case = name if name == REFERENCE else "fused"
    return make_step(case, *make_inputs(n, d, v, device), device=device, autocast=autocast, softcap=SOFTCAP)


def main() -> None:
    parser = common.benchmark_parser(__doc__, n=512, v=256000)
    parser.add_argument("--d", type=int, default=64, help="hidden size (Gemma-2-2B: 2304)")
    parser.add_argument("--autocast", action="store_true", help="run both under bfloat16 autocast")
    args = parser.parse_args()

    sizes = dict(n=args.n, d=args.d, v=args.v, autocast=args.autocast, device=args.device)
    inputs = make_inputs(args.n, args.d, args.v, args.device)
    kwargs = {"device": args.device, "autocast": args.autocast, "softcap": SOFTCAP}
    steps = {name: make_step(name if name == REFERENCE else "fused", *inputs, **kwargs) for name in CASES}
    losses = {name: steps[name]().item() for name in CASES}
    times = common.time_interleaved(steps, repeats=args.repeats, warmup=0, device=args.device)  # the loss run warmed up
    del inputs, steps
    mems = {}
    if not args.no_memory:
        for name in CASES:
            mems[name] = common.peak_extra_memory("benchmarks.bench_fused_softcap", "build_case", name=name, **sizes)
    rows = common.ratio_rows(CASES, times, REFERENCE, "unfused", mems=mems, losses=losses)
    print(f"machine: {common.machine_summary()}")
    precision = "bf16 autocast" if args.autocast else "float32"
    title = f"loss step with softcap {SOFTCAP:g}, N={args.n}, d={args.d}, V={args.v}, {precision}, median of {args.repeats}"
    cols = ["case", "time (s)", "time / unfused"] + (["extra peak", "peak / unfused"] if mems else []) + ["loss - unfused"]
    common.print_table(title, rows, cols)
    print("\ntargets: fused extra peak <= 0.25x unfused, time <= 1.1x")


if __name__ == "__main__":
    main()

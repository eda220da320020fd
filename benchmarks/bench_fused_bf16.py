"""The fused loss under bfloat16 autocast against ``nn.Linear`` + ls-seq's loss under the same autocast.

One training step of the loss part of a tiny Llama-like head (no bias, untied, float32 master weights):
``hidden (N, d) -> loss -> backward`` into ``hidden`` and ``weight``, all inside
``torch.autocast(device, dtype=torch.bfloat16)``, as a mixed-precision training step runs it:

- ``unfused (autocast)``: ``nn.Linear`` under autocast (bf16 logits, ``(N, V)``), then
  ``label_smoothed_cross_entropy`` (float32 statistics, bf16 gradient of the logits): the reference;
- ``fused (autocast)``: ``fused_linear_label_smoothed_cross_entropy`` on the same parameters: bf16 chunk
  matmuls, float32 statistics per chunk, the logits never exist.

The loss of each is compared with the float32 computation (no autocast) of the same step: ``|loss - fp32|`` must
stay within bfloat16 accuracy (the script states ``2**-8 * fp32``, one bf16 rounding of the loss, as the bound).

Targets: fused extra peak <= 0.2x unfused, time <= 1.1x. Extra peak: ``benchmarks/common.py``
(``peak_extra_memory``: a fresh ``spawn``ed process per case, the resident-set high-water mark ``VmHWM`` reset
through ``/proc/self/clear_refs`` after the inputs exist, so the parameters and hidden states are excluded and
the gradients, logits and buffers are included). Run from the repository root:

    OMP_NUM_THREADS=1 python -m benchmarks.bench_fused_bf16                 # 4 x 512 tokens, V = 128256, d = 64
    OMP_NUM_THREADS=1 python -m benchmarks.bench_fused_bf16 --n 512 --repeats 2   # quick
    python -m benchmarks.bench_fused_bf16 --device cuda --d 2048             # on a GPU
"""

from __future__ import annotations

import torch

from benchmarks import common
from ls_seq import label_smoothed_cross_entropy
from ls_seq.functional.fused import fused_linear_label_smoothed_cross_entropy

IGNORE = -100
REFERENCE = "unfused (autocast)"
CASES = [REFERENCE, "fused (autocast)"]
ALPHA = 0.1


def make_inputs(n: int, d: int, v: int, device: str = "cpu", seed: int = 0):
    """float32 hidden states (N, d) and a float32 head (V, d), both needing gradients, and labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(device).requires_grad_()  # (N, d)
    weight = (torch.randn(v, d, generator=g) / d**0.5).to(device).requires_grad_()  # (V, d)
    labels = torch.randint(0, v, (n,), generator=g).to(device)  # (N,)
    labels[::17] = IGNORE
    return hidden, weight, labels


def loss_fn(name: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, **head):
    """The loss of case ``name`` (``head``: ``softcap`` / ``logit_scale`` / ``z_loss``, for the other scripts)."""
    if name.startswith("fused"):
        return fused_linear_label_smoothed_cross_entropy(hidden, weight, labels, ALPHA, **head)
    z = torch.nn.functional.linear(hidden, weight)  # nn.Linear's call: bf16 logits under autocast
    if head.get("logit_scale", 1.0) != 1.0:
        z = z * head["logit_scale"]
    if head.get("softcap") is not None:
        z = head["softcap"] * torch.tanh(z / head["softcap"])
    return label_smoothed_cross_entropy(z, labels, ALPHA, z_loss=head.get("z_loss", 0.0))


def make_step(name, hidden, weight, labels, device="cpu", autocast=True, **head):
    """A callable running forward + backward of one case (under bf16 autocast) and clearing the gradients."""

    def step():
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(name, hidden, weight, labels, **head)
        loss.backward()
        hidden.grad = weight.grad = None
        return loss

    return step


def build_case(name: str, n: int, d: int, v: int, device: str = "cpu"):
    """Inputs built; returns the callable that runs one step (the memory child calls it once)."""
    return make_step(name, *make_inputs(n, d, v, device), device=device)


def main() -> None:
    parser = common.benchmark_parser(__doc__, n=4 * 512, v=128256)
    parser.add_argument("--d", type=int, default=64, help="hidden size")
    args = parser.parse_args()

    inputs = make_inputs(args.n, args.d, args.v, args.device)
    steps = {name: make_step(name, *inputs, device=args.device) for name in CASES}
    losses = {name: steps[name]().item() for name in CASES}
    fp32 = make_step(REFERENCE, *inputs, device=args.device, autocast=False)().item()
    times = common.time_interleaved(steps, repeats=args.repeats, warmup=0, device=args.device)  # the loss run warmed up
    del inputs, steps
    mems = {}
    if not args.no_memory:
        for name in CASES:
            mems[name] = common.peak_extra_memory(
                "benchmarks.bench_fused_bf16", "build_case", name=name, n=args.n, d=args.d, v=args.v, device=args.device
            )
    rows = common.ratio_rows(CASES, times, REFERENCE, "unfused", mems=mems)
    bound = 2**-8 * abs(fp32)
    for row, name in zip(rows, CASES):
        diff = losses[name] - fp32
        row["loss - fp32"] = f"{diff:+.1e} ({'within' if abs(diff) <= bound else 'OUTSIDE'} 2**-8 * fp32 = {bound:.1e})"
    print(f"machine: {common.machine_summary()}")
    title = (
        f"loss step under bf16 autocast, N={args.n}, d={args.d}, V={args.v}, float32 parameters, alpha={ALPHA}, "
        f"median of {args.repeats}; fp32 loss {fp32:.6f}"
    )
    cols = ["case", "time (s)", "time / unfused"] + (["extra peak", "peak / unfused"] if mems else []) + ["loss - fp32"]
    common.print_table(title, rows, cols)
    print("\ntargets: fused extra peak <= 0.2x unfused, time <= 1.1x, |loss - fp32| within bf16 tolerance")


if __name__ == "__main__":
    main()

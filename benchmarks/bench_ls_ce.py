"""ls-seq's label-smoothed cross-entropy against its anchors: forward + backward on given logits.

Anchors, all timed in the same interleaved loop on the same logits:
- torch native ``F.cross_entropy(logits, labels, label_smoothing=alpha)`` (the reference of the ratios);
- HuggingFace's ``LabelSmoother.__call__`` formula (transformers/trainer_pt_utils.py), restated;
- fairseq's ``label_smoothed_nll_loss`` (fairseq/criterions/label_smoothed_cross_entropy.py), restated;
- one ``torch.logsumexp`` over the logits, forward only: the cost of a single read, as a floor.

Run from the repository root:

    python -m benchmarks.bench_ls_ce                       # N=8192, V=32000, float32
    python -m benchmarks.bench_ls_ce --n 2048 --repeats 3   # quick
    python -m benchmarks.bench_ls_ce --dtype bfloat16
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks import common
from ls_seq import label_smoothed_cross_entropy

IGNORE = -100


def hf_label_smoother(logits, labels, epsilon):
    """transformers.trainer_pt_utils.LabelSmoother.__call__ (v5), restated for 2-D logits."""
    log_probs = -F.log_softmax(logits, dim=-1)
    labels = labels.unsqueeze(-1)
    padding_mask = labels.eq(IGNORE)
    labels = torch.clamp(labels, min=0)
    nll_loss = log_probs.gather(dim=-1, index=labels)
    smoothed_loss = log_probs.sum(dim=-1, keepdim=True, dtype=torch.float32)
    nll_loss.masked_fill_(padding_mask, 0.0)
    smoothed_loss.masked_fill_(padding_mask, 0.0)
    denominator = padding_mask.numel() - padding_mask.long().sum()
    nll_loss = nll_loss.sum() / denominator
    smoothed_loss = smoothed_loss.sum() / (denominator * log_probs.shape[-1])
    return (1 - epsilon) * nll_loss + epsilon * smoothed_loss


def fairseq_label_smoothed_nll_loss(logits, labels, epsilon):
    """fairseq's label_smoothed_nll_loss on log_softmax(logits) (uniform-equivalent epsilon), per token."""
    lprobs = F.log_softmax(logits.float(), dim=-1)
    target = labels.unsqueeze(-1)
    pad_mask = target.eq(IGNORE)
    target = target.masked_fill(pad_mask, 0)
    nll_loss = -lprobs.gather(dim=-1, index=target)
    smooth_loss = -lprobs.sum(dim=-1, keepdim=True)
    nll_loss.masked_fill_(pad_mask, 0.0)
    smooth_loss.masked_fill_(pad_mask, 0.0)
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss.sum() / (~pad_mask).sum()


def make_inputs(n, v, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, v, generator=g)).to(device=device, dtype=dtype)  # (N, V)
    labels = torch.randint(0, v, (n,), generator=g).to(device)  # (N,)
    labels[::17] = IGNORE  # some padding, as in real batches
    return logits.requires_grad_(), labels


def _step(name, logits, labels, alpha, v):
    if name == "logsumexp (1 read, fwd only)":
        with torch.no_grad():
            return torch.logsumexp(logits.float(), dim=-1)
    if name == "ls-seq":
        loss = label_smoothed_cross_entropy(logits, labels, alpha)
    elif name == "torch native":
        loss = F.cross_entropy(logits, labels, label_smoothing=alpha)
    elif name == "HF LabelSmoother":
        loss = hf_label_smoother(logits, labels, alpha)
    elif name == "fairseq":
        loss = fairseq_label_smoothed_nll_loss(logits, labels, alpha * (v - 1) / v)  # same target
    else:
        raise KeyError(name)
    loss.backward()
    logits.grad = None
    return loss


CASES = ["torch native", "ls-seq", "HF LabelSmoother", "fairseq", "logsumexp (1 read, fwd only)"]


def build_case(name, n, v, dtype, alpha, device="cpu"):
    """Inputs built and touched; returns the callable that runs one forward + backward."""
    logits, labels = make_inputs(n, v, getattr(torch, dtype), device)
    return lambda: _step(name, logits, labels, alpha, v)


def _time_cases(args):
    """Losses and median times of every case on one set of logits (freed on return, before the memory runs)."""
    logits, labels = make_inputs(args.n, args.v, getattr(torch, args.dtype), args.device)
    losses = {name: _step(name, logits, labels, args.alpha, args.v).item() for name in CASES[:4]}
    steps = {name: (lambda name=name: _step(name, logits, labels, args.alpha, args.v)) for name in CASES}
    return losses, common.time_interleaved(steps, repeats=args.repeats, device=args.device)


def main() -> None:
    parser = common.benchmark_parser(__doc__, n=8192)
    parser.add_argument("--alpha", type=float, default=0.1)
    args = parser.parse_args()

    losses, times = _time_cases(args)
    ref = "torch native"
    mems = {}
    if not args.no_memory:
        for name in CASES:
            mems[name] = common.peak_extra_memory(
                "benchmarks.bench_ls_ce",
                "build_case",
                name=name,
                n=args.n,
                v=args.v,
                dtype=args.dtype,
                alpha=args.alpha,
                device=args.device,
            )
    rows = common.ratio_rows(list(CASES), times, ref, "native", mems=mems, losses=losses)
    print(f"machine: {common.machine_summary()}")
    cols = ["case", "time (s)", "time / native", "extra peak", "peak / native", "loss - native"]
    title = f"LS cross-entropy fwd+bwd, N={args.n}, V={args.v}, {args.dtype}, alpha={args.alpha}"
    common.print_table(title, rows, cols)
    print("\ntargets: ls-seq time <= 0.7x native, extra peak <= 0.6x native")


if __name__ == "__main__":
    main()

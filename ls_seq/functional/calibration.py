r"""Token-level calibration: binned statistics, expected calibration error and temperature fitting.

The statistics of one batch are a handful of per-bin sums (count, summed confidence, summed correctness) and
the summed NLL, for every temperature at once. They add across batches and processes, so a streaming,
distributed metric is a sum of them (:class:`ls_seq.metrics.TokenCalibration`) and the functional form is one
batch of it. The two share :func:`_calibration_update` and :func:`_calibration_compute`.

Binning convention: with ``B`` equal-width bins, a confidence ``c`` goes to bin ``min(floor(c * B), B - 1)``:
bins are left-closed ``[k/B, (k+1)/B)`` and ``c = 1`` joins the last bin. torchmetrics' ``bucketize`` binning is
also left-closed but puts ``c = 1`` into an extra bin of its own and uses float32 edges, so the two agree
except for confidences that are exactly 1 or within rounding of an edge.

For temperature ``T`` and logits ``z`` with maximum ``m``: ``lse_T = m / T + log sum_k exp((z_k - m) / T)``, the
confidence is ``exp(m / T - lse_T)``, the NLL ``lse_T - z_y / T``; the argmax (and so accuracy) does not depend
on ``T``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import torch

from ls_seq._validation import check_choice, check_logits_labels, check_positive_int
from ls_seq.functional._kernels import chunk_rows_for

__all__ = ["NORMS", "expected_calibration_error", "fit_temperature"]

NORMS = ("l1", "l2", "max")


def _iter_valid_chunks(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(z, y)``: float32 logits ``(n, V)`` and labels ``(n,)`` of the non-ignored rows, chunk by chunk.

    Only one chunk of selected rows is copied at a time; the full masked logits are never materialised.
    """
    vocab = logits.shape[-1]
    z_all = logits.reshape(-1, vocab)  # (N, V)
    y_all = labels.reshape(-1)  # (N,)
    # The temperature fit keeps about four chunk-sized temporaries alive, so it reads a quarter of the
    # kernels' chunk (the same row policy, one place to change it).
    step = max(1, chunk_rows_for(z_all.shape[0], vocab) // 4)
    for start in range(0, z_all.shape[0], step):
        y = y_all[start : start + step]
        valid = y != ignore_index
        z = z_all[start : start + step]
        if not bool(valid.all()):
            z, y = z[valid], y[valid]
        if y.numel():
            yield z.float(), y.long()


def _calibration_update(
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int,
    ignore_index: int,
    temperatures: torch.Tensor,
    chunk_rows: int | None = None,
    per_row: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-bin sums of one batch at every temperature.

    Returns float64 tensors: ``bin_count``, ``bin_confidence``, ``bin_correct`` of shape ``(T, n_bins)``,
    ``nll_sum`` of shape ``(T,)``, and scalars ``n_tokens``, ``n_correct``. With ``per_row`` the sums are
    kept apart for each row of the batch (``labels.shape[0]`` rows): every shape gets a leading ``R``.
    Raises ``ValueError`` if a non-ignored row holds NaN or an infinite logit.

    One fused softmax over the logits per temperature, chunk by chunk, and no copy of them: the row max,
    argmax, target logit and finiteness sum are taken once (every temperature shares them), and the
    confidence is the softmax at the argmax. Padded rows of a chunk are computed along (selecting the
    others would copy the chunk) and dropped from the per-row results; chunks of padding only are skipped.
    Per-row results are ``O(T * N)`` floats, ``V`` times smaller than the logits, binned once at the end.
    """
    device = logits.device
    vocab = logits.shape[-1]
    z_all = logits.reshape(-1, vocab)  # (N, V), a view when possible
    y_all = labels.reshape(-1)  # (N,)
    n_rows = z_all.shape[0]
    n_temps = temperatures.numel()
    inv_t = (1.0 / temperatures.double()).tolist()
    valid_all = y_all != ignore_index  # (N,)
    y_safe = torch.where(valid_all, y_all, torch.zeros_like(y_all)).long()  # (N,)

    confidence = torch.ones(n_temps, n_rows, dtype=torch.float32, device=device)  # (T, N)
    shift_y = torch.zeros(n_rows, dtype=torch.float32, device=device)  # (N,) m - z_y
    correct = torch.zeros(n_rows, dtype=torch.bool, device=device)  # (N,)
    row_sum = torch.zeros(n_rows, dtype=torch.float32, device=device)  # (N,) finite iff the row is
    # Large chunks, few parallel ops (see ls_seq.functional._kernels): the softmax works row by row anyway.
    step = chunk_rows_for(n_rows, vocab, chunk_rows)
    scratch = torch.empty(min(step, max(n_rows, 1)), vocab, dtype=torch.float32, device=device)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        if not bool(valid_all[start:stop].any()):
            continue
        z = z_all[start:stop]  # (c, V), any float dtype
        m, pred = z.max(dim=-1)  # (c,), (c,)
        correct[start:stop] = pred == y_all[start:stop]
        shift_y[start:stop] = m.float() - z.gather(1, y_safe[start:stop, None]).squeeze(1).float()
        row_sum[start:stop] = z.sum(dim=-1, dtype=torch.float32)
        work = scratch[: stop - start]  # (c, V)
        for i, b in enumerate(inv_t):
            if z.dtype != torch.float32:
                src = work.copy_(z)  # upcast first: scaling in half loses bits; CPU softmax can't upcast
                if b != 1.0:
                    src.mul_(b)
            elif b != 1.0:
                src = torch.mul(z, b, out=work)
            else:
                src = z
            torch.softmax(src, 1, out=work)  # in place is safe: each element is read before it is written
            torch.gather(work, 1, pred[:, None], out=confidence[i, start:stop, None])

    valid = valid_all.nonzero().squeeze(1)  # (n,)
    # The row sum is finite iff every logit is: checked on counted rows only, padding may hold anything.
    if not bool(torch.isfinite(row_sum.index_select(0, valid)).all()):
        raise ValueError("`logits` must be finite at non-ignored positions; got NaN or an infinite value")
    confidence = confidence.index_select(1, valid)  # (T, n): p_max = exp(m/T - lse_T)
    inv_t_col = torch.tensor(inv_t, dtype=torch.float32, device=device)[:, None]  # (T, 1)
    # lse_T - z_y / T = (m - z_y) / T + (lse_T - m / T), and lse_T - m / T = -log p_max
    nll = shift_y.index_select(0, valid)[None, :] * inv_t_col - confidence.log()  # (T, n)
    correct = correct.index_select(0, valid).double()  # (n,)
    bins = (confidence * n_bins).floor().long().clamp_(max=n_bins - 1)  # (T, n)
    offsets = (torch.arange(n_temps, device=device) * n_bins)[:, None]  # (T, 1)
    n_groups = labels.shape[0] if per_row and labels.dim() > 0 else 1
    # Row r of the batch owns tokens r * L ... (r + 1) * L - 1 of the flattened labels.
    group = valid // max(1, n_rows // n_groups) if n_groups > 1 else torch.zeros_like(valid)  # (n,)
    flat = (bins + offsets + group[None, :] * (n_temps * n_bins)).flatten()  # (T * n,)
    size = n_groups * n_temps * n_bins
    shape = (n_groups, n_temps, n_bins)
    if n_groups == 1:
        nll_sum = nll.double().sum(dim=-1)[None, :]  # (1, T)
        n_tokens = torch.full((1,), float(valid.numel()), dtype=torch.float64, device=device)
        n_correct = correct.sum()[None]
    else:
        nll_sum = torch.zeros(n_groups, n_temps, dtype=torch.float64, device=device).index_add_(0, group, nll.double().T)
        n_tokens = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add_(0, group, torch.ones_like(correct))
        n_correct = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add_(0, group, correct)
    out = {
        "bin_count": torch.bincount(flat, minlength=size).view(shape).double(),
        "bin_confidence": torch.bincount(flat, weights=confidence.double().flatten(), minlength=size).view(shape),
        "bin_correct": torch.bincount(flat, weights=correct.expand(n_temps, -1).flatten(), minlength=size).view(
            shape
        ),
        "nll_sum": nll_sum,
        "n_tokens": n_tokens,
        "n_correct": n_correct,
    }
    return out if per_row else {k: v[0] for k, v in out.items()}


def _calibration_compute(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ECE (l1), MCE (max), RMS (l2), NLL, accuracy and mean confidence from summed statistics.

    With ``n_b`` tokens, ``s_b`` summed confidence and ``c_b`` correct tokens in bin ``b`` and ``N`` tokens:
    ``ece = sum_b |c_b - s_b| / N``, ``rms = sqrt(sum_b (c_b - s_b)^2 / n_b / N)``,
    ``mce = max_{b: n_b > 0} |c_b - s_b| / n_b``. Values have shape ``(T,)``.
    """
    n = stats["n_tokens"]
    if float(n) <= 0:
        raise RuntimeError(
            "calibration metrics are undefined before any non-ignored token was seen: call update() with at "
            "least one label that is not ignore_index before compute()"
        )
    count, conf, correct = stats["bin_count"], stats["bin_confidence"], stats["bin_correct"]
    gap = (correct - conf).abs()  # (T, B): n_b * |acc_b - conf_b|
    nonempty = count > 0
    per_bin_gap = torch.where(nonempty, gap / count.clamp_min(1), torch.zeros_like(gap))
    n_temps = count.shape[0]
    return {
        "ece": gap.sum(dim=-1) / n,
        "mce": per_bin_gap.max(dim=-1).values,
        "rms": torch.sqrt((per_bin_gap * gap).sum(dim=-1) / n),
        "nll": stats["nll_sum"] / n,
        "accuracy": (stats["n_correct"] / n).expand(n_temps).clone(),
        "mean_confidence": conf.sum(dim=-1) / n,
        "n_tokens": n.expand(n_temps).clone(),
    }


def _reliability(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-bin edges, mean confidence, accuracy and count (confidence and accuracy are 0 in empty bins)."""
    count = stats["bin_count"]
    n_bins = count.shape[-1]
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=count.device)
    denom = count.clamp_min(1)
    return {
        "lower": edges[:-1].expand_as(count).clone(),
        "upper": edges[1:].expand_as(count).clone(),
        "confidence": stats["bin_confidence"] / denom,
        "accuracy": stats["bin_correct"] / denom,
        "count": count.clone(),
    }


def expected_calibration_error(
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    norm: str = "l1",
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Top-label calibration error of (token) predictions with ``n_bins`` equal-width bins.

    Args:
        logits: ``(..., V)`` scores, any float dtype (computed in float32); must be finite where not ignored.
        labels: ``(...)`` class indices, ``ignore_index`` for padding.
        n_bins: number of equal-width confidence bins (>= 1).
        norm: ``"l1"`` (ECE, ``sum_b n_b/N |acc_b - conf_b|``), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).

    Returns:
        A float64 scalar tensor.

    Example:
        >>> import torch
        >>> from ls_seq import expected_calibration_error
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
        >>> labels = torch.tensor([0, 1, 1])
        >>> round(float(expected_calibration_error(logits, labels, n_bins=10)), 4)  # conf 0.982, acc 2/3
        0.3153
    """
    check_logits_labels(logits, labels, ignore_index)
    check_positive_int(n_bins, "n_bins")
    check_choice(norm, "norm", NORMS)
    temps = torch.ones(1, dtype=torch.float64)
    result = _calibration_compute(_calibration_update(logits, labels, n_bins, ignore_index, temps))
    key = {"l1": "ece", "l2": "rms", "max": "mce"}[norm]
    return result[key][0]


def _nll_and_derivatives(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, inv_t: float
) -> tuple[float, float, float, int]:
    """Summed NLL at ``b = 1/T`` and its first two derivatives in ``b``, and the token count.

    ``f(b) = sum_i lse(b z_i) - b z_iy``; ``f'(b) = sum_i E_{p_b}[z] - z_iy``; ``f''(b) = sum_i Var_{p_b}[z] >= 0``,
    so ``f`` is convex in ``b`` and its stationary point is the NLL-optimal temperature.
    """
    f = d1 = d2 = 0.0
    n = 0
    for z, y in _iter_valid_chunks(logits, labels, ignore_index):
        zb = z * inv_t  # (n, V)
        lse = torch.logsumexp(zb, dim=-1)  # (n,)
        p = torch.exp(zb - lse[:, None])  # (n, V)
        mean_z = (p * z).sum(-1)  # (n,)
        var_z = (p * (z - mean_z[:, None]) ** 2).sum(-1)  # (n,)
        z_y = z.gather(1, y[:, None]).squeeze(1)
        f += float((lse - inv_t * z_y).double().sum())
        d1 += float((mean_z - z_y).double().sum())
        d2 += float(var_z.double().sum())
        n += y.numel()
    return f, d1, d2, n


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
    tol: float = 1e-6,
    max_iter: int = 100,
) -> float:
    r"""The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Fit on held-out logits, then divide test logits by ``T``. The NLL is convex in ``b = 1/T``, so a safeguarded
    Newton iteration on ``b`` (bisection when a Newton step leaves the bracket) finds the optimum exactly; the
    logits are read in chunks, so memory stays flat.

    Args:
        logits: ``(..., V)`` held-out scores; labels ``(...)`` with ``ignore_index`` for padding.
        bounds: the temperature range searched. If the optimum lies outside it, a ``RuntimeWarning`` says so and
            the nearest bound is returned (a model that is right on every token has its optimum at ``T -> 0``).

    Returns:
        The fitted temperature as a Python float.

    Example:
        >>> import torch
        >>> from ls_seq import fit_temperature
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = 3 * torch.randn(20000, 10, generator=g)
        >>> labels = torch.multinomial(torch.softmax(logits / 2.0, -1), 1, generator=g).squeeze(1)
        >>> abs(fit_temperature(logits, labels) - 2.0) < 0.1
        True
    """
    check_logits_labels(logits, labels, ignore_index)
    lo_t, hi_t = bounds
    if not (0 < lo_t < hi_t < math.inf):
        raise ValueError(f"`bounds` must be (low, high) with 0 < low < high < inf, got {bounds!r}")
    b_lo, b_hi = 1.0 / hi_t, 1.0 / lo_t  # bracket on b = 1/T
    _, g_lo, _, n = _nll_and_derivatives(logits, labels, ignore_index, b_lo)
    if n == 0:
        raise ValueError("`labels` hold no token other than ignore_index: there is nothing to fit a temperature on")
    if not math.isfinite(g_lo):
        raise ValueError("`logits` must be finite at non-ignored positions; got NaN or an infinite value")
    if g_lo >= 0:
        warnings.warn(f"the NLL-optimal temperature is above the search bound {hi_t}; returning {hi_t}", RuntimeWarning)
        return hi_t
    _, g_hi, _, _ = _nll_and_derivatives(logits, labels, ignore_index, b_hi)
    if g_hi <= 0:
        warnings.warn(f"the NLL-optimal temperature is below the search bound {lo_t}; returning {lo_t}", RuntimeWarning)
        return lo_t
    b = min(max(1.0, b_lo), b_hi)
    for _ in range(max_iter):
        _, g, h, _ = _nll_and_derivatives(logits, labels, ignore_index, b)
        if g > 0:
            b_hi = b
        else:
            b_lo = b
        step = g / h if h > 0 else math.inf
        b_new = b - step
        if not (b_lo < b_new < b_hi):
            b_new = 0.5 * (b_lo + b_hi)
        if abs(b_new - b) <= tol * b:
            b = b_new
            break
        b = b_new
    return 1.0 / b

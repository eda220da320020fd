r"""Token-level calibration: the per-token statistics of a batch, binned sums and their estimators, temperature fitting.

A calibration pass reads the ``(tokens, V)`` logits once (:func:`token_statistics`): per token and temperature
the largest probability, the label's log-probability and what the enabled measures need besides. Every measure
of :mod:`ls_seq.functional.measures` then bins those into a handful of per-bin sums, which add across batches
and processes; a streaming, distributed metric (:class:`ls_seq.metrics.TokenCalibration`) is a sum of them
and the functional form (:func:`expected_calibration_error`) is one batch of it.

Binning convention: with ``B`` equal-width bins, a confidence ``c`` goes to bin ``min(floor(c * B), B - 1)``:
bins are left-closed ``[k/B, (k+1)/B)`` and ``c = 1`` joins the last bin. torchmetrics' ``bucketize`` binning is
also left-closed but puts ``c = 1`` into an extra bin of its own and uses float32 edges, so the two agree
except for confidences that are exactly 1 or within rounding of an edge. Equal-mass bins are merged from a
fine grid of bins uniform in ``logit(c)`` (:func:`fine_bins`, :func:`merge_equal_mass`).

For temperature ``T`` and logits ``z`` with maximum ``m``: ``lse_T = m / T + log sum_k exp((z_k - m) / T)``, the
confidence is ``exp(m / T - lse_T)``, the NLL ``lse_T - z_y / T``; the argmax (and so accuracy) does not depend
on ``T``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ls_seq._validation import check_choice, check_logits_labels, check_positive_int
from ls_seq.functional._kernels import chunk_rows_for, row_topk
from ls_seq.functional.native import exp_sums, exp_sums_available, native_topk

__all__ = [
    "NORMS",
    "TokenStatistics",
    "binned_errors",
    "binned_sums",
    "expected_calibration_error",
    "fine_bins",
    "fit_temperature",
    "merge_equal_mass",
    "token_statistics",
    "width_bins",
]

NORMS = ("l1", "l2", "max")
_LOG2E = 1.0 / math.log(2.0)
_CPU_CHUNK_ELEMENTS = 1 << 19
_NATIVE_CHUNK_ELEMENTS = 1 << 21

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


@dataclass
class TokenStatistics:
    """Per-token quantities of one batch at every temperature, for the ``n`` non-ignored tokens only.

    Everything a calibration measure bins (:mod:`ls_seq.functional.measures`) comes from here; computing it
    is the only pass over the ``(tokens, V)`` logits, shared by every measure and temperature.
    """

    n_rows: int  # rows (sequences) of the batch: labels.shape[0], or 1 for 1-D labels
    row: torch.Tensor  # (n,) int64: the row of each token
    column: torch.Tensor  # (n,) int64: its position in the row
    label: torch.Tensor  # (n,) int64
    correct: torch.Tensor  # (n,) bool: the arg-max is the label (the same at every temperature)
    confidence: torch.Tensor  # (T, n) float32: largest probability of softmax(z / T)
    log_prob: torch.Tensor  # (T, n) float32: log-probability of the label
    sum_sq: torch.Tensor | None = None  # (T, n): sum_k p_k^2 (Brier score)
    topk_mass: torch.Tensor | None = None  # (T, n): total probability of the k largest logits
    in_topk: torch.Tensor | None = None  # (n,) bool: the label is among the k largest logits
    class_prob: torch.Tensor | None = None  # (T, n, K): probability of each tracked class

    @property
    def n(self) -> int:
        return int(self.label.numel())


def token_statistics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperatures: torch.Tensor,
    *,
    ignore_index: int = -100,
    brier: bool = False,
    top_k: int | None = None,
    classes: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> TokenStatistics:
    """One chunked pass over the scored rows of the logits: :class:`TokenStatistics` at every temperature
    (inputs unchecked).

    The rows whose label is not ``ignore_index`` are taken in chunks (copied into a chunk-sized buffer, unless
    they are consecutive, on CPU); padding is never computed, which matters for padded evaluation batches,
    often a third padding. Per chunk the row max and arg-max (with the top-k), the label's logit and the
    tracked classes' logits are taken once. Per temperature the only dense work is
    ``S_T = sum_k 2^(s (z_k - m))`` with ``s = log2(e) / T`` (and its 2-norm for Brier). Everything else is read
    off ``S_T`` and the few logits taken per row: ``p_max = 1 / S_T``, ``log p_y = (z_y - m) / T - log S_T``, the
    top-k and class probabilities ``2^(s (z_j - m)) / S_T``. Raises ``ValueError`` if a scored row holds NaN or
    an infinite logit.

    On CPU the top-k and every ``S_T`` come from the compiled kernels of :mod:`ls_seq.functional.native` (all
    temperatures in one read of a row); where they cannot be built, and on other devices, from ATen:
    :func:`~ls_seq.functional._kernels.row_topk`, then per temperature one scaled shift, one in-place ``exp2``
    and one or two row reductions into a chunk-sized scratch buffer. Either way a token's statistics depend on
    its row alone, not on its chunk or batch.
    """
    device = logits.device
    vocab = logits.shape[-1]
    z_all = logits.reshape(-1, vocab)  # (N, V), a view when possible
    y_all = labels.reshape(-1)  # (N,)
    n_flat = z_all.shape[0]
    n_temps = temperatures.numel()
    inv_t = (1.0 / temperatures.double()).tolist()
    scales = [b * _LOG2E for b in inv_t]
    valid = (y_all != ignore_index).nonzero().squeeze(1)  # (n,) the scored rows
    n = valid.numel()
    label = y_all.index_select(0, valid).long()  # (n,)

    def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(*shape, dtype=dtype, device=device)

    exp_sum = torch.ones(n_temps, n, dtype=torch.float32, device=device)  # (T, n) S_T
    exp_norm = torch.ones(n_temps, n, dtype=torch.float32, device=device) if brier else None  # (T, n)
    row_max = zeros(n)  # (n,)
    label_logit = zeros(n)  # (n,)
    correct = zeros(n, dtype=torch.bool)  # (n,)
    finite = zeros(n, dtype=torch.bool)  # (n,) whether every logit of the row is finite
    k = max(1, min(top_k or 1, vocab))
    top_logits = zeros(n, k) if top_k else None  # (n, k)
    in_topk = zeros(n, dtype=torch.bool) if top_k else None  # (n,)
    class_logits = zeros(n, classes.numel()) if classes is not None else None  # (n, K)
    on_cpu = device.type == "cpu"
    native = on_cpu and exp_sums_available()  # the compiled kernels: every temperature in one read of a row
    step = _statistics_chunk_rows(n, vocab, device, chunk_rows, native)
    rows_max = min(step, max(n, 1))
    # ATen's elementwise loops take the last few elements of a contiguous run through a scalar ``exp2``
    # that can differ from the vectorised one in the last bit. Strided rows do not coalesce into one run:
    # every row then ends in the same tail, so a token's statistics do not depend on its chunk.
    stride = -(-(vocab + 1) // 16) * 16
    scratch = None  # (rows_max, V) float32: the ATen path's exp2 buffer; the compiled path's upcast logits
    gathered = None  # (rows_max, V) in the logits' dtype: the chunk's scored rows, when not consecutive
    native_scales = torch.tensor(scales, dtype=torch.float64)  # (T,)
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = valid[start:stop]  # (c,)
        if on_cpu and int(rows[-1]) - int(rows[0]) == stop - start - 1:
            z = z_all[int(rows[0]) : int(rows[-1]) + 1]  # consecutive rows: a view, no copy
        else:
            if gathered is None:
                gathered = torch.empty(rows_max, vocab, dtype=z_all.dtype, device=device)
            z = torch.index_select(z_all, 0, rows, out=gathered[: stop - start])  # (c, V), any float dtype
        y = label[start:stop]  # (c,)
        if scratch is None and not (native and z.dtype == torch.float32 and z.stride(1) == 1):
            scratch = torch.empty(rows_max, stride, dtype=torch.float32, device=device)[:, :vocab]
        work = None if scratch is None else scratch[: stop - start]  # (c, V) float32
        if native:
            zf = z if work is None else work.copy_(z)  # half logits upcast exactly
            top_value, top_index = native_topk(zf, k)  # as row_topk's
        else:
            top_value, top_index = row_topk(z, k)  # (c, k), (c, k): largest first, ties to the lowest index
            # The row sum is finite iff every logit is.
            finite[start:stop] = torch.isfinite(z.sum(dim=-1, dtype=torch.float32))
        m = top_value[:, :1].float()  # (c, 1)
        row_max[start:stop] = m[:, 0]
        correct[start:stop] = top_index[:, 0] == y
        label_logit[start:stop] = z.gather(1, y[:, None]).squeeze(1).float()
        if top_k:
            top_logits[start:stop] = top_value.float()
            in_topk[start:stop] = (top_index == y[:, None]).any(-1)
        if classes is not None:
            class_logits[start:stop] = z.index_select(1, classes).float()
        if native:
            sq = None if exp_norm is None else exp_norm[:, start:stop]
            exp_sums(zf, m[:, 0].contiguous(), native_scales, exp_sum[:, start:stop], sq, finite[start:stop])
            if sq is not None:
                sq.sqrt_()
            continue
        for i, s in enumerate(scales):
            # s * z - s * m in float32 (half logits are upcast exactly on the way), then 2^x in place.
            torch.add(m * -s, z, alpha=s, out=work).exp2_()
            torch.sum(work, 1, out=exp_sum[i, start:stop])
            if brier:
                torch.linalg.vector_norm(work, 2, dim=1, out=exp_norm[i, start:stop])

    # Only scored rows are read: padding may hold anything.
    if not bool(finite.all()):
        raise ValueError("`logits` must be finite at non-ignored positions; got NaN or an infinite value")
    inv_t_col = torch.tensor(inv_t, dtype=torch.float32, device=device)[:, None]  # (T, 1)
    scale_col = torch.tensor(scales, dtype=torch.float32, device=device)[:, None]  # (T, 1)
    inv_sum = exp_sum.reciprocal()  # (T, n)
    # The small (T, n) transcendentals run in float64 and round once: their vectorised and scalar results
    # then agree in float32, so they do not depend on n (how the tokens were batched) either.
    log_prob = (label_logit - row_max)[None, :] * inv_t_col - exp_sum.double().log().float()  # (T, n)

    def probabilities(selected: torch.Tensor) -> torch.Tensor:  # (n, j) logits -> (T, n, j) probabilities
        shifted = (selected - row_max[:, None])[None] * scale_col[:, :, None]  # (T, n, j) float32
        return shifted.double().exp2_().float() * inv_sum[:, :, None]

    n_rows = labels.shape[0] if labels.dim() > 1 else 1
    row_length = max(1, n_flat // max(n_rows, 1))
    return TokenStatistics(
        n_rows=n_rows,
        row=valid // row_length,
        column=valid % row_length,
        label=label,
        correct=correct,
        confidence=inv_sum,  # the arg-max's 2^0 / S_T
        log_prob=log_prob,
        sum_sq=None if exp_norm is None else (exp_norm * inv_sum).square_(),
        topk_mass=None if top_logits is None else probabilities(top_logits).sum(-1),
        in_topk=in_topk,
        class_prob=None if class_logits is None else probabilities(class_logits),
    )


def _statistics_chunk_rows(
    n_rows: int, vocab: int, device: torch.device, chunk_rows: int | None, native: bool = False
) -> int:
    """Rows per chunk of :func:`token_statistics`: cache-sized on CPU, the kernels' large chunks elsewhere.

    On CPU each temperature of the ATen path reads and writes the chunk three times (shift, ``exp2``,
    reductions), so a chunk that stays in the L2/L3 cache (2**19 float32 logits, 2 MiB: 16 rows at V = 32000)
    measured 2.3x faster than the kernels' 128 MiB chunks (``benchmarks/bench_calibration.py``). The compiled
    kernels work row by row, so their chunks (2**21 logits) only amortise the per-chunk calls and the split
    across threads. On a GPU few large launches win.
    """
    if chunk_rows is None and device.type == "cpu":
        chunk_rows = max(1, (_NATIVE_CHUNK_ELEMENTS if native else _CPU_CHUNK_ELEMENTS) // max(vocab, 1))
    return chunk_rows_for(n_rows, vocab, chunk_rows)


# --------------------------------------------------------------------------------------------------------------
# Binned sums and the estimators on them


def width_bins(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-width bin of each confidence: ``min(floor(c * B), B - 1)``, so ``[k/B, (k+1)/B)`` and 1 in the last."""
    return (confidence * n_bins).floor().long().clamp_(0, n_bins - 1)


FINE_LOGIT_RANGE = 16.0  # fine bins cover logit(c) in [-16, 16] (1 - c down to 1e-7); beyond, the end bins


def fine_bins(confidence: torch.Tensor, n_fine: int) -> torch.Tensor:
    """Fine bin of each confidence, on a grid uniform in ``logit(c) = log(c / (1 - c))`` over ``[-16, 16]``.

    Token confidences crowd near 1 (and, with large vocabularies, near 0); a logit grid resolves both ends,
    which equal-mass bins merged from the fine ones (:func:`merge_equal_mass`) need.
    """
    c = confidence.double()
    logit = torch.log(c.clamp_min(1e-300)) - torch.log1p(-c.clamp(max=1 - 1e-16))
    u = (logit + FINE_LOGIT_RANGE) / (2 * FINE_LOGIT_RANGE)  # [0, 1] inside the range
    return (u * n_fine).floor().long().clamp_(0, n_fine - 1)


def binned_sums(
    bins: torch.Tensor,
    confidence: torch.Tensor,
    outcome: torch.Tensor,
    n_bins: int,
    group: torch.Tensor | None = None,
    n_groups: int = 1,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin ``(count, summed confidence, summed outcome)`` of binned values, float64.

    Args:
        bins: ``(*lead, n)`` bin of each value (e.g. ``(T, n)``: one row per temperature).
        confidence: ``(*lead, n)`` the values.
        outcome: ``(n,)`` or ``(*lead, n)``: 1 for a correct prediction (or any 0/1 outcome).
        n_bins: number of bins.
        group: optional ``(n,)`` group (row) of each value, for sums kept apart per group (``n_groups``).
        weights: optional ``(R, n)`` weight of each value per replicate (the bootstrap).

    Returns:
        Three float64 tensors of shape ``([R,] [G,] *lead, n_bins)`` (``R`` with ``weights``, ``G`` with
        ``group``); counts are weighted too when ``weights`` are given.
    """
    lead = tuple(bins.shape[:-1])
    n_lead = math.prod(lead)
    outcome = outcome.expand_as(confidence)
    flat = bins.reshape(n_lead, -1) + (torch.arange(n_lead, device=bins.device) * n_bins)[:, None]  # (L, n)
    size = n_lead * n_bins
    if group is not None:
        flat = flat + group[None, :] * size
        size *= n_groups
    conf = confidence.reshape(n_lead, -1).double()  # (L, n)
    out = outcome.reshape(n_lead, -1).double()  # (L, n)
    shape = ((n_groups,) if group is not None else ()) + lead + (n_bins,)
    if weights is None:
        index = flat.reshape(-1)
        count = torch.bincount(index, minlength=size).double()
        sums = (count, torch.bincount(index, conf.reshape(-1), minlength=size), torch.bincount(index, out.reshape(-1), minlength=size))
        return tuple(s.reshape(shape) for s in sums)  # type: ignore[return-value]
    replicates = weights.shape[0]
    if group is None:
        # One matmul: the (R, n) weights times each token's one-hot bin, confidence and outcome, (n, L * 3 * B);
        # no (R, L, n) products are written (they were most of the bootstrap's cost).
        onehot = torch.zeros(n_lead, conf.shape[1], n_bins, dtype=torch.float64, device=bins.device)
        onehot.scatter_(2, bins.reshape(n_lead, -1, 1), 1.0)  # (L, n, B)
        features = torch.stack([onehot, onehot * conf[..., None], onehot * out[..., None]], dim=2)  # (L, n, 3, B)
        summed = weights.double() @ features.permute(1, 0, 2, 3).reshape(conf.shape[1], n_lead * 3 * n_bins)  # (R, L * 3 * B)
        summed = summed.reshape(replicates, n_lead, 3, n_bins)
        return tuple(summed[:, :, i].reshape((replicates,) + shape) for i in range(3))  # type: ignore[return-value]
    index = (flat[None] + (torch.arange(replicates, device=bins.device) * size)[:, None, None]).reshape(-1)  # (R*L*n,)
    w = weights.double()[:, None, :]  # (R, 1, n)
    sums = tuple(
        torch.bincount(index, (w * v[None]).reshape(-1), minlength=replicates * size).reshape((replicates,) + shape)
        for v in (torch.ones_like(conf), conf, out)
    )
    return sums  # type: ignore[return-value]


def binned_errors(count: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Calibration errors from per-bin sums over the last dimension (the bins); each of the leading shape.

    With ``n_b`` values, ``s_b`` summed confidence and ``c_b`` summed correctness in bin ``b`` of ``N``:
    ``ece = sum_b |c_b - s_b| / N``; ``mce = max_{b: n_b > 0} |c_b - s_b| / n_b``;
    ``rms = sqrt(sum_b n_b (acc_b - conf_b)^2 / N)``; and the debiased estimate of the squared error of Kumar,
    Liang & Ma (2019, "Verified uncertainty calibration"): ``rms_debiased = sqrt(max(0, sum_b n_b / N
    [(acc_b - conf_b)^2 - acc_b (1 - acc_b) / (n_b - 1)]))``, bins with fewer than two values adding 0.
    """
    n = count.sum(-1).clamp_min(1)
    gap = (correct - confidence).abs()  # n_b |acc_b - conf_b|
    safe_count = count.clamp_min(1)
    per_bin_gap = torch.where(count > 0, gap / safe_count, torch.zeros_like(gap))  # |acc_b - conf_b|
    acc = correct / safe_count
    two_or_more = count > 1
    variance = torch.where(two_or_more, acc * (1 - acc) / (count - 1).clamp_min(1), torch.zeros_like(acc))
    debiased = torch.where(two_or_more, per_bin_gap.square() - variance, torch.zeros_like(acc))
    return {
        "ece": gap.sum(-1) / n,
        "mce": per_bin_gap.max(-1).values,
        "rms": torch.sqrt((per_bin_gap * gap).sum(-1) / n),
        "rms_debiased": torch.sqrt(((count * debiased).sum(-1) / n).clamp_min(0)),
    }


def merge_equal_mass(
    count: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge fine bins (last dimension, in confidence order) into ``n_bins`` bins of about equal counts.

    Fine bin ``j`` goes wholly to bin ``floor(n_bins * (C_j - n_j / 2) / N)``, the share of its middle rank
    (``C_j`` the cumulative count, ``n_j`` its count), so every bin holds about ``N / n_bins`` values, bins
    never overlap in confidence, and a fine bin heavier than ``N / n_bins`` stays whole.
    """
    cumulative = count.cumsum(-1)
    n = cumulative[..., -1:].clamp_min(1)
    target = (n_bins * (cumulative - count / 2) / n).floor().long().clamp_(0, n_bins - 1)  # (..., F)
    shape = count.shape[:-1] + (n_bins,)

    def merge(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(shape, dtype=values.dtype, device=values.device).scatter_add_(-1, target, values)

    return merge(count), merge(confidence), merge(correct)


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
    stats = token_statistics(logits, labels, torch.ones(1, dtype=torch.float64), ignore_index=ignore_index)
    if stats.n == 0:
        raise ValueError("`labels` hold no token other than ignore_index: the calibration error is undefined")
    sums = binned_sums(width_bins(stats.confidence, n_bins), stats.confidence, stats.correct, n_bins)
    return binned_errors(*sums)[{"l1": "ece", "l2": "rms", "max": "mce"}[norm]][0]


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
    all_reduce: Callable[[list[float]], list[float]] | None = None,
) -> float:
    r"""The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Fit on held-out logits, then divide test logits by ``T``. The NLL is convex in ``b = 1/T``, so a safeguarded
    Newton iteration on ``b`` (bisection when a Newton step leaves the bracket) finds the optimum exactly; the
    logits are read in chunks, so memory stays flat.

    Args:
        logits: ``(..., V)`` held-out scores; labels ``(...)`` with ``ignore_index`` for padding.
        bounds: the temperature range searched. If the optimum lies outside it, a ``RuntimeWarning`` says so and
            the nearest bound is returned (a model that is right on every token has its optimum at ``T -> 0``).
        all_reduce: for logits spread over processes, a function summing a list of floats over all of them
            (e.g. with ``torch.distributed.all_reduce``): every process then takes the same Newton steps on the
            NLL of all tokens, and returns the same temperature.

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

    def derivatives(b: float) -> tuple[float, float, float, int]:
        values = list(_nll_and_derivatives(logits, labels, ignore_index, b))
        f, d1, d2, n = values if all_reduce is None else all_reduce(values)
        return f, d1, d2, int(n)

    _, g_lo, _, n = derivatives(b_lo)
    if n == 0:
        raise ValueError("`labels` hold no token other than ignore_index: there is nothing to fit a temperature on")
    if not math.isfinite(g_lo):
        raise ValueError("`logits` must be finite at non-ignored positions; got NaN or an infinite value")
    if g_lo >= 0:
        warnings.warn(f"the NLL-optimal temperature is above the search bound {hi_t}; returning {hi_t}", RuntimeWarning)
        return hi_t
    _, g_hi, _, _ = derivatives(b_hi)
    if g_hi <= 0:
        warnings.warn(f"the NLL-optimal temperature is below the search bound {lo_t}; returning {lo_t}", RuntimeWarning)
        return lo_t
    b = min(max(1.0, b_lo), b_hi)
    for _ in range(max_iter):
        _, g, h, _ = derivatives(b)
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

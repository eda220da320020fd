r"""The per-token statistics of a calibration pass, and their binned sums.

A calibration pass reads the ``(tokens, V)`` logits once (:func:`token_statistics`): per token and temperature
the largest probability, the label's log-probability and what the enabled measures need besides. Every measure
of :mod:`ls_seq.calibration.measures` then bins those into a handful of per-bin sums (:func:`binned_sums`), which
add across batches and processes.

Binning convention: with ``B`` equal-width bins, a confidence ``c`` goes to bin ``min(floor(c * B), B - 1)``:
bins are left-closed ``[k/B, (k+1)/B)`` and ``c = 1`` joins the last bin. torchmetrics' ``bucketize`` binning is
also left-closed but puts ``c = 1`` into an extra bin of its own and uses float32 edges, so the two agree
except for confidences that are exactly 1 or within rounding of an edge. Equal-mass bins are merged from a
fine grid of bins uniform in ``logit(c)`` (:func:`fine_bins`, :func:`ls_seq.functional.calibration.merge_equal_mass`).

For temperature ``T`` and logits ``z`` with maximum ``m``: ``lse_T = m / T + log sum_k exp((z_k - m) / T)``, the
confidence is ``exp(m / T - lse_T)``, the NLL ``lse_T - z_y / T``; the argmax (and so accuracy) does not depend
on ``T``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ls_seq.functional._kernels import chunk_rows_for, row_topk
from ls_seq.functional.native import exp_sums, exp_sums_available, native_topk

__all__ = ["TokenStatistics", "binned_sums", "fine_bins", "token_statistics", "width_bins"]

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

    Everything a calibration measure bins (:mod:`ls_seq.calibration.measures`) comes from here; computing it
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
        if top_logits is not None and in_topk is not None:  # top_k given
            top_logits[start:stop] = top_value.float()
            in_topk[start:stop] = (top_index == y[:, None]).any(-1)
        if classes is not None and class_logits is not None:
            class_logits[start:stop] = z.index_select(1, classes).float()
        if native:
            sq = None if exp_norm is None else exp_norm[:, start:stop]
            exp_sums(zf, m[:, 0].contiguous(), native_scales, exp_sum[:, start:stop], sq, finite[start:stop])
            if sq is not None:
                sq.sqrt_()
            continue
        assert work is not None  # the ATen path always has its scratch
        for i, s in enumerate(scales):
            # s * z - s * m in float32 (half logits are upcast exactly on the way), then 2^x in place.
            torch.add(m * -s, z, alpha=s, out=work).exp2_()
            torch.sum(work, 1, out=exp_sum[i, start:stop])
            if exp_norm is not None:  # brier
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


def _statistics_chunk_rows(n_rows: int, vocab: int, device: torch.device, chunk_rows: int | None, native: bool = False) -> int:
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
        sums = (
            count,
            torch.bincount(index, conf.reshape(-1), minlength=size),
            torch.bincount(index, out.reshape(-1), minlength=size),
        )
        return tuple(s.reshape(shape) for s in sums)  # type: ignore[return-value]  # tuple() of 3: length unknown
    replicates = weights.shape[0]
    if group is None:
        # One matmul: the (R, n) weights times each token's one-hot bin, confidence and outcome, (n, L * 3 * B);
        # no (R, L, n) products are written (they were most of the bootstrap's cost).
        onehot = torch.zeros(n_lead, conf.shape[1], n_bins, dtype=torch.float64, device=bins.device)
        onehot.scatter_(2, bins.reshape(n_lead, -1, 1), 1.0)  # (L, n, B)
        features = torch.stack([onehot, onehot * conf[..., None], onehot * out[..., None]], dim=2)  # (L, n, 3, B)
        summed = weights.double() @ features.permute(1, 0, 2, 3).reshape(conf.shape[1], n_lead * 3 * n_bins)  # (R, L * 3 * B)
        summed = summed.reshape(replicates, n_lead, 3, n_bins)
        # tuple() of a generator of 3: a type checker sees tuple[Tensor, ...] (the same ignore above and below)
        return tuple(summed[:, :, i].reshape((replicates,) + shape) for i in range(3))  # type: ignore[return-value]
    index = (flat[None] + (torch.arange(replicates, device=bins.device) * size)[:, None, None]).reshape(-1)  # (R*L*n,)
    w = weights.double()[:, None, :]  # (R, 1, n)
    weighted = tuple(
        torch.bincount(index, (w * v[None]).reshape(-1), minlength=replicates * size).reshape((replicates,) + shape)
        for v in (torch.ones_like(conf), conf, out)
    )
    return weighted  # type: ignore[return-value]  # tuple() of 3: length unknown

"""Single-pass label-smoothed cross-entropy on 2-D logits, as a custom autograd Function.

The per-row loss ``lse(z) - w_hot * z_y - w_q * <q, z> + z_loss * lse(z)**2`` needs three row statistics, and
its gradient is ``(1 + 2 z_loss lse(z)) softmax(z) - target`` with ``target = w_hot * onehot(y) + w_q * q``
(the z-loss of PaLM and OLMo, ``lse_square_scale`` in Liger-Kernel, only rescales the softmax row by row). Autograd over
``log_softmax + gather + sum`` keeps the (N, V) log-probabilities for backward and then writes two more
(N, V) tensors; here the logits are read in row chunks (row sum, max/argmax, one fused softmax), and the
gradient is written once, in the logits' dtype, into one preallocated buffer. When the logits need a
gradient it is computed during forward, straight from the softmax it already wrote; backward only scales
it by the incoming per-row gradient, in place.

Private: ``ls_seq.functional.losses.label_smoothed_cross_entropy`` validates arguments and reduces; this
module trusts its inputs.
"""

from __future__ import annotations

import torch

__all__ = ["chunk_rows_for", "compute_dtype_for", "label_smoothed_ce_rows", "row_topk", "softmax_target_chunk_"]

# Elements per chunk: 2**25 (128 MiB of float32, 1048 rows at V = 32000). The softmax works row by row
# (a 128 KiB row stays in L2), so large chunks cost little locality; what they save is the number of
# parallel ops: on a shared 2-core machine every OpenMP op waits for its slowest thread, and N = 8192 in
# 32-row chunks (~1000 parallel ops) measured 5-20x slower under load than in 1024-row chunks, while
# both took 0.4 s on an idle machine.
_CHUNK_ELEMENTS = 1 << 25


def chunk_rows_for(n_rows: int, vocab_size: int, chunk_size: int | None = None) -> int:
    """Rows per chunk: ``chunk_size`` when given, otherwise about 2**25 logits, at least one row."""
    if chunk_size is not None:
        return max(1, min(chunk_size, max(n_rows, 1)))
    return max(1, min(_CHUNK_ELEMENTS // max(vocab_size, 1), max(n_rows, 1)))


# Block width of row_topk: the row is split into blocks of this many logits.
_TOPK_BLOCK = 128


def row_topk(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest logits of each row and their indices, largest first; the first is ``torch.max``'s.

    ``torch.max(dim=1)`` and ``torch.topk`` cost about 1 and 1.5 ns per logit on CPU (they carry an index
    through a scalar loop); one vectorised ``amax`` over blocks of 128 costs about 0.12. The ``k`` largest
    entries of a row lie in the ``k`` blocks with the largest maxima (a block holding the ``j``-th largest
    entry can be outranked only by blocks holding one of the ``j - 1`` larger ones), so they are the top
    ``k`` of those blocks' ``128 k`` logits, found exactly. The arg-max is the first maximum of the first
    block holding the row's maximum, which is the first maximum of the row, as ``torch.max`` returns it;
    it is placed first, so the arg-max does not depend on ``k``. Which of several entries tied at the
    ``k``-th value are returned is unspecified, as for ``torch.topk``.

    Args:
        z: ``(c, V)`` logits, any float dtype.
        k: ``1 <= k <= V``.

    Returns:
        ``values (c, k)`` in ``z``'s dtype, descending, and ``indices (c, k)`` int64.
    """
    rows, vocab = z.shape
    blocks = -(-vocab // _TOPK_BLOCK)  # the last block may be partial
    if blocks <= 2 * k:  # a small vocabulary: the direct calls are cheap
        value, first = z.max(dim=1, keepdim=True)
        if k == 1:
            return value, first
        values, indices = z.topk(k, dim=1)
        return values, _put_first(indices, first)
    full = vocab // _TOPK_BLOCK
    block_max = z[:, : full * _TOPK_BLOCK].unflatten(1, (full, _TOPK_BLOCK)).amax(-1)  # (c, full)
    if full < blocks:
        block_max = torch.cat([block_max, z[:, full * _TOPK_BLOCK :].amax(1, keepdim=True)], dim=1)
    offsets = torch.arange(_TOPK_BLOCK, device=z.device)

    def block_logits(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, j) block numbers -> their logits (c, 128 j), -inf past the vocabulary, and the indices."""
        index = (chosen[:, :, None] * _TOPK_BLOCK + offsets).reshape(rows, -1)  # (c, 128 j)
        past = index >= vocab
        values = z.gather(1, index.clamp_(max=vocab - 1))
        return values.masked_fill_(past, float("-inf")), index

    values, index = block_logits(block_max.argmax(1, keepdim=True))  # the first block holding the maximum
    value, position = values.max(dim=1, keepdim=True)
    first = index.gather(1, position)  # (c, 1)
    if k == 1:
        return value, first
    values, index = block_logits(block_max.topk(k, dim=1).indices)
    top_values, position = values.topk(k, dim=1)
    return top_values, _put_first(index.gather(1, position), first)


def _put_first(indices: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``indices (c, k)`` of the top k with ``first (c, 1)`` (an index of the same maximum) at position 0.

    Swaps it in where it is among them; otherwise more than ``k`` entries tie at the maximum and it
    replaces position 0 (every position holds the maximum, so the values stay right).
    """
    hit = indices == first  # (c, k)
    where = hit.int().argmax(1, keepdim=True)  # (c, 1): its position, 0 when absent
    indices = indices.scatter(1, where, indices[:, :1])  # what was first goes where it was
    indices[:, :1] = first
    return indices


def compute_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (gradcheck); every other float dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def softmax_target_chunk_(
    z: torch.Tensor,
    y: torch.Tensor,
    w_hot: float,
    w_q: float,
    q: torch.Tensor | None,
    work: torch.Tensor,
    grad_scale: float | torch.Tensor | None,
    z_loss: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row statistics of one chunk, and ``softmax(z)`` or the gradient ``d loss / d z * grad_scale`` in ``work``.

    The gradient of ``lse - w_hot z_y - w_q <q, z> + z_loss lse**2`` is ``(1 + 2 z_loss lse) softmax - target``.

    Args:
        z: ``(c, V)`` logits of the chunk, any float dtype; only read, unless it is ``work`` itself (then it
            is overwritten after the statistics are taken). Other dtypes are first copied into ``work``.
        y: ``(c,)`` labels, already valid indices (ignored rows carry a placeholder).
        w_hot, w_q: target weights, ``target = w_hot * onehot(y) + w_q * q``.
        q: ``(V,)`` prior in the compute dtype, or None for uniform ``1/V``.
        work: ``(c, V)`` compute-dtype buffer for the softmax (and then the gradient).
        grad_scale: multiply the gradient by this float, or row by row by a ``(c, 1)`` tensor; None leaves
            the softmax in ``work`` (evaluation).
        z_loss: weight of ``lse**2`` in the loss (0: none); the caller adds the term to the row loss.

    Returns:
        ``lse (c,)``, ``z_y (c,)`` and ``<q, z> (c,)``, all in the compute dtype of ``work``.
    """
    vocab = z.shape[1]
    if z.dtype != work.dtype:
        # Upcast once, then every statistic runs on float32 (the CPU's bf16 reductions are slower, and the
        # CPU softmax cannot write float32 from half input).
        z = work.copy_(z)
    z_y = z.gather(1, y[:, None]).squeeze(1)  # (c,)
    # sum() accumulates pairwise, so V = 32k float32 terms keep ~1e-6 relative error, like torch's mean.
    q_z = z.sum(1) / vocab if q is None else torch.mv(z, q)  # (c,)
    row_max, argmax = z.max(1, keepdim=True)  # (c, 1), (c, 1)
    # Few large ops per chunk, not many small ones: on a shared CPU every parallel op waits for its
    # slowest thread, so sub + exp + sum + div (4 ops) measured several times slower under load than one
    # fused softmax. The largest probability is >= 1/V and never underflows, so lse = max - log p_max.
    torch.softmax(z, 1, out=work)  # in place when z is work: each element is read before it is written
    p_max = work.gather(1, argmax)  # (c, 1)
    lse = (row_max - p_max.log()).squeeze(1)  # (c,)
    if grad_scale is None:
        return lse, z_y, q_z
    # (k * softmax - w_hot * onehot - w_q * q) * s without a dense target: one scaling of the softmax (k = 1 +
    # 2 z_loss lse per row folds into it), one shift, one scatter of c values.
    if z_loss != 0.0:
        work.mul_((lse * (2.0 * z_loss) + 1.0)[:, None] * grad_scale)  # (c, 1)
    elif isinstance(grad_scale, torch.Tensor) or grad_scale != 1.0:
        work.mul_(grad_scale)
    _subtract_target_(work, y, w_hot, w_q, q, grad_scale, vocab)
    return lse, z_y, q_z


def _subtract_target_(work, y, w_hot, w_q, q, grad_scale, vocab):
    """``work -= target * grad_scale`` (a float, or a ``(c, 1)`` tensor), without a dense target."""
    if isinstance(grad_scale, torch.Tensor):  # (c, 1) per-row scale
        if q is None:
            work.sub_(grad_scale * (w_q / vocab))
        else:
            work.addcmul_(grad_scale, q[None, :], value=-w_q)
        if w_hot != 0.0:
            work.scatter_add_(1, y[:, None], grad_scale * -w_hot)
        return
    if q is None:
        work.sub_(w_q * grad_scale / vocab)
    else:
        work.sub_(q, alpha=w_q * grad_scale)
    if w_hot != 0.0:
        work.scatter_add_(1, y[:, None], work.new_full((y.shape[0], 1), -w_hot * grad_scale))


def _rows_pass(z, y, mask, w_hot, w_q, q, chunk_rows, need_grad, cdtype, z_loss):
    """One chunked read of ``z``: per-row loss and NLL, and the loss's gradient when ``need_grad``."""
    n_rows, vocab = z.shape
    loss = torch.empty(n_rows, dtype=cdtype, device=z.device)  # (N,)
    nll = torch.empty(n_rows, dtype=cdtype, device=z.device)  # (N,)
    # The one (N, V) allocation: the gradient, in the logits' dtype (as autograd would produce it).
    grad = torch.empty_like(z, memory_format=torch.contiguous_format) if need_grad else None
    # Logits already in the compute dtype, with a gradient: the softmax goes straight into the gradient
    # rows, no scratch. Otherwise one chunk-sized scratch in the compute dtype is reused for every chunk.
    direct = need_grad and z.dtype == cdtype
    scratch = None if direct else torch.empty(min(chunk_rows, n_rows), vocab, dtype=cdtype, device=z.device)
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        # (c, V): the gradient's rows when direct (grad exists), else the scratch (which exists then)
        work = grad[start:stop] if direct else scratch[: stop - start]  # type: ignore[index]
        lse, z_y, q_z = softmax_target_chunk_(
            z[start:stop], y[start:stop], w_hot, w_q, q, work, 1.0 if need_grad else None, z_loss
        )
        if grad is not None and not direct:  # grad exists iff need_grad
            grad[start:stop].copy_(work)  # one rounding to the logits' dtype
        nll[start:stop] = lse - z_y
        loss[start:stop] = lse - w_hot * z_y - w_q * q_z
        if z_loss != 0.0:
            loss[start:stop] += z_loss * lse.square()
    zero = loss.new_zeros(())
    loss = torch.where(mask, loss, zero)
    nll = torch.where(mask, nll, zero)
    if grad is not None:
        ignored = (~mask).nonzero().squeeze(1)  # (n_ignored,)
        if ignored.numel():
            grad.index_fill_(0, ignored, 0.0)  # touches only the ignored rows
    return loss, nll, grad


class _LabelSmoothedCE(torch.autograd.Function):
    """Per-row smoothed loss and NLL of ``(N, V)`` logits; the gradient is computed in forward."""

    @staticmethod
    def forward(ctx, z, y, mask, w_hot, w_q, q, chunk_rows, need_grad, cdtype, z_loss):
        loss, nll, grad = _rows_pass(z, y, mask, w_hot, w_q, q, chunk_rows, need_grad, cdtype, z_loss)
        # The precomputed gradient is kept on ctx, not saved: the first backward scales it in place and
        # hands it over. A further backward through a retained graph (gradcheck, retain_graph=True)
        # finds it gone and recomputes from the saved logits, which cost no memory (they are an input).
        ctx.grad_buffer = grad
        ctx.save_for_backward(z, y, mask, q)
        ctx.w_hot, ctx.w_q, ctx.chunk_rows, ctx.cdtype, ctx.z_loss = w_hot, w_q, chunk_rows, cdtype, z_loss
        ctx.set_materialize_grads(False)
        return loss, nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_nll):
        z, y, mask, q = ctx.saved_tensors
        grad, ctx.grad_buffer = ctx.grad_buffer, None
        if grad_loss is None and grad_nll is None:
            return (None,) * 10
        if grad is None:
            grad = _rows_pass(z, y, mask, ctx.w_hot, ctx.w_q, q, ctx.chunk_rows, True, ctx.cdtype, ctx.z_loss)[2]
        row_scale = grad_loss if grad_nll is None else (grad_nll if grad_loss is None else grad_loss + grad_nll)
        if grad_nll is None and row_scale.numel() and row_scale.stride(0) == 0:
            # The usual case: a sum or mean upstream hands one value expanded over the rows. A 0-dim
            # float32 factor keeps the buffer's dtype (no upcast copy) while the product is still taken in
            # float32 before the one rounding, so half buffers are scaled in one pass at full accuracy.
            grad.mul_(row_scale[0].to(ctx.cdtype))
            return grad, None, None, None, None, None, None, None, None, None
        # d nll / dz = softmax - onehot. Without z-loss it is the stored (softmax - target) + w_q * (q - onehot),
        # so only the second term is new. With z-loss the stored gradient holds (1 + 2 z_loss lse) softmax, so
        # the NLL's softmax is recomputed from the logits, chunk by chunk (only when the NLL is differentiated).
        exact_nll = grad_nll is not None and ctx.z_loss != 0.0
        if exact_nll:
            row_scale = torch.zeros_like(grad_nll) if grad_loss is None else grad_loss
            nll_rows = torch.where(mask, grad_nll, torch.zeros_like(grad_nll)).to(ctx.cdtype)[:, None]  # (N, 1)
            scratch = torch.empty(min(ctx.chunk_rows, grad.shape[0]), grad.shape[1], dtype=ctx.cdtype, device=z.device)
        row_scale = row_scale.to(ctx.cdtype)[:, None]  # (N, 1)
        g_nll = None
        if grad_nll is not None and ctx.w_q != 0.0 and not exact_nll:
            g_nll = (torch.where(mask, grad_nll, torch.zeros_like(grad_nll)) * ctx.w_q).to(ctx.cdtype)[:, None]
        # In place, chunk by chunk: the buffer is ours and used once. Chunks because a half-precision
        # buffer times a float32 scale makes TensorIterator allocate a float32 copy of its whole output
        # (measured: 2 GiB extra for (8192, 32000) bf16); per chunk that copy is chunk-sized.
        for start in range(0, grad.shape[0], ctx.chunk_rows):
            stop = min(start + ctx.chunk_rows, grad.shape[0])
            g = grad[start:stop]  # (c, V)
            work = g if g.dtype == ctx.cdtype else g.to(ctx.cdtype)
            work.mul_(row_scale[start:stop])
            if exact_nll:
                p_y = scratch[: stop - start]  # (c, V): (softmax - onehot) * d loss / d nll
                softmax_target_chunk_(z[start:stop], y[start:stop], 1.0, 0.0, None, p_y, nll_rows[start:stop])
                work.add_(p_y)
            if g_nll is not None:
                g_c = g_nll[start:stop]  # (c, 1)
                if q is None:
                    work.add_(g_c / grad.shape[1])
                else:
                    work.addcmul_(g_c, q[None, :])
                work.scatter_add_(1, y[start:stop, None], -g_c)
            if work is not g:
                g.copy_(work)
        if exact_nll:  # rows that do not count may hold -inf logits, whose softmax is NaN
            ignored = (~mask).nonzero().squeeze(1)  # (n_ignored,)
            if ignored.numel():
                grad.index_fill_(0, ignored, 0.0)
        return grad, None, None, None, None, None, None, None, None, None


def label_smoothed_ce_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    w_hot: float,
    w_q: float,
    prior: torch.Tensor | None = None,
    chunk_size: int | None = None,
    compute_dtype: torch.dtype | None = None,
    z_loss: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row smoothed loss and NLL of 2-D logits, 0 where ``mask`` is False; differentiable in ``logits``.

    Loss per row: ``lse(z) - w_hot z_y - w_q <q, z> + z_loss lse(z)**2``; NLL: ``lse(z) - z_y``.

    Args:
        logits: ``(N, V)`` any float dtype; float16/bfloat16 are computed in float32.
        labels: ``(N,)`` int64 indices in ``[0, V)``; rows where ``mask`` is False may hold any valid index.
        mask: ``(N,)`` bool, True for tokens that count.
        w_hot, w_q: ``target = w_hot * onehot + w_q * q`` (see ``smoothing_weights``).
        prior: ``(V,)`` distribution ``q``, or None for uniform.
        chunk_size: rows per chunk (default: about 2**25 logits).
        compute_dtype: dtype of the arithmetic and of the returned values; default float32, float64 for
            float64 logits (the public loss passes float32 for every input, as documented there).
        z_loss: weight of the z-loss ``lse(z)**2`` (PaLM), added to the loss only, not to the NLL.

    Returns:
        ``(loss, nll)``, each ``(N,)`` in the compute dtype.
    """
    z = logits if logits.is_contiguous() else logits.contiguous()
    cdtype = compute_dtype_for(z.dtype) if compute_dtype is None else compute_dtype
    q = None if prior is None else prior.to(device=z.device, dtype=cdtype)
    need_grad = torch.is_grad_enabled() and z.requires_grad
    chunk_rows = chunk_rows_for(z.shape[0], z.shape[1], chunk_size)
    return _LabelSmoothedCE.apply(z, labels, mask, float(w_hot), float(w_q), q, chunk_rows, need_grad, cdtype, float(z_loss))

"""Output projection and label-smoothed cross-entropy in one chunked pass, never holding (N, V) logits.

``hidden @ weight.T (+ bias)`` followed by the loss keeps the (N, V) logits, their log-probabilities and
their gradient alive at once: 1.5 GB for 4k tokens over a 32k vocabulary in float32. Here the logits of
``chunk_size`` tokens at a time are computed, turned into the loss and into ``softmax - target`` in place,
and immediately multiplied back into the gradients of ``hidden``, ``weight`` and ``bias``, so one chunk
of logits is the largest temporary.

When the loss is reduced to a scalar the gradients are finished during forward (as Liger-Kernel does):
the matmul that produced a chunk's logits is the only one forward needs, and the two gradient matmuls
would otherwise require recomputing it in backward; backward then only multiplies the three small
gradients by the incoming scalar. With ``reduction="none"`` the per-token weights are unknown until
backward, so backward recomputes each chunk's logits instead.

The model's own logit transform is applied per chunk, forward and backward: ``z = softcap(logit_scale * u)``
on the raw logits ``u`` (Gemma 2/3's final soft-capping, Cohere's and Granite's logit scale), and the z-loss
``z_loss * lse(z)**2`` (PaLM, OLMo) is added to each row, so the chain rule ``d loss / d u = ((1 + 2 z_loss lse)
softmax(z) - target) * (1 - tanh**2) * logit_scale`` never needs more than the chunk. Under autocast, or with
bfloat16/float16 weights, the matmuls run in the half dtype as the head's ``nn.Linear`` would, while the
transform, the softmax and the row statistics run in float32 per chunk.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ls_seq.checks import (
    check_alpha,
    check_choice,
    check_logits_labels,
    check_nonnegative,
    check_positive_int,
    check_prior,
    check_temperature,
)
from ls_seq.functional._kernels import chunk_rows_for, compute_dtype_for, softmax_target_chunk_
from ls_seq.functional.losses import CONVENTIONS, REDUCTIONS, _check_num_items, smoothing_weights

__all__ = ["fused_linear_label_smoothed_cross_entropy", "fused_smoothed_sums"]


class _Head(NamedTuple):
    """What turns the raw chunk logits ``u = h W^T + b`` into the loss: ``z = softcap(logit_scale * u)`` with
    ``softcap(x) = cap tanh(x / cap)`` (identity when ``softcap`` is None), ``z_loss * lse(z)**2`` added per row,
    and the dtype the matmuls run in (autocast's, or the weights' half dtype; see :func:`_matmul_dtype`)."""

    matmul_dtype: torch.dtype
    logit_scale: float = 1.0
    softcap: float | None = None
    z_loss: float = 0.0


def _transform_(u, work, head, keep_factor):
    """``z = softcap(logit_scale * u)`` of one chunk in the compute dtype (``work``, or ``u`` when unchanged).

    With ``keep_factor`` (a gradient under softcap), ``u`` is overwritten by ``dz / d(logit_scale u) = 1 - t**2``,
    ``t = tanh(logit_scale u / cap)``, rounded to ``u``'s dtype: the derivative is taken from the forward values,
    as autograd's tanh backward does, and ``u`` is not needed once ``z`` exists.
    """
    if head.softcap is None and head.logit_scale == 1.0:
        return u  # softmax_target_chunk_ upcasts half logits into work itself
    # Upcast first: torch.mul(half, float, out=float32) rounds the product to the half dtype.
    src = u if u.dtype == work.dtype else work.copy_(u)
    if head.softcap is None:
        return torch.mul(src, head.logit_scale, out=work)  # in place when src is work
    t = torch.mul(src, head.logit_scale / head.softcap, out=work).tanh_()  # (c, V)
    if keep_factor:
        torch.addcmul(work.new_ones(()), t, t, value=-1.0, out=u)  # 1 - t**2 in one pass
    return t.mul_(head.softcap)


def _project_chunks(h, weight, bias, y, w_hot, w_q, q, chunk_rows, needs, grad_rows, head):
    """Per-row losses of ``z = softcap(scale * (h @ W.T + b))``, chunk by chunk; with ``grad_rows`` also the gradients.

    ``grad_rows`` is None (loss only), the float 1.0 (unit weight per row, forward of a summed loss) or a
    ``(N,)`` tensor of per-row weights (backward of ``reduction="none"``). ``needs`` says which of
    ``(grad_h, grad_w, grad_b)`` to build; each chunk's ``d loss / d u`` goes straight into them, where
    ``d loss / d u = ((1 + 2 z_loss lse) softmax(z) - target) * (1 - t**2) * logit_scale`` (no ``1 - t**2``
    without softcap). Gradients come back in ``head.matmul_dtype`` (``grad_b`` in the compute dtype).
    """
    n_rows, vocab = h.shape[0], weight.shape[0]
    mdtype = head.matmul_dtype
    cdtype = compute_dtype_for(mdtype)
    # The matmuls run in mdtype: no copy for inputs already in it (a bf16 W is never copied to float32); under
    # autocast a float32 W gets the bf16 copy nn.Linear would make. The statistics run in cdtype per chunk.
    h_m, w_m = h.to(mdtype), weight.to(mdtype)
    b_m = None if bias is None else bias.to(mdtype)
    with_grad = grad_rows is not None
    keep_factor = with_grad and head.softcap is not None
    rows_max = min(chunk_rows, max(n_rows, 1))
    raw = torch.empty(rows_max, vocab, dtype=mdtype, device=h.device)  # u of one chunk (then 1 - t**2)
    # The loss works in place on the raw logits when they are in the compute dtype; a second chunk buffer is
    # needed for half matmuls (float32 statistics) and for softcap's gradient (u's buffer then holds 1 - t**2).
    same = mdtype == cdtype and not keep_factor
    work_all = raw if same else torch.empty(rows_max, vocab, dtype=cdtype, device=h.device)
    grad_h = torch.empty_like(h_m) if with_grad and needs[0] else None  # (N, d)
    grad_w = torch.zeros_like(w_m) if with_grad and needs[1] else None  # (V, d)
    grad_b = torch.zeros(vocab, dtype=cdtype, device=h.device) if with_grad and needs[2] else None  # (V,)
    if isinstance(grad_rows, torch.Tensor):
        grad_rows = grad_rows.to(cdtype)[:, None]  # (N, 1)
    rows = torch.empty(n_rows, dtype=cdtype, device=h.device)  # (N,) per-row loss
    nll = torch.empty(n_rows, dtype=cdtype, device=h.device)  # (N,) per-row -log p_y
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        h_c = h_m[start:stop]  # (c, d)
        u = raw[: stop - start]  # (c, V)
        work = work_all[: stop - start]  # (c, V)
        if b_m is None:
            torch.mm(h_c, w_m.t(), out=u)
        else:
            torch.addmm(b_m, h_c, w_m.t(), out=u)
        z = _transform_(u, work, head, keep_factor)
        scale = grad_rows[start:stop] if isinstance(grad_rows, torch.Tensor) else grad_rows
        if with_grad and head.logit_scale != 1.0:
            scale = scale * head.logit_scale  # the chain rule through z = softcap(scale * u), its linear part
        lse, z_y, q_z = softmax_target_chunk_(z, y[start:stop], w_hot, w_q, q, work, scale, head.z_loss)
        rows[start:stop] = lse - w_hot * z_y - w_q * q_z
        if head.z_loss != 0.0:
            rows[start:stop] += head.z_loss * lse.square()
        nll[start:stop] = lse - z_y
        if not with_grad:
            continue
        # work now holds d loss / dz * scale (* logit_scale) of the chunk
        if keep_factor:
            work.mul_(u)  # * (1 - t**2)
        g = work if work.dtype == mdtype else u.copy_(work)  # one rounding to the matmul dtype, as autocast's
        if grad_h is not None:
            torch.mm(g, w_m, out=grad_h[start:stop])  # (c, d)
        if grad_w is not None:
            grad_w.addmm_(g.t(), h_c)  # (V, d)
        if grad_b is not None:
            grad_b.add_(g.sum(0, dtype=cdtype))  # (V,)
    return rows, nll, (grad_h, grad_w, grad_b)


class _FusedLinearLSCE(torch.autograd.Function):
    """Sum (or per-row values) of the smoothed loss of ``z(h @ W.T + b)`` over rows that all count, and the NLL.

    The NLL (same reduction) comes from the same row statistics and is not differentiable."""

    @staticmethod
    def forward(ctx, h, weight, bias, y, w_hot, w_q, q, chunk_rows, per_row, needs, head):
        precompute = not per_row and any(needs)
        rows, nll, grads = _project_chunks(
            h, weight, bias, y, w_hot, w_q, q, chunk_rows, needs, 1.0 if precompute else None, head
        )
        ctx.per_row, ctx.needs, ctx.head = per_row, needs, head
        ctx.dtypes = (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        # Inputs are saved in every mode (they cost no memory): a second backward through a retained graph
        # recomputes from them, because the first one scaled the precomputed gradients in place.
        ctx.save_for_backward(h, weight, bias, y, q)
        ctx.w_hot, ctx.w_q, ctx.chunk_rows = w_hot, w_q, chunk_rows
        ctx.grads = grads if precompute else None
        nll = nll if per_row else nll.sum()
        ctx.mark_non_differentiable(nll)
        return (rows if per_row else rows.sum()), nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_nll):
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # reduction="none", or a second backward (retain_graph=True, gradcheck)
            h, weight, bias, y, q = ctx.saved_tensors
            # A summed loss is recomputed with unit row weights and scaled below, exactly as in forward, so
            # that a second backward gives bit for bit the first one's gradients.
            rows_weight = grad_out if ctx.per_row else 1.0
            args = (ctx.w_hot, ctx.w_q, q, ctx.chunk_rows, ctx.needs, rows_weight, ctx.head)
            _, _, grads = _project_chunks(h, weight, bias, y, *args)
        if not ctx.per_row:
            # To the input's dtype first (a no-op when it is the matmul dtype), then scaled in place: a second
            # (V, d) copy would be the largest temporary of the backward, and a float32 W's gradient is scaled
            # in float32, not in the bf16 it was accumulated in under autocast.
            grads = tuple(None if g is None else g.to(dtype).mul_(grad_out) for g, dtype in zip(grads, ctx.dtypes))
        grad_h, grad_w, grad_b = (None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None


def _validate(hidden, weight, labels, bias, ignore_index, chunk_size):
    for name, value in (("hidden", hidden), ("weight", weight), ("labels", labels)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise TypeError(f"`hidden` and `weight` must be floating-point tensors, got {hidden.dtype} and {weight.dtype}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"`weight` must have the dtype of `hidden` ({hidden.dtype}), got {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"`weight` must have shape (V, d), got {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"`hidden` must have shape (..., d) with d = weight.shape[1] = {weight.shape[1]}, got {tuple(hidden.shape)}"
        )
    vocab = weight.shape[0]
    # The logits' checks (integer labels, shape, range) on a meta stand-in: no (N, V) allocation.
    logits_like = torch.empty((*hidden.shape[:-1], vocab), dtype=hidden.dtype, device="meta")
    check_logits_labels(logits_like, labels, ignore_index, logits_name="hidden @ weight.T")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"`bias` must be a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (vocab,):
            raise ValueError(f"`bias` must have shape ({vocab},) to match `weight`, got {tuple(bias.shape)}")
        if not bias.is_floating_point():
            raise TypeError(f"`bias` must be a floating-point tensor, got {bias.dtype}")
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")


def _check_head(logit_scale, softcap, z_loss):
    """The logit transform's and the z-loss's arguments, checked once at the boundary."""
    logit_scale = check_temperature(logit_scale, "logit_scale")  # finite and > 0
    if softcap is not None:
        softcap = check_temperature(softcap, "softcap")
    return logit_scale, softcap, check_nonnegative(z_loss, "z_loss")


def fused_linear_label_smoothed_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.1,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    prior: torch.Tensor | None = None,
    convention: str = "uniform",
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> torch.Tensor:
    r"""Label-smoothed cross-entropy of ``z = softcap(logit_scale * (hidden @ weight.T + bias))`` without the logits.

    Equal to ``label_smoothed_cross_entropy(z, labels, alpha, ..., z_loss=z_loss)`` (same arguments, same
    reductions and conventions), with gradients for ``hidden``, ``weight`` and ``bias``; the largest temporary
    is one ``(chunk_size, V)`` block of logits instead of several ``(N, V)`` tensors (with softcap's gradient or
    half-precision matmuls a chunk needs a second buffer, and the default chunk holds fewer rows so that both
    together stay about 128 MiB). Ignored tokens are dropped before the projection, so padding costs no compute.

    Per counted token, with ``u = W h + b``, ``softcap(x) = cap * tanh(x / cap)`` (identity when ``softcap`` is
    None) and ``(w_hot, w_q)`` from :func:`ls_seq.functional.losses.smoothing_weights`:

    ``z = softcap(logit_scale * u)``,  ``loss = lse(z) - w_hot z_y - w_q <q, z> + z_loss * lse(z)**2``.

    Mixed precision: under autocast (``torch.autocast``, enabled for the inputs' device) the chunk matmuls run
    in autocast's dtype, as the head's ``nn.Linear`` would; with bfloat16/float16 inputs and no autocast they
    run in that dtype (no float32 copy of ``weight``). The transform, the softmax and the loss statistics are
    computed in float32 chunk by chunk, and each input gets its gradient in its own dtype.

    Args:
        hidden: ``(..., d)`` final hidden states (e.g. a decoder's output), any float dtype.
        weight: ``(V, d)`` output projection (``lm_head.weight``), same dtype as ``hidden``.
        labels: ``(...)`` class indices in ``[0, V)`` or ``ignore_index``.
        alpha: smoothing mass in ``[0, 1]``, as in :func:`ls_seq.functional.losses.label_smoothed_cross_entropy`.
        bias: optional ``(V,)`` logit bias (Marian/BART ``final_logits_bias``).
        ignore_index: label value whose positions contribute nothing (and are never projected).
        prior: optional length-V probabilities replacing the uniform ``1/V`` (``convention="uniform"`` only).
        convention: ``"uniform"`` or ``"fairseq"``, as in :func:`ls_seq.functional.losses.label_smoothed_cross_entropy`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``, as there.
        num_items_in_batch: divisor for ``"mean"`` (HF Trainer's token count over the accumulated batch), as there.
        chunk_size: tokens per chunk (default: about 128 MiB of buffers, 1048 tokens at V = 32000 in float32).
        logit_scale: finite ``> 0`` factor on the logits (Cohere's ``logit_scale`` 0.0625, Granite's
            ``1 / logits_scaling``); 1.0 leaves them as they are.
        softcap: finite ``> 0`` cap (Gemma 2/3's ``final_logit_softcapping``, e.g. 30.0), or None for no capping.
        z_loss: finite ``>= 0`` weight of ``lse(z)**2`` per counted token (PaLM, OLMo; Liger-Kernel's
            ``lse_square_scale``); added to the loss, not to the NLL.

    Returns:
        A scalar for ``"mean"``/``"sum"``, else a tensor shaped like ``labels`` (0 where ignored); float32
        (float64 for float64 inputs).

    Raises:
        TypeError: an input is not a tensor or not floating-point, or ``weight`` differs in dtype from ``hidden``.
        ValueError: a shape does not match (``weight`` is not ``(V, d)``, ``bias`` not ``(V,)``, labels not the
            leading shape of ``hidden``), or an option is out of range as for the unfused loss.

    Examples:
        >>> import torch
        >>> from ls_seq.functional.fused import fused_linear_label_smoothed_cross_entropy
        >>> from ls_seq.functional.losses import label_smoothed_cross_entropy
        >>> h, w = torch.randn(6, 4), torch.randn(10, 4)
        >>> y = torch.tensor([1, 2, 3, -100, 9, 0])
        >>> fused = fused_linear_label_smoothed_cross_entropy(h, w, y, alpha=0.1, chunk_size=4)
        >>> bool(torch.isclose(fused, label_smoothed_cross_entropy(h @ w.T, y, alpha=0.1)))
        True
        >>> capped = fused_linear_label_smoothed_cross_entropy(h, w, y, softcap=2.0, z_loss=1e-4)
        >>> z = 2.0 * torch.tanh(h @ w.T / 2.0)
        >>> bool(torch.isclose(capped, label_smoothed_cross_entropy(z, y, alpha=0.1, z_loss=1e-4)))
        True
    """
    _validate(hidden, weight, labels, bias, ignore_index, chunk_size)
    alpha = check_alpha(alpha)
    check_choice(convention, "convention", CONVENTIONS)
    check_choice(reduction, "reduction", REDUCTIONS)
    _check_num_items(num_items_in_batch)
    logit_scale, softcap, z_loss = _check_head(logit_scale, softcap, z_loss)
    vocab, dim = weight.shape
    if prior is not None:
        if convention != "uniform":
            raise ValueError(f"`prior` is only defined for convention='uniform', got convention={convention!r}")
        prior = check_prior(prior, vocab)
    w_hot, w_q = smoothing_weights(alpha, vocab, convention)
    per_row = reduction == "none"
    head = (logit_scale, softcap, z_loss)
    out, _, n_valid = _fused(hidden, weight, bias, labels, w_hot, w_q, prior, ignore_index, chunk_size, per_row, *head)
    if reduction != "mean":
        return out
    if num_items_in_batch is None:
        denom = torch.as_tensor(max(n_valid, 1), dtype=out.dtype, device=out.device)
    else:
        denom = torch.as_tensor(num_items_in_batch, device=out.device).clamp_min(1).to(out.dtype)
    return out / denom


def fused_smoothed_sums(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    w_hot: float,
    w_q: float,
    prior: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_sum, nll_sum)`` of ``z = softcap(logit_scale * (hidden @ weight.T + bias))`` for callers that
    validated their configuration (``logit_scale`` and ``softcap`` finite and > 0, ``z_loss`` finite and >= 0).

    The trainers' hot path (the public function checks every call). ``hidden`` and ``weight`` may differ in
    dtype: the matmuls run in autocast's dtype when autocast is on, else in the weights' dtype when it is
    bfloat16/float16, else in the wider of the two; each gets its gradient in its own dtype. Only ``loss_sum``
    (which includes the z-loss) is differentiable.
    """
    head = (logit_scale, softcap, z_loss)
    loss, nll, _ = _fused(hidden, weight, bias, labels, w_hot, w_q, prior, ignore_index, chunk_size, False, *head)
    return loss, nll


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the chunk matmuls, the one the head's ``nn.Linear`` would compute in.

    Autocast's dtype when autocast is enabled for the device (it never recasts float64); otherwise the weights'
    dtype when it is a half type (a float32 copy of a bf16 W would cost 2.4 GB at V = 256000, d = 2304), else
    the wider of the two dtypes.
    """
    device_type = hidden.device.type
    if torch.float64 not in (hidden.dtype, weight.dtype) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if weight.dtype in (torch.float16, torch.bfloat16):
        return weight.dtype
    return torch.promote_types(hidden.dtype, weight.dtype)


def _fused(hidden, weight, bias, labels, w_hot, w_q, prior, ignore_index, chunk_size, per_row, logit_scale, softcap, z_loss):
    """Shared body: ``(loss, nll, n_valid)``, each loss summed or per token (shaped like ``labels``)."""
    vocab, dim = weight.shape
    softcap = None if softcap is None else float(softcap)
    head = _Head(_matmul_dtype(hidden, weight), float(logit_scale), softcap, float(z_loss))
    cdtype = compute_dtype_for(head.matmul_dtype)
    q = None if prior is None else prior.to(device=hidden.device, dtype=cdtype)

    h = hidden.reshape(-1, dim)  # (N, d)
    y = labels.reshape(-1)  # (N,)
    mask = y != ignore_index  # (N,)
    n_valid = int(mask.sum())
    all_valid = n_valid == y.shape[0]
    # Padding rows are dropped here, so they cost no matmul; autograd scatters their zero gradient back.
    idx = None if all_valid else mask.nonzero().squeeze(1)  # (n_valid,)
    h_v = h if all_valid else h.index_select(0, idx)  # (n_valid, d)
    y_v = (y if all_valid else y.index_select(0, idx)).long()  # (n_valid,)

    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    # Default chunks of about 2**25 logits (1048 tokens at V = 32000, 128 MiB): the three matmuls per chunk
    # ran 1.5x faster at 1024 rows than at 128 on the loaded 2-core machine, and the chunk is still
    # ~0.1x of the unfused path's extra memory at N = 4096.
    chunk_rows = chunk_rows_for(n_valid, vocab, chunk_size)
    if chunk_size is None:
        # The same bytes of scratch when a chunk needs more than the one compute-dtype buffer: half matmuls add
        # their half-precision logits (1.5x), softcap's gradient a second buffer for 1 - tanh**2 (2x).
        buffers = 2.0 if head.softcap is not None and any(needs) and head.matmul_dtype == cdtype else 1.0
        buffers += 0.0 if head.matmul_dtype == cdtype else head.matmul_dtype.itemsize / cdtype.itemsize
        chunk_rows = max(1, int(chunk_rows / buffers))
    # The matmul dtype was taken from autocast above; inside, the chunk matmuls write into preallocated buffers
    # of that dtype, and autocast must not recast them.
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        loss, nll = _FusedLinearLSCE.apply(h_v.contiguous(), weight, bias, y_v, w_hot, w_q, q, chunk_rows, per_row, needs, head)
    if per_row and not all_valid:  # back to every position, 0 where ignored
        loss = loss.new_zeros(y.shape[0]).index_copy(0, idx, loss)
        nll = nll.new_zeros(y.shape[0]).index_copy(0, idx, nll)
    if per_row:
        loss, nll = loss.reshape(labels.shape), nll.reshape(labels.shape)
    return loss, nll, n_valid

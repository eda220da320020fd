"""Label-smoothing losses as pure functions.

Every smoothed target here is ``target = w_hot * onehot(y) + w_q * q`` with ``w_hot + w_q = 1`` and ``q`` a
distribution over the V classes (uniform, or a unigram ``prior``). The per-token loss is then

    H(target, softmax(z)) = lse(z) - w_hot * z_y - w_q * <q, z>
                          = w_hot * nll + w_q * (lse(z) - <q, z>)

so it needs one log-sum-exp, the target logit and one weighted sum of the logits per token, and never a
dense (..., V) target. An optional z-loss ``z_loss * lse(z)**2`` per token (PaLM, OLMo) reuses the same
log-sum-exp; it is added to the loss, never to the NLL.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ls_seq.checks import (
    check_alpha,
    check_choice,
    check_logits_labels,
    check_nonnegative,
    check_prior,
    check_temperature,
)
from ls_seq.functional._kernels import label_smoothed_ce_rows

__all__ = [
    "CONVENTIONS",
    "REDUCTIONS",
    "confidence_penalty_loss",
    "distillation_loss",
    "label_smoothed_cross_entropy",
    "smoothing_weights",
]

CONVENTIONS = ("uniform", "fairseq")
REDUCTIONS = ("mean", "sum", "none")


def smoothing_weights(alpha: float, vocab_size: int, convention: str = "uniform") -> tuple[float, float]:
    """Return ``(w_hot, w_q)`` of the smoothed target ``w_hot * onehot + w_q * q`` for a convention.

    ``"uniform"`` (the paper, ``torch.nn.functional.cross_entropy(label_smoothing=alpha)``): ``w_q = alpha``.
    ``"fairseq"`` (``label_smoothed_nll_loss``): ``1 - eps`` on the true class and ``eps / (V - 1)`` on each
    wrong class, i.e. ``w_q = eps * V / (V - 1)``.

    Args:
        alpha: the smoothing mass (``eps`` in fairseq's words), already checked to lie in ``[0, 1]``.
        vocab_size: V, the number of classes.
        convention: ``"uniform"`` or ``"fairseq"``; any other value is taken as ``"fairseq"`` (unchecked,
            like ``alpha``: the losses check both at their boundary).

    Returns:
        ``(w_hot, w_q)`` as Python floats, ``w_hot + w_q = 1``.

    Raises:
        ValueError: ``convention="fairseq"`` with fewer than 2 classes.

    Examples:
        >>> smoothing_weights(0.1, 4)
        (0.9, 0.1)
        >>> w_hot, w_q = smoothing_weights(0.3, 4, "fairseq")  # 0.7 on the true class, 0.1 on each other
        >>> round(w_hot + w_q * 0.25, 6), round(w_q * 0.25, 6)
        (0.7, 0.1)
    """
    if convention == "uniform":
        return 1.0 - alpha, alpha
    if vocab_size < 2:
        raise ValueError(f"convention='fairseq' needs at least 2 classes (it spreads eps over V - 1), got V={vocab_size}")
    w_q = alpha * vocab_size / (vocab_size - 1)
    return 1.0 - w_q, w_q


def _check_num_items(num_items_in_batch: Any) -> None:
    if num_items_in_batch is None:
        return
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1 or num_items_in_batch.is_complex():
            raise TypeError(
                f"`num_items_in_batch` must be a number or a one-element tensor, got shape {tuple(num_items_in_batch.shape)}"
            )
        return  # reading the value would force a device sync on every step; a negative count cannot come from HF
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float)):
        raise TypeError(f"`num_items_in_batch` must be a number or a tensor, got {type(num_items_in_batch).__name__}")
    if num_items_in_batch < 0:
        raise ValueError(f"`num_items_in_batch` must be >= 0, got {num_items_in_batch}")


def _reduce(
    per_token: torch.Tensor, mask: torch.Tensor, reduction: str, num_items_in_batch: Any, shape: torch.Size
) -> torch.Tensor:
    """Reduce per-token values that are already 0 at ignored positions.

    "mean" divides by the non-ignored count, or by ``num_items_in_batch`` (HF Trainer's token count over the
    whole accumulated batch). The divisor is at least 1: it only matters when every token is ignored, and
    then the sum is exactly 0, so the loss is 0 with a zero gradient.
    """
    if reduction == "none":
        return per_token.reshape(shape)
    total = per_token.sum()
    if reduction == "sum":
        return total
    if num_items_in_batch is None:
        denom = mask.sum().clamp_min(1)
    else:
        denom = torch.as_tensor(num_items_in_batch, device=total.device).clamp_min(1)
    return total / denom.to(total.dtype)


def _flatten(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    vocab = logits.shape[-1]
    z = logits.reshape(-1, vocab)  # (N, V), a view when possible
    y = labels.reshape(-1)  # (N,)
    mask = y != ignore_index  # (N,)
    y_safe = torch.where(mask, y, torch.zeros_like(y)).long()
    return z, y_safe, mask


def _validate_loss_args(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    ignore_index: int,
    prior: torch.Tensor | None,
    convention: str,
    reduction: str,
    num_items_in_batch: int | torch.Tensor | None,
) -> tuple[float, torch.Tensor | None]:
    check_logits_labels(logits, labels, ignore_index)
    alpha = check_alpha(alpha)
    check_choice(convention, "convention", CONVENTIONS)
    check_choice(reduction, "reduction", REDUCTIONS)
    _check_num_items(num_items_in_batch)
    if prior is not None:
        if convention != "uniform":
            raise ValueError(f"`prior` is only defined for convention='uniform', got convention={convention!r}")
        prior = check_prior(prior, logits.shape[-1])
    return alpha, prior


def label_smoothed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.1,
    *,
    ignore_index: int = -100,
    prior: torch.Tensor | None = None,
    convention: str = "uniform",
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    return_nll: bool = False,
    z_loss: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Cross-entropy against label-smoothed targets, computed in float32 without a dense target.

    A single chunked pass over the logits gives the loss, the NLL and (when the logits need one) the
    gradient ``softmax - target``, written once in the logits' dtype; backward only scales it.

    Args:
        logits: ``(..., V)`` unnormalised scores, any float dtype (computed in float32).
        labels: ``(...)`` class indices in ``[0, V)``, or ``ignore_index`` for padding; or ``(..., V)`` target
            distributions (floats, each row summing to 1, or all 0 for padding), e.g. MixUp's mixed one-hots:
            the smoothed target is then ``w_hot * target + w_q * q``. Smoothing is linear, so smoothing the
            mixed target equals mixing the smoothed one-hots (timm's ``mixup_target`` order): the two compose.
        alpha: smoothing mass in ``[0, 1]``. ``alpha=0`` is the plain negative log-likelihood.
        ignore_index: label value whose positions contribute nothing (loss and gradient 0).
        prior: optional length-V probability vector replacing the uniform ``1/V`` (unigram smoothing,
            Pereyra et al. 2017). Only with ``convention="uniform"``.
        convention: ``"uniform"``: target ``(1 - alpha) onehot + alpha q`` (paper, PyTorch);
            ``"fairseq"``: ``1 - alpha`` on the true class and ``alpha / (V - 1)`` on each other class.
        reduction: ``"mean"`` over non-ignored tokens (or ``sum / num_items_in_batch`` when given),
            ``"sum"``, or ``"none"`` (shape of ``labels``, 0 where ignored).
        num_items_in_batch: divisor for ``"mean"``: the number of non-ignored tokens in the whole
            (accumulated, all-rank) batch, as HF Trainer passes it.
        return_nll: also return the plain token NLL ``-log p_y`` with the same reduction (with target
            distributions: the cross-entropy ``-sum_k t_k log p_k`` to the unsmoothed target).
        z_loss: weight of the z-loss ``lse(z)**2`` added per counted token (PaLM, OLMo; Liger-Kernel's
            ``lse_square_scale``), finite and >= 0; it pulls the log-normaliser towards 0. Not part of the NLL.

    Returns:
        The loss (float32), or ``(loss, nll)`` when ``return_nll``.

    Per token, with ``(w_hot, w_q)`` from :func:`smoothing_weights`:
    ``loss = lse(z) - w_hot * z_y - w_q * sum_k q_k z_k + z_loss * lse(z)**2``.

    Examples:
        >>> import torch
        >>> from ls_seq import label_smoothed_cross_entropy
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
        >>> labels = torch.tensor([0, -100])
        >>> loss = label_smoothed_cross_entropy(logits, labels, alpha=0.1)
        >>> ref = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
        >>> bool(torch.isclose(loss, ref))
        True
    """
    z_loss = check_nonnegative(z_loss, "z_loss")
    if isinstance(labels, torch.Tensor) and labels.is_floating_point():
        return _soft_target_cross_entropy(
            logits, labels, alpha, prior, convention, reduction, num_items_in_batch, return_nll, z_loss
        )
    alpha, prior = _validate_loss_args(logits, labels, alpha, ignore_index, prior, convention, reduction, num_items_in_batch)
    z, y, mask = _flatten(logits, labels, ignore_index)
    w_hot, w_q = smoothing_weights(alpha, z.shape[-1], convention)
    # One chunked read of the logits and one (N, V) gradient write (ls_seq.functional._kernels), instead of
    # autograd through log_softmax + gather + sum, which keeps three (N, V) tensors.
    loss_tok, nll_tok = label_smoothed_ce_rows(  # (N,), (N,)
        z, y, mask, w_hot, w_q, prior, compute_dtype=torch.float32, z_loss=z_loss
    )
    loss = _reduce(loss_tok, mask, reduction, num_items_in_batch, labels.shape)
    if not return_nll:
        return loss
    return loss, _reduce(nll_tok, mask, reduction, num_items_in_batch, labels.shape)


def _soft_target_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    prior: torch.Tensor | None,
    convention: str,
    reduction: str,
    num_items_in_batch: int | torch.Tensor | None,
    return_nll: bool,
    z_loss: float,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The smoothed loss against ``(..., V)`` target distributions (dense: the targets are dense already)."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("`logits` must be a floating-point tensor")
    if targets.shape == logits.shape[:-1]:
        raise TypeError(
            f"`labels` must be an integer tensor of class indices (e.g. torch.long), got {targets.dtype} with the "
            f"shape of the labels {tuple(targets.shape)}; floating-point `labels` are target distributions of shape "
            f"{tuple(logits.shape)}"
        )
    if targets.shape != logits.shape:
        raise ValueError(
            f"target distributions must have the shape of `logits` {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    alpha = check_alpha(alpha)
    check_choice(convention, "convention", CONVENTIONS)
    check_choice(reduction, "reduction", REDUCTIONS)
    _check_num_items(num_items_in_batch)
    vocab = logits.shape[-1]
    t = targets.reshape(-1, vocab).float()  # (N, V)
    totals = t.sum(-1)  # (N,)
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError("target distributions must be finite and non-negative")
    mask = totals > 0
    if not bool(((totals - 1).abs() <= 1e-4)[mask].all()):
        bad = float(totals[mask][((totals - 1).abs() > 1e-4)[mask]][0])
        raise ValueError(f"every target distribution must sum to 1 (or be all 0 for padding); one sums to {bad:.6g}")
    if prior is not None:
        if convention != "uniform":
            raise ValueError(f"`prior` is only defined for convention='uniform', got convention={convention!r}")
        prior = check_prior(prior, vocab).to(device=logits.device, dtype=torch.float32)
    w_hot, w_q = smoothing_weights(alpha, vocab, convention)
    log_p = F.log_softmax(logits.reshape(-1, vocab).float(), dim=-1)  # (N, V)
    q_log_p = log_p.mean(-1) if prior is None else log_p @ prior  # (N,)
    nll_tok = -(t * log_p).sum(-1)  # (N,)
    loss_tok = w_hot * nll_tok - w_q * q_log_p
    if z_loss:
        loss_tok = loss_tok + z_loss * torch.logsumexp(logits.reshape(-1, vocab).float(), dim=-1).square()
    loss_tok = torch.where(mask, loss_tok, torch.zeros_like(nll_tok))
    nll_tok = torch.where(mask, nll_tok, torch.zeros_like(nll_tok))
    shape = logits.shape[:-1]
    loss = _reduce(loss_tok, mask, reduction, num_items_in_batch, shape)
    return (loss, _reduce(nll_tok, mask, reduction, num_items_in_batch, shape)) if return_nll else loss


def smoothed_sums(
    logits: torch.Tensor,
    labels: torch.Tensor,
    w_hot: float,
    w_q: float,
    prior: torch.Tensor | None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_sum, nll_sum)`` over the non-ignored tokens, for callers that validated their configuration once.

    The hot path of the trainers and of :func:`ls_seq.label_smoothing_loss_func`: no argument checks and no
    host sync (the public :func:`label_smoothed_cross_entropy` checks every call). ``logits`` ``(..., V)`` and
    ``labels`` ``(...)`` must already be aligned; ``prior`` is ``(V,)`` float32 on the logits' device or None.
    ``z_loss`` adds ``z_loss * lse(z)**2`` per token to ``loss_sum`` only.
    """
    z, y, mask = _flatten(logits, labels, ignore_index)
    loss_tok, nll_tok = label_smoothed_ce_rows(  # (N,), (N,)
        z, y, mask, w_hot, w_q, prior, compute_dtype=torch.float32, z_loss=z_loss
    )
    return loss_tok.sum(), nll_tok.sum()


def entropy_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Summed entropy ``H(softmax(z))`` over the non-ignored tokens (unchecked, like :func:`smoothed_sums`)."""
    z, _, mask = _flatten(logits, labels, ignore_index)
    log_p = F.log_softmax(z.float(), dim=-1)  # (N, V)
    entropy = -(log_p.exp() * log_p).sum(-1)  # (N,)
    return torch.where(mask, entropy, torch.zeros_like(entropy)).sum()


def confidence_penalty_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Negative log-likelihood minus ``beta`` times the entropy of the prediction (Pereyra et al. 2017).

    Per token: ``-log p_y(z) - beta * H(p(z))`` with ``H(p) = lse(z) - sum_k p_k z_k``. Computed in float32.
    ``beta`` must be finite and >= 0; ``beta=0`` is the NLL.

    Args:
        logits: ``(..., V)`` unnormalised scores, any float dtype (computed in float32).
        labels: ``(...)`` class indices in ``[0, V)``, or ``ignore_index`` for padding.
        beta: weight of the entropy bonus, finite and >= 0.
        ignore_index: label value whose positions contribute nothing (loss and gradient 0).
        reduction: ``"mean"`` over non-ignored tokens (or ``sum / num_items_in_batch`` when given),
            ``"sum"``, or ``"none"`` (shape of ``labels``, 0 where ignored).
        num_items_in_batch: divisor for ``"mean"``, as in :func:`label_smoothed_cross_entropy`.

    Returns:
        The loss (float32): a scalar for ``"mean"``/``"sum"``, else shaped like ``labels``.

    Raises:
        TypeError: ``beta`` is not a real number, or ``logits`` / ``labels`` have the wrong type.
        ValueError: ``beta`` is negative or infinite, ``reduction`` is unknown, or the shapes do not match.
    """
    check_logits_labels(logits, labels, ignore_index)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"`beta` must be a real number >= 0, got {type(beta).__name__}")
    if not (beta >= 0.0 and beta != float("inf")):
        raise ValueError(f"`beta` must be finite and >= 0, got {beta!r}")
    check_choice(reduction, "reduction", REDUCTIONS)
    _check_num_items(num_items_in_batch)
    z, y, mask = _flatten(logits, labels, ignore_index)
    log_p = F.log_softmax(z.float(), dim=-1)  # (N, V)
    nll = -log_p.gather(1, y[:, None]).squeeze(1)  # (N,)
    entropy = -(log_p.exp() * log_p).sum(-1)  # (N,)
    per_token = torch.where(mask, nll - beta * entropy, torch.zeros_like(nll))
    return _reduce(per_token, mask, reduction, num_items_in_batch, labels.shape)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    beta: float = 1.0,
    ignore_index: int = -100,
    t2_scaling: bool = False,
) -> torch.Tensor:
    r"""Knowledge-distillation loss of Müller et al. (2019), Sec. 4 (Hinton et al. 2015).

    ``(1 - beta) H(y, p(z)) + beta H(p(z_t / T), p(z / T))``, averaged over rows whose label is not
    ``ignore_index`` (all rows when ``labels`` is None). ``H(a, b) = -sum_k a_k log b_k`` is the cross-entropy;
    its gradient equals that of the KL divergence, the teacher receives no gradient.

    Args:
        student_logits: ``(..., K)`` the student's scores, any float dtype (computed in float32).
        teacher_logits: ``(..., K)`` the teacher's scores, the shape of ``student_logits``; no gradient.
        labels: ``(...)`` hard labels; required when ``beta < 1``.
        temperature: ``T > 0`` applied to both teacher and student in the distillation term.
        beta: weight of the distillation term in ``[0, 1]``; the paper's experiments use ``beta = 1``.
        ignore_index: label value of rows that contribute nothing.
        t2_scaling: multiply the distillation term by ``T**2`` (Hinton et al.'s convention, which keeps its
            gradient magnitude independent of ``T``). Off by default, as in the paper's formula.

    Returns:
        The mean loss over the counted rows, a float32 scalar (0 with a zero gradient when every row is ignored).

    Raises:
        TypeError: the logits are not floating-point tensors.
        ValueError: the two logits differ in shape, ``temperature`` or ``beta`` is out of range, or ``labels``
            is None while ``beta < 1``.
    """
    if not isinstance(student_logits, torch.Tensor) or not isinstance(teacher_logits, torch.Tensor):
        raise TypeError("`student_logits` and `teacher_logits` must be torch.Tensors")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"`teacher_logits` must have the shape of `student_logits` {tuple(student_logits.shape)}, "
            f"got {tuple(teacher_logits.shape)}"
        )
    if not teacher_logits.is_floating_point():
        raise TypeError(f"`teacher_logits` must be a floating-point tensor, got {teacher_logits.dtype}")
    temperature = check_temperature(temperature)
    beta = check_alpha(beta, name="beta")
    if labels is None:
        if beta < 1.0:
            raise ValueError(f"`labels` are required when `beta` < 1 (the hard-label term has weight {1 - beta})")
        if not student_logits.is_floating_point():
            raise TypeError(f"`student_logits` must be a floating-point tensor, got {student_logits.dtype}")
        labels = torch.zeros(student_logits.shape[:-1], dtype=torch.long, device=student_logits.device)
    else:
        check_logits_labels(student_logits, labels, ignore_index, logits_name="student_logits")
    z, y, mask = _flatten(student_logits, labels, ignore_index)
    z = z.float()
    zt = teacher_logits.reshape(z.shape).detach().float()
    p_teacher = F.softmax(zt / temperature, dim=-1)  # (N, K)
    soft = -(p_teacher * F.log_softmax(z / temperature, dim=-1)).sum(-1)  # (N,)
    if t2_scaling:
        soft = soft * temperature**2
    per_row = beta * soft
    if beta < 1.0:
        per_row = per_row + (1.0 - beta) * F.cross_entropy(z, y, reduction="none")
    per_row = torch.where(mask, per_row, torch.zeros_like(per_row))
    return per_row.sum() / mask.sum().clamp_min(1)

r"""Temperature scaling: the temperature that minimises the NLL of held-out tokens (Guo et al. 2017).

:func:`fit_temperature` runs Newton's method on the summed NLL as a function of ``b = 1/T``, whose first two
derivatives it computes in the same pass over the logits; it is what the paper's "temperature scaling of a
hard-target model" means, and what every route of ls-seq reports as the NLL-optimal temperature.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from ls_seq.checks import check_logits_labels
from ls_seq.functional.statistics import _iter_valid_chunks

__all__ = ["fit_temperature"]


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
        logits: ``(..., V)`` held-out scores, any float dtype.
        labels: ``(...)`` class indices, ``ignore_index`` for padding.
        ignore_index: label value of padding; those positions are not counted.
        bounds: the temperature range searched. If the optimum lies outside it, a ``RuntimeWarning`` says so and
            the nearest bound is returned (a model that is right on every token has its optimum at ``T -> 0``).
        tol: stop when a step changes ``b = 1/T`` by at most ``tol * b``.
        max_iter: at most this many Newton (or bisection) steps; the last iterate is returned.
        all_reduce: for logits spread over processes, a function summing a list of floats over all of them
            (e.g. with ``torch.distributed.all_reduce``): every process then takes the same Newton steps on the
            NLL of all tokens, and returns the same temperature.

    Returns:
        The fitted temperature as a Python float.

    Raises:
        ValueError: ``bounds`` is not ``0 < low < high < inf``, every label is ``ignore_index``, a counted logit
            is not finite, or ``logits`` and ``labels`` do not match.

    Examples:
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

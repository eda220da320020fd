r"""Measures of the information a teacher's logits carry (Müller et al. 2019, Sec. 4 and Fig. 6)."""

from __future__ import annotations

import math

import torch

from ls_seq.checks import check_logits_labels, check_temperature

__all__ = ["gaussian_mutual_information", "smoothness_index"]


def smoothness_index(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    *,
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""The paper's smoothness index ``gamma`` of a teacher at temperature ``T``.

    ``gamma = E[sum_k (1 - y_k) p_k(z / T)] * K / (K - 1) = E[1 - p_y(z / T)] * K / (K - 1)``: the probability mass
    on wrong classes, rescaled so that a uniform-label-smoothing target of strength ``alpha`` has
    ``gamma = alpha``. Averaged over rows whose label is not ``ignore_index``.

    Args:
        teacher_logits: ``(..., K)`` the teacher's scores, ``K >= 2``, any float dtype (computed in float32).
        labels: ``(...)`` the true classes, ``ignore_index`` for rows not counted.
        temperature: ``T > 0`` dividing the logits before the softmax.
        ignore_index: label value of rows not counted.

    Returns:
        ``gamma``, a float64 scalar tensor (0 for a one-hot teacher, ``alpha`` for a smoothed target).

    Raises:
        ValueError: ``K < 2``, ``temperature`` is not finite and positive, every label is ``ignore_index``, or
            the logits and labels do not match.

    Examples:
        >>> import torch
        >>> from ls_seq import smoothness_index
        >>> # logits whose softmax is exactly the alpha=0.1 smoothed target of class 0 (K=4)
        >>> target = torch.tensor([[0.925, 0.025, 0.025, 0.025]])
        >>> round(float(smoothness_index(target.log(), torch.tensor([0]))), 6)
        0.1
    """
    check_logits_labels(teacher_logits, labels, ignore_index, logits_name="teacher_logits")
    temperature = check_temperature(temperature)
    k = teacher_logits.shape[-1]
    if k < 2:
        raise ValueError(f"`teacher_logits` must have at least 2 classes for the smoothness index, got K={k}")
    z = teacher_logits.reshape(-1, k).float() / temperature  # (N, K)
    y = labels.reshape(-1)
    mask = y != ignore_index
    if not bool(mask.any()):
        raise ValueError("`labels` hold no row other than ignore_index: the smoothness index is undefined")
    log_p_y = torch.log_softmax(z[mask], dim=-1).gather(1, y[mask].long()[:, None]).squeeze(1)  # (n,)
    wrong_mass = -torch.expm1(log_p_y.double())  # 1 - p_y, accurate when p_y is close to 1
    return wrong_mass.mean() * k / (k - 1)


def gaussian_mutual_information(samples: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    r"""Monte-Carlo estimate of ``I(X; Y)`` between examples and a scalar of their representation (paper, Sec. 4).

    ``samples[x, l]`` is the scalar ``Y`` (e.g. the difference of two classes' logits) of example ``x`` under
    augmentation ``l``. ``p(y | x)`` is modelled as ``N(mu_x, sigma^2)`` with ``mu_x`` the mean of row ``x`` and
    ``sigma^2`` the within-example variance pooled over all ``N * L`` values,
    ``sigma^2 = mean_{x,l} (f_xl - mu_x)^2``. Then, with ``p(y) = (1/N) sum_x' p(y | x')``,

        I = mean_{x,l} [ -(f_xl - mu_x)^2 / (2 sigma^2) - log( (1/N) sum_x' exp(-(f_xl - mu_x')^2 / (2 sigma^2)) ) ]

    in nats. Each term is at most ``log N``; well-separated examples give ``~log N``, examples with the same
    distribution give ``~0``.

    Args:
        samples: ``(N, L)`` float tensor, ``N >= 2`` examples, ``L >= 2`` draws each, finite.
        chunk_size: rows of the ``(N * L, N)`` distance matrix computed at a time.

    Returns:
        A float64 scalar tensor (nats).

    Examples:
        >>> import torch
        >>> from ls_seq import gaussian_mutual_information
        >>> g = torch.Generator().manual_seed(0)
        >>> far = torch.arange(8.0)[:, None] * 100 + torch.randn(8, 50, generator=g)
        >>> round(float(gaussian_mutual_information(far)), 3) == round(float(torch.log(torch.tensor(8.0))), 3)
        True
    """
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"`samples` must be a torch.Tensor of shape (N, L), got {type(samples).__name__}")
    if not samples.is_floating_point():
        raise TypeError(f"`samples` must be a floating-point tensor, got {samples.dtype}")
    if samples.dim() != 2 or samples.shape[0] < 2 or samples.shape[1] < 2:
        raise ValueError(
            f"`samples` must have shape (N, L) with N >= 2 examples and L >= 2 draws each, got {tuple(samples.shape)}"
        )
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("`samples` must be finite; got NaN or an infinite value")
    f = samples.double()  # (N, L)
    n = f.shape[0]
    mu = f.mean(dim=1)  # (N,)
    var = ((f - mu[:, None]) ** 2).mean()
    if float(var) == 0.0:
        raise ValueError(
            "`samples` have zero within-example variance (every draw of each example is identical): "
            "the Gaussian estimator is undefined; add augmentation noise or more draws"
        )
    values = f.flatten()  # (N*L,)
    own = (f - mu[:, None]).flatten()  # (N*L,): f_xl - mu_x
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, values.numel(), chunk_size):
        v = values[start : start + chunk_size]
        log_kernel = -((v[:, None] - mu[None, :]) ** 2) / (2 * var)  # (c, N)
        log_marginal = torch.logsumexp(log_kernel, dim=1) - math.log(n)  # (c,)
        total += (-(own[start : start + chunk_size] ** 2) / (2 * var) - log_marginal).sum()
    return total / values.numel()

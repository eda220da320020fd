"""Paired bootstrap intervals of the difference between two models scored on the same evaluation set.

:class:`ls_seq.calibration.metric.TokenCalibration` keeps ``R`` Poisson-bootstrap replicates of its per-bin sums, each
token weighted by a draw that is a function of the token alone (:mod:`ls_seq.functional.bootstrap`). Two
models scored on the same test set therefore see the *same* resampled test sets: replicate ``r`` of model A
and replicate ``r`` of model B are one resample, and ``B_r - A_r`` is a paired bootstrap of the difference.
It is much narrower than two separate intervals when the models err on the same examples, and it is what a
claim's per-seed evidence holds (:class:`ls_seq.studies.claims.SeedEvidence`).

Examples:
    >>> import torch
    >>> a = torch.tensor([0.10, 0.12, 0.11, 0.13], dtype=torch.float64)  # model A's ECE on 4 resamples
    >>> b = a - torch.tensor([0.04, 0.05, 0.05, 0.06], dtype=torch.float64)  # model B, better on each
    >>> {k: round(v, 4) for k, v in paired_interval(a, b, level=0.5).items()}
    {'low': -0.0525, 'high': -0.0475}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ls_seq.studies.claims import SeedEvidence

__all__ = ["paired_evidence", "paired_interval"]


def paired_interval(
    a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor, level: float = 0.95
) -> dict[str, float]:
    """The percentile interval of ``b_r - a_r`` over paired replicates (``torch.quantile``, linear, like the
    metric's own intervals).

    Args:
        a: ``(R,)`` replicates of one statistic of the first model (``R >= 2``).
        b: ``(R,)`` replicates of the same statistic of the second model, on the same resamples.
        level: two-sided coverage in ``(0, 1)``.

    Returns:
        ``{"low": ..., "high": ...}``.
    """
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1)
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"`a` and `b` must hold the same number (>= 2) of paired replicates, got {a.numel()} and {b.numel()}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level}")
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("`a` and `b` must be finite replicates; got NaN or an infinite value")
    tail = (1 - level) / 2
    low, high = torch.quantile(b - a, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return {"low": float(low), "high": float(high)}


def paired_evidence(
    seed: int,
    difference: float,
    replicates_a: Sequence[float] | None,
    replicates_b: Sequence[float] | None,
    *,
    p_value: float | None = None,
) -> SeedEvidence:
    """One seed's :class:`~ls_seq.studies.claims.SeedEvidence` for ``b - a``: the measured ``difference`` and, when
    both models' replicates are given, the :func:`paired_interval` of it (none otherwise)."""
    low = high = None
    if replicates_a and replicates_b:
        low, high = paired_interval(replicates_a, replicates_b).values()
    return SeedEvidence(seed, difference, low, high, p_value)

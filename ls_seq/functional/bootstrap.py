"""Poisson bootstrap weights that depend on the token, not on where it was seen.

A bootstrap confidence interval without storing tokens: each token gets, per replicate ``r``, a weight
``w_r ~ Poisson(1)`` (the limit of multinomial resampling), and every replicate keeps weighted per-bin sums
beside the real ones. For the interval to be the same under any batching and any number of processes, the
weight must be a function of the token itself: here a counter-based hash of a key built from the token's
row (its labels and their positions relative to the row's first scored label, so padding and its side do
not matter), its position in that row, the replicate and a seed. Two identical rows get identical weights:
they are resampled together, as one cluster.

All arithmetic is modulo the prime ``P = 2**31 - 1`` in int64 (products stay below ``2**62``), so the hash
is exact on every device.
"""

from __future__ import annotations

import torch

__all__ = ["poisson_weights", "token_keys"]

_P = 2**31 - 1
_MULTIPLIERS = (48271, 69621, 16807, 39373)  # full-period multipliers modulo 2**31 - 1
# P(Poisson(1) <= k) for k = 0 ... 9: a uniform u draws k = #{thresholds below u}.
_POISSON1_CDF = (
    0.36787944117144233,
    0.7357588823428847,
    0.9196986029286058,
    0.9810118431238462,
    0.9963401531726563,
    0.9994058151824183,
    0.9999167588507119,
    0.9999898508158684,
    0.9999989700559880,
    0.9999999079008808,
)


def _mix(x: torch.Tensor, salt: int) -> torch.Tensor:
    """A hash of int64 values in ``[0, P)`` to ``[0, P)``: multiply-xorshift rounds modulo ``P``."""
    x = (x + salt % _P) % _P
    for a in _MULTIPLIERS:
        x = (x * a) % _P
        x = x ^ (x >> 11)
    return x % _P


def token_keys(row: torch.Tensor, column: torch.Tensor, label: torch.Tensor, n_rows: int) -> torch.Tensor:
    """A key per token from its row's content and its place in the row, independent of padding and batching.

    Args:
        row: ``(n,)`` int64, the row of each scored token.
        column: ``(n,)`` int64, its column in the padded batch.
        label: ``(n,)`` int64, its label.
        n_rows: rows of the batch.
    """
    first = torch.full((max(n_rows, 1),), 2**62, dtype=torch.int64, device=row.device)
    first = first.scatter_reduce(0, row, column, reduce="amin")  # the row's first scored column
    rel = (column - first[row]) % _P  # (n,): position relative to it
    per_token = _mix((rel * 65537 + label % _P) % _P, 1)  # (n,)
    row_hash = torch.zeros(max(n_rows, 1), dtype=torch.int64, device=row.device).index_add_(0, row, per_token) % _P
    return _mix((row_hash[row] * 31 + rel) % _P, 2)


def poisson_weights(keys: torch.Tensor, replicates: int, seed: int = 0) -> torch.Tensor:
    """``(replicates, n)`` float32 Poisson(1) weights, a function of each key, the replicate and ``seed`` only."""
    r = torch.arange(replicates, dtype=torch.int64, device=keys.device)[:, None]  # (R, 1)
    x = _mix((keys[None, :] + _mix(r, seed + 3)) % _P, seed + 4)  # (R, n)
    u = (x.double() + 0.5) / _P  # uniform in (0, 1)
    thresholds = torch.tensor(_POISSON1_CDF, dtype=torch.float64, device=keys.device)
    return torch.searchsorted(thresholds, u).float()

"""Smoothness index and the Gaussian mutual-information estimator against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ls_seq import gaussian_mutual_information, smoothness_index


def test_smoothness_index_against_formula():
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(50, 6, generator=g)
    labels = torch.randint(0, 6, (50,), generator=g)
    for t in (1.0, 3.0):
        p = F.softmax(logits.double() / t, -1)
        y = F.one_hot(labels, 6).double()
        ref = ((1 - y) * p).sum(-1).mean() * 6 / 5
        torch.testing.assert_close(smoothness_index(logits, labels, temperature=t), ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3])
def test_smoothness_index_of_label_smoothed_target_is_alpha(alpha):
    k = 10
    labels = torch.arange(k)
    target = torch.full((k, k), alpha / k) + (1 - alpha) * torch.eye(k)
    logits = target.log() if alpha > 0 else 50 * torch.eye(k)
    torch.testing.assert_close(smoothness_index(logits, labels).item(), alpha, rtol=1e-5, atol=1e-6)


def test_smoothness_index_ignores_padding():
    logits, labels = torch.randn(8, 4), torch.randint(0, 4, (8,))
    padded = labels.clone()
    padded[5:] = -100
    torch.testing.assert_close(smoothness_index(logits, padded), smoothness_index(logits[:5], labels[:5]))


def _brute_force_mi(f):
    """The estimator's formula with explicit loops over (x, l) and x' (float64)."""
    f = f.double()
    n, length = f.shape
    mu = f.mean(1)
    var = sum(((f[x, l] - mu[x]) ** 2) for x in range(n) for l in range(length)) / (n * length)
    total = 0.0
    for x in range(n):
        for l in range(length):
            own = -((f[x, l] - mu[x]) ** 2) / (2 * var)
            marginal = sum(math.exp(-((f[x, l] - mu[xp]) ** 2) / (2 * var)) for xp in range(n)) / n
            total += own - math.log(marginal)
    return total / (n * length)


def test_mutual_information_equals_brute_force():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(6, 5, generator=g) + torch.arange(6.0)[:, None] * 0.7
    assert abs(float(gaussian_mutual_information(f, chunk_size=7)) - _brute_force_mi(f)) < 1e-10


def test_mutual_information_is_log_n_for_separated_and_zero_for_identical_examples():
    g = torch.Generator().manual_seed(0)
    n, length = 16, 40
    separated = 50 * torch.arange(n, dtype=torch.float64)[:, None] + torch.randn(n, length, generator=g)
    assert abs(float(gaussian_mutual_information(separated)) - math.log(n)) < 1e-6
    draws = torch.randn(length, generator=g)
    identical = torch.stack([draws[torch.randperm(length, generator=g)] for _ in range(n)])  # same mean per row
    assert abs(float(gaussian_mutual_information(identical))) < 1e-12


def test_mutual_information_grows_with_separation_and_stays_below_log_n():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(10, 30, generator=g)
    values = [float(gaussian_mutual_information(noise + s * torch.arange(10.0)[:, None])) for s in (0.0, 0.3, 1.0, 3.0)]
    assert values == sorted(values)
    assert values[-1] <= math.log(10) + 1e-12

"""Calibration core against torchmetrics, a brute-force ECE and a grid-searched temperature."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from ls_seq import expected_calibration_error, fit_temperature
from ls_seq.calibration.schema import CalibrationSchema, make_config

IGNORE = -100


def _data(n=600, v=7, scale=2.5, pad_frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, v, generator=g)
    # labels drawn from a sharper distribution than the logits imply: a miscalibrated "model"
    labels = torch.multinomial(F.softmax(1.5 * logits, -1), 1, generator=g).squeeze(1)
    labels[torch.rand(n, generator=g) < pad_frac] = IGNORE
    return logits, labels


def _state(logits, labels, n_bins, temps, chunk_rows):
    """One batch's state of every default measure (the chunked pass of ls_seq.functional.calibration)."""
    return CalibrationSchema(make_config(n_bins, IGNORE, temps)).batch_state(logits, labels, chunk_rows=chunk_rows)


def _brute_force_ece(logits, labels, n_bins, norm):
    """Loop over tokens and bins, in float64, with the documented bin rule floor(c * B), c = 1 in the last bin."""
    keep = labels != IGNORE
    probs = F.softmax(logits[keep].double(), -1)
    conf, pred = probs.max(-1)
    correct = (pred == labels[keep]).double()
    gaps, weights = [], []
    for b in range(n_bins):
        in_bin = torch.tensor([min(math.floor(c * n_bins), n_bins - 1) == b for c in conf.tolist()])
        if in_bin.any():
            gaps.append(abs(correct[in_bin].mean() - conf[in_bin].mean()))
            weights.append(in_bin.double().mean())
    gaps, weights = torch.stack(gaps), torch.stack(weights)
    if norm == "l1":
        return (gaps * weights).sum()
    if norm == "l2":
        return ((gaps**2) * weights).sum().sqrt()
    return gaps.max()


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_equals_brute_force(norm, n_bins):
    logits, labels = _data()
    ours = expected_calibration_error(logits, labels, n_bins=n_bins, norm=norm)
    # ours computes confidences in float32, the reference in float64
    torch.testing.assert_close(ours, _brute_force_ece(logits, labels, n_bins, norm), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("norm", ["l1", "max", "l2"])
def test_ece_equals_torchmetrics_on_non_ignored_tokens(norm):
    logits, labels = _data(n=2000, v=9)
    keep = labels != IGNORE
    ref = MulticlassCalibrationError(num_classes=9, n_bins=15, norm=norm)(F.softmax(logits[keep], -1), labels[keep])
    ours = expected_calibration_error(logits, labels, n_bins=15, norm=norm)
    # torchmetrics bins with float32 edges; no confidence here is exactly 1 or within 1e-6 of an edge
    torch.testing.assert_close(ours.float(), ref.float(), rtol=1e-5, atol=1e-6)


def test_chunking_does_not_change_statistics():
    logits, labels = _data(n=333)
    temps = torch.tensor([0.7, 1.0, 1.9], dtype=torch.float64)
    whole = _state(logits, labels, 15, temps, chunk_rows=10_000)
    chunked = _state(logits, labels, 15, temps, chunk_rows=7)
    for key in whole:
        torch.testing.assert_close(whole[key], chunked[key], rtol=1e-12, atol=1e-9)


def test_ece_of_half_precision_within_tolerance_of_float32():
    logits, labels = _data(n=3000)
    ref = expected_calibration_error(logits, labels)
    for dtype in (torch.bfloat16, torch.float16):
        assert abs(float(expected_calibration_error(logits.to(dtype), labels)) - float(ref)) < 0.01


def test_non_finite_logits_rejected_only_where_not_ignored():
    logits, labels = _data(n=20)
    labels[3] = IGNORE
    logits[3, 0] = float("nan")
    expected_calibration_error(logits, labels)  # NaN in a padded row is fine
    labels[3] = 1
    with pytest.raises(ValueError, match="finite"):
        expected_calibration_error(logits, labels)
    logits[3, 0] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        expected_calibration_error(logits, labels)


@pytest.mark.parametrize("planted", [0.6, 1.0, 2.5])
def test_fit_temperature_recovers_planted_temperature(planted):
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(40_000, 10, generator=g)
    labels = torch.multinomial(F.softmax(logits / planted, -1), 1, generator=g).squeeze(1)
    assert abs(fit_temperature(logits, labels) - planted) < 0.05 * planted


def test_fit_temperature_is_the_nll_minimiser_on_a_grid():
    logits, labels = _data(n=3000)
    fitted = fit_temperature(logits, labels)
    keep = labels != IGNORE
    grid = torch.linspace(0.2, 3.0, 2801, dtype=torch.float64)
    nll = torch.stack([F.cross_entropy(logits[keep].double() / t, labels[keep]) for t in grid])
    best = float(grid[nll.argmin()])
    assert abs(fitted - best) <= 1.5e-3
    assert F.cross_entropy(logits[keep].double() / fitted, labels[keep]) <= nll.min() + 1e-9


def test_fit_temperature_warns_at_the_bound():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 1])  # always right: NLL keeps falling as T -> 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = fit_temperature(logits, labels, bounds=(0.1, 10.0))
    assert t == 0.1 and any("below the search bound" in str(w.message) for w in caught)


def test_fit_temperature_with_only_padding_is_an_error():
    with pytest.raises(ValueError, match="ignore_index"):
        fit_temperature(torch.randn(4, 3), torch.full((4,), IGNORE))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sweep_equals_float32_sweep_of_the_upcast_logits(dtype):
    """Half logits are upcast before scaling by 1/T: the sweep equals the float32 sweep of the same values."""
    logits, labels = _data(n=500, v=11)
    half = logits.to(dtype)
    temps = torch.tensor([0.5, 1.0, 1.7], dtype=torch.float64)
    got = _state(half, labels, 15, temps, chunk_rows=64)
    ref = _state(half.float(), labels, 15, temps, chunk_rows=64)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=0)


def test_chunks_of_padding_only_are_skipped_without_changing_the_result():
    logits, labels = _data(n=300, pad_frac=0.0)
    padded_logits = torch.cat([torch.full((100, 7), float("nan")), logits, torch.randn(50, 7)])
    padded_labels = torch.cat([torch.full((100,), IGNORE), labels, torch.full((50,), IGNORE)])
    temps = torch.tensor([0.8, 1.0], dtype=torch.float64)
    got = _state(padded_logits, padded_labels, 10, temps, chunk_rows=25)
    ref = _state(logits, labels, 10, temps, chunk_rows=25)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-12, atol=1e-9)

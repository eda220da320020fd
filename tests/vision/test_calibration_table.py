"""Table-3 rows: temperature fitted on validation only, metrics against a hand-written 15-bin ECE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vision.calibration import HARD, HARD_TS, SMOOTHED, calibration_row, calibration_table


def _reference_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Guo et al.'s ECE written out with a Python loop over equal-width, left-closed bins."""
    p = F.softmax(logits.double(), dim=-1)
    conf, pred = p.max(-1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        mask = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        if mask.any():
            gap = (pred[mask] == labels[mask]).double().mean() - conf[mask].mean()
            total += float(mask.sum()) / len(labels) * abs(float(gap))
    return total


def _overconfident(n: int, seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z): z is calibrated, scale * z (scale > 1) is overconfident."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, 10, generator=g, dtype=torch.float64)
    y = torch.multinomial(F.softmax(z, -1), 1, generator=g).squeeze(1)
    return scale * z, y


def _nll(logits, labels, t):
    return float(F.cross_entropy(logits / t, labels))


def test_table_fits_temperature_on_validation_and_measures_on_test():
    hard_val, hard_test = _overconfident(4000, 0, 3.0), _overconfident(4000, 1, 3.0)
    ls_val, ls_test = _overconfident(4000, 2, 1.0), _overconfident(4000, 3, 1.0)
    rows = calibration_table(hard_val, hard_test, ls_val, ls_test, n_bins=15)
    assert list(rows) == [HARD, HARD_TS, SMOOTHED]
    t = rows[HARD_TS].temperature
    # reference: the NLL-optimal temperature on the validation split, by a grid search (step 0.01)
    grid = torch.arange(0.5, 6.0, 0.01, dtype=torch.float64)
    t_ref = float(grid[torch.tensor([_nll(*hard_val, float(s)) for s in grid]).argmin()])
    assert t == pytest.approx(t_ref, abs=0.011)
    assert t == pytest.approx(3.0, rel=0.1)  # the overconfidence we built in
    assert rows[HARD].temperature == 1.0 and rows[SMOOTHED].temperature == 1.0
    for name, (logits, labels), temp in ((HARD, hard_test, 1.0), (HARD_TS, hard_test, t), (SMOOTHED, ls_test, 1.0)):
        assert rows[name].metrics["ece"] == pytest.approx(_reference_ece(logits / temp, labels), abs=1e-6)
        acc = float((logits.argmax(-1) == labels).double().mean())
        assert rows[name].metrics["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert rows[name].metrics["nll"] == pytest.approx(_nll(logits, labels, temp), rel=1e-5)
    assert rows[HARD_TS].metrics["ece"] < 0.5 * rows[HARD].metrics["ece"]
    assert rows[SMOOTHED].fitted_temperature == pytest.approx(1.0, abs=0.1)


def test_row_serialises_reliability_bins():
    logits, labels = _overconfident(500, 4, 2.0)
    row = calibration_row("x", logits, labels, n_bins=10).as_dict()
    assert len(row["reliability"]["count"]) == 10
    assert sum(row["reliability"]["count"]) == pytest.approx(500)

"""Reliability diagrams draw what the metric measured."""

from __future__ import annotations

import pytest
import torch

from ls_seq.calibration.metric import TokenCalibration
from ls_seq.calibration.plots import plot_reliability_diagram, reliability_ece
from ls_seq.io import atomic_savefig


def _reliability(scale):
    g = torch.Generator().manual_seed(0)
    logits = scale * torch.randn(500, 5, generator=g)
    labels = torch.randint(0, 5, (500,), generator=g)
    metric = TokenCalibration()
    metric.update(logits, labels)
    return metric.reliability(), metric.compute()["ece"]


def test_reliability_diagram_curves_and_legend(tmp_path):
    (rel_a, ece_a), (rel_b, _) = _reliability(1.0), _reliability(4.0)
    assert abs(reliability_ece(rel_a) - float(ece_a)) < 1e-12
    fig = plot_reliability_diagram({"hard": rel_a, "smoothed": rel_b}, title="test")
    ax = fig.axes[0]
    curve = ax.lines[1]  # lines[0] is the diagonal
    nonempty = rel_a["count"] > 0
    assert curve.get_xdata().tolist() == pytest.approx(rel_a["confidence"][nonempty].tolist())
    assert curve.get_ydata().tolist() == pytest.approx(rel_a["accuracy"][nonempty].tolist())
    assert f"ECE {float(ece_a):.3f}" in ax.get_legend().get_texts()[1].get_text()
    path = atomic_savefig(fig, tmp_path / "rel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram_rejects_sweep_shaped_input():
    metric = TokenCalibration(temperatures=[1.0, 2.0])
    metric.update(torch.randn(10, 3), torch.randint(0, 3, (10,)))
    with pytest.raises(ValueError, match="one temperature"):
        plot_reliability_diagram({"sweep": metric.reliability()})


def test_histogram_under_the_diagram_shows_each_bins_share():
    rel, _ = _reliability(2.0)
    fig = plot_reliability_diagram({"model": rel})
    hist = fig.axes[1]
    heights = [patch.get_height() for patch in hist.patches]
    nonempty = rel["count"] > 0
    assert heights == pytest.approx((rel["count"][nonempty] / rel["count"].sum()).tolist())
    lefts = [patch.get_x() for patch in hist.patches]
    assert lefts == pytest.approx(rel["lower"][nonempty].tolist())


def test_equal_mass_bins_are_drawn_at_their_means():
    g = torch.Generator().manual_seed(1)
    metric = TokenCalibration(n_bins=5)
    metric.update(3 * torch.randn(400, 6, generator=g), torch.randint(0, 6, (400,), generator=g))
    mass = metric.reliability("mass")
    fig = plot_reliability_diagram({"equal-mass": mass})
    centers = [patch.get_x() + patch.get_width() / 2 for patch in fig.axes[1].patches]
    assert centers == pytest.approx(mass["confidence"][mass["count"] > 0].tolist())
    assert reliability_ece(mass) == pytest.approx(float(metric.compute().ece_mass), rel=1e-9)

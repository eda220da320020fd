"""Vision figures draw exactly the data they are given."""

from __future__ import annotations

import pytest
import torch

from vision.distillation import CURVES, DistillationPoint
from vision.plots import plot_distillation, plot_mutual_information, plot_projection


def test_projection_panels_plot_every_point_and_the_templates():
    g = torch.Generator().manual_seed(0)
    pts, labels = torch.randn(30, 2, generator=g), torch.arange(30) % 3
    tmpl = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]])
    panels = {"a": (pts, labels, tmpl), "b": (pts, labels, tmpl), "c": (pts, labels, tmpl)}
    fig = plot_projection(panels, (0, 1, 2), title="whole figure")
    assert fig._suptitle.get_text() == "whole figure"
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b", "c"]
    offsets = [c.get_offsets() for c in visible[0].collections]
    assert sum(len(o) for o in offsets[:3]) == 30 and len(offsets[3]) == 3
    with pytest.raises(ValueError, match="`panels`"):
        plot_projection({}, (0, 1, 2))


def test_distillation_figure_draws_one_line_per_curve_sorted_by_gamma():
    points = [DistillationPoint(c, 0.1 * i, 1.0, 0.3 - 0.1 * i, 0.5 + 0.1 * i) for c in CURVES for i in range(3)]
    ax = plot_distillation(points).axes[0]
    assert [line.get_label() for line in ax.get_lines()] == list(CURVES)
    x, y = ax.get_lines()[0].get_data()
    assert list(x) == pytest.approx([0.1, 0.2, 0.3]) and list(y) == pytest.approx([70.0, 60.0, 50.0])


def test_mutual_information_figure_and_missing_entries():
    hist = [{"epoch": 0, "mutual_information": 1.0}, {"epoch": 1, "mutual_information": 2.0}]
    ax = plot_mutual_information({"hard": hist}, upper_bound=3.0).axes[0]
    x, y = ax.get_lines()[0].get_data()
    assert list(x) == [0, 1] and list(y) == [1.0, 2.0]
    with pytest.raises(ValueError, match="no `mutual_information`"):
        plot_mutual_information({"hard": [{"epoch": 0}]})

"""Template-plane projection (Fig. 1) against an independent QR construction, and the tightness measure."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from vision.projection import cluster_tightness, template_plane_basis, template_plane_projection


def _random_head(k: int = 6, d: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=g, dtype=torch.float64), torch.randn(k, generator=g, dtype=torch.float64)


def _distances(x: torch.Tensor) -> torch.Tensor:
    return (x[:, None, :] - x[None, :, :]).norm(dim=-1)  # exact, unlike cdist's matmul shortcut


def _qr_projection(features, weight, bias, classes):
    """Reference: orthogonal projection onto the affine plane, expressed in the full (D+1)-space."""
    t = torch.cat([weight, bias[:, None]], dim=1)
    a, b, c = classes
    q, _ = torch.linalg.qr(torch.stack([t[b] - t[a], t[c] - t[a]], dim=1))  # (D+1, 2), any orthonormal basis
    x = torch.cat([features, torch.ones(features.shape[0], 1, dtype=features.dtype)], dim=1)
    return t[a] + (x - t[a]) @ q @ q.T  # (N, D+1): the projected points themselves


@pytest.mark.parametrize("classes", [(0, 1, 2), (5, 2, 3)])
def test_projection_matches_qr_reference_up_to_a_rotation(classes):
    weight, bias = _random_head()
    features = torch.randn(40, weight.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u = template_plane_projection(features, weight, bias, classes)  # (N, 2)
    ref = _qr_projection(features, weight, bias, classes)  # (N, D+1)
    # same pairwise distances <=> same points up to an isometry of the plane (basis and origin are free choices)
    assert_close(_distances(u), _distances(ref), rtol=0, atol=1e-10)
    origin, basis = template_plane_basis(weight, bias, classes)
    # and the coordinates map back onto exactly the reference points
    assert_close(origin + u @ basis.T, ref, rtol=0, atol=1e-10)


def test_templates_land_at_the_triangle_corners():
    weight, _ = _random_head()
    bias = torch.ones(weight.shape[0], dtype=torch.float64)  # then features h = w_k augment to exactly t_k
    classes = (4, 0, 2)
    t = torch.cat([weight, bias[:, None]], dim=1)
    u = template_plane_projection(weight[list(classes)], weight, bias, classes)  # (3, 2)
    a, b, c = classes
    assert_close(u[0], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert_close(u[1], torch.stack([(t[b] - t[a]).norm(), torch.tensor(0.0, dtype=torch.float64)]), rtol=0, atol=1e-12)
    assert_close((u[2] - u[0]).norm(), (t[c] - t[a]).norm(), rtol=1e-12, atol=0)
    assert_close((u[2] - u[1]).norm(), (t[c] - t[b]).norm(), rtol=1e-12, atol=0)
    assert float(u[2, 1]) > 0  # t_c in the upper half-plane, as documented


def test_in_plane_distances_are_preserved_and_normal_offsets_are_dropped():
    weight, _ = _random_head(k=3, d=5)
    bias = torch.ones(3, dtype=torch.float64)  # templates with last coordinate 1: plane points are [h; 1]
    t = torch.cat([weight, bias[:, None]], dim=1)  # (3, D+1)
    coef = torch.randn(30, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pts = t[0] + coef[:, :1] * (t[1] - t[0]) + coef[:, 1:] * (t[2] - t[0])  # (30, D+1), last coordinate 1
    u = template_plane_projection(pts[:, :-1], weight, bias, (0, 1, 2))
    assert_close(_distances(u), _distances(pts), rtol=0, atol=1e-10)
    # a direction orthogonal to the plane with last coordinate 0 (so [h + n; 1] stays an augmented feature)
    constraints = torch.stack([t[1] - t[0], t[2] - t[0], torch.eye(6, dtype=torch.float64)[-1]])
    normal = torch.linalg.svd(constraints)[2][-1]  # (D+1,), in the null space of the three rows
    assert_close(constraints @ normal, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    shifted = pts[:, :-1] + 3.0 * normal[:-1]
    assert_close(template_plane_projection(shifted, weight, bias, (0, 1, 2)), u, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "classes, match",
    [((0, 1), "3 integer"), ((0, 0, 1), "distinct"), ((0, 1, 6), r"\[0, 6\)"), ((0, 1, -1), r"\[0, 6\)"), ("012", "sequence")],
)
def test_bad_classes_raise_naming_the_argument(classes, match):
    weight, bias = _random_head()
    with pytest.raises((ValueError, TypeError), match=match) as info:
        template_plane_projection(torch.zeros(2, weight.shape[1]), weight, bias, classes)
    assert "classes" in str(info.value)


def test_collinear_templates_and_wrong_feature_width_raise():
    weight = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="collinear"):
        template_plane_projection(torch.zeros(1, 2), weight, torch.zeros(3), (0, 1, 2))
    with pytest.raises(ValueError, match="`features` must have D=2"):
        template_plane_projection(torch.zeros(1, 3), weight, torch.zeros(3), (0, 1, 2))


def test_cluster_tightness_against_hand_computation_and_invariances():
    pts = torch.tensor([[0.0, 1.0], [0.0, -1.0], [4.0, 2.0], [4.0, -2.0], [0.0, 9.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    # within: (1 + 1 + 2 + 2 + 0) / 5 = 1.2; means (0,0), (4,0), (0,9): distances 4, 9, sqrt(97)
    expected = 1.2 / ((4 + 9 + 97**0.5) / 3)
    assert cluster_tightness(pts, labels, (0, 1, 2)) == pytest.approx(expected, rel=1e-12)
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    moved = 3.5 * pts @ rot.T + torch.tensor([10.0, -7.0])
    assert cluster_tightness(moved, labels, (0, 1, 2)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="no example of class 3"):
        cluster_tightness(pts, labels, (0, 1, 3))

r"""Penultimate-layer projections onto the plane of three class templates (Müller et al. 2019, Fig. 1).

The logit of class ``k`` is ``z_k = w_k^T h + b_k = t_k^T x`` with the *template* ``t_k = [w_k; b_k]`` and the
augmented activation ``x = [h; 1]`` (both in ``R^{D+1}``). For three classes ``(a, b, c)`` the templates are
three points; the paper projects the activations onto the plane through them.

Choice of coordinates. The plane is affine: ``P = {o + B u : u in R^2}`` with origin ``o = t_a`` (the first
class's template) and ``B (D+1, 2)`` the orthonormal basis obtained by Gram-Schmidt on ``(t_b - t_a, t_c - t_a)``.
A point ``x`` is mapped to ``u = B^T (x - o)``: its orthogonal projection onto the plane, in plane coordinates.
So ``t_a -> (0, 0)``, ``t_b -> (|t_b - t_a|, 0)``, ``t_c`` lies in the upper half-plane, and distances between
points of the plane are preserved exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_classes", "cluster_tightness", "template_plane_basis", "template_plane_projection", "templates"]


def check_classes(classes: Sequence[int], num_classes: int, count: int = 3, name: str = "classes") -> tuple[int, ...]:
    """Return ``classes`` as a tuple after checking it holds ``count`` distinct ints in ``[0, num_classes)``."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise TypeError(f"`{name}` must be a sequence of {count} class indices, got {type(classes).__name__}")
    values = tuple(classes)
    if len(values) != count or any(isinstance(c, bool) or not isinstance(c, int) for c in values):
        raise ValueError(f"`{name}` must be {count} integer class indices, got {list(values)}")
    if len(set(values)) != count:
        raise ValueError(f"`{name}` must be {count} distinct class indices, got {list(values)}")
    if any(c < 0 or c >= num_classes for c in values):
        raise ValueError(f"`{name}` must be class indices in [0, {num_classes}), got {list(values)}")
    return values


def templates(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Class templates ``[w_k; b_k]``: ``weight (K, D)`` with ``bias (K,)`` appended -> ``(K, D+1)``."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"`weight` must be a (K, D) tensor, got {getattr(weight, 'shape', type(weight).__name__)}")
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"`bias` must have shape ({weight.shape[0]},) to match `weight`, got {tuple(bias.shape)}")
    return torch.cat([weight, bias[:, None]], dim=1).double()  # (K, D+1)


def template_plane_basis(
    weight: torch.Tensor, bias: torch.Tensor | None, classes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Origin ``o = t_a (D+1,)`` and orthonormal basis ``B (D+1, 2)`` of the plane through ``t_a, t_b, t_c`` (float64)."""
    t = templates(weight, bias)
    a, b, c = check_classes(classes, t.shape[0])
    origin = t[a]
    e1 = t[b] - origin
    n1 = e1.norm()
    v = t[c] - origin
    if float(n1) == 0:
        raise ValueError(f"the templates of classes {a} and {b} coincide: they span no plane")
    e1 = e1 / n1
    e2 = v - (v @ e1) * e1  # Gram-Schmidt: the part of t_c - t_a orthogonal to e1
    n2 = e2.norm()
    if float(n2) <= 1e-12 * float(v.norm().clamp_min(1e-300)):
        raise ValueError(f"the templates of classes {list(classes)} are collinear: they span no plane")
    return origin, torch.stack([e1, e2 / n2], dim=1)  # (D+1,), (D+1, 2)


def template_plane_projection(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, classes: Sequence[int]
) -> torch.Tensor:
    r"""Project penultimate activations onto the plane through three class templates.

    ``u_i = B^T ([h_i; 1] - t_a)`` with ``t_k = [w_k; b_k]`` and ``B`` the Gram-Schmidt basis of
    ``(t_b - t_a, t_c - t_a)`` (module docstring).

    Args:
        features: ``(N, D)`` penultimate activations ``h``.
        weight: ``(K, D)`` last-layer weight; ``bias``: ``(K,)`` or None.
        classes: three distinct class indices ``(a, b, c)``.

    Returns:
        ``(N, 2)`` float64 plane coordinates.

    Examples:
        >>> import torch
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]); b = torch.zeros(3)
        >>> u = template_plane_projection(torch.tensor([[0.0, 1.0]]), w, b, (0, 1, 2))  # h = w_1: lands on t_1
        >>> [round(v, 4) + 0.0 for v in u[0].tolist()]  # t_1 sits at (|t_1 - t_0|, 0)
        [1.4142, 0.0]
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"`features` must be an (N, D) tensor, got {getattr(features, 'shape', type(features).__name__)}")
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and features.shape[1] != weight.shape[1]:
        raise ValueError(f"`features` must have D={weight.shape[1]} columns to match `weight`, got {features.shape[1]}")
    origin, basis = template_plane_basis(weight, bias, classes)
    x = torch.cat([features.double(), features.new_ones(features.shape[0], 1).double()], dim=1)  # (N, D+1)
    return (x - origin) @ basis  # (N, 2)


def cluster_tightness(points: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> float:
    r"""Within-class spread over between-class separation of ``points`` of the given classes (lower = tighter).

    ``tightness = mean_i |x_i - m_{y_i}| / mean_{k < l} |m_k - m_l|`` over the examples of ``classes``, with
    ``m_k`` the mean of class ``k``'s points. Scale-free, so it compares the 2-D projection and the full
    ``(D+1)``-dimensional space, and networks whose activations have different norms.

    Examples:
        >>> import torch
        >>> pts = torch.tensor([[0.0, 1.0], [0.0, -1.0], [4.0, 1.0], [4.0, -1.0]])
        >>> cluster_tightness(pts, torch.tensor([0, 0, 1, 1]), (0, 1))
        0.25
    """
    pts = points.double()
    means, spreads, counts = [], [], []
    for k in classes:
        mask = labels == k
        if not bool(mask.any()):
            raise ValueError(f"`labels` hold no example of class {k}; the tightness needs every class in `classes`")
        m = pts[mask].mean(dim=0)
        means.append(m)
        spreads.append((pts[mask] - m).norm(dim=1).sum())
        counts.append(int(mask.sum()))
    within = float(torch.stack(spreads).sum()) / sum(counts)
    between = torch.stack([(means[i] - means[j]).norm() for i in range(len(means)) for j in range(i + 1, len(means))])
    return within / float(between.mean())

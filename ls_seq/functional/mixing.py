"""Mixed targets: MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019), composable with label smoothing.

A mixed example ``lam * x_i + (1 - lam) * x_j`` (MixUp) or ``x_i`` with a box cut from ``x_j`` (CutMix, ``lam``
the share of ``x_i`` left) is trained on the target distribution ``lam * onehot(y_i) + (1 - lam) * onehot(y_j)``.
Hand it to :func:`ls_seq.label_smoothed_cross_entropy` with ``alpha``: smoothing is linear, so smoothing the
mixed target equals mixing the smoothed one-hots (the order of timm's ``mixup_target``), the two compose.
"""

from __future__ import annotations

import torch

from ls_seq.checks import check_alpha, check_positive_int

__all__ = ["cutmix_box", "mix_targets"]


def mix_targets(labels: torch.Tensor, num_classes: int, lam: float | torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """``lam * onehot(labels) + (1 - lam) * onehot(labels[permutation])``: ``(N, K)`` float32 target distributions.

    ``lam`` is a number or one weight per example ``(N,)``; ``permutation`` the partner of each example.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    if labels.dim() != 1 or permutation.shape != labels.shape:
        raise ValueError(f"`labels` and `permutation` must be (N,), got {tuple(labels.shape)} and {tuple(permutation.shape)}")
    lam = torch.as_tensor(lam, dtype=torch.float32, device=labels.device)
    if lam.dim() == 0:
        check_alpha(float(lam), "lam")
    elif lam.shape != labels.shape or bool(((lam < 0) | (lam > 1)).any()):
        raise ValueError(f"`lam` must be a number in [0, 1] or (N,) such numbers, got shape {tuple(lam.shape)}")
    lam = lam.reshape(-1, 1) if lam.dim() else lam
    one = torch.nn.functional.one_hot(labels.long(), num_classes).float()
    return lam * one + (1 - lam) * one[permutation]


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None) -> tuple[int, int, int, int, float]:
    """A box ``(top, bottom, left, right)`` of about ``(1 - lam)`` of the image, at a uniform centre, clipped to it,
    and the ``lam`` the clipped box really leaves (``1 - box area / image area``): CutMix's target weight."""
    lam = check_alpha(lam, "lam")
    cut = (1 - lam) ** 0.5
    ch, cw = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (1,), generator=generator))
    cx = int(torch.randint(0, width, (1,), generator=generator))
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return top, bottom, left, right, 1 - (bottom - top) * (right - left) / (height * width)

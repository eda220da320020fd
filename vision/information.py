r"""Mutual information between an example and its logits over training (Müller et al. 2019, Fig. 6).

Take ``N`` training examples of two classes ``(a, b)`` and ``L`` random augmentations of each. With
``Y = z_a - z_b`` the difference of the two classes' logits, ``samples[x, l]`` is ``Y`` for augmentation ``l``
of example ``x`` and ``ls_seq.gaussian_mutual_information(samples)`` estimates ``I(X; Y)`` in nats, between 0
(the logits forget which example they came from) and ``log N`` (every example is recognisable).

:class:`MutualInformationCallback` evaluates it before training and after every epoch of
:func:`vision.train.train_classifier`. The ``L`` augmentations are drawn once, when the callback is built,
so successive values differ only because the network changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ls_seq import gaussian_mutual_information
from ls_seq.checks import check_positive_int
from vision.projection import check_classes

__all__ = ["MutualInformationCallback", "logit_difference_samples", "select_two_class_indices"]


def select_two_class_indices(
    labels: torch.Tensor, classes: Sequence[int], n_examples: int, generator: torch.Generator
) -> torch.Tensor:
    """Indices of ``n_examples`` random examples of classes ``classes = (a, b)``, half of each (``a`` gets the odd one).

    Returns ``(N,)`` indices into ``labels``, those of class ``a`` first.

    Examples:
        >>> import torch
        >>> select_two_class_indices(torch.tensor([0, 1, 2, 0, 1]), (0, 1), 4, torch.Generator()).sort().values
        tensor([0, 1, 3, 4])
    """
    a, b = check_classes(list(classes), int(labels.max()) + 1, count=2)
    check_positive_int(n_examples, "n_examples", minimum=2)
    picked = []
    for k, c in enumerate((a, b)):
        idx = torch.nonzero(labels == c).flatten()
        want = n_examples // 2 + (n_examples % 2 if k == 0 else 0)
        if idx.numel() < want:
            raise ValueError(f"`n_examples`={n_examples} needs {want} examples of class {c}, the data hold {idx.numel()}")
        picked.append(idx[torch.randperm(idx.numel(), generator=generator)[:want]])
    return torch.cat(picked)


@torch.no_grad()
def logit_difference_samples(
    model: nn.Module, augmented: torch.Tensor, classes: Sequence[int], batch_size: int = 512
) -> torch.Tensor:
    """``Y[x, l] = z_a - z_b`` of ``model`` (eval mode) on ``augmented (N, L, C, H, W)`` -> ``(N, L)`` float64."""
    a, b = classes
    n, l = augmented.shape[:2]
    flat = augmented.reshape(n * l, *augmented.shape[2:])  # (N*L, C, H, W)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    diffs = []
    for start in range(0, n * l, batch_size):
        z = model(flat[start : start + batch_size].to(device)).double()  # (B, K)
        diffs.append((z[:, a] - z[:, b]).cpu())
    model.train(was_training)
    return torch.cat(diffs).view(n, l)


class MutualInformationCallback:
    """A training callback recording ``mutual_information`` (nats) of ``Y = z_a - z_b`` over fixed augmentations.

    Args:
        images: ``(N, C, H, W)`` un-augmented examples (e.g. picked by :func:`select_two_class_indices`).
        classes: the two classes ``(a, b)`` whose logit difference is ``Y``.
        augment: ``augment(x, generator) -> x`` (the training augmentation); applied ``n_augmentations``
            times to every image, once, at construction.
        n_augmentations: ``L >= 2``.
        seed: seeds the augmentations.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> cb = MutualInformationCallback(torch.randn(4, 1, 2, 2), (0, 1), lambda x, g: x + torch.randn(x.shape, generator=g), 8)
        >>> value = cb.on_epoch_end(1, nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))["mutual_information"]
        >>> 0 <= value <= float(torch.log(torch.tensor(4.0))) + 1e-9
        True
    """

    def __init__(
        self,
        images: torch.Tensor,
        classes: Sequence[int],
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        n_augmentations: int,
        *,
        seed: int = 0,
        batch_size: int = 512,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] < 2:
            raise ValueError(f"`images` must be an (N, ...) tensor with N >= 2, got {getattr(images, 'shape', None)}")
        if len(classes) != 2 or classes[0] == classes[1]:
            raise ValueError(f"`classes` must be two distinct class indices, got {list(classes)}")
        check_positive_int(n_augmentations, "n_augmentations", minimum=2)
        self.classes = (int(classes[0]), int(classes[1]))
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(seed)
        views = [augment(images, g) for _ in range(n_augmentations)]
        self.augmented = torch.stack(views, dim=1)  # (N, L, C, H, W)

    def mutual_information(self, model: nn.Module) -> float:
        samples = logit_difference_samples(model, self.augmented, self.classes, self.batch_size)  # (N, L)
        return float(gaussian_mutual_information(samples))

    def on_train_begin(self, model: nn.Module) -> dict[str, float]:
        return {"mutual_information": self.mutual_information(model)}

    def on_epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        return {"mutual_information": self.mutual_information(model)}

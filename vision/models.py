"""The paper's image networks with timm's ``forward_features`` / ``forward_head`` split.

Every model is an :class:`ImageClassifier`: ``forward_features(x)`` returns the penultimate activations
``(B, D)`` (already pooled), ``forward_head(h, pre_logits=True)`` returns them unchanged and
``forward_head(h)`` applies the last layer ``classifier`` (an ``nn.Linear`` whose ``weight (K, D)`` and
``bias (K,)`` are the class templates of the projection study). So ``model(x) ==
model.forward_head(model.forward_features(x))`` and no study needs a hook.

Blocks first, then the models, then :func:`create_model` over a small registry (timm's layout).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ls_seq.checks import check_choice, check_positive_int

__all__ = [
    "MODELS",
    "AlexNetCifar",
    "DigitsCNN",
    "DigitsMLP",
    "ImageClassifier",
    "ResNetCifar",
    "TimmClassifier",
    "create_model",
]


class ImageClassifier(nn.Module):
    """Base class: subclasses set ``features`` (or override ``forward_features``) and a ``classifier`` ``nn.Linear``."""

    features: nn.Module
    classifier: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H, W) -> (B, D)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.classifier(features)  # (B, D) or (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier


# ----------------------------------------------------------------------------------------------- blocks


class BasicBlock(nn.Module):
    """He et al.'s CIFAR residual block; the shortcut is option A (subsample + zero-pad channels, no weights)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.pad = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = nn.functional.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


# ----------------------------------------------------------------------------------------------- models


class DigitsCNN(ImageClassifier):
    """Small CNN for 8x8 digits: two 3x3 convs, 2x2 max-pool, a ``width``-unit hidden layer (the penultimate)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (image_size // 2) ** 2, width),
            nn.ReLU(),
        )
        self.num_features = width
        self.classifier = nn.Linear(width, num_classes)


class DigitsMLP(ImageClassifier):
    """Two-hidden-layer MLP on flattened pixels: the small student of the digits distillation study."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size**2, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
        )
        self.num_features = width
        self.classifier = nn.Linear(width, num_classes)


class AlexNetCifar(ImageClassifier):
    """The AlexNet-style CIFAR-10 network of the paper (TensorFlow's CIFAR-10 model).

    conv5x5(64)-ReLU-maxpool3/2-LRN, conv5x5(64)-ReLU-LRN-maxpool3/2, fc384-ReLU, fc192-ReLU (the
    penultimate layer, D=192), linear classifier.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        lrn = dict(size=4, alpha=0.001 / 9.0, beta=0.75, k=1.0)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, padding=1),
            nn.LocalResponseNorm(**lrn),
            nn.Conv2d(64, 64, 5, padding=2),
            nn.ReLU(),
            nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(3, 2, padding=1),
            nn.Flatten(),
        )
        side = (image_size + 1) // 2
        side = (side + 1) // 2
        self.mlp = nn.Sequential(nn.Linear(64 * side * side, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU())
        self.num_features = 192
        self.classifier = nn.Linear(192, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(x))  # (B, 192)


class ResNetCifar(ImageClassifier):
    """He et al. (2016)'s CIFAR ResNet of ``depth = 6n + 2`` layers (ResNet-56: n=9), widths 16/32/64.

    The penultimate activations are the 64 globally average-pooled channels.
    """

    def __init__(self, num_classes: int = 100, in_channels: int = 3, image_size: int = 32, depth: int = 56) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"`depth` must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks: list[nn.Module] = []
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(channels, width, 2 if stage > 0 and i == 0 else 1))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = 64
        self.classifier = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))  # (B, 64)


class TimmClassifier(ImageClassifier):
    """A timm model behind the same interface; ``forward_features`` returns timm's pre-logits (pooled) output."""

    def __init__(self, model_name: str, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:
            raise ImportError(
                f"model {model_name!r} needs the optional timm extra: pip install 'ls-seq[timm]' "
                "(install a timm that keeps your torch build)"
            ) from err
        self.net = timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        self.classifier = self.net.get_classifier()
        self.num_features = self.net.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)  # (B, D)


MODELS: dict[str, Callable[..., ImageClassifier]] = {
    "digits_cnn": DigitsCNN,
    "digits_mlp": DigitsMLP,
    "alexnet_cifar": AlexNetCifar,
    "resnet56": lambda num_classes, in_channels=3, image_size=32: ResNetCifar(num_classes, in_channels, image_size, 56),
    "inception_v4": lambda num_classes, in_channels=3, image_size=299: TimmClassifier("inception_v4", num_classes, in_channels),
}


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> ImageClassifier:
    """Build a registered model (:data:`MODELS`) for ``num_classes`` classes of ``in_channels x image_size^2`` images.

    Examples:
        >>> import torch
        >>> m = create_model("digits_mlp", num_classes=10, in_channels=1, image_size=8)
        >>> m.forward_features(torch.zeros(2, 1, 8, 8)).shape, m(torch.zeros(2, 1, 8, 8)).shape
        (torch.Size([2, 32]), torch.Size([2, 10]))
    """
    check_choice(name, "model", tuple(MODELS))
    check_positive_int(num_classes, "num_classes", minimum=2)
    check_positive_int(in_channels, "in_channels")
    check_positive_int(image_size, "image_size")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size)

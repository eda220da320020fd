"""Image data for the vision studies: digits (bundled, CPU scale), CIFAR-10/100 and ImageNet.

Every loader returns a :class:`VisionData`: three map-style datasets yielding ``(image (C, H, W) float,
label long)``, normalised per channel with the training split's statistics, plus a batch-level training
augmentation (:class:`BatchAugment`) that runs in torch on whatever device the batch is on.

Splits. The paper fits the temperature of temperature scaling on held-out data, so every dataset has a
validation split that is not the test split: digits are split 60/20/20 (stratified), CIFAR holds out
``val_size`` training images, ImageNet uses its ``val`` folder as test and holds out ``val_size`` training
images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ls_seq.checks import check_choice, check_positive_int

__all__ = [
    "DATASETS",
    "BatchAugment",
    "HFImageDataset",
    "ImageTensorDataset",
    "VisionData",
    "check_data_dir",
    "load_cifar",
    "load_digits",
    "load_imagenet",
    "load_vision_data",
    "stratified_split",
    "stratified_subset",
]

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")

# hub names and label columns of the CIFAR datasets on the HuggingFace hub
_CIFAR_HUB = {"cifar10": ("uoft-cs/cifar10", "label"), "cifar100": ("uoft-cs/cifar100", "fine_label")}

# ImageNet statistics (RGB, [0, 1] scale); lazily-decoded images cannot be scanned cheaply for their own.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BatchAugment:
    """Random augmentation of a batch ``x (B, C, H, W)``: pad + random crop, horizontal flip, Gaussian noise.

    The CIFAR standard (He et al. 2016) is ``BatchAugment(padding=4, flip=True)``: zero-pad 4 pixels
    (zero is the channel mean after normalisation), crop back to ``H x W`` at a uniformly random offset,
    flip half the images. For 8x8 digits ``BatchAugment(padding=1, noise_std=0.1)`` shifts by at most one
    pixel and adds noise; digits are not flipped because a mirrored digit is another symbol.

    All random numbers come from ``generator`` (a CPU ``torch.Generator``), so a seeded generator makes the
    augmentation reproducible on any device; the input is not modified.

    Examples:
        >>> import torch
        >>> aug = BatchAugment(padding=1)
        >>> out = aug(torch.ones(2, 1, 4, 4), torch.Generator().manual_seed(0))
        >>> out.shape, bool((out <= 1).all())
        (torch.Size([2, 1, 4, 4]), True)
    """

    padding: int = 0
    flip: bool = False
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        check_positive_int(self.padding, "padding", minimum=0)
        if not isinstance(self.flip, bool):
            raise TypeError(f"`flip` must be a bool, got {type(self.flip).__name__}")
        if not isinstance(self.noise_std, (int, float)) or isinstance(self.noise_std, bool):
            raise TypeError(f"`noise_std` must be a number >= 0, got {type(self.noise_std).__name__}")
        if not math.isfinite(self.noise_std) or self.noise_std < 0:
            raise ValueError(f"`noise_std` must be a finite number >= 0, got {self.noise_std!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.padding:
            p = self.padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p)
            oy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            rows = oy[:, None] + torch.arange(h, device=x.device)  # (B, H)
            cols = ox[:, None] + torch.arange(w, device=x.device)  # (B, W)
            batch = torch.arange(b, device=x.device)[:, None, None]
            # advanced indexing on dims 0, 2, 3 puts the channel dim last: (B, H, W, C)
            x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.flip:
            mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        if self.noise_std:
            x = x + self.noise_std * torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
        return x.contiguous()


class ImageTensorDataset(Dataset):
    """Images held in memory as one float tensor ``images (N, C, H, W)`` with ``labels (N,)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"`images` must be (N, C, H, W) and `labels` (N,), got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def subset(self, indices: torch.Tensor) -> ImageTensorDataset:
        return ImageTensorDataset(self.images[indices], self.labels[indices])


class HFImageDataset(Dataset):
    """A lazily decoded ``datasets.Dataset`` of PIL images (ImageNet scale), resized and cropped to a square.

    Training items take a random ``image_size`` crop of the image resized to ``resize`` on its shorter side;
    evaluation items take the centre crop. Flips are left to :class:`BatchAugment`.
    """

    def __init__(
        self,
        hf_dataset: Any,
        image_column: str,
        label_column: str,
        image_size: int,
        *,
        train: bool,
        mean: Sequence[float] = _IMAGENET_MEAN,
        std: Sequence[float] = _IMAGENET_STD,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.hf_dataset = hf_dataset
        self.image_column = image_column
        self.label_column = label_column
        self.image_size = image_size
        self.resize = int(round(image_size * 1.143))  # 256 for 224, the usual ImageNet ratio
        self.train = train
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.indices = list(range(len(hf_dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.hf_dataset[self.indices[index]]
        image = row[self.image_column].convert("RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((max(self.resize, round(w * scale)), max(self.resize, round(h * scale))))
        w, h = image.size
        s = self.image_size
        if self.train:
            # torch's global RNG: train_classifier seeds it per epoch (and DataLoader workers derive their
            # seeds from it), so crops change every epoch yet a resumed run draws the same ones
            left = int(torch.randint(0, w - s + 1, (1,)))
            top = int(torch.randint(0, h - s + 1, (1,)))
        else:
            left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(s, s, 3)
        x = x.permute(2, 0, 1).float().div(255.0)  # (3, s, s)
        return (x - self.mean) / self.std, torch.tensor(int(row[self.label_column]))


@dataclass
class VisionData:
    """Train/validation/test datasets of one image classification task and its training augmentation."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    augment: BatchAugment | None
    class_names: list[str]


def stratified_split(labels: torch.Tensor, fractions: Sequence[float], generator: torch.Generator) -> list[torch.Tensor]:
    """Split indices ``0..N-1`` into ``len(fractions)`` parts with every class in the given proportions.

    Per class, the shuffled indices are cut at the cumulative fractions (rounded), so each part holds
    ``~fraction * count`` examples of every class. Returns one sorted index tensor per part.

    Examples:
        >>> import torch
        >>> parts = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), [0.5, 0.5], torch.Generator())
        >>> [len(p) for p in parts]
        [4, 4]
    """
    total = sum(fractions)
    if abs(total - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"`fractions` must be non-negative and sum to 1, got {list(fractions)}")
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        cuts = [round(sum(fractions[: i + 1]) * idx.numel()) for i in range(len(fractions))]
        start = 0
        for i, end in enumerate(cuts):
            parts[i].append(idx[start:end])
            start = end
    return [torch.sort(torch.cat(p)).values for p in parts]


def _normalise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Standardise every channel with the training split's mean and std (no test statistics leak in)."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def stratified_subset(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Exactly ``n`` sorted indices with every class in proportion (within one example).

    Each class's shuffled members get the keys ``(i + u) / count`` (``u`` uniform in [0, 1)); the ``n``
    smallest keys are taken, so classes are interleaved in proportion and ``n`` is exact.
    """
    keys = torch.empty(labels.shape[0], dtype=torch.float64)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        u = torch.rand(idx.numel(), generator=generator, dtype=torch.float64)
        keys[idx] = (torch.arange(idx.numel(), dtype=torch.float64) + u) / idx.numel()
    return torch.sort(torch.argsort(keys)[:n]).values


def _subsample(dataset: ImageTensorDataset, max_samples: int | None, generator: torch.Generator) -> ImageTensorDataset:
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.subset(stratified_subset(dataset.labels, max_samples, generator))


def load_digits(*, seed: int = 0, max_train_samples: int | None = None) -> VisionData:
    """scikit-learn's 1797 bundled 8x8 handwritten digits, split 60/20/20 (train/val/test), stratified.

    Pixels (0..16) are scaled to [0, 1] and standardised with the training mean and std.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    images = torch.as_tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    labels = torch.as_tensor(raw.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    tr, va, te = stratified_split(labels, [0.6, 0.2, 0.2], g)
    x_tr, x_va, x_te = _normalise(images[tr], images[va], images[te])
    train = _subsample(ImageTensorDataset(x_tr, labels[tr]), max_train_samples, g)
    return VisionData(
        name="digits",
        train=train,
        val=ImageTensorDataset(x_va, labels[va]),
        test=ImageTensorDataset(x_te, labels[te]),
        num_classes=10,
        in_channels=1,
        image_size=8,
        augment=BatchAugment(padding=1, noise_std=0.1),
        class_names=[str(i) for i in range(10)],
    )


def check_data_dir(data_dir: str | os.PathLike | None, name: str = "data_dir", required: bool = False) -> None:
    """Raise ``ValueError`` when ``data_dir`` is required but missing, or given but not an existing directory."""
    if data_dir is None:
        if required:
            raise ValueError(f"`{name}` is required for this dataset (a local directory), got None")
        return
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path (str or os.PathLike), got {type(data_dir).__name__}")
    if not os.path.isdir(data_dir):
        raise ValueError(f"`{name}` must be an existing directory, got {os.fspath(data_dir)!r} (not found)")


def _image_column(features: Any) -> str:
    import datasets

    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise ValueError(f"the dataset has no image column; its columns are {list(features)}")


def _load_hf_dict(hub_name: str, data_dir: str | None, cache_dir: str | None) -> Any:
    """A ``DatasetDict``: from ``data_dir`` (a ``save_to_disk`` folder, or files ``load_dataset`` reads) or the hub."""
    import datasets

    if data_dir is not None and os.path.exists(os.path.join(data_dir, "dataset_dict.json")):
        return datasets.load_from_disk(data_dir)
    return datasets.load_dataset(data_dir if data_dir is not None else hub_name, cache_dir=cache_dir)


def load_cifar(
    name: str = "cifar10",
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    val_size: int = 5000,
    seed: int = 0,
    max_train_samples: int | None = None,
) -> VisionData:
    """CIFAR-10 or CIFAR-100 (fine labels) from the hub (``uoft-cs/cifar10``/``uoft-cs/cifar100``) or ``data_dir``.

    ``data_dir`` may hold a ``DatasetDict.save_to_disk`` copy or files ``datasets.load_dataset`` reads, with
    ``train`` and ``test`` splits. ``val_size`` training images (stratified) become the validation split.
    The whole dataset is decoded into memory (CIFAR-10: 60000 x 3 x 32 x 32 floats, ~740 MB).
    """
    check_choice(name, "name", tuple(_CIFAR_HUB))
    check_data_dir(data_dir)
    check_positive_int(val_size, "val_size")
    hub_name, label_column = _CIFAR_HUB[name]
    ds = _load_hf_dict(hub_name, data_dir, cache_dir)
    for split in ("train", "test"):
        if split not in ds:
            raise ValueError(f"the {name} data must have a {split!r} split, got splits {list(ds)}")

    def to_tensors(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image_column = _image_column(split.features)
        arr = split.with_format("numpy")[:]
        images = torch.as_tensor(arr[image_column]).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, 32, 32)
        return images, torch.as_tensor(arr[label_column]).long()

    x_all, y_all = to_tensors(ds["train"])
    x_te, y_te = to_tensors(ds["test"])
    if val_size >= len(y_all):
        raise ValueError(f"`val_size` must be smaller than the {len(y_all)} training images, got {val_size}")
    g = torch.Generator().manual_seed(seed)
    tr, va = stratified_split(y_all, [1 - val_size / len(y_all), val_size / len(y_all)], g)
    x_tr, x_va, x_te = _normalise(x_all[tr], x_all[va], x_te)
    names = ds["train"].features[label_column]
    num_classes = 10 if name == "cifar10" else 100
    return VisionData(
        name=name,
        train=_subsample(ImageTensorDataset(x_tr, y_all[tr]), max_train_samples, g),
        val=ImageTensorDataset(x_va, y_all[va]),
        test=ImageTensorDataset(x_te, y_te),
        num_classes=num_classes,
        in_channels=3,
        image_size=32,
        augment=BatchAugment(padding=4, flip=True),
        class_names=list(getattr(names, "names", [str(i) for i in range(num_classes)])),
    )


def load_imagenet(
    data_dir: str,
    *,
    cache_dir: str | None = None,
    image_size: int = 299,
    val_size: int = 10000,
    seed: int = 0,
    max_train_samples: int | None = None,
) -> VisionData:
    """ImageNet (or any ``train/<class>/*.jpeg`` + ``val/<class>/*.jpeg`` tree) through ``imagefolder``.

    Images are decoded lazily; ``val/`` is the test split and ``val_size`` training images are held out for
    temperature fitting. ``image_size`` is 299 for Inception-v4.
    """
    check_data_dir(data_dir, required=True)
    check_positive_int(image_size, "image_size")
    check_positive_int(val_size, "val_size")
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=data_dir, cache_dir=cache_dir)
    test_split = "validation" if "validation" in ds else "test"
    if "train" not in ds or test_split not in ds:
        raise ValueError(f"`data_dir` must hold train/ and val/ class folders, got splits {list(ds)}")
    train_hf = ds["train"]
    image_column = _image_column(train_hf.features)
    labels = torch.as_tensor(train_hf["label"]).long()
    if val_size >= len(labels):
        raise ValueError(f"`val_size` must be smaller than the {len(labels)} training images, got {val_size}")
    g = torch.Generator().manual_seed(seed)
    tr, va = stratified_split(labels, [1 - val_size / len(labels), val_size / len(labels)], g)
    if max_train_samples is not None and max_train_samples < len(tr):
        tr = tr[stratified_subset(labels[tr], max_train_samples, g)]
    names = train_hf.features["label"].names

    def make(hf: Any, indices: Any, train: bool) -> HFImageDataset:
        idx = None if indices is None else indices.tolist()
        return HFImageDataset(hf, image_column, "label", image_size, train=train, indices=idx)

    return VisionData(
        name="imagenet",
        train=make(train_hf, tr, True),
        val=make(train_hf, va, False),
        test=make(ds[test_split], None, False),
        num_classes=len(names),
        in_channels=3,
        image_size=image_size,
        augment=BatchAugment(flip=True),
        class_names=list(names),
    )


def load_vision_data(
    name: str,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
    val_size: int | None = None,
) -> VisionData:
    """Dispatch to :func:`load_digits`, :func:`load_cifar` or :func:`load_imagenet` by ``name``."""
    check_choice(name, "dataset", DATASETS)
    if max_train_samples is not None:
        check_positive_int(max_train_samples, "max_train_samples")
    if name == "digits":
        return load_digits(seed=seed, max_train_samples=max_train_samples)
    extra = {} if val_size is None else {"val_size": val_size}
    if name == "imagenet":
        return load_imagenet(data_dir, cache_dir=cache_dir, seed=seed, max_train_samples=max_train_samples, **extra)
    return load_cifar(name, data_dir=data_dir, cache_dir=cache_dir, seed=seed, max_train_samples=max_train_samples, **extra)

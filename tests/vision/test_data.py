"""Data: the torch augmentations, the splits, and every loader's code path on real digits or tiny on-disk fakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from vision.data import (
    BatchAugment,
    check_data_dir,
    load_cifar,
    load_digits,
    load_imagenet,
    stratified_split,
    stratified_subset,
)


def _windows(x: torch.Tensor, p: int) -> list[torch.Tensor]:
    """Every crop of the zero-padded image ``x (C, H, W)``: the reference set a padded random crop draws from."""
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    h, w = x.shape[1:]
    return [padded[:, i : i + h, j : j + w] for i in range(2 * p + 1) for j in range(2 * p + 1)]


def test_pad_crop_flip_returns_a_window_or_its_mirror_and_leaves_the_input_alone():
    x = torch.arange(4 * 3 * 6 * 6, dtype=torch.float32).view(4, 3, 6, 6) + 1  # every pixel distinct, none 0
    before = x.clone()
    out = BatchAugment(padding=2, flip=True)(x, torch.Generator().manual_seed(0))
    assert_close(x, before, rtol=0, atol=0)
    for b in range(4):
        candidates = _windows(x[b], 2) + [w.flip(-1) for w in _windows(x[b], 2)]
        assert any(torch.equal(out[b], c) for c in candidates)


def test_augmentation_is_reproducible_and_random_across_draws():
    x = torch.randn(64, 1, 8, 8)
    aug = BatchAugment(padding=1, noise_std=0.1)
    a = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))


def test_noise_has_the_requested_standard_deviation():
    x = torch.zeros(200, 1, 10, 10)
    noise = BatchAugment(noise_std=0.3)(x, torch.Generator().manual_seed(0))
    # 20000 draws: the sample std of N(0, 0.3^2) is within 3% with overwhelming probability
    assert float(noise.std()) == pytest.approx(0.3, rel=0.03)
    assert abs(float(noise.mean())) < 0.01


@pytest.mark.parametrize("kwargs, match", [(dict(padding=-1), "`padding`"), (dict(noise_std=-0.1), "`noise_std`")])
def test_bad_augmentation_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchAugment(**kwargs)


def test_stratified_split_is_a_partition_with_every_class_in_proportion():
    labels = torch.arange(10).repeat_interleave(torch.arange(10, 20))  # classes of 10..19 examples
    parts = stratified_split(labels, [0.6, 0.2, 0.2], torch.Generator().manual_seed(0))
    allidx = torch.cat(parts)
    assert torch.equal(allidx.sort().values, torch.arange(labels.numel()))
    for part, frac in zip(parts, [0.6, 0.2, 0.2]):
        counts = torch.bincount(labels[part], minlength=10)
        assert bool(((counts - frac * torch.arange(10, 20)).abs() <= 1).all())
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(labels, [0.5, 0.2], torch.Generator())


def test_digits_splits_are_disjoint_standardised_and_complete():
    data = load_digits(seed=0)
    sizes = [len(data.train), len(data.val), len(data.test)]
    assert sum(sizes) == 1797 and sizes[0] == pytest.approx(0.6 * 1797, abs=10)
    x = data.train.images
    assert x.shape[1:] == (1, 8, 8)
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-3)
    for split in (data.train, data.val, data.test):
        assert set(split.labels.tolist()) == set(range(10))
    # no image of the test split appears in the training split
    train_rows = {tuple(r.tolist()) for r in data.train.images.flatten(1)}
    overlaps = sum(tuple(r.tolist()) in train_rows for r in data.test.images.flatten(1))
    assert overlaps <= 5  # sklearn's digits hold a few exact duplicate images; a leaky split would give ~360


def test_max_train_samples_keeps_every_class():
    data = load_digits(seed=1, max_train_samples=50)
    assert len(data.train) == 50
    assert set(data.train.labels.tolist()) == set(range(10))


def _fake_cifar(path, label_column: str, n_train: int = 40, n_test: int = 10):
    import datasets
    from PIL import Image

    features = datasets.Features({"img": datasets.Image(), label_column: datasets.ClassLabel(names=["a", "b", "c", "d"])})
    rng = np.random.default_rng(0)

    def split(n):
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"img": images, label_column: [i % 4 for i in range(n)]}, features=features)

    datasets.DatasetDict(train=split(n_train), test=split(n_test)).save_to_disk(str(path))


@pytest.mark.parametrize("name, label_column", [("cifar10", "label"), ("cifar100", "fine_label")])
def test_cifar_loader_reads_a_local_copy(tmp_path, name, label_column):
    _fake_cifar(tmp_path / "c", label_column)
    data = load_cifar(name, data_dir=str(tmp_path / "c"), val_size=8, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 10)
    assert data.train.images.shape == (32, 3, 32, 32)
    # every label of the fake (i % 4) in each split, per-channel standardised with the training statistics
    assert set(data.val.labels.tolist()) == {0, 1, 2, 3}
    assert_close(data.train.images.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    assert data.augment == BatchAugment(padding=4, flip=True)


def test_cifar_loader_rejects_missing_directory_and_oversized_validation(tmp_path):
    with pytest.raises(ValueError, match="`data_dir` must be an existing directory"):
        load_cifar("cifar10", data_dir=str(tmp_path / "absent"))
    _fake_cifar(tmp_path / "c", "label", n_train=8)
    with pytest.raises(ValueError, match="`val_size` must be smaller than the 8"):
        load_cifar("cifar10", data_dir=str(tmp_path / "c"), val_size=8)


def test_imagenet_loader_reads_an_imagefolder_tree(fake_imagenet, tmp_path):
    data = load_imagenet(str(fake_imagenet), cache_dir=str(tmp_path / "cache"), image_size=16, val_size=3)
    assert data.num_classes == 3 and data.class_names == ["cat", "dog", "eel"]
    assert (len(data.train), len(data.val), len(data.test)) == (15, 3, 6)
    x, y = data.test[0]
    assert x.shape == (3, 16, 16) and y.dtype == torch.long
    # evaluation crops are deterministic (centre); training crops follow torch's seed (set per epoch)
    assert torch.equal(data.test[1][0], data.test[1][0])
    torch.manual_seed(1)
    first = data.train[2][0]
    torch.manual_seed(1)
    assert torch.equal(data.train[2][0], first)
    crops = set()
    for _ in range(20):
        crops.add(data.train[2][0].sum().item())
    assert len(crops) > 1  # different epochs see different crops
    with pytest.raises(ValueError, match="`data_dir` is required"):
        load_imagenet(None)


def test_check_data_dir_names_the_argument(tmp_path):
    check_data_dir(str(tmp_path))
    check_data_dir(None)
    with pytest.raises(TypeError, match="`data_dir` must be a path"):
        check_data_dir(3)


@pytest.mark.parametrize("n", [1, 37, 400, 1077])
def test_stratified_subset_has_exactly_n_examples_in_proportion(n):
    data = load_digits(seed=0)
    labels = data.train.labels
    idx = stratified_subset(labels, n, torch.Generator().manual_seed(n))
    assert idx.numel() == n == len(set(idx.tolist()))
    expected = torch.bincount(labels, minlength=10).double() * n / labels.numel()
    assert bool(((torch.bincount(labels[idx], minlength=10) - expected).abs() <= 1).all())

"""Tiny on-disk stand-ins for the image datasets that cannot be downloaded here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def fake_imagenet(tmp_path: Path) -> Path:
    """``train/<class>/*.png`` (6 per class) and ``val/<class>/*.png`` (2 per class), 3 classes, varied sizes."""
    from PIL import Image

    root = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog", "eel"):
            os.makedirs(root / split / c)
            for i in range(n):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root

"""Shared fixtures: offline HuggingFace, deterministic seeds, the real Multi30k data when it is beside the clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MULTI30K_DIR = PROJECT_ROOT.parent / "shared" / "data" / "multi30k"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def multi30k_dir() -> Path:
    """The real Multi30k EN-DE corpus (``../shared/data/multi30k``); the test is skipped where it is absent."""
    if not (MULTI30K_DIR / "train.en.gz").exists():
        pytest.skip(f"real Multi30k data not found at {MULTI30K_DIR}")
    return MULTI30K_DIR

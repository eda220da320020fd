"""Atomic result files: complete or absent, never truncated."""

from __future__ import annotations

import os

import pytest
import torch

from ls_seq.io import atomic_write_csv, atomic_write_json, read_json


def test_json_round_trip_with_tensors(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "r.json", {"ece": torch.tensor(0.25), "sweep": [torch.tensor([1.0, 2.0])]})
    assert read_json(path) == {"ece": 0.25, "sweep": [[1.0, 2.0]]}


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(ValueError, match="non-finite"):
        atomic_write_json(path, {"a": float("nan")})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert read_json(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_csv_columns_in_first_seen_order(tmp_path):
    path = atomic_write_csv(tmp_path / "r.csv", [{"alpha": 0.0, "bleu": 1.5}, {"alpha": 0.1, "ece": 0.2}])
    assert path.read_text().splitlines() == ["alpha,bleu,ece", "0.0,1.5,", "0.1,,0.2"]

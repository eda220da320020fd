"""Checkpoint verification: every kind of damage is named; a damaged newest checkpoint is set aside for the last good one."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from distributed.tiny import collate, tiny_config, tiny_dataset, training_args
from faults import garble, truncate
from safetensors.torch import load_file, save_file
from transformers import MarianMTModel, Seq2SeqTrainer, set_seed

from ls_seq.checkpoints import (
    CHECKSUMS_NAME,
    latest_good_checkpoint,
    verify_checkpoint,
    verify_safetensors,
    write_checksums,
)
from ls_seq.errors import CheckpointError, LsSeqWarning
from ls_seq.guards import TrainingGuard


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """checkpoint-2 and checkpoint-4 of a tiny Marian model, saved by HF's Trainer with the guard's checksums."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    set_seed(0)
    args = training_args(str(out), optim="adamw_torch", learning_rate=1e-2, max_steps=4, save_strategy="steps",
                         save_steps=2, logging_nan_inf_filter=False)
    Seq2SeqTrainer(model=MarianMTModel(tiny_config("marian")), args=args, train_dataset=tiny_dataset(40),
                   data_collator=collate, callbacks=[TrainingGuard()]).train()
    return out


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _nan_weights(path):
    tensors = load_file(path)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name][0] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    write_checksums(path.parent)  # a NaN saved as such (no guard), not a changed byte: only the finite check sees it


def _zero(path):
    path.write_bytes(b"\0" * path.stat().st_size)


def _global_step(path):
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "global_step": 3}))
    write_checksums(path.parent)


DAMAGE = {
    "truncated safetensors": ("model.safetensors", truncate, r"model\.safetensors' is damaged"),
    "zeroed safetensors": ("model.safetensors", _zero, r"model\.safetensors' is damaged: header length 0"),
    "garbled tensor bytes": ("model.safetensors", lambda p: garble(p, offset=p.stat().st_size - 200),
                             r"model\.safetensors' is damaged: its SHA-256 differs"),
    "NaN weights": ("model.safetensors", _nan_weights, r"model\.safetensors' is damaged: tensor .* holds NaN"),
    "truncated optimizer": ("optimizer.pt", truncate, r"optimizer\.pt' is damaged"),
    "truncated trainer state": ("trainer_state.json", truncate, r"trainer_state\.json' is damaged"),
    "trainer state of another step": ("trainer_state.json", _global_step, r"says global_step 3, not 4"),
    "missing trainer state": ("trainer_state.json", lambda p: p.unlink(), r"incomplete: no trainer_state\.json"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_each_kind_of_damage_is_named(run, case):
    name, damage, message = DAMAGE[case]
    verify_checkpoint(run / "checkpoint-4")  # whole before
    damage(run / "checkpoint-4" / name)
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(run / "checkpoint-4")


@pytest.mark.parametrize("case", ["garbled tensor bytes", "truncated optimizer"])
def test_without_checksums_the_structure_and_crc_still_catch_damage(run, case):
    """An older checkpoint without ls_seq_checksums.json: safetensors' layout and the zip CRC-32 catch it."""
    (run / "checkpoint-4" / CHECKSUMS_NAME).unlink()
    name, damage, _ = DAMAGE[case]
    if name == "model.safetensors":  # a garbled header byte breaks the JSON header
        damage = lambda p: garble(p, offset=20, n=8)
    else:  # a garbled data byte fails the CRC
        damage = lambda p: garble(p)
    damage(run / "checkpoint-4" / name)
    with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}' is damaged"):
        verify_checkpoint(run / "checkpoint-4")


def test_structural_checks_agree_with_the_safetensors_loader(run):
    """Reference: every file verify_safetensors refuses for its layout is one safetensors cannot load either."""
    path = run / "checkpoint-4" / "model.safetensors"
    good = path.read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    for cut in (4, 8 + n // 2, 8 + n + 10, len(good) - 1):
        path.write_bytes(good[:cut])
        with pytest.raises(CheckpointError):
            verify_safetensors(path)
        with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type
            load_file(path)
    path.write_bytes(good)
    verify_safetensors(path)
    assert all(torch.isfinite(t).all() for t in load_file(path).values())


def test_a_damaged_newest_checkpoint_is_set_aside_for_the_previous_one(run):
    truncate(run / "checkpoint-4" / "model.safetensors")
    with pytest.warns(LsSeqWarning, match=r"checkpoint-4/model\.safetensors' is damaged.*set aside as '.*damaged-checkpoint-4'"):
        assert latest_good_checkpoint(run) == run / "checkpoint-2"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", "damaged-checkpoint-4"]  # renamed, not deleted
    truncate(run / "checkpoint-2" / "optimizer.pt")
    with pytest.warns(LsSeqWarning, match=r"checkpoint-2/optimizer\.pt' is damaged"):
        assert latest_good_checkpoint(run) is None  # nothing good left: the caller starts from scratch
    assert sorted(p.name for p in run.iterdir()) == ["damaged-checkpoint-2", "damaged-checkpoint-4"]
    assert latest_good_checkpoint(run / "absent") is None


def test_first_non_finite_names_the_tensor_and_ignores_a_sum_that_overflows():
    from ls_seq.checkpoints import first_non_finite

    overflowing = torch.full((10,), 3e38)  # every value finite, the float32 sum is inf
    half = torch.full((100,), 6e4, dtype=torch.float16)  # likewise in float16
    bad = torch.zeros(5)
    bad[3] = float("-inf")
    assert first_non_finite([("a", overflowing), ("h", half), ("i", torch.arange(3))]) is None
    assert first_non_finite([("a", overflowing), ("b", torch.ones(3)), ("c", bad), ("d", bad)]) == "c"
    assert first_non_finite([("n", torch.tensor([1.0, float("nan")]))]) == "n"

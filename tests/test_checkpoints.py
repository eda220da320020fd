"""Checkpoint verification: every kind of damage is named; a damaged newest checkpoint is set aside for the last good one."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import warnings

import pytest
import torch
from _helpers.faults import garble, truncate, zero_inside_the_weights
from _helpers.tiny import collate, tiny_config, tiny_dataset, training_args
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
from ls_seq.hf.training_guard import TrainingGuard


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """checkpoint-2 and checkpoint-4 of a tiny Marian model, saved by HF's Trainer with the guard's checksums."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    set_seed(0)
    args = training_args(
        str(out),
        optim="adamw_torch",
        learning_rate=1e-2,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        logging_nan_inf_filter=False,
    )
    Seq2SeqTrainer(
        model=MarianMTModel(tiny_config("marian")),
        args=args,
        train_dataset=tiny_dataset(40),
        data_collator=collate,
        callbacks=[TrainingGuard()],
    ).train()
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
    "garbled tensor bytes": (
        "model.safetensors",
        lambda p: garble(p, offset=p.stat().st_size - 200),
        r"model\.safetensors' is damaged: its SHA-256 is [0-9a-f]{64}, not [0-9a-f]{64} as recorded",
    ),
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


# ------------------------------------------------------------------------------------------------------
# The manifest: sizes and SHA-256 recorded at save time catch what the structure cannot (issue #25).
# Reference values are computed here with hashlib on the bytes, independently of ls_seq.io.sha256_file.


def test_the_manifest_records_every_file_with_its_size_and_sha256(run):
    checkpoint = run / "checkpoint-4"
    manifest = json.loads((checkpoint / CHECKSUMS_NAME).read_text())
    files = sorted(p for p in checkpoint.iterdir() if p.name != CHECKSUMS_NAME)
    assert manifest["format"] == 2 and sorted(manifest["files"]) == [p.name for p in files]
    for p in files:
        assert manifest["files"][p.name] == {"size": len(p.read_bytes()), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def test_zeroed_weights_with_an_intact_header_are_named_with_the_recorded_and_found_sha256(run):
    # Fails before #25's change: the message named neither value ("its SHA-256 differs from the one recorded").
    checkpoint = run / "checkpoint-4"
    path = checkpoint / "model.safetensors"
    recorded = hashlib.sha256(path.read_bytes()).hexdigest()
    zero_inside_the_weights(path)
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    verify_safetensors(path)  # structure intact and every value finite: only the checksum can see the change
    with pytest.raises(CheckpointError) as caught:
        verify_checkpoint(checkpoint)
    assert str(caught.value) == (
        f"{str(path)!r} is damaged: its SHA-256 is {found}, not {recorded} as recorded when it was saved ({CHECKSUMS_NAME})"
    )
    with pytest.warns(LsSeqWarning, match=rf"checkpoint-4/model\.safetensors' is damaged: its SHA-256 is {found}.*set aside"):
        assert latest_good_checkpoint(run) == run / "checkpoint-2"  # the previous good one, as for a truncated file
    assert (run / "damaged-checkpoint-4").is_dir()


def test_a_changed_size_is_named_before_any_file_is_hashed(run):
    # Fails before #25's change: sizes were not recorded (the old message named no size).
    path = run / "checkpoint-4" / "config.json"
    size = path.stat().st_size
    path.write_text(path.read_text() + "\n\n")  # still valid JSON: only the record sees it
    with pytest.raises(CheckpointError, match=rf"config\.json' is damaged: {size + 2} bytes, {size} when it was saved"):
        verify_checkpoint(run / "checkpoint-4")


def test_a_checkpoint_without_a_manifest_is_verified_structurally_and_said_not_checksummed(run):
    # Fails before #25's change: nothing told the user that the checkpoint could not be checksummed.
    (run / "checkpoint-4" / CHECKSUMS_NAME).unlink()
    zero_inside_the_weights(run / "checkpoint-4" / "model.safetensors")  # invisible without a manifest
    with pytest.warns(LsSeqWarning, match=r"checkpoint-4' has no recorded checksums .*cannot be detected") as caught:
        assert latest_good_checkpoint(run) == run / "checkpoint-4"
    assert len(caught) == 1


def test_a_manifest_of_the_first_format_is_still_checked(run):
    checkpoint = run / "checkpoint-4"
    files = [p for p in checkpoint.iterdir() if p.name != CHECKSUMS_NAME]
    (checkpoint / CHECKSUMS_NAME).write_text(
        json.dumps({"sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # checksummed: no warning
        assert verify_checkpoint(checkpoint) is True
    zero_inside_the_weights(checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors' is damaged: its SHA-256 is [0-9a-f]{64}, not"):
        verify_checkpoint(checkpoint)


def test_a_damaged_manifest_is_named(run):
    (run / "checkpoint-4" / CHECKSUMS_NAME).write_text('{"format": 2, "files": {"model.safetensors": {"size": 1')
    with pytest.raises(CheckpointError, match=rf"{CHECKSUMS_NAME}' is damaged: not a checksum manifest"):
        verify_checkpoint(run / "checkpoint-4")


def test_a_file_checksum_sidecar_names_the_file_and_goes_with_it_when_set_aside(tmp_path):
    from ls_seq.checkpoints import SIDECAR_SUFFIX, set_aside, verify_file_checksum, write_file_checksum

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"x" * 5000)
    assert verify_file_checksum(path) is False  # no sidecar yet
    write_file_checksum(path)
    assert verify_file_checksum(path) is True
    path.write_bytes(b"x" * 2000 + b"\0" + b"x" * 2999)
    with pytest.raises(
        CheckpointError, match=rf"checkpoint\.pt' is damaged: its SHA-256 is {hashlib.sha256(path.read_bytes()).hexdigest()}"
    ):
        verify_file_checksum(path)
    set_aside(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged-checkpoint.pt", f"damaged-checkpoint.pt{SIDECAR_SUFFIX}"]

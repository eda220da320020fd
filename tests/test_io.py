"""Atomic result files: complete or absent, never truncated."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from _helpers.faults import FailingWrites, read_only_directory, tmpfs

import ls_seq.io
from ls_seq.cli.runner import describe_fault
from ls_seq.errors import DiskFullError, InputError
from ls_seq.io import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_files,
    atomic_write_json,
    check_output_dir,
    file_mode,
    read_json,
)


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


# ------------------------------------------------------------------------------------------------------
# Faults: permissions, a full disk, sets of files, damaged JSON, unusable output directories


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_result_files_get_the_mode_the_umask_gives_ordinary_files(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == expected == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert file_mode() == 0o666 & ~old


def test_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    FailingWrites(monkeypatch, ls_seq.io, "r.json")
    with pytest.raises(DiskFullError, match=r"no space left on device writing '.*r\.json'") as info:
        atomic_write_json(tmp_path / "r.json", {"a": 2})
    assert describe_fault(info.value)[0] == 1
    assert read_json(tmp_path / "r.json") == {"a": 1} and os.listdir(tmp_path) == ["r.json"]


def test_a_set_of_files_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    files = {tmp_path / "reliability.png": b"old png", tmp_path / "calibration.json": '{"old": true}'}
    atomic_write_files(files)
    FailingWrites(monkeypatch, ls_seq.io, "calibration.json")  # the disk fills up at the second file of the set
    with pytest.raises(DiskFullError, match="calibration.json"):
        atomic_write_files({tmp_path / "reliability.png": b"new png", tmp_path / "calibration.json": "{}"})
    assert (tmp_path / "reliability.png").read_bytes() == b"old png"  # the first file was not replaced alone
    assert sorted(os.listdir(tmp_path)) == ["calibration.json", "reliability.png"]
    monkeypatch.undo()
    assert atomic_write_files({tmp_path / "a": b"1", tmp_path / "b": "2"}) == [tmp_path / "a", tmp_path / "b"]
    assert (tmp_path / "b").read_text() == "2"


def test_damaged_json_is_named_with_the_place(tmp_path):
    (tmp_path / "results.json").write_text('{"models": [1, 2')
    with pytest.raises(InputError, match=r"'.*results\.json' is not valid JSON \(.* line 1, column 17\)"):
        read_json(tmp_path / "results.json")
    (tmp_path / "bin.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(InputError, match=r"bin\.json' is not UTF-8"):
        read_json(tmp_path / "bin.json")


def test_unusable_output_directories_are_refused_without_creating_anything(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    cases = {
        "": r"`output_dir` must be a non-empty path, got ''",
        str(tmp_path / "file.txt"): r"must be a directory: '.*file\.txt' is a file",
        str(tmp_path / "file.txt" / "run"): r"'.*file\.txt/run' is below '.*file\.txt', which is a file",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message):
            check_output_dir(path)
    assert check_output_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]  # nothing created, the probe file removed


def test_a_read_only_directory_is_refused(tmp_path):
    with (
        read_only_directory(tmp_path / "ro") as ro,
        pytest.raises(InputError, match=r"`out`='.*ro/run' cannot be written: creating a file in '.*ro' failed \(.*\)"),
    ):
        check_output_dir(ro / "run", argument="out")


def test_a_real_full_disk_is_reported_naming_the_file(tmp_path):
    """On a 64 KiB tmpfs: the write that does not fit raises DiskFullError naming it and leaves no temporary."""
    with tmpfs(tmp_path / "small", "64k") as small:
        atomic_write_bytes(small / "small.bin", b"x" * 1000)
        with pytest.raises(DiskFullError, match=r"big\.bin"):
            atomic_write_bytes(small / "big.bin", b"y" * (1 << 20))
        assert os.listdir(small) == ["small.bin"] and (small / "small.bin").read_bytes() == b"x" * 1000

"""Checkpoints checked before they are used: damaged ones are named, set aside and the previous one used.

A checkpoint directory (HF Trainer's ``checkpoint-N``, a saved model) or a single ``torch.save`` file is
*verified* before a resume or an evaluation trusts it:

* every ``*.json`` parses, and ``trainer_state.json`` (when required) says ``global_step == N``;
* every ``*.safetensors`` has a whole header (8-byte length, JSON), tensors whose byte ranges match their
  shape and dtype and cover the file exactly, and only finite floating-point values;
* every ``torch.save`` archive (``*.pt``, ``*.pth``, ``*.bin``) passes its zip CRC-32 check;
* when :func:`write_checksums` recorded each file's size and SHA-256 at save time (the manifest
  ``ls_seq_checksums.json``, written last and atomically), every file still has them: this catches a changed
  byte that leaves the structure valid (1 MiB of weights zeroed with the header intact). A mismatch names the
  file, the recorded value and the one found. A checkpoint without a manifest (an older ls-seq, another tool)
  is verified structurally only, and one :class:`~ls_seq.errors.LsSeqWarning` says it could not be
  checksummed.

A single file (the vision loop's ``checkpoint.pt``) gets the same record in a sidecar,
``<name>.ls_seq_checksum.json`` (:func:`write_file_checksum`, :func:`verify_file_checksum`).

Cost: one streaming pass over each file (1 MiB blocks, never the whole file in memory), the files of a
checkpoint (the shards of a large model) hashed in parallel threads: hashlib releases the GIL
(``benchmarks/bench_checksums.py``, numbers in docs/reliability.md).

:func:`latest_good_checkpoint` walks ``checkpoint-N`` from the newest, renames each damaged one to
``damaged-checkpoint-N`` (kept for inspection, never deleted; HF's rotation ignores the name) with a
warning naming the file and the cause, and returns the newest good one.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

from ls_seq.errors import CheckpointError, LsSeqWarning, NonFiniteWeightsError
from ls_seq.io import atomic_write_json, sha256_file

__all__ = [
    "CHECKSUMS_NAME",
    "check_finite_weights",
    "SIDECAR_SUFFIX",
    "checkpoint_steps",
    "first_non_finite",
    "first_verified",
    "latest_good_checkpoint",
    "set_aside",
    "verify_checkpoint",
    "verify_checksums",
    "verify_file_checksum",
    "verify_safetensors",
    "verify_torch_archive",
    "warn_not_checksummed",
    "write_checksums",
    "write_file_checksum",
]

CHECKSUMS_NAME = "ls_seq_checksums.json"
SIDECAR_SUFFIX = ".ls_seq_checksum.json"
_MANIFEST_FORMAT = 2  # 1 (no "format" key): {"sha256": {name: hex}}; 2: {"files": {name: {"size", "sha256"}}}
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# bytes per element of the safetensors dtypes (https://github.com/huggingface/safetensors, format spec)
_DTYPE_SIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_TORCH_ARCHIVES = (".pt", ".pth", ".bin")
T = TypeVar("T")


def first_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None.

    A NaN or inf anywhere makes its tensor's sum non-finite, so one sum per tensor and one host sync answer
    the common case (7x faster than ``isfinite`` on every element: 3.7 ms against 27 ms for the tiny
    preset's 5M parameters on one CPU thread); only when a sum is not finite are the elements looked at
    (a sum can also overflow while every value is finite).
    """
    named = [(n, t.detach()) for n, t in named_tensors if t.is_floating_point()]
    if not named or bool(torch.isfinite(torch.stack([t.sum() for _, t in named])).all()):
        return None
    return next((n for n, t in named if not bool(torch.isfinite(t).all())), None)


def check_finite_weights(model: torch.nn.Module, where: str, *, step: int | None = None) -> None:
    """Raise :class:`NonFiniteWeightsError` (``where`` says when) if a parameter or buffer is not finite."""
    bad = first_non_finite((*model.named_parameters(), *model.named_buffers()))
    if bad is not None:
        raise NonFiniteWeightsError(
            f"non-finite weights {where}: {bad!r} holds NaN or inf; nothing from this point is saved "
            "(lower the learning rate, or look for inf/NaN in the inputs)",
            step=step,
        )


def _records(files: Sequence[Path]) -> list[dict[str, int | str]]:
    """``{"size", "sha256"}`` of each file, hashed in up to 4 threads (hashlib releases the GIL on each block)."""

    def record(path: Path) -> dict[str, int | str]:
        return {"size": path.stat().st_size, "sha256": sha256_file(path)}

    if len(files) <= 1:
        return [record(p) for p in files]
    with ThreadPoolExecutor(max_workers=min(4, len(files), os.cpu_count() or 1)) as pool:
        return list(pool.map(record, files))


def write_checksums(directory: str | os.PathLike) -> Path:
    """Record the size and SHA-256 of every file in ``directory`` in its manifest ``ls_seq_checksums.json``.

    Call it once every file is written: the manifest is written last (atomically), so a checkpoint killed
    before has none and one killed after has a whole one. Hidden files (temporaries) are left out.
    """
    directory = Path(directory)
    files = [p for p in sorted(directory.iterdir()) if p.is_file() and p.name != CHECKSUMS_NAME and not p.name.startswith(".")]
    manifest = {"format": _MANIFEST_FORMAT, "files": dict(zip((p.name for p in files), _records(files), strict=True))}
    return atomic_write_json(directory / CHECKSUMS_NAME, manifest)


def _read_manifest(path: Path) -> dict[str, dict[str, int | str]]:
    """``{name: {"sha256"[, "size"]}}`` from a manifest of either format; a damaged one is a CheckpointError."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        if "files" in content:
            files: dict[str, dict[str, int | str]] = {
                str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])} for k, v in content["files"].items()
            }
        else:  # format 1, written before sizes were recorded
            files = {str(k): {"sha256": str(v)} for k, v in content["sha256"].items()}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{str(path)!r} is damaged: not a checksum manifest ({exc!r})") from exc
    return files


def _check_records(files: dict[Path, dict[str, int | str]], manifest: Path) -> None:
    """Every file against its record: presence and sizes first (cheap), then the SHA-256s (one read each)."""
    for file, rec in files.items():
        if not file.is_file():
            raise CheckpointError(f"{str(file)!r} is missing (listed in {str(manifest)!r})")
        size = file.stat().st_size
        if "size" in rec and size != rec["size"]:
            raise CheckpointError(
                f"{str(file)!r} is damaged: {size} bytes, {rec['size']} when it was saved (recorded in {manifest.name})"
            )
    for file, found in zip(files, _records(list(files)), strict=True):
        expected = files[file]["sha256"]
        if found["sha256"] != expected:
            raise CheckpointError(
                f"{str(file)!r} is damaged: its SHA-256 is {found['sha256']}, not {expected} as recorded when it "
                f"was saved ({manifest.name})"
            )


def verify_checksums(directory: str | os.PathLike) -> bool:
    """Check every file listed in ``directory``'s manifest (size, then SHA-256); False when it has no manifest.

    Raises :class:`CheckpointError` naming the file, the recorded value and the one found.
    """
    path = Path(directory) / CHECKSUMS_NAME
    if not path.is_file():
        return False
    _check_records({path.parent / name: rec for name, rec in _read_manifest(path).items()}, path)
    return True


def write_file_checksum(path: str | os.PathLike, digest: str | None = None) -> Path:
    """Record ``path``'s size and SHA-256 in its sidecar ``<name>.ls_seq_checksum.json`` (after the file is
    whole); ``digest`` skips re-reading a file whose bytes were just hashed in memory."""
    path = Path(path)
    record = {"size": path.stat().st_size, "sha256": digest or sha256_file(path)}
    return atomic_write_json(
        path.with_name(path.name + SIDECAR_SUFFIX), {"format": _MANIFEST_FORMAT, "files": {path.name: record}}
    )


def verify_file_checksum(path: str | os.PathLike) -> bool:
    """Check ``path`` against its sidecar (see :func:`write_file_checksum`); False when it has none."""
    path = Path(path)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return False
    records = list(_read_manifest(sidecar).values())
    if len(records) != 1:  # the name inside is the one it was saved under: a rotated checkpoint keeps its record
        raise CheckpointError(f"{str(sidecar)!r} is damaged: it records {len(records)} files, not one")
    _check_records({path: records[0]}, sidecar)
    return True


def warn_not_checksummed(what: str | os.PathLike) -> None:
    """The one warning for a checkpoint that passed its structural checks but has no checksums to compare."""
    warnings.warn(
        f"{os.fspath(what)!r} has no recorded checksums (saved by an older ls-seq or another tool): its structure "
        "was verified, but a changed byte that keeps the structure valid cannot be detected",
        LsSeqWarning,
        stacklevel=3,
    )


def verify_safetensors(path: str | os.PathLike, *, finite: bool = True) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a whole safetensors file (with finite floats)."""
    path = Path(path)
    size = path.stat().st_size

    def bad(cause: str) -> CheckpointError:
        return CheckpointError(f"{str(path)!r} is damaged: {cause}")

    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or 8 + n > size:
            raise bad(f"header length {n} does not fit in the file's {size} bytes (truncated or overwritten)")
        try:
            header = json.loads(handle.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad(f"the header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_size, end = size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in info["data_offsets"])
            count = math.prod(int(d) for d in info["shape"])
            itemsize = _DTYPE_SIZE[info["dtype"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"tensor {name!r} has a malformed header entry ({exc!r})") from exc
        if not 0 <= begin <= stop <= data_size or stop - begin != count * itemsize:
            raise bad(f"tensor {name!r} needs bytes [{begin}, {stop}) of {data_size} for {count} x {info['dtype']}")
        end = max(end, stop)
    if end != data_size:
        raise bad(f"the tensors cover {end} of its {data_size} data bytes")
    if finite:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as tensors:
            bad_name = first_non_finite((k, tensors.get_tensor(k)) for k in tensors.keys())  # noqa: SIM118
        if bad_name is not None:
            raise bad(f"tensor {bad_name!r} holds NaN or infinite values")


def verify_torch_archive(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a whole ``torch.save`` zip archive (CRC-32)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{str(path)!r} is damaged: not a whole torch.save archive ({exc})") from exc
    if broken is not None:
        raise CheckpointError(f"{str(path)!r} is damaged: member {broken!r} fails its CRC-32 check")


def checkpoint_steps(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(N, path)`` of every ``checkpoint-N`` directory in ``directory``, newest (largest N) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found, reverse=True)


def verify_checkpoint(
    directory: str | os.PathLike, *, require: tuple[str, ...] = ("trainer_state.json",), warn_unchecked: bool = True
) -> bool:
    """Raise :class:`CheckpointError` naming the first damaged file of ``directory`` (see the module docstring).

    ``require`` lists files that must be present: ``trainer_state.json`` for a Trainer checkpoint (HF
    writes it last, so a checkpoint killed while saving lacks it), ``model.safetensors`` for a model.
    Returns whether the files were checksummed; without a manifest ``warn_unchecked`` warns that they were not.
    """
    directory = Path(directory)
    for name in require:
        if not (directory / name).is_file():
            raise CheckpointError(f"{str(directory)!r} is incomplete: no {name} (killed while saving?)")
    for file in sorted(directory.iterdir()):
        if not file.is_file() or file.name == CHECKSUMS_NAME or file.name.startswith("."):
            continue
        if file.suffix == ".json":
            try:
                content = json.loads(file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{str(file)!r} is damaged: not valid JSON ({exc})") from exc
            match = _CHECKPOINT.match(directory.name)
            if file.name == "trainer_state.json" and match and content.get("global_step") != int(match.group(1)):
                raise CheckpointError(
                    f"{str(file)!r} says global_step {content.get('global_step')!r}, not {match.group(1)} as its folder"
                )
        elif file.suffix == ".safetensors":
            verify_safetensors(file)
        elif file.suffix in _TORCH_ARCHIVES:
            verify_torch_archive(file)
    checked = verify_checksums(directory)
    if not checked and warn_unchecked:
        warn_not_checksummed(directory)
    return checked


def set_aside(path: str | os.PathLike) -> Path:
    """Rename ``path`` (and its checksum sidecar) to ``damaged-<name>`` beside it (``damaged-<name>-2``, ... when
    taken); returns the new path."""
    path = Path(path)
    target, k = path.with_name(f"damaged-{path.name}"), 1
    while target.exists():
        k += 1
        target = path.with_name(f"damaged-{path.name}-{k}")
    os.replace(path, target)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if sidecar.is_file():  # it describes the damaged file: it goes with it, never stays beside a new one
        os.replace(sidecar, target.with_name(target.name + SIDECAR_SUFFIX))
    return target


def first_verified(candidates: Iterable[str | os.PathLike], verify: Callable[[Path], T]) -> tuple[Path, T] | None:
    """``(path, verify(path))`` for the first of ``candidates`` (that exists) which ``verify`` accepts, or None.

    Each candidate ``verify`` refuses with :class:`CheckpointError` is renamed by :func:`set_aside`, with an
    ``LsSeqWarning`` naming the damaged file, the cause and where it went.
    """
    for path in map(Path, candidates):
        if not path.exists():
            continue
        try:
            return path, verify(path)
        except CheckpointError as exc:
            moved = set_aside(path)
            warnings.warn(f"{exc}; set aside as {str(moved)!r}, using an earlier checkpoint", LsSeqWarning, stacklevel=3)
    return None


def latest_good_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest verified ``checkpoint-N`` in ``directory`` (None when there is none); each damaged one newer
    than it is set aside with a warning (:func:`first_verified`)."""
    found = first_verified((path for _, path in checkpoint_steps(directory)), verify_checkpoint)
    return None if found is None else found[0]

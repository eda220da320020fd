"""Result files: complete or absent, never truncated, readable as the user's umask says, errors that name the file.

Each writer writes a temporary file in the destination directory, flushes and fsyncs it, then ``os.replace``s
it over the destination (atomic on POSIX and Windows within one file system), so a killed run leaves the
previous complete file or none. The file gets the mode an ordinary ``open(path, "w")`` would give it
(``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.

Several files that belong together (a JSON and its figure) are written with :func:`atomic_write_files`:
every temporary file first, then the renames, the last file last, so a reader that finds the last file
finds the whole set, and a failure while writing (a full disk) leaves the previous set untouched.

A full disk raises :class:`ls_seq.errors.DiskFullError` naming the destination; :func:`read_json` names the
file it cannot parse; :func:`check_output_dir` refuses an output directory that cannot be written before
any work starts.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ls_seq.errors import DiskFullError, InputError, LsSeqError

__all__ = [
    "writing_to",
    "apply_umask_modes",
    "atomic_savefig",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_files",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_dir",
    "csv_bytes",
    "directory_mode",
    "figure_bytes",
    "file_mode",
    "json_bytes",
    "read_json",
    "sha256_file",
]


def _umask() -> int:
    try:  # Linux reports the umask without changing it (no window in which another thread sees another one)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new ordinary file gets from this process's umask: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def directory_mode() -> int:
    """The mode ``mkdir`` gives a new directory under this process's umask: ``0o777 & ~umask``."""
    return 0o777 & ~_umask()


def apply_umask_modes(directory: str | os.PathLike[str]) -> None:
    """Give every file directly in ``directory`` the mode of :func:`file_mode` (libraries that write through
    a temporary file, such as transformers' ``save_pretrained``, leave ``0o600``)."""
    mode = file_mode()
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, mode)


def _write_temporary(path: Path, data: bytes, mode: int) -> str:
    """``data`` in a fsynced temporary file beside ``path``; returns its name. Nothing is left on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(exc.errno, f"no space left on device writing {str(path)!r} ({len(data)} bytes)") from exc
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return tmp


_PathT = TypeVar("_PathT", bound="str | os.PathLike[str]")  # the keys of one mapping: all str, all Path, or mixed


def atomic_write_files(files: Mapping[_PathT, bytes | str]) -> list[Path]:
    """Write several files as one set: all temporary files first, then the renames, in the order given.

    A failure while writing (a full disk, a signal) removes the temporary files and leaves every
    destination as it was. Only a crash between the renames (no data is written then) can leave a mixed
    set; a reader should therefore look for the last file of the set (put the main result last: the
    figure first, the JSON that names it last). ``str`` values are written as UTF-8.

    Returns:
        The destination paths, in the order given.
    """
    mode = file_mode()
    written: list[tuple[str, Path]] = []
    try:
        for name, data in files.items():
            path = Path(name)
            written.append((_write_temporary(path, data.encode("utf-8") if isinstance(data, str) else data, mode), path))
    except BaseException:
        for tmp, _ in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    for tmp, path in written:
        os.replace(tmp, path)
    return [path for _, path in written]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename); create parent directories."""
    return atomic_write_files({path: data})[0]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _to_jsonable(obj: Any) -> Any:
    """Tensors and numpy values become Python numbers/lists; NaN/inf are refused (they are not JSON)."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"refusing to write a non-finite number ({obj}) to JSON; store None or fix the computation")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_bytes(obj: Any, *, indent: int = 2) -> bytes:
    """``obj`` (dicts, lists, numbers, tensors) as the UTF-8 JSON that :func:`atomic_write_json` writes."""
    return (json.dumps(_to_jsonable(obj), indent=indent, allow_nan=False, sort_keys=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Serialise ``obj`` (dicts, lists, numbers, tensors) to JSON at ``path`` atomically."""
    return atomic_write_bytes(path, json_bytes(obj, indent=indent))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a damaged one raises :class:`ls_seq.errors.InputError` naming the file and the place."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise InputError(f"{os.fspath(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{os.fspath(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV atomically; columns are ``fieldnames`` or the keys in first-seen order."""
    return atomic_write_bytes(path, csv_bytes(rows, fieldnames))


def csv_bytes(rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> bytes:
    """Dict rows as the UTF-8 CSV that :func:`atomic_write_csv` writes."""
    rows = [_to_jsonable(dict(r)) for r in rows]
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def figure_bytes(fig: Any, format: str = "png", **savefig_kwargs: Any) -> bytes:
    """A matplotlib figure rendered in memory (``bbox_inches="tight"`` unless given), for :func:`atomic_write_files`."""
    savefig_kwargs.setdefault("bbox_inches", "tight")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=format, **savefig_kwargs)
    return buffer.getvalue()


def atomic_savefig(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure atomically; the format follows ``path``'s suffix unless given."""
    path = Path(path)
    fmt = savefig_kwargs.pop("format", path.suffix.lstrip(".") or "png")
    return atomic_write_bytes(path, figure_bytes(fig, fmt, **savefig_kwargs))


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as a hex string (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(path: str | os.PathLike | None, argument: str = "output_dir") -> Path:
    """Refuse, before any work, an output directory that cannot be created or written; create nothing.

    Refused with :class:`ls_seq.errors.InputError` naming ``argument``: an empty path (which would write
    into the working directory), an existing file, a path below a file, and a directory (or, when it does
    not exist yet, its nearest existing parent) in which a file cannot be created: read-only, no
    permission. The check creates and removes one empty temporary file there, which also catches a
    read-only mount that ``os.access`` would call writable for root.

    Returns:
        ``Path(path)``.
    """
    if path is None or not os.fspath(path).strip():
        raise InputError(f"`{argument}` must be a non-empty path, got {path!r}")
    given = Path(path)
    existing = given
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == given else f"is below {str(existing)!r}, which is a file"
        raise InputError(f"`{argument}` must be a directory: {os.fspath(path)!r} {where}")
    if not existing.exists():  # a dangling symbolic link
        raise InputError(f"`{argument}`: {str(existing)!r} is a broken symbolic link")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ls_seq_write_check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(exc.errno, f"no space left on device in {str(existing)!r} (`{argument}`)") from exc
        raise InputError(
            f"`{argument}`={os.fspath(path)!r} cannot be written: creating a file in {str(existing)!r} failed ({exc.strerror})"
        ) from exc
    return given


# ------------------------------------------------------------------------------------------------------
# A full disk, told apart from other write errors


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# What libraries that write from C/Rust say instead of raising OSError(ENOSPC): safetensors
# ("IoError(Os { code: 28, kind: StorageFull, ...})") and torch.save ("PytorchStreamWriter failed writing
# file data/0: file write failed").
_DISK_FULL_TEXT = ("No space left on device", "StorageFull", "os error 28", "Disk quota exceeded")
_WRITE_FAILED_TEXT = ("file write failed", "PytorchStreamWriter failed", "unexpected pos")
# torch.save on a full disk can also fail with "unexpected pos 138240 vs 138128" (a short write): a failed write
# on a file system with less than this much space left is reported as a full disk.
_NEARLY_FULL = 1 << 20


def _free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent); None if unknown."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    return any(t in text for t in _DISK_FULL_TEXT)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def writing_to(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Inside, a failed write of ``path`` (ENOSPC, safetensors' ``StorageFull``, torch's ``file write failed``
    or ``unexpected pos``, or any ``OSError``/``RuntimeError`` while less than 1 MiB is free there) becomes
    :class:`DiskFullError` naming ``path``; other exceptions pass unchanged.

    For code that writes through libraries whose errors do not name the file (``Trainer.save_model``,
    ``torch.save``)::

        with writing_to(checkpoint_dir, "checkpoint"):
            trainer.train()
    """
    try:
        yield
    except LsSeqError:
        raise
    except Exception as exc:
        label = f"{what} {os.fspath(path)!r}" if what else repr(os.fspath(path))
        free = _free_bytes(path)
        if _is_disk_full(exc) or (free is not None and free < _NEARLY_FULL and isinstance(exc, (OSError, RuntimeError))):
            room = "" if free is None else f" ({free} bytes free)"
            raise DiskFullError(errno.ENOSPC, f"no space left on device writing {label}{room}: {_one_line(exc)}") from exc
        if any(t in str(exc) for t in _WRITE_FAILED_TEXT):
            raise DiskFullError(errno.EIO, f"could not write {label} (disk full?): {_one_line(exc)}") from exc
        raise

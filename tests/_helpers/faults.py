"""Fault injection for the tests: a full disk (a real small tmpfs, or writes that raise ENOSPC), a read-only
directory, and damaged files. Import the context managers in a test (``with tmpfs(tmp_path / "fs", "64k") as fs: ...``)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import struct
import subprocess
from pathlib import Path

import pytest


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, check=False)
    return proc.returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@contextlib.contextmanager
def tmpfs(target: Path, size: str):
    """A tmpfs of ``size`` (e.g. ``"64k"``) at ``target``; skips the test where mounting is not allowed."""
    if not _mount(target, f"size={size},mode=0777"):
        pytest.skip("mounting a tmpfs needs root (a full disk is also tested with writes that raise ENOSPC)")
    try:
        yield target
    finally:
        _umount(target)


def resize_tmpfs(target: Path, size: str) -> None:
    """Free space: grow the tmpfs at ``target`` to ``size``."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(target)], check=True, capture_output=True)


@contextlib.contextmanager
def read_only_directory(path: Path):
    """A directory in which nothing can be created: a read-only tmpfs as root (who may write anywhere else),
    mode 0o555 otherwise."""
    if os.geteuid() == 0:
        if not _mount(path, "ro,size=16k"):
            pytest.skip("as root a read-only directory needs a read-only mount, and mounting is not allowed here")
        try:
            yield path
        finally:
            _umount(path)
    else:
        path.mkdir(parents=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


class FailingWrites:
    """A full disk in this process: ``write`` on a file opened through ``os.fdopen`` by ``module`` (the
    atomic writers of ``ls_seq.io``) raises ENOSPC when the file's name contains one of ``needles``."""

    def __init__(self, monkeypatch, module, *needles: str):
        real_fdopen = os.fdopen
        self.failures = 0

        def fdopen(fd, *args, **kwargs):
            handle = real_fdopen(fd, *args, **kwargs)
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            if any(n in name for n in needles):

                def write(data):
                    self.failures += 1
                    raise OSError(errno.ENOSPC, "No space left on device")

                handle.write = write
            return handle

        monkeypatch.setattr(module.os, "fdopen", fdopen)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut ``path`` to ``keep`` of its size (a copy or a write that was interrupted)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def garble(path: Path, offset: int | None = None, n: int = 64) -> None:
    """Overwrite ``n`` bytes of ``path`` at ``offset`` (default: the middle) with 0xA5: bit rot, a bad copy."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    data[start : start + n] = b"\xa5" * min(n, len(data) - start)
    path.write_bytes(bytes(data))


def interruptible() -> None:
    """``preexec_fn`` of a child that a test interrupts: SIGINT and SIGTERM at their default disposition.

    A shell that starts a job in the background without job control (``cmd &`` in a script, as a CI runner
    may) starts it with SIGINT ignored, and Python then installs no KeyboardInterrupt handler in its
    children (standard semantics, as for ``nohup``). The tests stand for a user pressing Ctrl-C at a terminal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def zero_inside_the_weights(path, n=4096):
    """``n`` bytes of tensor data zeroed in the middle of the data area: header, size and finiteness unchanged."""
    data = bytearray(path.read_bytes())
    (header,) = struct.unpack("<Q", data[:8])
    start = 8 + header + (len(data) - 8 - header - n) // 2
    assert any(data[start : start + n]), "the zeroed bytes must have held something"
    data[start : start + n] = bytes(n)
    path.write_bytes(bytes(data))

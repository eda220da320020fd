"""The compiled CPU kernels of the calibration pass (``_native/exp_sums.c``): per row and temperature
``sum_j 2^x`` and ``sum_j 4^x`` for ``x = s_t (z_j - m)``, all temperatures in one read of the row
with a flag for rows holding an infinity or a NaN (:func:`exp_sums`), and the row's top k in one more read
(:func:`native_topk`).

On CPU the exponentials are the whole cost of :func:`ls_seq.functional.statistics.token_statistics`: ATen
takes one shift, one ``exp2`` and one reduction per temperature, each reading and writing the chunk, about 1.4
ns per logit and temperature here; the kernel keeps a row in cache for every temperature and measured about
0.45 ns. The top k (:func:`~ls_seq.functional._kernels.row_topk` on ATen, plus a row sum for the finiteness
check) measured 0.28 s on (4096, 32000) logits against 0.06 s compiled (``benchmarks/bench_calibration.py``). It is plain C99 without libtorch headers, built on first use
with the platform's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``; ``-O3 -march=native``, which
takes well under a second), cached under ``$LS_SEQ_CACHE`` (default ``~/.cache/ls_seq``) by a key of its
source, compiler, flags and CPU, and called through :mod:`ctypes`, which releases the GIL: a batch's rows are
split across ``torch.get_num_threads()`` threads.

A shared library runs with the rights of every process that loads it, so the cache is trusted only as ssh trusts
a key file (:func:`unsafe_path`): the cache directory and every directory above it belong to this user (or
root) and are not writable by group or others, and so is the library. A cache that fails (one another user
could write to) is never loaded from: the kernel is built for the process in a fresh private directory,
removed once loaded, with one warning naming the directory and the reason.

Where no compiler works (or ``LS_SEQ_NATIVE=0``), :func:`exp_sums_available` is False, one
:class:`~ls_seq.errors.LsSeqWarning` says why, and the calibration pass takes the ATen path: the same sums to
float32 rounding (both are tested against float64), about 2-3x slower on CPU. GPUs always take the ATen path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ls_seq.errors import LsSeqWarning

__all__ = ["exp_sums", "exp_sums_available", "native_topk", "unsafe_path"]

_SOURCE = Path(__file__).with_name("_native") / "exp_sums.c"
_FLAG_SETS = (["-O3", "-march=native", "-fno-math-errno"], ["-O3", "-fno-math-errno"])
_ENV_SWITCH = "LS_SEQ_NATIVE"
# Below this many logit-temperature terms a call is not split across threads (dispatch costs ~20 us).
_SPLIT_MIN_TERMS = 1 << 20

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool there (a call would hang otherwise)."""
    global _lock, _pool
    _lock, _pool = threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _cache_dir() -> Path:
    root = os.environ.get("LS_SEQ_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "ls_seq")
    return Path(root).expanduser() / "native"


def unsafe_path(path: str | os.PathLike, *, own_leaf: bool = True) -> str | None:
    """Why another user could replace what ``path`` holds, or None when only this user (and root) can.

    The rule of ssh's ``StrictModes`` for keys, applied to the resolved path and every directory above it:
    each is owned by this user or root and writable by neither group nor others; a directory writable by others
    is accepted only with the sticky bit and a root owner (``/tmp``: nobody else can rename or delete what is
    in it). With ``own_leaf`` the last component must belong to this user (not only root).
    """
    uid = os.geteuid()
    resolved = Path(path).resolve()
    for item in (resolved, *resolved.parents):
        try:
            st = item.stat()
        except OSError as err:
            return f"{str(item)!r} cannot be checked ({err.strerror})"
        if st.st_uid not in (uid, 0) or (own_leaf and item == resolved and st.st_uid != uid):
            return f"{str(item)!r} belongs to uid {st.st_uid}, not to this user (uid {uid})"
        sticky_root = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0 and item != resolved
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_root:
            who = (
                "group and others"
                if st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IWOTH
                else ("its group" if st.st_mode & stat.S_IWGRP else "others")
            )
            return f"{str(item)!r} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _private_cache_dir() -> tuple[Path, str | None]:
    """``(directory, None)``: the cache, created private (``0o700``) when absent and checked by :func:`unsafe_path`;
    or ``(fresh private temporary directory, why the cache was refused)``."""
    cache = _cache_dir()
    try:
        for parent in reversed([cache, *cache.parents][:2]):  # ls_seq/ and native/ are ours to create private
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        why: str | None = f"it cannot be created ({err.strerror})"
    else:
        why = unsafe_path(cache)
    if why is None:
        return cache, None
    return Path(tempfile.mkdtemp(prefix="ls_seq_native.")), f"the cache {str(cache)!r} is refused: {why}"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's flags (Linux) or its name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _library_name(compiler: str, flags: list[str]) -> str:
    """The cache's name for the library built by ``compiler`` with ``flags``: a key of the source, the
    compiler and its version, the flags and the CPU."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(b"\0".join(x.encode() for x in [compiler, version, *flags, _cpu_key()]) + _SOURCE.read_bytes())
    return f"exp_sums-{key.hexdigest()[:16]}.so"


def _build(compiler: str, directory: Path) -> Path:
    """The shared library in ``directory`` (private: :func:`_private_cache_dir`), compiled first if absent
    (atomically: a rename of a finished file). A cached file is used only when it passes :func:`unsafe_path`."""
    errors = []
    for flags in _FLAG_SETS:
        target = directory / _library_name(compiler, flags)
        if target.is_file():
            why = unsafe_path(target)
            if why is None:
                return target
            os.unlink(target)  # ours (the directory is private) but writable by others: never load it, rebuild
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        cmd = [compiler, *flags, "-shared", "-fPIC", "-o", tmp, str(_SOURCE)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            os.chmod(tmp, 0o700)  # the compiler's output follows the umask (0o775 under umask 002)
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(f"`{' '.join(flags)}` exited with {done.returncode}: {done.stderr.strip()[-300:] or 'no output'}")
    raise RuntimeError(f"{compiler} failed on {_SOURCE.name}: " + "; ".join(errors))


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The loaded kernels' library, or None (with one warning saying why)."""
    if os.environ.get(_ENV_SWITCH, "1") == "0":
        return None
    compiler = _compiler()
    fresh = None
    try:
        if compiler is None:
            raise RuntimeError("no C compiler found ($CC, cc, gcc, clang)")
        directory, refused = _private_cache_dir()
        if refused is not None:
            fresh = directory
            warnings.warn(
                f"ls-seq's compiled calibration kernel is not loaded from a place another user can write: {refused}; "
                f"it is built for this process in a fresh private directory instead (make the cache private, e.g. "
                f"chmod go-w on it, or set LS_SEQ_CACHE to a private directory)",
                LsSeqWarning,
            )
        lib = ctypes.CDLL(str(_build(compiler, directory)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(
            f"ls-seq's compiled calibration kernel is unavailable ({err}); the calibration pass uses ATen, "
            f"about 2-3x slower on CPU. Set {_ENV_SWITCH}=0 to silence this.",
            LsSeqWarning,
        )
        return None
    finally:
        if fresh is not None:  # the loaded library stays mapped; nothing is left behind for anyone to replace
            shutil.rmtree(fresh, ignore_errors=True)
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.ls_seq_exp_sums.argtypes = [p, i, i, i, p, p, i, p, p, i, p]
    lib.ls_seq_row_topk.argtypes = [p, i, i, i, i, p, p]
    lib.ls_seq_exp_sums.restype = lib.ls_seq_row_topk.restype = None
    return lib


def exp_sums_available() -> bool:
    """Whether :func:`exp_sums` can run (a compiled kernel is loaded and ``LS_SEQ_NATIVE`` is not ``0``)."""
    return _library() is not None


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ls_seq_exp_sums")
        return _pool


def _split(rows: int, terms: int, call: Callable[[int, int], object]) -> None:
    """``call(r0, r1)`` over the rows, split across ``torch.get_num_threads()`` threads when worth it."""
    workers = min(torch.get_num_threads(), rows)
    if workers <= 1 or terms < _SPLIT_MIN_TERMS:
        call(0, rows)
        return
    bounds = [rows * i // workers for i in range(workers + 1)]
    list(_executor(workers).map(call, bounds[:-1], bounds[1:]))


def exp_sums(
    z: torch.Tensor,
    m: torch.Tensor,
    scales: torch.Tensor,
    out_sum: torch.Tensor,
    out_sq: torch.Tensor | None,
    out_finite: torch.Tensor,
) -> None:
    """``out_sum[t, r] = sum_j 2^(scales[t] (z[r, j] - m[r]))``, ``out_sq[t, r]`` the same sum of squares, and
    ``out_finite[r]``: whether row ``r`` holds no infinity and no NaN (then its sums are meaningless).

    Trusts its inputs (private to the calibration pass): ``z`` ``(c, V)`` float32 CPU with unit stride along
    ``V``; ``m`` ``(c,)`` contiguous float32, each row's maximum (so every ``x <= 0``); ``scales`` ``(T,)``
    contiguous float64, ``log2(e) / T``; ``out_sum`` and ``out_sq`` ``(T, c)`` float32 with unit stride along
    ``c`` and the same stride along ``T`` (columns of larger ``(T, n)`` buffers are fine); ``out_finite``
    ``(c,)`` contiguous bool. Requires :func:`exp_sums_available`.
    """
    lib = _library()
    assert lib is not None, "exp_sums needs exp_sums_available()"
    fn = lib.ls_seq_exp_sums
    rows, vocab = z.shape
    n_t = scales.numel()
    sq_ptr = 0 if out_sq is None else out_sq.data_ptr()

    def call(r0: int, r1: int) -> None:
        fn(
            z.data_ptr() + r0 * z.stride(0) * 4,
            r1 - r0,
            vocab,
            z.stride(0),
            m.data_ptr() + r0 * 4,
            scales.data_ptr(),
            n_t,
            out_sum.data_ptr() + r0 * 4,
            sq_ptr and sq_ptr + r0 * 4,
            out_sum.stride(0),
            out_finite.data_ptr() + r0,  # bool: one byte each, written 0 or 1
        )

    _split(rows, rows * vocab * n_t, call)


def native_topk(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest logits of each row, largest first, and their indices, in one read of the row.

    What :func:`~ls_seq.functional._kernels.row_topk` returns: the first index is the row's first maximum, as
    ``torch.max`` gives it. Trusts its inputs: ``z`` ``(c, V)`` float32 CPU with unit stride along ``V``,
    ``1 <= k <= V``; a row holding a NaN has unspecified values (:func:`exp_sums` flags it). Requires
    :func:`exp_sums_available`.

    Returns:
        ``values (c, k)`` float32 and ``indices (c, k)`` int64.
    """
    lib = _library()
    assert lib is not None, "native_topk needs exp_sums_available()"
    fn = lib.ls_seq_row_topk
    rows, vocab = z.shape
    values = torch.empty(rows, k, dtype=torch.float32)
    indices = torch.empty(rows, k, dtype=torch.int64)

    def call(r0: int, r1: int) -> None:
        fn(
            z.data_ptr() + r0 * z.stride(0) * 4,
            r1 - r0,
            vocab,
            z.stride(0),
            k,
            values.data_ptr() + r0 * k * 4,
            indices.data_ptr() + r0 * k * 8,
        )

    _split(rows, rows * vocab, call)
    return values, indices

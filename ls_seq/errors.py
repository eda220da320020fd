"""Expected faults, and the one handler that turns them into one line on stderr and an exit code.

Every entry point (the recipes, ``ls-seq``) runs its ``main`` through :func:`run_main`::

    if __name__ == "__main__":
        sys.exit(run_main(main))

An *expected* fault is one a user can act on: bad input (a wrong argument, an unreadable corpus, a run
directory that holds another configuration) or the environment (a full disk, a run directory locked by
another process, a damaged checkpoint, training that diverged). :func:`run_main` prints it as one line,
``<prog>: error: <what>: <cause>``, naming the file or the argument, and exits with

* ``2`` (:data:`EXIT_BAD_INPUT`) for bad input: change the command or the input and run again;
* ``1`` (:data:`EXIT_FAULT`) for a fault of the environment or of the run: free space, wait for the
  other run, look at the named file;
* ``130`` / ``143`` for SIGINT / SIGTERM (128 + the signal number, as a shell reports it).

The traceback is printed only with ``--debug`` on the command line or ``LS_SEQ_DEBUG=1`` in the
environment. Anything else (an ``AssertionError``, a ``KeyError`` from a bug) keeps its traceback: a bug
should not look like bad input.

Raise the classes below where the fault is detected, with a message that names the file or argument;
a ``ValueError``/``TypeError`` (the project's argument checks) counts as bad input, an ``OSError``
is reported with its file name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAULT",
    "CheckpointError",
    "ConfigMismatchError",
    "DiskFullError",
    "InputError",
    "LsSeqError",
    "LsSeqWarning",
    "NonFiniteLossError",
    "NonFiniteTrainingError",
    "NonFiniteWeightsError",
    "RunLockedError",
    "describe_fault",
    "run_main",
    "writing_to",
]

EXIT_FAULT = 1
EXIT_BAD_INPUT = 2


class LsSeqError(Exception):
    """An expected fault; ``exit_code`` is what :func:`run_main` exits with."""

    exit_code = EXIT_FAULT


class LsSeqWarning(UserWarning):
    """A fault that was handled (a stale lock taken over, a damaged checkpoint set aside); :func:`run_main`
    prints each as one line, ``<prog>: warning: <message>``."""


class InputError(LsSeqError, ValueError):
    """Bad input (exit 2): an argument, a data file or a run directory the command cannot use.

    A ``ValueError``, so code that catches the project's argument errors catches these too.
    """

    exit_code = EXIT_BAD_INPUT


class ConfigMismatchError(InputError):
    """``--resume`` with a configuration other than the one the run directory holds (the differences listed)."""


class RunLockedError(LsSeqError):
    """Another live process holds the run directory's lock (exit 1: wait for it, or use another directory)."""


class CheckpointError(LsSeqError):
    """A checkpoint or saved model is damaged and no usable one is left (exit 1; the file is named)."""


class DiskFullError(LsSeqError, OSError):
    """Writing a result failed for lack of space (ENOSPC/EDQUOT); the previous complete files are kept.

    Built as ``DiskFullError(errno.ENOSPC, message)``; ``str()`` is the message alone.
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class NonFiniteTrainingError(LsSeqError, FloatingPointError):
    """Training produced a non-finite loss or weights; ``step`` is the optimizer step where it was seen.

    Nothing from that step on is saved: the last checkpoint before it is the one a resume starts from.
    """

    def __init__(self, message: str, *, step: int | None = None):
        super().__init__(message)
        self.step = step


class NonFiniteLossError(NonFiniteTrainingError):
    """The training loss is NaN or infinite (raised by the trainers and the guards)."""


class NonFiniteWeightsError(NonFiniteTrainingError):
    """A weight is NaN or infinite after an optimizer step, or in a checkpoint about to be used or saved."""


# ------------------------------------------------------------------------------------------------------
# Classification


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_fault(exc: BaseException) -> tuple[int, str] | None:
    """``(exit code, one-line message)`` for an expected fault, None for anything else (a bug).

    The message is what :func:`run_main` prints after ``<prog>: error: ``.
    """
    if isinstance(exc, LsSeqError):
        return exc.exit_code, _one_line(exc)
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT, "interrupted (SIGINT); finished work is kept, continue with --resume"
    if _is_disk_full(exc):
        where = getattr(exc, "filename", None)
        return EXIT_FAULT, _one_line(f"no space left on device{f' writing {where!r}' if where else ''}: {exc}")
    if isinstance(exc, OSError):
        parts = [p for p in (exc.filename, exc.filename2) if p]
        cause = exc.strerror or str(exc)
        if parts:
            return EXIT_FAULT, _one_line(f"{' -> '.join(repr(os.fspath(p)) for p in parts)}: {cause}")
        return EXIT_FAULT, _one_line(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (ValueError, TypeError)):
        return EXIT_BAD_INPUT, _one_line(exc)
    return None


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


# ------------------------------------------------------------------------------------------------------
# The entry-point handler


def _debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("LS_SEQ_DEBUG", "").strip() not in ("", "0")


class _Terminated(BaseException):
    """SIGTERM turned into an exception, so ``finally`` blocks (temporary files, the run lock) run."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def _close_progress_bars() -> None:
    """Close the tqdm bars a fault left open, so the message starts a line of its own (a bar ends in ``\r``)."""
    tqdm_std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def _report(prog: str, message: str) -> None:
    _close_progress_bars()
    sys.stderr.flush()
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def run_main(
    main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *, prog: str | None = None
) -> int:
    """Call ``main(argv)`` and return the process exit code (0 when it returns).

    ``--debug`` is removed from ``argv`` before ``main`` sees it. Expected faults (:func:`describe_fault`)
    print ``<prog>: error: <message>`` on one line and return its code; with ``--debug`` or
    ``LS_SEQ_DEBUG=1`` the traceback comes first. SIGTERM is handled like SIGINT (the process unwinds,
    so temporary files are removed, and exits with 143). ``SystemExit`` (argparse's ``--help`` and usage
    errors) passes through. Any other exception is a bug and is re-raised with its traceback.
    :class:`LsSeqWarning` warnings are printed as one line, ``<prog>: warning: <message>``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    prog = prog or Path(sys.argv[0]).name or "ls-seq"
    show_warning = warnings.showwarning

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LsSeqWarning):
            print(f"{prog}: warning: {_one_line(message)}", file=sys.stderr if file is None else file)
        else:
            show_warning(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line_warning
    previous = None
    with contextlib.suppress(ValueError):  # signal handlers can only be set from the main thread
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(argv)
        return 0
    except _Terminated:
        if debug:
            traceback.print_exc()
        _report(prog, "terminated (SIGTERM); finished work is kept, continue with --resume")
        return 128 + signal.SIGTERM
    except Exception as exc:
        fault = describe_fault(exc)
        if fault is None:
            raise
        if debug:
            traceback.print_exc()
        code, message = fault
        hint = "" if debug else " (--debug or LS_SEQ_DEBUG=1 for the traceback)"
        _report(prog, f"{message}{hint}")
        return code
    except KeyboardInterrupt as exc:
        if debug:
            traceback.print_exc()
        _report(prog, describe_fault(exc)[1])
        return 128 + signal.SIGINT
    finally:
        warnings.showwarning = show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

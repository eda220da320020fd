"""The one handler every entry point runs its ``main`` through: an expected fault becomes one line on stderr and
an exit code.

    if __name__ == "__main__":
        sys.exit(run_main(main))

:func:`run_main` prints an expected fault (:mod:`ls_seq.errors`, a ``ValueError``/``TypeError``, an ``OSError``)
as one line, ``<prog>: error: <what>: <cause>``, naming the file or the argument, and exits with

* ``2`` (:data:`ls_seq.errors.EXIT_BAD_INPUT`) for bad input: change the command or the input and run again;
* ``1`` (:data:`ls_seq.errors.EXIT_FAULT`) for a fault of the environment or of the run: free space, wait for
  the other run, look at the named file;
* ``130`` / ``143`` for SIGINT / SIGTERM (128 + the signal number, as a shell reports it).

The traceback is printed only with ``--debug`` on the command line or ``LS_SEQ_DEBUG=1`` in the
environment. Anything else (an ``AssertionError``, a ``KeyError`` from a bug) keeps its traceback: a bug
should not look like bad input.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ls_seq.errors import EXIT_BAD_INPUT, EXIT_FAULT, LsSeqError, LsSeqWarning
from ls_seq.io import _is_disk_full, _one_line

__all__ = ["describe_fault", "run_main"]


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


def run_main(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
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
        fault = describe_fault(exc)
        assert fault is not None  # describe_fault describes every KeyboardInterrupt
        _report(prog, fault[1])
        return 128 + signal.SIGINT
    finally:
        warnings.showwarning = show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

"""The faults ls-seq expects, as exception classes: each names the file or the argument it is about.

An *expected* fault is one a user can act on: bad input (a wrong argument, an unreadable corpus, a run
directory that holds another configuration) or the environment (a full disk, a run directory locked by
another process, a damaged checkpoint, training that diverged, a library of an ls-seq extra that is not
installed). Raise the class below where the fault is detected, with a message that names the file or argument;
a ``ValueError``/``TypeError`` (the project's argument checks, :mod:`ls_seq.checks`) counts as bad input, an
``OSError`` is reported with its file name.

Each class carries its exit code: ``2`` (:data:`EXIT_BAD_INPUT`) for bad input, ``1`` (:data:`EXIT_FAULT`) for a
fault of the environment or of the run. The command-line runner (:func:`ls_seq.cli.runner.run_main`) turns
them into one line on stderr and that exit code.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAULT",
    "CheckpointError",
    "ConfigMismatchError",
    "DiskFullError",
    "InputError",
    "LsSeqError",
    "LsSeqWarning",
    "MissingExtraError",
    "NonFiniteLossError",
    "NonFiniteTrainingError",
    "NonFiniteWeightsError",
    "RunLockedError",
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


class MissingExtraError(LsSeqError, ImportError):
    """A feature needs a library of an ls-seq extra that is not installed (exit 1); the message names the extra:
    ``the reliability diagram needs matplotlib, which is not installed: pip install 'ls-seq[plots]'``.

    An ``ImportError``, so code that tries an optional import and falls back catches it too. Raised by
    :func:`ls_seq._extras.require` and :func:`ls_seq._extras.require_extra`.
    """


class NonFiniteTrainingError(LsSeqError, FloatingPointError):
    """Training produced a non-finite loss or weights; ``step`` is the optimizer step where it was seen.

    Nothing from that step on is saved: the last checkpoint before it is the one a resume starts from.
    """

    def __init__(self, message: str, *, step: int | None = None):
        super().__init__(message)
        self.step = step


class NonFiniteLossError(NonFiniteTrainingError):
    """The training loss is NaN or infinite (raised by the trainers and the guards).

    Args:
        message: what was seen and what to do (the trainers name the step, the loss and the epoch).
        step: the optimizer step whose loss was not finite (kept as ``error.step``), or None when unknown.
    """


class NonFiniteWeightsError(NonFiniteTrainingError):
    """A weight is NaN or infinite after an optimizer step, or in a checkpoint about to be used or saved."""


# Moved in 0.2 (deprecated aliases, removed in 0.3): the command-line runner to ls_seq.cli.runner, the
# disk-full guard to ls_seq.io.
from ls_seq._deprecation import moved_attributes  # noqa: E402

__getattr__ = moved_attributes(
    __name__, {"describe_fault": "ls_seq.cli.runner", "run_main": "ls_seq.cli.runner", "writing_to": "ls_seq.io"}
)

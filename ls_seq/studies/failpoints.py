"""Named points between a study's stages, where the fault tests kill the process to check resume.

A study calls :func:`stage_boundary` with a name such as ``"alpha_0.1/checkpoint-10"`` or
``"alpha_0.0/evaluation:teacher_forced"`` between units of work that are saved separately. Nothing
happens unless the environment variable ``LS_SEQ_KILL_AT`` holds that name: then the process sends
itself SIGKILL, as a crash, the OOM killer or a scheduler's preemption would, with no clean-up. The
tests (``tests/studies/en_de/test_faults.py``) resume from each such point and compare the whole
``results.json`` with an uninterrupted run's. With ``LS_SEQ_TRACE_BOUNDARIES=<file>`` each name reached
is appended to the file, which is how the tests list the points.
"""

from __future__ import annotations

import os
import signal

__all__ = ["stage_boundary"]


def stage_boundary(name: str) -> None:
    """Mark that the work before this point is saved; SIGKILL this process if ``LS_SEQ_KILL_AT == name``
    (another signal if ``LS_SEQ_KILL_SIGNAL`` names one: ``TERM``, ``INT``)."""
    trace = os.environ.get("LS_SEQ_TRACE_BOUNDARIES")
    if trace:
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(name + "\n")
    if os.environ.get("LS_SEQ_KILL_AT") == name:
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("LS_SEQ_KILL_SIGNAL", "KILL")))

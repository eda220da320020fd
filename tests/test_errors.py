"""The entry-point fault handler: one line on stderr, the right exit code, a traceback only on request."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from _helpers.faults import interruptible

from ls_seq.cli.runner import describe_fault, run_main
from ls_seq.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAULT,
    CheckpointError,
    ConfigMismatchError,
    DiskFullError,
    InputError,
    NonFiniteLossError,
    RunLockedError,
)
from ls_seq.io import writing_to


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (InputError("'data/train.en' line 3 is not valid UTF-8"), EXIT_BAD_INPUT, "'data/train.en' line 3"),
        (ConfigMismatchError("resume with another configuration: seed 42 -> 43"), EXIT_BAD_INPUT, "seed 42 -> 43"),
        (ValueError("`alphas[0]` must be in [0, 1), got 1.5"), EXIT_BAD_INPUT, "`alphas[0]`"),
        (TypeError("`alpha` must be a real number, got str"), EXIT_BAD_INPUT, "`alpha`"),
        (RunLockedError("'out' is locked by pid 7 on host h"), EXIT_FAULT, "pid 7"),
        (CheckpointError("'ckpt/model.safetensors': truncated"), EXIT_FAULT, "truncated"),
        (NonFiniteLossError("non-finite loss nan at step 3", step=3), EXIT_FAULT, "step 3"),
        (DiskFullError(errno.ENOSPC, "no space left on device writing 'out/results.json'"), EXIT_FAULT, "out/results.json"),
        (OSError(errno.ENOSPC, "No space left on device", "out/x.png"), EXIT_FAULT, "writing 'out/x.png'"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/out"), EXIT_FAULT, "'/ro/out': Permission denied"),
        # safetensors reports a full disk from Rust, without an errno
        (
            RuntimeError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
            ),
            EXIT_FAULT,
            "no space left on device",
        ),
    ],
)
def test_expected_faults_are_one_line_with_their_exit_code(exc, code, text):
    got_code, message = describe_fault(exc)
    assert got_code == code and text in message and "\n" not in message


def test_bugs_are_not_expected_faults():
    for exc in (KeyError(1.2), AssertionError("x"), IndexError(0), ZeroDivisionError()):
        assert describe_fault(exc) is None


def test_writing_to_names_the_path_of_a_failed_write():
    with (
        pytest.raises(DiskFullError, match=r"write checkpoint 'out/checkpoint-10'") as info,
        writing_to("out/checkpoint-10", "checkpoint"),
    ):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write failed"
        )
    assert describe_fault(info.value)[0] == EXIT_FAULT
    with pytest.raises(KeyError), writing_to("out"):  # anything else passes unchanged
        raise KeyError("x")


def test_run_main_prints_one_line_and_returns_the_code(capsys, monkeypatch):
    monkeypatch.delenv("LS_SEQ_DEBUG", raising=False)

    def main(argv):
        raise InputError(f"`output_dir` {argv[0]!r} is a file")

    assert run_main(main, ["x.txt"], prog="recipe") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("recipe: error: `output_dir` 'x.txt' is a file") and err.count("\n") == 1
    assert "Traceback" not in err


def test_debug_flag_and_environment_show_the_traceback_and_are_not_passed_on(capsys, monkeypatch):
    seen = []

    def main(argv):
        seen.append(argv)
        raise InputError("bad")

    assert run_main(main, ["--a", "--debug"], prog="p") == EXIT_BAD_INPUT
    assert seen == [["--a"]] and "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("LS_SEQ_DEBUG", "1")
    assert run_main(main, [], prog="p") == EXIT_BAD_INPUT
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback():
    def main(argv):
        raise KeyError(1.2)

    with pytest.raises(KeyError):
        run_main(main, [], prog="p")


def test_success_returns_zero_and_system_exit_passes_through():
    assert run_main(lambda argv: {"done": True}, []) == 0

    def usage(argv):
        raise SystemExit(2)

    with pytest.raises(SystemExit):
        run_main(usage, [])


@pytest.mark.parametrize(("signame", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_unwinds_runs_finally_blocks_and_says_so_in_one_line(tmp_path, signame, code):
    """The process exits 128 + signal with one line, after ``finally`` (here: removing a marker) ran."""
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from ls_seq.cli.runner import run_main
        def main(argv):
            open({str(marker)!r}, "w").close()
            try:
                open({str(ready)!r}, "w").close()
                time.sleep(60)
            finally:
                os.unlink({str(marker)!r})
        sys.exit(run_main(main, [], prog="job"))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LS_SEQ_DEBUG": "0"},
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 300  # importing torch on a loaded machine can take a while
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the child never got ready"
        time.sleep(0.05)
    proc.send_signal(getattr(__import__("signal"), signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.startswith("job: error: ") and signame in err and err.count("\n") == 1, err
    assert not marker.exists()


def test_messages_are_json_safe_single_lines():
    _, message = describe_fault(ValueError("first line\nsecond   line"))
    assert message == "first line second line" and json.loads(json.dumps(message)) == message


def test_handled_faults_are_warned_in_one_line(capsys):
    import warnings

    from ls_seq.errors import LsSeqWarning

    def main(argv):
        warnings.warn("took over the stale lock of pid 7", LsSeqWarning, stacklevel=1)

    assert run_main(main, [], prog="p") == 0
    assert capsys.readouterr().err == "p: warning: took over the stale lock of pid 7\n"


def test_an_open_progress_bar_is_closed_so_the_message_starts_its_own_line(capsys):
    import sys

    from tqdm import tqdm

    def main(argv):
        bar = tqdm(total=10, file=sys.stderr)
        bar.update(3)  # a fault in the middle of a loop leaves the bar open, its line ended by "\r" only
        raise InputError("bad")

    assert run_main(main, [], prog="p") == EXIT_BAD_INPUT
    assert capsys.readouterr().err.split("\n")[-2].startswith("p: error: bad")

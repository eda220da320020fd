"""The run directory: configuration saved and compared on resume, extendable lists, the lock, overwrite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from ls_seq.errors import ConfigMismatchError, InputError, LsSeqWarning, RunLockedError
from ls_seq.io import read_json
from ls_seq.studies.run_dir import (
    LOCK_NAME,
    RUN_CONFIG_NAME,
    RunDirectory,
    config_differences,
    extend_config,
)

CONFIG = {"alphas": [0.0, 0.1], "seed": 42, "preset": {"d_model": 32, "temperatures": [0.8, 1.0, 1.5]}}
EXTENDABLE = {"alphas": "append", "preset.temperatures": "sort"}


def _open(path, config=CONFIG, **kwargs):
    run = RunDirectory(path, "en_de")
    return run, run.open(config, command=kwargs.pop("command", "cmd"), extendable=EXTENDABLE, **kwargs)


def test_a_new_directory_saves_the_configuration_and_the_command(tmp_path):
    run, merged = _open(tmp_path / "run", command="first")
    run.close()
    assert merged == CONFIG
    assert read_json(tmp_path / "run" / RUN_CONFIG_NAME) == {"study": "en_de", "config": CONFIG, "commands": ["first"]}


def test_resume_with_the_same_configuration_continues_and_records_the_command(tmp_path):
    _open(tmp_path, command="first")[0].close()
    run, merged = _open(tmp_path, resume=True, command="again")
    run.close()
    assert merged == CONFIG and read_json(tmp_path / RUN_CONFIG_NAME)["commands"] == ["first", "again"]


def test_resume_with_another_configuration_is_refused_listing_every_difference(tmp_path):
    _open(tmp_path)[0].close()
    changed = {**CONFIG, "seed": 43, "preset": {**CONFIG["preset"], "d_model": 48}}
    with pytest.raises(ConfigMismatchError) as info:
        _open(tmp_path, changed, resume=True)
    message = str(info.value)
    assert "preset.d_model: 32 -> 48" in message and "seed: 42 -> 43" in message and "\n" not in message
    assert read_json(tmp_path / RUN_CONFIG_NAME)["config"] == CONFIG  # unchanged
    _open(tmp_path, resume=True)[0].close()  # the refusal released the lock


def test_extendable_lists_gain_values_and_never_lose_any(tmp_path):
    _open(tmp_path)[0].close()
    more = {**CONFIG, "alphas": [0.2], "preset": {**CONFIG["preset"], "temperatures": [1.2, 1.0]}}
    run, merged = _open(tmp_path, more, resume=True)
    run.close()
    assert merged["alphas"] == [0.0, 0.1, 0.2]  # alpha 0 kept although the command left it out
    assert merged["preset"]["temperatures"] == [0.8, 1.0, 1.2, 1.5]
    assert read_json(tmp_path / RUN_CONFIG_NAME)["config"] == merged
    assert config_differences(CONFIG, more, EXTENDABLE) == []
    assert config_differences(CONFIG, more) == [
        "alphas: [0.0, 0.1] -> [0.2]",
        "preset.temperatures: [0.8, 1.0, 1.5] -> [1.2, 1.0]",
    ]
    assert extend_config({"a": [2, 1]}, {"a": [3, 1]}, {"a": "append"}) == {"a": [2, 1, 3]}


def test_a_directory_that_holds_a_run_needs_resume_or_overwrite(tmp_path):
    _open(tmp_path, command="first")[0].close()
    with pytest.raises(InputError, match=r"already holds a run \(started with `first`\); pass --resume"):
        _open(tmp_path)
    with pytest.raises(InputError, match="exclude each other"):
        _open(tmp_path, resume=True, overwrite=True)
    (tmp_path / "results.json").write_text("{}")
    run, merged = _open(tmp_path, {**CONFIG, "seed": 7}, overwrite=True)
    run.close()
    assert merged["seed"] == 7 and sorted(os.listdir(tmp_path)) == [LOCK_NAME, RUN_CONFIG_NAME]


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    for kwargs in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(InputError, match=r"is not empty and holds no ls-seq run .*thesis\.tex"):
            _open(tmp_path, **kwargs)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_another_studys_run_is_refused(tmp_path):
    run = RunDirectory(tmp_path, "vision")
    run.open({"x": 1}, command="v")
    run.close()
    with pytest.raises(InputError, match="holds a 'vision' run, not a 'en_de' one"):
        _open(tmp_path, resume=True)
    (tmp_path / RUN_CONFIG_NAME).write_text('{"study": "en_de", "conf')
    with pytest.raises(InputError, match=r"run_config\.json' is not valid JSON"):
        _open(tmp_path, resume=True)


_HOLDER = textwrap.dedent("""
    import sys, time
    from ls_seq.studies.run_dir import RunLock
    lock = RunLock(sys.argv[1])
    lock.acquire("holder command")
    print("locked", flush=True)
    time.sleep(120)
""")


def _hold_lock(path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_and_its_overwrite_are_refused_while_the_first_lives(tmp_path):
    _open(tmp_path)[0].close()
    (tmp_path / "results.json").write_text('{"seed": 42}')
    holder = _hold_lock(tmp_path)
    try:
        for kwargs in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} on host .*holder command"):
                _open(tmp_path, {**CONFIG, "seed": 43}, **kwargs)
        assert (tmp_path / "results.json").read_text() == '{"seed": 42}'  # nothing deleted or rewritten
        assert read_json(tmp_path / RUN_CONFIG_NAME)["config"]["seed"] == 42
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL left the owner in the file; the flock died with the process: a stale lock, taken over
    with pytest.warns(LsSeqWarning, match=rf"took over the lock .* left by pid {holder.pid} .*no longer running"):
        run, _ = _open(tmp_path, resume=True)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    run.close()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # a clean end leaves a free lock: no warning next time
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _open(tmp_path, resume=True)[0].close()


def test_a_lock_left_on_another_host_is_refused_with_the_file_to_delete(tmp_path):
    _open(tmp_path)[0].close()
    owner = {"pid": 1, "host": socket.gethostname() + "-elsewhere", "started": time.time(), "command": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(owner))
    with pytest.raises(RunLockedError, match=rf"cannot be checked from .*delete '.*{LOCK_NAME}'"):
        _open(tmp_path, resume=True)

"""A run directory that knows what it holds: its configuration, its owner, and whether a command may continue it.

A study opens its output directory with :meth:`RunDirectory.open` before any training:

* the directory is checked writable (:func:`ls_seq.io.check_output_dir`) and created;
* a lock (``.ls_seq.lock``: an ``flock`` held for the life of the run, with the owner's pid, host,
  start time and command inside) keeps a second run, and ``--overwrite_output_dir`` of a second run, out
  of a directory in use. A lock left by a process that died on this host is taken over with a warning;
  one left on another host cannot be checked from here and is refused with the file to delete;
* the resolved configuration is saved as ``run_config.json`` (atomically) on the first run. On
  ``resume`` it is compared with the saved one: the same configuration continues; list entries named in
  ``extendable`` (a study's alphas, its temperature grid) may gain values, which are added (never
  dropped: the run directory keeps every model it holds); anything else is refused with
  :class:`ls_seq.errors.ConfigMismatchError` listing every difference;
* ``overwrite`` empties a directory that holds a run (never one that does not look like a run: a
  mistyped ``--output_dir ~`` must not delete a home directory).

The directory stays locked until :meth:`RunDirectory.close`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ls_seq.errors import ConfigMismatchError, InputError, LsSeqWarning, RunLockedError
from ls_seq.io import atomic_write_json, check_output_dir, read_json

try:
    import fcntl
except ImportError:  # Windows: the pid in the lock file is all there is
    fcntl = None  # type: ignore[assignment]  # checked before each use

__all__ = ["LOCK_NAME", "RUN_CONFIG_NAME", "RunDirectory", "RunLock", "config_differences", "extend_config"]

RUN_CONFIG_NAME = "run_config.json"
LOCK_NAME = ".ls_seq.lock"
# Files by which an older ls-seq's run directory (before run_config.json) is recognised.
_OLDER_RUN_FILES = ("results.json", "timings.json")


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as JSON gives it back (tuples become lists), so a saved and a new configuration compare equal."""
    return json.loads(json.dumps(config))


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any], extendable: Mapping[str, str] = {}) -> list[str]:
    """``"key: saved -> now"`` for every entry that differs, nested keys dotted; entries in ``extendable`` are
    compared by :func:`extend_config`'s rule (they may only gain values), so they never differ."""
    old, new = _flatten(_plain(saved)), _flatten(_plain(now))
    return [
        f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
        for key in sorted(set(old) | set(new))
        if key not in extendable and old.get(key, "(absent)") != new.get(key, "(absent)")
    ]


def extend_config(saved: Mapping[str, Any], now: Mapping[str, Any], extendable: Mapping[str, str]) -> dict[str, Any]:
    """``now`` with each ``extendable`` list (a dotted key) replaced by the saved values plus the new ones.

    ``extendable[key]`` is ``"append"`` (saved order, then the new values in the order given) or
    ``"sort"`` (the union, sorted).
    """
    merged = _plain(now)
    saved = _plain(saved)
    for key, rule in extendable.items():
        if rule not in ("append", "sort"):
            raise ValueError(f"`extendable[{key!r}]` must be 'append' or 'sort', got {rule!r}")
        *parents, leaf = key.split(".")
        old, new = saved, merged
        for part in parents:
            old, new = old.get(part, {}), new.setdefault(part, {})
        union = list(dict.fromkeys([*old.get(leaf, []), *new.get(leaf, [])]))
        new[leaf] = sorted(union) if rule == "sort" else union
    return merged


class RunLock:
    """An exclusive lock on a run directory: an ``flock`` on ``.ls_seq.lock`` plus its owner written inside.

    The kernel releases an ``flock`` when its process dies, so a lock whose file still names an owner but
    whose ``flock`` is free was left by a killed run (stale) and is taken over with a warning. Where
    ``flock`` is not available, a lock whose owner is a live pid on this host is respected.
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _owner(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {"unreadable": True}

    @staticmethod
    def _describe(owner: Mapping[str, Any]) -> str:
        started = owner.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
        return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')!r} (started {when}: {owner.get('command', '?')})"

    def acquire(self, command: str = "") -> None:
        """Take the lock or raise :class:`ls_seq.errors.RunLockedError` naming its owner."""
        if self.held:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunLockedError(
                        f"{str(self.path.parent)!r} is in use by {self._describe(self._owner())}; wait for it "
                        "to end or choose another output directory"
                    ) from None
                except OSError as exc:  # a file system without flock (some network mounts)
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        raise
            owner, host = self._owner(), socket.gethostname()
            if owner and not owner.get("unreadable"):
                pid = owner.get("pid")
                if owner.get("host") != host:
                    raise RunLockedError(
                        f"{str(self.path.parent)!r} was locked by {self._describe(owner)}, which cannot be checked "
                        f"from {host!r}; if no run uses the directory, delete {str(self.path)!r}"
                    )
                if fcntl is None and isinstance(pid, int) and pid != os.getpid() and _alive(pid):
                    raise RunLockedError(f"{str(self.path.parent)!r} is in use by {self._describe(owner)}")
                warnings.warn(
                    f"took over the lock of {str(self.path.parent)!r} left by {self._describe(owner)}, which is no "
                    "longer running (killed?); its finished work is kept",
                    LsSeqWarning,
                    stacklevel=3,
                )
            me = {"pid": os.getpid(), "host": host, "started": time.time(), "command": command}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Empty the lock file (an empty file is a free lock) and release the ``flock``; the file stays, so a
        process waiting on it never locks a file that another has already replaced."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing releases the flock
        self._fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirectory:
    """A study's output directory (see the module docstring): ``open`` it, run, ``close`` it (in ``finally``).

    Args:
        path: the output directory.
        study: which study writes it (``"en_de"``, ``"vision"``); a directory of another study is refused.
        argument: the command-line name of ``path``, for messages (``"output_dir"``).
    """

    def __init__(self, path: str | os.PathLike, study: str, *, argument: str = "output_dir"):
        self.path = check_output_dir(path, argument)
        self.study, self.argument = study, argument
        self.lock = RunLock(self.path)
        self.config: dict[str, Any] | None = None
        self.commands: list[str] = []

    @property
    def config_path(self) -> Path:
        return self.path / RUN_CONFIG_NAME

    def _entries(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME) if self.path.is_dir() else []

    def _clear(self) -> None:
        for name in self._entries():
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def open(
        self,
        config: Mapping[str, Any],
        *,
        command: str,
        resume: bool = False,
        overwrite: bool = False,
        extendable: Mapping[str, str] = {},
    ) -> dict[str, Any]:
        """Lock the directory, check ``config`` against what it holds, save it; returns the configuration to run.

        Args:
            config: the resolved configuration (JSON-able; what decides the results, nothing else).
            command: the command line, recorded in ``run_config.json`` and in the lock.
            resume: continue the run the directory holds (same configuration, ``extendable`` lists may grow).
            overwrite: empty the directory first (it must hold a run, or be empty).
            extendable: dotted keys of lists that a resume may extend (:func:`extend_config`).

        Returns:
            ``config`` with the ``extendable`` lists merged with the saved ones.

        Raises:
            InputError: the directory holds a run and neither ``resume`` nor ``overwrite`` is given; it is not
                empty and holds no run; it holds another study's run or an unreadable ``run_config.json``.
            ConfigMismatchError: ``resume`` with a configuration that differs (every difference listed).
            RunLockedError: another process holds the directory.
        """
        if resume and overwrite:
            raise InputError("`resume` and `overwrite_output_dir` exclude each other: keep the run or start over")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire(command)
        try:
            merged = self._check(config, command, resume=resume, overwrite=overwrite, extendable=extendable)
        except BaseException:
            self.close()
            raise
        self.config = merged
        atomic_write_json(self.config_path, {"study": self.study, "config": merged, "commands": self.commands})
        return merged

    def _check(self, config, command, *, resume, overwrite, extendable) -> dict[str, Any]:
        flag = f"--{self.argument}"
        entries = self._entries()
        holds_run = RUN_CONFIG_NAME in entries
        older_run = not holds_run and any(name in entries for name in _OLDER_RUN_FILES)
        if entries and not holds_run:
            if not older_run:
                raise InputError(
                    f"{flag} {str(self.path)!r} is not empty and holds no ls-seq run ({RUN_CONFIG_NAME} is missing; it "
                    f"holds {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}); choose a new or empty directory"
                )
            if not overwrite:
                raise InputError(
                    f"{flag} {str(self.path)!r} holds a run from an older ls-seq without {RUN_CONFIG_NAME}, so its "
                    "configuration cannot be checked for --resume; start over with --overwrite_output_dir"
                )
        if overwrite:
            self._clear()
            self.commands = [command]
            return _plain(config)
        if not holds_run:  # a new directory, or one that holds only a lock
            self.commands = [command]
            return _plain(config)
        saved = read_json(self.config_path)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise InputError(
                f"{str(self.config_path)!r} does not hold a run configuration; start over with --overwrite_output_dir"
            )
        if saved.get("study") != self.study:
            raise InputError(
                f"{flag} {str(self.path)!r} holds a {saved.get('study')!r} run, not a {self.study!r} one; choose another directory"
            )
        first = (saved.get("commands") or ["?"])[0]
        if not resume:
            raise InputError(
                f"{flag} {str(self.path)!r} already holds a run (started with `{first}`); pass --resume to continue "
                "it or --overwrite_output_dir to start over"
            )
        differences = config_differences(saved["config"], config, extendable)
        if differences:
            may_grow = f" (only {', '.join(extendable)} may gain values)" if extendable else ""
            raise ConfigMismatchError(
                f"--resume: {flag} {str(self.path)!r} holds a run with another configuration{may_grow}: "
                f"{'; '.join(differences)}. Resume with the saved configuration, choose another {flag}, or start "
                "over with --overwrite_output_dir"
            )
        self.commands = [*saved.get("commands", []), command]
        return extend_config(saved["config"], config, extendable)

    def close(self) -> None:
        """Release the lock (the configuration and the results stay)."""
        self.lock.release()

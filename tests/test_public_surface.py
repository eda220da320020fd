"""The public surface of 0.1 still imports in 0.2: every name, from the path it had, as the same object.

``public_surface_0.1.json`` was recorded from ls-seq 0.1.0 (commit 981c8d0) before the 0.2 layout moved its
modules: ``ls_seq.__all__`` and the ``__all__`` of every public module. Each name must still be reachable the way
0.1 reached it, either unchanged (no warning) or through a deprecated alias that warns and names the new place,
and resolve to the object the new place holds. And nothing inside ls-seq may use a deprecated path: the
package, the studies and vision import without a single ``DeprecationWarning`` of ours.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ls_seq
from ls_seq._deprecation import MOVED_MODULES, new_module_name

SURFACE = json.loads((Path(__file__).with_name("public_surface_0.1.json")).read_text())
OURS = "in ls-seq 0.2"  # every deprecation message of ls-seq says where and since when the name moved


def _ours(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning) and OURS in str(w.message)]


def _import(path: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(path)
    return module, _ours(caught)


def test_top_level_names_of_0_1():
    for name in SURFACE["ls_seq"]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = getattr(ls_seq, name)
        messages = _ours(caught)
        if name in ls_seq._RENAMED:
            new = ls_seq._RENAMED[name]
            assert messages and f"ls_seq.{new}" in messages[0], (name, messages)
            assert value is getattr(ls_seq, new)
        else:
            assert not messages, (name, messages)
            assert name in ls_seq.__all__


@pytest.mark.parametrize("old", sorted(m for m in SURFACE if m != "ls_seq"))
def test_module_names_of_0_1(old):
    """Each 0.1 module path imports (warning when it moved), and each of its names resolves to one object."""
    new = new_module_name(old)
    module, messages = _import(old)
    if new is None:
        assert not messages, messages
    else:
        assert module is importlib.import_module(new)
        assert any(f"`{old}` moved to `{new}`" in m for m in messages), messages
    for name in SURFACE[old]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = getattr(module, name)
        moved = _ours(caught)
        if moved:  # a name that left a module that still exists: the warning names its new home, which holds it
            target = moved[0].split("moved to `", 1)[1].split("`", 1)[0]
            home, _, attr = target.rpartition(".")
            assert getattr(importlib.import_module(home), attr) is value, (old, name, target)
        elif name not in getattr(module, "__all__", ()):
            # still an attribute of the module, but no longer declared there: it must be declared somewhere public
            assert _declared_elsewhere(name, value), (old, name)


def _declared_elsewhere(name: str, value: object) -> bool:
    for path in _new_public_modules():
        module = importlib.import_module(path)
        if name in getattr(module, "__all__", ()) and getattr(module, name) is value:
            return True
    return False


def _new_public_modules() -> list[str]:
    import pkgutil

    return [
        m.name
        for m in pkgutil.walk_packages(ls_seq.__path__, "ls_seq.")
        if not any(p.startswith("_") for p in m.name.split(".")[1:]) and "token_ece" not in m.name
    ]


def test_the_deprecation_table_covers_every_moved_module():
    """Every 0.1 module that no longer exists at its path is in the table (else its import would just fail)."""
    for old in SURFACE:
        if old == "ls_seq":
            continue
        if importlib.util.find_spec(old.rsplit(".", 1)[0]) and new_module_name(old) is None:
            assert importlib.util.find_spec(old) is not None, f"{old} vanished without a deprecated alias"
    assert all(new_module_name(old) == new for old, new in MOVED_MODULES.items())


def test_ls_seq_uses_no_deprecated_path():
    """Importing every module of the new layout (and vision, and the recipes' imports) warns about nothing of ours."""
    code = (
        "import importlib, pkgutil, warnings\n"
        "warnings.filterwarnings('error', message='.*in ls-seq 0.2.*', category=DeprecationWarning)\n"
        "import ls_seq, vision\n"
        "for pkg in (ls_seq, vision):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if 'token_ece' not in m.name:\n"
        "            importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]

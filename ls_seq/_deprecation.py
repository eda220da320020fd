"""The names ls-seq 0.2 moved or renamed, kept working for one release with a ``DeprecationWarning``.

Two mechanisms, both removed in 0.3:

* :data:`MOVED_MODULES`: every module path of 0.1 that 0.2 moved (``ls_seq.metrics`` is now
  ``ls_seq.calibration.metric``). A finder on ``sys.meta_path`` answers an import of the old path (or of a
  module below it) with the module at the new path itself, not a copy, after a warning that names both.
* :func:`moved_attributes`: a module ``__getattr__`` for names that left a module that still exists (the
  command-line runner left :mod:`ls_seq.errors`) or were renamed (``CalibrationMetrics``).

The list is pinned by ``tests/test_public_surface.py`` against the recorded surface of 0.1.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["MOVED_MODULES", "moved_attributes"]

REMOVED_IN = "0.3"

MOVED_MODULES: dict[str, str] = {
    "ls_seq._validation": "ls_seq.checks",
    "ls_seq.metrics": "ls_seq.calibration.metric",
    "ls_seq.calibration_report": "ls_seq.calibration.report",
    "ls_seq.plots": "ls_seq.calibration.plots",
    "ls_seq.functional.measures": "ls_seq.calibration.measures",
    "ls_seq.model_io": "ls_seq.hf.model_io",
    "ls_seq.model_loss": "ls_seq.hf.model_loss",
    "ls_seq.trainer": "ls_seq.hf.trainer",
    "ls_seq.loss_func": "ls_seq.hf.loss_func",
    "ls_seq.fused_head": "ls_seq.hf.fused_head",
    "ls_seq.callbacks": "ls_seq.hf.callbacks",
    "ls_seq.generation": "ls_seq.hf.generation",
    "ls_seq.calibration_metrics": "ls_seq.hf.compute_metrics",
    "ls_seq.guards": "ls_seq.hf.training_guard",
    "ls_seq.loggers": "ls_seq.hf.loggers",
    "ls_seq.distributed": "ls_seq.hf.distributed",
    "ls_seq.sweeps": "ls_seq.hf.sweeps",
    "ls_seq.checkpoint_eval": "ls_seq.cli.evaluate",
    "ls_seq.eval_data": "ls_seq.cli.eval_data",
    "ls_seq.significance": "ls_seq.studies.significance",
    "ls_seq.study": "ls_seq.studies",
    "ls_seq.translation": "ls_seq.studies.en_de",
    "ls_seq.ls_seq_fairseq": "ls_seq_fairseq",
}


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(
        f"`{old}` moved to `{new}` in ls-seq 0.2; the old name is deprecated and will be removed in {REMOVED_IN}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def new_module_name(fullname: str) -> str | None:
    """The 0.2 path of a 0.1 module path (or of a module below a moved package); None if it did not move."""
    for old, new in MOVED_MODULES.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # import_module's frames sit between the importer and here; the warning points at the import statement
        # when Python's own frames are skipped (3.12's skip_file_prefixes is not in 3.11: the default is fine).
        _warn(spec.name, self.new, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The module at the new path is already executed."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("ls_seq."):
            return None
        new = new_module_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import ls_seq`` does), first: below a moved package's old name
    the path finder would otherwise find the files through the package's ``__path__`` and execute them a second
    time, as a second module."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())


def moved_attributes(module: str, moved: Mapping[str, str], renamed: Mapping[str, str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves names which left ``module`` (``moved``: name -> its new module) or were
    renamed in it (``renamed``: old name -> new name), each with a ``DeprecationWarning``."""
    renamed = dict(renamed or {})

    def __getattr__(name: str) -> Any:
        if name in moved:
            _warn(f"{module}.{name}", f"{moved[name]}.{name}", stacklevel=2)
            return getattr(importlib.import_module(moved[name]), name)
        if name in renamed:
            _warn(f"{module}.{name}", f"{module}.{renamed[name]}", stacklevel=2)
            return getattr(sys.modules[module], renamed[name])
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__

"""Optional libraries: which ls-seq extra installs each, and the one line that says so when one is missing.

``pip install ls-seq`` installs what the losses, :class:`~ls_seq.calibration.metric.TokenCalibration`, the
HuggingFace integration and the ``ls-seq`` command need. Figures, BLEU, HF ``datasets``/``evaluate``, the studies
and the fairseq plugin each need an extra (pyproject.toml's ``[project.optional-dependencies]``). Where such a
library is imported, :func:`require` imports it or raises :class:`ls_seq.errors.MissingExtraError` naming the
extra; the studies' packages call :func:`require_extra` when they are imported, so a study in a core install stops
before any work, in one line (exit 1 through :func:`ls_seq.cli.runner.run_main`).

What it does not do: install anything, or check versions (pip's resolver holds the floors).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from types import ModuleType

from ls_seq.errors import MissingExtraError

__all__ = ["EXTRAS", "MissingExtraError", "installed", "require", "require_extra"]

# The modules ls-seq imports from each extra. pyproject.toml lists their distributions with the floors;
# tests/test_extras.py checks that every module here is installed by its extra there.
EXTRAS: dict[str, tuple[str, ...]] = {
    "plots": ("matplotlib",),
    "bleu": ("sacrebleu",),
    "datasets": ("datasets", "evaluate"),
    "studies": ("datasets", "sacrebleu", "scipy", "matplotlib", "yaml"),
    "vision": ("sklearn", "datasets", "scipy", "matplotlib", "yaml"),
    # what `import fairseq` imports (fairseq itself is installed with --no-deps, after the extra: see _AFTER)
    "fairseq": ("fairseq", "hydra", "omegaconf", "bitarray", "sacrebleu", "sklearn"),
}
# The distribution of a module, where its name differs (pip install takes the distribution's name).
DISTRIBUTIONS = {"sklearn": "scikit-learn", "yaml": "pyyaml", "hydra": "hydra-core", "fairseq": "fairseq-fixed"}
# A module that the extra cannot install: what to run after it.
_AFTER = {
    "fairseq": "then fairseq itself: pip install --no-deps --no-build-isolation fairseq-fixed==0.12.3.1 "
    "(docs/fairseq.md says why)",
}


def _message(feature: str, extra: str, missing: Sequence[str]) -> str:
    names = [DISTRIBUTIONS.get(m, m) for m in missing]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    verb = "is" if len(names) == 1 else "are"
    after = "".join(f"; {_AFTER[m]}" for m in missing if m in _AFTER)
    return f"{feature} needs {listed}, which {verb} not installed: pip install 'ls-seq[{extra}]'{after}"


def _check_extra(extra: str) -> tuple[str, ...]:
    if extra not in EXTRAS:
        raise ValueError(f"`extra` must be one of {sorted(EXTRAS)}, got {extra!r}")
    return EXTRAS[extra]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, looked up without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that is not a package; a module without a spec
        return False


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import and return ``module`` (``"matplotlib.figure"``), or raise :class:`MissingExtraError` naming ``extra``.

    ``feature`` starts the message: ``require("matplotlib.figure", extra="plots", feature="the reliability
    diagram")`` raises ``the reliability diagram needs matplotlib, which is not installed: pip install
    'ls-seq[plots]'``. A module that is installed but fails on a library that ``extra`` does not install
    keeps its own error: that is a broken environment, not a missing extra.

    Example:
        >>> require("math", extra="plots", feature="arithmetic").sqrt(4.0)
        2.0
    """
    modules = _check_extra(extra)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = (err.name or "").partition(".")[0]
        if missing not in {module.partition(".")[0], *modules}:
            raise
        raise MissingExtraError(_message(feature, extra, [missing]), name=missing) from err


def require_extra(extra: str, *, feature: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``extra`` (:data:`EXTRAS`) is installed.

    Looks the modules up without importing them (``importlib.util.find_spec``), so a package can call it when it
    is imported at no cost. The message names every missing one: ``the EN-DE study needs datasets and
    sacrebleu, which are not installed: pip install 'ls-seq[studies]'``.
    """
    missing = [m for m in _check_extra(extra) if not installed(m)]
    if missing:
        raise MissingExtraError(_message(feature, extra, missing), name=missing[0])

"""The examples in the docstrings run and print what they say (doctest): every module of ls_seq, ls_seq_fairseq and
vision whose source holds an example is found, none is listed by hand."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# fairseq's plugin needs fairseq; the evaluate metric script is loaded by `evaluate`, not imported
NOT_IMPORTED = ("ls_seq_fairseq", "ls_seq/evaluate_metrics/token_ece")
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for d in ("ls_seq", "ls_seq_fairseq", "vision")
    for p in (ROOT / d).rglob("*.py")
    if ">>> " in p.read_text() and not any(str(p.relative_to(ROOT)).startswith(n) for n in NOT_IMPORTED)
)


def test_examples_are_found():
    assert {"ls_seq.functional.losses", "ls_seq.checks", "ls_seq.calibration.metric"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    if result.attempted == 0:  # illustrative examples (a Trainer on a real model) must say so, line by line
        lines = [line for line in Path(module.__file__).read_text().splitlines() if ">>> " in line]
        assert all("doctest: +SKIP" in line for line in lines), f"{name} has a '>>> ' that doctest does not run"
        pytest.skip(f"{name}: its examples are marked +SKIP")
    assert result.failed == 0

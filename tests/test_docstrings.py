"""The examples in the public docstrings run and print what they say (doctest)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "ls_seq.functional.losses",
    "ls_seq.functional.calibration",
    "ls_seq.functional.information",
    "ls_seq.losses",
    "ls_seq.metrics",
    "ls_seq.generation",
    "ls_seq.study.claims",
    "ls_seq.study.intervals",
    "ls_seq.study.presets",
    "ls_seq.study.stages",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no doctest examples"
    assert result.failed == 0

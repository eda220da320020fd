"""The package's types reach its users: ``py.typed`` is shipped, and a type checker sees the real type of every name
in ``ls_seq.__all__``, the lazily imported ones included (``ls_seq.__getattr__`` alone would make them ``Any``; the
``TYPE_CHECKING`` block in ``ls_seq/__init__.py`` names them for checkers).

Whether mypy passes on the package itself is ``make typecheck`` (CI runs it before the tests, with the strictness
of pyproject.toml's ``[tool.mypy]``); it is not repeated here. The check below reuses its cache (``.mypy_cache`` in
the repository root): a few seconds after ``make typecheck``, about a minute on a cold cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ls_seq

ROOT = Path(__file__).resolve().parents[1]

# What a user writes; each revealed type must be the name's own, never Any.
SNIPPET = """\
import ls_seq
from ls_seq import LabelSmoothingTrainer, TokenCalibration, label_smoothed_cross_entropy

def use(trainer: LabelSmoothingTrainer, metric: TokenCalibration) -> None:
    reveal_type(trainer)
    reveal_type(trainer.train)
    reveal_type(metric.compute())
    reveal_type(label_smoothed_cross_entropy)
"""


def test_py_typed_is_shipped():
    assert (ROOT / "ls_seq" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'"ls_seq" = \[[^\]]*"py\.typed"', pyproject), "py.typed must be in [tool.setuptools.package-data]"


def test_public_names_have_their_types_for_a_type_checker(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the [dev] extras")
    names = sorted(ls_seq.__all__)
    snippet = SNIPPET + "".join(f"reveal_type(ls_seq.{name})\n" for name in names)
    (tmp_path / "user_code.py").write_text(snippet, encoding="utf-8")
    # MYPYPATH: this checkout's ls_seq, whichever one the environment has installed.
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(tmp_path / "user_code.py")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = done.stdout.splitlines()
    revealed = [m.group(1) for m in (re.search(r'Revealed type is "(.*)"$', line) for line in lines) if m]
    errors = [line for line in lines if ": error:" in line]
    assert not errors, "\n".join(errors)
    assert len(revealed) == 4 + len(names), done.stdout + done.stderr

    trainer, train, computed, loss = revealed[:4]
    assert trainer == "ls_seq.hf.trainer.LabelSmoothingTrainer"
    assert train.startswith("def (resume_from_checkpoint")  # Trainer.train: the HF base class is visible
    assert computed == "ls_seq.calibration.result.CalibrationResult"
    assert loss.startswith("def (logits: torch._tensor.Tensor, labels: torch._tensor.Tensor, alpha: float")

    by_name = dict(zip(names, revealed[4:]))
    untyped = [name for name, t in by_name.items() if t == "Any"]  # what ls_seq.__getattr__ alone would give
    assert not untyped, f"a type checker sees these public names as Any: {untyped}"
    assert by_name["__version__"] == "str"
    assert "ls_seq.hf.model_io.ModelIO" in by_name["model_io_of"]

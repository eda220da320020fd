"""The ``--user-dir`` plugin: the top-level package ``ls_seq_fairseq``, found by ``ls-seq fairseq-user-dir``, one
module whether fairseq or Python imports it first (no second registration), with no ``sys.path`` or
``sys.modules`` handling of its own, its 0.1 path a deprecated alias, and ``import ls_seq`` free of fairseq."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fairseq")

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "ls_seq_fairseq"


def _python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (import order is what is tested, so not this process)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


# Python's import first: what ls_seq imports before the plugin (nothing of fairseq), and what the CLI prints.
_LS_SEQ_FIRST = (
    "import ls_seq, ls_seq.cli.commands, ls_seq.calibration.metric, ls_seq.studies.en_de.study\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fairseq', 'fairseq_cli', 'ls_seq_fairseq')))\n"
    "assert ls_seq.cli.main(['fairseq-user-dir']) == 0\n"
)


@pytest.mark.parametrize("fairseq_first", [True, False])
def test_one_module_in_either_import_order(fairseq_first, plugin):
    """fairseq imports the folder by its name, ``ls_seq_fairseq``; code imports the package ``ls_seq_fairseq``.
    Either order is one module and one registered criterion (a second import would raise "Cannot register
    duplicate"); 0.1's path ``ls_seq.ls_seq_fairseq`` is the same module, with a DeprecationWarning.
    Before the plugin, ``import ls_seq`` (its CLI, metrics and HF study) imports nothing of fairseq, and
    ``ls-seq fairseq-user-dir`` prints the folder, which fairseq-train's own parser accepts as ``--user-dir``."""
    user_dir = (
        f"from fairseq import utils; import argparse; utils.import_user_module(argparse.Namespace(user_dir={str(PLUGIN_DIR)!r}))"
    )
    python_import = "import ls_seq_fairseq.criterion, ls_seq_fairseq.study"
    first, second = (user_dir, python_import) if fairseq_first else (_LS_SEQ_FIRST + python_import, user_dir)
    proc = _python(
        f"import os, sys\n{first}\n{second}\n"
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import ls_seq.ls_seq_fairseq.criterion as b\n"
        "assert any('moved to `ls_seq_fairseq.criterion`' in str(w.message) for w in caught), caught\n"
        "import ls_seq, ls_seq_fairseq, ls_seq_fairseq.criterion as a\n"
        "from fairseq.criterions import CRITERION_REGISTRY\n"
        "cls = CRITERION_REGISTRY['ls_seq_label_smoothed_cross_entropy']\n"
        "print(ls_seq_fairseq is ls_seq_fairseq, a is b, cls is a.LsSeqLabelSmoothedCrossEntropyCriterion)\n"
        "print(any(os.path.abspath(p or '.') == os.path.dirname(ls_seq.__file__) for p in sys.path))"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    same, on_path = lines[-2:]
    assert same == "True True True"
    assert on_path == "False"  # fairseq's sys.path entry for ls_seq/ is gone: ls_seq/io.py etc. shadow nothing
    if fairseq_first:
        return
    imported, printed = lines[0], lines[1]
    assert imported == "[]"
    assert Path(printed) == PLUGIN_DIR == Path(plugin.PLUGIN_DIR)
    from fairseq import options

    argv = [
        "data",
        "--user-dir",
        printed,
        "--criterion",
        "ls_seq_label_smoothed_cross_entropy",
        "--arch",
        "transformer",
        "--ls-convention",
        "fairseq",
        "--calibration-temperatures",
        "0.8,1.5",
    ]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    assert (args.ls_convention, args.calibration_temperatures, args.calibration_bins, args.ls_prior) == (
        "fairseq",
        [0.8, 1.5],
        15,
        "uniform",
    )


def test_the_plugin_touches_neither_sys_path_nor_sys_modules():
    """What fairseq's ``--user-dir`` import needs is the package's name, and a top-level package has it: no code of
    the plugin edits the import system (0.1 spent 39 lines undoing fairseq's ``sys.path`` entry)."""
    sources = sorted(PLUGIN_DIR.rglob("*.py"))
    assert sources and all("sys.path" not in p.read_text() and "sys.modules" not in p.read_text() for p in sources)

"""Small EN-DE study runs shared by the study and fault tests: the recipe, a run of seconds on a slice of
Multi30k, running it in-process or as a subprocess (optionally killed at a named stage boundary).

Imported as ``_helpers.ende_runs``; the session fixture ``reference_run`` is in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from _helpers.faults import interruptible
from ls_seq.io import read_json

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "wmt_en_de.py"
TEMPS = ["0.8", "1.0", "1.5"]
MULTI30K_DIR = ROOT.parent / "shared" / "data" / "multi30k"  # as in tests/conftest.py


def recipe():
    """``recipes/wmt_en_de.py`` as a module (``main(argv)``, ``parse_args(argv)``)."""
    spec = importlib.util.spec_from_file_location("wmt_en_de", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slice_args(data_dir, out, *extra):
    """A run of seconds: 2000 pairs, 30 steps of a 1+1-layer d_model 32 model, 3 temperatures, tiny eval sets.

    Checkpoints at 10, 20 and 30 (= max_steps), and calibration along training at the same steps on the first
    16 validation pairs; a later flag overrides an earlier one (argparse).
    """
    return [
        "--preset",
        "tiny",
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(out),
        "--max_train_samples",
        "2000",
        "--max_eval_samples",
        "48",
        "--max_bleu_samples",
        "24",
        "--max_steps",
        "30",
        "--save_steps",
        "10",
        "--warmup_steps",
        "5",
        "--logging_steps",
        "10",
        "--batch_size",
        "32",
        "--eval_batch_size",
        "16",
        "--calibration_every",
        "10",
        "--calibration_samples",
        "16",
        "--vocab_size",
        "1000",
        "--d_model",
        "32",
        "--ffn_dim",
        "64",
        "--attention_heads",
        "2",
        "--encoder_layers",
        "1",
        "--decoder_layers",
        "1",
        "--temperatures",
        *TEMPS,
        "--cpu_threads",
        "1",
        *extra,
    ]


@contextlib.contextmanager
def one_thread():
    """Run in-process with one intra-op thread, as the subprocesses (OMP_NUM_THREADS=1) do.

    Matmul blocking depends on the thread count, so runs that are compared bit for bit must use the same one.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run_recipe(args: list[str], *, kill_at: str | None = None, signal: str | None = None, timeout: float = 300):
    """The recipe in a subprocess (one thread), optionally killed at the stage boundary ``kill_at``.

    ``signal`` (``"TERM"``, ``"INT"``) replaces the default SIGKILL there. Returns the ``CompletedProcess``.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LS_SEQ_DEBUG": "0"}
    env.pop("LS_SEQ_KILL_AT", None)
    if kill_at is not None:
        env["LS_SEQ_KILL_AT"] = kill_at
    if signal is not None:
        env["LS_SEQ_KILL_SIGNAL"] = signal
    return subprocess.run(
        [sys.executable, str(RECIPE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=interruptible,
    )


def error_lines(stderr: str) -> list[str]:
    """The lines the fault handler printed (``wmt_en_de.py: error|warning: ...``), without progress bars."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("wmt_en_de.py: ")]


def comparable(results: dict[str, Any]) -> dict[str, Any]:
    """``results.json`` without the commands (which name the output directory and the resume flags)."""
    results = read_json(results) if isinstance(results, (str, os.PathLike)) else dict(results)
    config = dict(results["config"])
    config.pop("command"), config.pop("resumed_with")
    return {**results, "config": config}

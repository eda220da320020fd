"""The uninterrupted reference run that the study and fault tests compare against (one per test session)."""

from __future__ import annotations

import time

import pytest
from _helpers.ende_runs import MULTI30K_DIR, one_thread, recipe, slice_args


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """``slice_args`` run once, in-process with one thread: ``{"out", "results", "seconds", "data"}``."""
    if not (MULTI30K_DIR / "train.en.gz").exists():
        pytest.skip(f"real Multi30k data not found at {MULTI30K_DIR}")
    out = tmp_path_factory.mktemp("ende") / "run"
    start = time.time()
    with one_thread():
        results = recipe().main(slice_args(MULTI30K_DIR, out))
    return {"out": out, "results": results, "seconds": time.time() - start, "data": MULTI30K_DIR}

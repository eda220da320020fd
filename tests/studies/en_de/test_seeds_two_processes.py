"""``--seeds`` under 2 processes (torchrun, gloo): every seed of the seeds run is the single-seed study run
under 2 processes, bit for bit, and the summary is the statistics of those seeds. (Two processes split each
batch, so their numbers differ from one process's in the last bits: the reference is a 2-process run too.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _helpers.ende_runs import RECIPE, comparable, slice_args

from ls_seq.io import read_json

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _torchrun(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RECIPE), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_seeds_under_two_processes_are_the_two_process_single_seed_studies(reference_run, tmp_path):
    seeds_out, alone_out = tmp_path / "seeds", tmp_path / "alone"
    _torchrun(slice_args(reference_run["data"], seeds_out, "--seeds", "42", "43"))
    _torchrun(slice_args(reference_run["data"], alone_out, "--seed", "43"))
    in_seeds, alone = comparable(seeds_out / "seed_43" / "results.json"), comparable(alone_out / "results.json")
    assert in_seeds["config"]["num_processes"] == alone["config"]["num_processes"] == 2
    assert in_seeds == alone
    summary = read_json(seeds_out / "results.json")
    assert summary["config"]["seeds"] == [42, 43]
    assert sorted(p.name for p in seeds_out.iterdir() if p.is_dir()) == ["seed_42", "seed_43"]
    per_seed = {s: {m["alpha"]: m for m in read_json(seeds_out / f"seed_{s}" / "results.json")["models"]} for s in (42, 43)}
    for m in summary["models"]:  # the summary is of the seeds it ran, each written once (rank 0)
        values = {str(s): per_seed[s][m["alpha"]]["test"]["ece"] for s in (42, 43)}
        assert m["metrics"]["ece"]["values"] == values
        assert m["metrics"]["ece"]["mean"] == pytest.approx(sum(values.values()) / 2, abs=1e-15)

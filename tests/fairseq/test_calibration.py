"""Token calibration in fairseq's validation logs: against ``TokenCalibration`` on the checkpoint's
teacher-forced logits, against fairseq's own ``nll_loss``, and 2 workers against 1 with ``--update-freq 2``."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("fairseq")

TEMPERATURES = [0.8, 1.0, 1.5]
LS = ("--criterion", "ls_seq_label_smoothed_cross_entropy", "--label-smoothing", "0.1")  # as the `trained` fixture


def _teacher_forced_reference(checkpoint, data_dir):
    """``TokenCalibration`` fed with the checkpoint's decoder logits on the validation set, batch by batch."""
    from fairseq import checkpoint_utils

    from ls_seq.calibration.metric import TokenCalibration
    from ls_seq_fairseq.evaluate import trusted_checkpoints

    with trusted_checkpoints():
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data_dir)})
    model = models[0].eval()
    task.load_dataset("valid")
    pad = task.target_dictionary.pad()
    metric = TokenCalibration(n_bins=15, ignore_index=pad, temperatures=TEMPERATURES)
    with torch.no_grad():
        for sample in task.get_batch_iterator(dataset=task.dataset("valid"), max_tokens=1000).next_epoch_itr(shuffle=False):
            metric.update(model(**sample["net_input"])[0], sample["target"])
    return metric.compute()


def test_validation_ece_equals_token_calibration_on_the_checkpoint(trained, data_bin):
    """The last validation's ``ece``/``mce``/``token_accuracy``/``mean_confidence``/``ece_T<t>`` and ``nll_T<t>``
    (base 2) are TokenCalibration's on the
    same checkpoint; tolerance: the log's 6 significant digits (5e-6 relative)."""
    ref = _teacher_forced_reference(trained["checkpoint"], data_bin.path)
    got = trained["valid"]
    assert float(got["valid_ece"]) == pytest.approx(float(ref["ece"][1]), rel=5e-6)
    assert float(got["valid_mce"]) == pytest.approx(float(ref["mce"][1]), rel=5e-6)
    assert float(got["valid_token_accuracy"]) == pytest.approx(float(ref["accuracy"][1]), rel=5e-6)
    assert float(got["valid_mean_confidence"]) == pytest.approx(float(ref["mean_confidence"][1]), rel=5e-6)
    for i, t in enumerate(TEMPERATURES):
        assert float(got[f"valid_ece_T{t:g}"]) == pytest.approx(float(ref["ece"][i]), rel=5e-6)
        assert float(got[f"valid_nll_T{t:g}"]) == pytest.approx(float(ref["nll"][i]) / math.log(2), rel=5e-6)
    assert float(got["valid_best_ece_T"]) == TEMPERATURES[int(ref["ece"].argmin())]
    assert float(got["valid_best_nll_T"]) == TEMPERATURES[int(ref["nll"].argmin())]
    # the calibration NLL at T = 1 is fairseq's own nll_loss (3 decimals in its log)
    assert abs(float(got["valid_nll_T1"]) - float(got["valid_nll_loss"])) <= 5e-4


def test_calibration_sums_of_the_checkpoint_equal_token_calibration(trained, data_bin):
    """The study's pass (fairseq's validation loop with the criterion) at full precision: 1e-9 relative (float64
    sums of the same logits; the only difference is the order of the additions)."""
    from ls_seq_fairseq.calibration import metrics_from_sums
    from ls_seq_fairseq.evaluate import calibration_sums

    ref = _teacher_forced_reference(trained["checkpoint"], data_bin.path)
    stats = calibration_sums(trained["checkpoint"], data_bin.path, ["valid"], TEMPERATURES, max_tokens=1000)["valid"]
    assert stats["temperatures"] == TEMPERATURES
    got = metrics_from_sums({k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items() if k != "temperatures"})
    for key in ("ece", "mce", "rms", "nll", "accuracy", "mean_confidence", "n_tokens"):
        torch.testing.assert_close(got[key], ref[key].double(), rtol=1e-9, atol=0, msg=key)
    assert int(got["n_tokens"][0]) == sum(len(line.split()) + 1 for line in data_bin.token_lines("valid"))


def test_training_updates_log_no_calibration(trained, data_bin, tmp_path, fairseq_train):
    """Calibration is a validation measure: training lines carry none, each validation carries it."""
    lines = fairseq_train(data_bin.path, tmp_path, *LS, "--max-update", "10")
    assert all("ece" not in stats for tag, stats in lines if tag == "train_inner")
    valid = [stats for tag, stats in lines if tag == "valid"]
    assert valid and all("valid_ece" in v and "valid_mce" in v for v in valid)
    assert not any(k.startswith("valid_ece_T") for v in valid for k in v)  # no grid: T = 1 only
    assert all(set(k for k in v if k.startswith("valid_nll_T")) == {"valid_nll_T1"} for v in valid)
    assert trained["n_valid_logs"] >= 2


# ------------------------------------------------------------------------------------------------------
# Distributed: the sums are reduced across workers, so 2 workers log what 1 worker does


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _valid_lines(output: str) -> list[dict]:
    import json

    return [json.loads(line.split("| valid | ", 1)[1]) for line in output.splitlines() if "| valid | " in line]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_cpu_workers_equal_one_worker_with_update_freq_2(plugin, data_bin, tmp_path, tiny_flags, load_state):
    """2 gloo processes (legacy_ddp) and 1 process with ``--update-freq 2`` see the same batches per update:
    the same valid loss, nll_loss and every calibration value in the logs, and bit-identical parameters.
    Dropout is 0, so the runs compute the same function; validation is sharded across the 2 workers."""
    flags = [
        str(data_bin.path),
        "--user-dir",
        plugin.PLUGIN_DIR,
        *tiny_flags,
        *LS,
        "--calibration-temperatures",
        "0.8,1.5",
        "--max-update",
        "10",
        "--ddp-backend",
        "legacy_ddp",
        "--log-interval",
        "5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "fairseq_cli.train"]
    one = subprocess.run(
        [*train, *flags, "--update-freq", "2", "--save-dir", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    init = [
        "--distributed-world-size",
        "2",
        "--distributed-init-method",
        f"tcp://127.0.0.1:{_free_port()}",
        "--distributed-no-spawn",
        "--distributed-backend",
        "gloo",
        "--save-dir",
        str(tmp_path / "two"),
    ]
    workers = [
        subprocess.Popen(
            [*train, *flags, *init, "--distributed-rank", str(rank)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:]
    got, expected = _valid_lines(outputs[0]), _valid_lines(one.stdout)
    assert len(got) == len(expected) >= 1
    keys = [
        "valid_loss",
        "valid_nll_loss",
        "valid_ece",
        "valid_mce",
        "valid_ece_T0.8",
        "valid_nll_T1.5",
        "valid_best_ece_T",
        "valid_token_accuracy",
        "valid_mean_confidence",
    ]
    for g, e in zip(got, expected):
        assert {k: g[k] for k in keys} == {k: e[k] for k in keys}
    a, b = load_state(tmp_path / "one" / "checkpoint_last.pt"), load_state(tmp_path / "two" / "checkpoint_last.pt")
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == 10
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

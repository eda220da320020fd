"""Calibration along training in the vision study: the points recorded in the history equal TokenCalibration
run afresh on the checkpoints of those epochs, and what results.json, timings.json and the report make of it."""

from __future__ import annotations

import pytest
import torch

from ls_seq.calibration.metric import TokenCalibration
from ls_seq.io import read_json
from vision.calibration import HARD, SMOOTHED, TRAJECTORY_TEMPERATURES
from vision.data import load_digits
from vision.models import create_model
from vision.study import PRESETS, VisionStudyConfig, run_study
from vision.train import collect_outputs


def _calibration_of_checkpoint(path, data):
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model("digits_cnn", data.num_classes, data.in_channels, data.image_size)
    model.load_state_dict(state["model"])
    outputs = collect_outputs(model, data.val)
    grid = sorted(set(TRAJECTORY_TEMPERATURES) | {1.0})
    metric = TokenCalibration(n_bins=15, temperatures=grid)
    metric.update(outputs.logits, outputs.labels)
    return state["epoch"], grid, metric.compute()


def test_points_equal_token_calibration_of_the_checkpoints_and_are_reported(tmp_path):
    out = tmp_path / "run"
    cfg = VisionStudyConfig(
        dataset="digits",
        study="calibration",
        output_dir=str(out),
        epochs=3,
        max_train_samples=200,
        calibration_every=1,
        progress=False,
        cpu=True,
    )
    results = run_study(cfg)
    along = results["calibration"]["along_training"]
    data = load_digits(seed=0, max_train_samples=200)
    for name, tag in ((HARD, "alpha0"), (SMOOTHED, "alpha0.1")):
        points = {p["epoch"]: p for p in along["runs"][name]["points"]}
        assert sorted(points) == [1, 2, 3]
        for file in ("checkpoint.pt", "checkpoint-prev.pt"):  # epochs 3 and 2
            epoch, grid, ref = _calibration_of_checkpoint(out / "runs" / f"digits_cnn_{tag}" / file, data)
            p, i1 = points[epoch], grid.index(1.0)
            assert p["ece"] == pytest.approx(float(ref["ece"][i1]), abs=1e-6)
            assert p["nll"] == pytest.approx(float(ref["nll"][i1]), abs=1e-6)
            assert p["accuracy"] == pytest.approx(float(ref["accuracy"][i1]), abs=1e-9)
            assert p["best_ece_temperature"] == grid[int(torch.argmin(ref["ece"]))]
            assert p["best_nll_temperature"] == grid[int(torch.argmin(ref["nll"]))]
    timings = read_json(out / "timings.json")
    for name in (HARD, SMOOTHED):
        t = timings[name]
        assert 0 < t["calibration_along_training_seconds"] < t["train_seconds_this_run"]
    report = (out / "report.md").read_text()
    assert "## Calibration along training (validation)" in report
    rows = [line for line in report.splitlines() if line.startswith(f"| {HARD} | ") or line.startswith(f"| {SMOOTHED} | ")]
    assert len([r for r in rows if r.count("|") == 8]) == 6  # 3 epochs x 2 runs
    assert (out / "calibration_along_training.png").stat().st_size > 0
    # results.json holds no wall-clock: it stays a deterministic function of the configuration
    assert "seconds" not in (out / "results.json").read_text()


def test_the_lowdata_preset_is_the_documented_small_data_setting():
    cfg = VisionStudyConfig(preset="digits-lowdata", output_dir="unused")
    assert (cfg.dataset, cfg.max_train_samples, cfg.epochs, cfg.weight_decay) == ("digits", 200, 60, 0.0)
    assert (cfg.lr, cfg.batch_size, cfg.model) == (PRESETS["digits"].lr, PRESETS["digits"].batch_size, "digits_cnn")
    assert VisionStudyConfig(preset="digits-lowdata", epochs=10, output_dir="unused").epochs == 10  # a flag wins


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"calibration_every": -1}, r"`calibration_every` must be an int >= 0, got -1"),
        ({"preset": "digits-lowdata", "dataset": "cifar10"}, r"`preset` 'digits-lowdata' is a digits setting"),
        ({"preset": "tiny"}, r"`preset` must be one of"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisionStudyConfig(output_dir="unused", **kwargs)

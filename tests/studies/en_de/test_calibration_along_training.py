"""Calibration along training in the EN-DE study: the trajectory the Trainer logged equals TokenCalibration
run afresh on the checkpoints saved at those steps, and what results.json, timings.json and the report make
of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ls_seq.io import read_json
from ls_seq.studies.trajectory import TrajectoryPoint, overconfident_from, plot_trajectory, trajectory_curves

GRID = [round(0.8 + 0.1 * i, 1) for i in range(13)]  # the tiny preset's calibration grid (the paper's)


def _validation_batches(run_dir, data_dir, n):
    """The first ``n`` validation pairs of the run, tokenized by the run's own tokenizer, in batches of 16."""
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast

    from ls_seq.studies.en_de.data import load_corpora

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(run_dir / "tokenizer"))
    corpus = load_corpora(data_dir=data_dir, max_samples={"train": 1, "validation": n, "test": 1})["validation"]
    src = tokenizer(corpus.source, truncation=True, max_length=128)["input_ids"]
    tgt = tokenizer(corpus.target, truncation=True, max_length=128)["input_ids"]
    collator = DataCollatorForSeq2Seq(tokenizer)
    rows = [{"input_ids": s, "labels": t} for s, t in zip(src, tgt)]
    return [collator(rows[i : i + 16]) for i in range(0, len(rows), 16)]


def _calibration_of(model_dir, batches):
    """TokenCalibration of a saved model on ``batches`` over the grid, from the model's own forward pass."""
    from transformers import MarianMTModel

    from ls_seq.calibration.metric import TokenCalibration

    model = MarianMTModel.from_pretrained(str(model_dir)).eval()
    metric = TokenCalibration(n_bins=15, temperatures=GRID)
    with torch.no_grad():
        for batch in batches:
            metric.update(model(**batch).logits, batch["labels"])
    return metric.compute()


def test_trajectory_equals_token_calibration_of_the_saved_checkpoints(reference_run):
    """Every point the Trainer's evaluation logged (through CalibrationCallback, in its own loop) equals a fresh
    TokenCalibration of the checkpoint saved at that step (the last two are kept) to 1e-5."""
    out = reference_run["out"]
    for model in reference_run["results"]["models"]:
        points = model["calibration_along_training"]["points"]
        assert [p["step"] for p in points] == [10, 20, 30]
        batches = _validation_batches(out, reference_run["data"], 16)
        checkpoints = out / f"alpha_{model['alpha']}" / "checkpoints"
        compared = 0
        for p in points:
            ckpt = checkpoints / f"checkpoint-{p['step']}"
            if not ckpt.is_dir():
                continue  # save_total_limit=2 keeps 20 and 30
            ref = _calibration_of(ckpt, batches)
            i1 = GRID.index(1.0)
            assert p["ece"] == pytest.approx(float(ref["ece"][i1]), abs=1e-5)
            assert p["nll"] == pytest.approx(float(ref["nll"][i1]), abs=1e-5)
            assert p["accuracy"] == pytest.approx(float(ref["accuracy"][i1]), abs=1e-6)
            assert p["mean_confidence"] == pytest.approx(float(ref["mean_confidence"][i1]), abs=1e-5)
            assert p["best_ece_temperature"] == GRID[int(torch.argmin(ref["ece"]))]
            assert p["best_nll_temperature"] == GRID[int(torch.argmin(ref["nll"]))]
            compared += 1
        assert compared == 2
        # The last point is the final model's: the same numbers again from model/ (safetensors).
        final = _calibration_of(out / f"alpha_{model['alpha']}" / "model", batches)
        assert points[-1]["ece"] == pytest.approx(float(final["ece"][GRID.index(1.0)]), abs=1e-5)
        assert model["calibration_along_training"]["overconfident_from_step"] == overconfident_from(
            [TrajectoryPoint(**p) for p in points]
        )


def test_its_cost_is_in_timings_and_the_report_shows_it(reference_run):
    out = reference_run["out"]
    timings = read_json(out / "timings.json")
    for model in reference_run["results"]["models"]:
        entry = timings[f"alpha_{model['alpha']}"]
        assert 0 < entry["calibration_along_training_seconds"] < entry["train_seconds"]
        assert entry["calibration_share_of_training"] == pytest.approx(
            entry["calibration_along_training_seconds"] / entry["train_seconds"], abs=1e-4
        )
    report = (out / "report.md").read_text()
    assert "## Calibration along training (validation)" in report
    assert "![Calibration along training](calibration_along_training.png)" in report
    assert (out / "calibration_along_training.png").stat().st_size > 0
    # Each point of results.json is a row of the report.
    rows = [line for line in report.splitlines() if line.startswith("| 0.") and line.count("|") == 10]
    assert len(rows) == sum(len(m["calibration_along_training"]["points"]) for m in reference_run["results"]["models"])


def _point(step, t, ece=0.1):
    return TrajectoryPoint(
        step=step,
        epoch=step / 10,
        ece=ece,
        nll=1.0,
        accuracy=0.5,
        mean_confidence=0.5,
        best_ece_temperature=t,
        best_nll_temperature=1.0,
    )


@pytest.mark.parametrize(
    ("temperatures", "expected"),
    [
        ([1.0, 1.1, 1.2], 20),  # turns over-confident at 20 and stays
        ([1.2, 1.0, 1.3, 1.4], 30),  # an early stretch that ends does not count
        ([1.0, 1.0, 0.9], None),  # never
        ([1.1, 1.2, 1.0], None),  # not at the last point
        ([1.5], 10),
    ],
)
def test_overconfident_from_is_the_start_of_the_last_stretch_above_1(temperatures, expected):
    points = [_point(10 * (i + 1), t) for i, t in enumerate(temperatures)]
    assert overconfident_from(points[::-1]) == expected  # order of the input does not matter


def test_trajectory_curves_are_the_mean_and_range_over_seeds_at_the_common_steps():
    rng = np.random.default_rng(0)
    runs = {s: [_point(k, float(rng.uniform(0.8, 1.5)), float(rng.uniform(0, 0.2))) for k in (10, 20, 30)] for s in (1, 2, 3)}
    runs[3] = runs[3][:2]  # seed 3 stopped at step 20: only steps 10 and 20 are common
    (curve,) = trajectory_curves({"alpha 0.0": runs})
    assert curve.steps == [10, 20]
    for i, step in enumerate(curve.steps):
        ece = [p.ece for pts in runs.values() for p in pts if p.step == step]
        temp = [p.best_ece_temperature for pts in runs.values() for p in pts if p.step == step]
        assert math.isclose(curve.ece[i], float(np.mean(ece)), rel_tol=1e-12)
        assert (curve.ece_min[i], curve.ece_max[i]) == (min(ece), max(ece))
        assert math.isclose(curve.best_ece_temperature[i], float(np.mean(temp)), rel_tol=1e-12)
        assert (curve.best_ece_temperature_min[i], curve.best_ece_temperature_max[i]) == (min(temp), max(temp))
    assert curve.overconfident_from == {s: overconfident_from(pts) for s, pts in runs.items()}

    fig = plot_trajectory([curve])
    ece_ax, t_ax = fig.axes
    np.testing.assert_allclose(ece_ax.lines[0].get_ydata(), curve.ece)
    np.testing.assert_allclose(t_ax.lines[0].get_ydata(), curve.best_ece_temperature)
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in t_ax.lines)  # T = 1 marked
    with pytest.raises(ValueError, match="`curves` must hold at least one trajectory"):
        plot_trajectory([])


@pytest.mark.slow
def test_watching_a_run_does_not_change_the_model_it_trains(reference_run, tmp_path):
    """#25: the reference run (calibration along training every 10 steps) and the same run without it
    (``--calibration_every 0``) end with bit-identical final weights for every alpha. Reference: the unwatched run.
    Fails before #25's change: each evaluation's DataLoader drew from torch's global generator, so every dropout
    mask after step 10 differed (every tensor of the final model differed)."""
    from _helpers.ende_runs import one_thread, recipe, slice_args
    from safetensors.torch import load_file

    out = tmp_path / "unwatched"
    with one_thread():
        recipe().main(slice_args(reference_run["data"], out, "--calibration_every", "0"))
    alphas = [m["alpha"] for m in reference_run["results"]["models"]]
    assert len(alphas) >= 1 and all(m["calibration_along_training"]["points"] for m in reference_run["results"]["models"])
    for alpha in alphas:
        watched = load_file(reference_run["out"] / f"alpha_{alpha}" / "model" / "model.safetensors")
        unwatched = load_file(out / f"alpha_{alpha}" / "model" / "model.safetensors")
        assert watched.keys() == unwatched.keys()
        for name, value in unwatched.items():
            assert torch.equal(value, watched[name]), (alpha, name)

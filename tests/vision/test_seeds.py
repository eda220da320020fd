"""The vision study over seeds (``--seeds``): each seed is the single-seed study, the summary is the seeds'
mean, sample std and t-interval, per-seed claim intervals are paired bootstraps of the test images, and a resume
keeps finished seeds. References: the single-seed study run on its own, ``statistics``/``scipy`` over the
per-seed values, and a weighted ECE written here in numpy."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import t as student_t

from ls_seq.calibration.metric import TokenCalibration
from ls_seq.functional.bootstrap import poisson_weights, token_keys
from ls_seq.io import read_json
from ls_seq.studies.intervals import paired_interval
from vision.calibration import HARD, HARD_TS, SMOOTHED
from vision.seeds import run_seeds
from vision.study import VisionStudyConfig, run_study


def _cfg(out: Path, **kw) -> VisionStudyConfig:
    args = dict(
        dataset="digits",
        study="calibration",
        output_dir=str(out),
        epochs=2,
        max_train_samples=120,
        calibration_every=1,
        progress=False,
        cpu=True,
    )
    return VisionStudyConfig(**{**args, **kw})


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("vision_seeds") / "run"
    return out, run_seeds(_cfg(out, seeds=[0, 1]))


def test_each_seed_is_the_single_seed_study(two_seeds, tmp_path):
    out, summary = two_seeds
    alone = run_study(_cfg(tmp_path / "alone", seed=1))
    in_seeds = read_json(out / "seed_1" / "results.json")
    assert in_seeds["calibration"] == alone["calibration"]
    assert in_seeds["claims"] == alone["claims"]
    assert summary["config"]["seeds"] == [0, 1] and summary["runs"] == {"0": "seed_0", "1": "seed_1"}
    for name in ("results.json", "report.md", "calibration_along_training.png"):
        assert (out / name).is_file(), name
    assert read_json(out / "results.json") == json.loads(json.dumps(summary))
    assert "seed_0/report.md" in (out / "report.md").read_text()


def test_summary_is_mean_std_and_t_interval_of_the_seeds(two_seeds):
    out, summary = two_seeds
    per_seed = {s: read_json(out / f"seed_{s}" / "results.json")["calibration"]["rows"] for s in (0, 1)}
    rows = {r["row"]: r["metrics"] for r in summary["calibration"]}
    assert list(rows) == [HARD, HARD_TS, SMOOTHED]
    for row, metrics in rows.items():
        values = [per_seed[s][row]["ece"] for s in (0, 1)]
        got = metrics["ece"]
        half = student_t.ppf(0.975, df=1) * statistics.stdev(values) / np.sqrt(2)
        assert got["values"] == {"0": values[0], "1": values[1]}
        assert got["mean"] == pytest.approx(statistics.mean(values), abs=1e-15)
        assert got["std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert (got["low"], got["high"]) == pytest.approx(
            (statistics.mean(values) - half, statistics.mean(values) + half), rel=1e-9
        )


def test_claims_use_paired_intervals_per_seed_and_the_t_interval_over_seeds(two_seeds):
    out, summary = two_seeds
    claim = next(c for c in summary["claims"] if c["quantity"] == "ECE(LS) - ECE(hard)")
    assert claim["basis"] == "t-interval over 2 seeds"
    for evidence in claim["seeds"]:
        rows = read_json(out / f"seed_{evidence['seed']}" / "results.json")["calibration"]["rows"]
        assert evidence["difference"] == pytest.approx(rows[SMOOTHED]["ece"] - rows[HARD]["ece"], abs=1e-15)
        diff = np.asarray(rows[SMOOTHED]["replicates"]["ece"]) - np.asarray(rows[HARD]["replicates"]["ece"])
        assert len(diff) == 200
        assert (evidence["low"], evidence["high"]) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])), abs=1e-12)
    report = (out / "report.md").read_text()
    assert sum(report.count(f"**{v}**") for v in ("agrees", "disagrees", "inconclusive")) == len(summary["claims"])


def _weighted_ece(conf, correct, w, n_bins=15):
    """ECE of one replicate: every image weighted by ``w`` (numpy, equal-width bins, c = 1 in the last)."""
    bins = np.minimum(np.floor(conf * n_bins).astype(int), n_bins - 1)
    total = w.sum()
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if w[m].sum() > 0:
            ece += abs((w[m] * correct[m]).sum() - (w[m] * conf[m]).sum()) / total
    return ece


def test_replicates_are_the_same_resamples_for_two_models_and_their_weighted_ece():
    """Two models on the same 300 images: replicate r of each is the ECE under the same Poisson weights
    (a function of the image's place and label only), so their difference is a paired bootstrap."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (300,), generator=g)
    weights = poisson_weights(token_keys(torch.zeros(300, dtype=torch.long), torch.arange(300), labels, 1), 200).double().numpy()
    replicates = {}
    for name, scale in (("a", 1.0), ("b", 3.0)):
        logits = scale * torch.randn(300, 10, generator=g)
        metric = TokenCalibration(n_bins=15)
        metric.update(logits, labels)
        replicates[name] = metric.bootstrap_replicates()["ece"].numpy()
        p = torch.softmax(logits.double(), -1)
        conf, correct = p.max(-1).values.numpy(), (p.argmax(-1) == labels).double().numpy()
        brute = [_weighted_ece(conf, correct, weights[r]) for r in range(200)]
        np.testing.assert_allclose(replicates[name], brute, rtol=1e-5, atol=1e-7)
    interval = paired_interval(replicates["a"], replicates["b"])
    expected = np.quantile(replicates["b"] - replicates["a"], [0.025, 0.975])
    assert (interval["low"], interval["high"]) == pytest.approx(tuple(expected), abs=1e-12)


def test_resume_adds_a_seed_and_keeps_the_finished_ones(tmp_path):
    out = tmp_path / "run"
    run_seeds(_cfg(out, seeds=[0, 1], epochs=1))
    checkpoints = sorted((out / "seed_0" / "runs").glob("*/checkpoint.pt"))
    before = read_json(out / "seed_0" / "results.json")
    mtimes = [os.path.getmtime(c) for c in checkpoints]
    summary = run_seeds(_cfg(out, seeds=[0, 1, 2], epochs=1, resume=True))
    assert len(checkpoints) == 2 and [os.path.getmtime(c) for c in checkpoints] == mtimes  # not trained again
    assert read_json(out / "seed_0" / "results.json") == before
    assert summary["config"]["seeds"] == [0, 1, 2] and len(summary["claims"][0]["seeds"]) == 3
    with pytest.raises(Exception, match="another configuration"):
        run_seeds(_cfg(out, seeds=[0, 1, 2], epochs=2, resume=True))


@pytest.mark.parametrize(
    "seeds, error, match",
    [
        ([], ValueError, "`seeds` must hold at least one seed"),
        ([1, 1], ValueError, r"`seeds` must be distinct, got \[1, 1\]"),
        ([0, -2], ValueError, r"`seeds\[1\]` must be an int >= 0, got -2"),
        ("0 1", TypeError, "`seeds` must be a list of ints"),
    ],
)
def test_bad_seeds_are_refused(tmp_path, seeds, error, match):
    with pytest.raises(error, match=match):
        _cfg(tmp_path / "run", seeds=seeds)
    assert not (tmp_path / "run").exists()


def test_a_single_seed_decides_its_calibration_claims_from_the_paired_bootstrap(two_seeds):
    out, _ = two_seeds
    results = read_json(out / "seed_0" / "results.json")
    rows = results["calibration"]["rows"]
    claims = {c["quantity"]: c for c in results["claims"] if "quantity" in c}
    assert set(claims) == {"ECE(LS) - ECE(hard)", "ECE(LS) - ECE(hard, fitted T)", "|log T(LS)| - |log T(hard)|"}
    for quantity, (a, margin) in {"ECE(LS) - ECE(hard)": (HARD, 0.0), "ECE(LS) - ECE(hard, fitted T)": (HARD_TS, 0.01)}.items():
        c = claims[quantity]
        diff = np.asarray(rows[SMOOTHED]["replicates"]["ece"]) - np.asarray(rows[a]["replicates"]["ece"])
        low, high = np.quantile(diff, [0.025, 0.975])
        assert c["basis"] == "paired bootstrap" and (c["low"], c["high"]) == pytest.approx((low, high), abs=1e-12)
        expected = "agrees" if high - margin < 0 else "disagrees" if low - margin > 0 else "inconclusive"
        assert c["verdict"] == expected
    assert claims["|log T(LS)| - |log T(hard)|"]["verdict"] == "inconclusive"  # no interval from one seed
    assert "paired bootstrap interval" in (out / "seed_0" / "report.md").read_text()


def test_projection_claims_are_decided_over_seeds_from_each_seeds_tightness(tmp_path):
    out = tmp_path / "proj"
    summary = run_seeds(_cfg(out, study="projection", seeds=[0, 1], calibration_every=0))
    decided = summary["other_claims"]
    assert [c["quantity"] for c in decided] == ["tightness(LS) - tightness(hard)"] * 2 and summary["claims"] == []
    for c, split in zip(decided, ("train", "validation")):
        per_seed = []
        for s in (0, 1):
            t = read_json(out / f"seed_{s}" / "results.json")["projection"]["tightness"]
            per_seed.append(t[SMOOTHED][split]["plane"] - t[HARD][split]["plane"])
        assert [e["difference"] for e in c["seeds"]] == pytest.approx(per_seed, abs=1e-12)
        half = student_t.ppf(0.975, df=1) * statistics.stdev(per_seed) / np.sqrt(2)
        assert (c["low"], c["high"]) == pytest.approx(
            (statistics.mean(per_seed) - half, statistics.mean(per_seed) + half), rel=1e-9
        )
        assert c["basis"] == "t-interval over 2 seeds"
    report = (out / "report.md").read_text()
    assert "## The projection, distillation and mutual-information claims" in report
    assert sum(report.count(f"**{v}**") for v in ("agrees", "disagrees", "inconclusive")) == len(decided)


def test_the_trajectory_figure_over_seeds_counts_epochs(two_seeds, tmp_path, monkeypatch):
    """The vision loop measures every ``calibration_every`` epochs, so the figure over seeds says "epoch" on its
    x axes (the EN-DE study's says "optimizer step"), as the single-seed figure does."""
    import ls_seq.studies.trajectory as trajectory
    from vision.seeds import write_seed_report

    out, summary = two_seeds
    figures = []
    real = trajectory.plot_trajectory

    def recording(curves, **kw):
        figures.append(real(curves, **kw))
        return figures[-1]

    monkeypatch.setattr(trajectory, "plot_trajectory", recording)
    results = {s: read_json(out / f"seed_{s}" / "results.json") for s in (0, 1)}
    write_seed_report(tmp_path, summary, results)
    (fig,) = figures
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "epoch"]
    assert (tmp_path / "calibration_along_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

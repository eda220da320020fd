"""The image studies' claims: one seed's noise bands, and the t-interval over seeds for the projection,
distillation and mutual-information claims. References: the band formulas and ``scipy``'s Student t, written
here."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import t as student_t

from vision.calibration import HARD, SMOOTHED
from vision.claims import Comparison, _accuracy_band, _band_verdict, claims, comparisons, seed_comparison_claims
from vision.distillation import FROM_HARD, FROM_LS, STUDENT, TEACHER


def _lower(smaller: float, other: float, band: float) -> str:
    return _band_verdict(Comparison("c", "q", "lower", smaller - other, band, ""))


def test_a_difference_inside_its_band_is_inconclusive():
    assert _lower(0.10, 0.20, 0.01) == "agrees"
    assert _lower(0.20, 0.10, 0.01) == "disagrees"
    assert _lower(0.100, 0.105, 0.01) == "inconclusive"
    # 0.96 vs 0.95 on 359 examples: 2 SE = 2 * sqrt((0.96*0.04 + 0.95*0.05) / 359) = 0.031 > 0.01
    assert _accuracy_band(0.96, 0.95, 359) == pytest.approx(2 * math.sqrt((0.96 * 0.04 + 0.95 * 0.05) / 359), rel=1e-12)
    higher = lambda a, b, n: _band_verdict(Comparison("c", "q", "higher", a - b, _accuracy_band(a, b, n), ""))
    assert higher(0.96, 0.95, 359) == "inconclusive"
    assert higher(0.96, 0.95, 100000) == "agrees"
    assert higher(0.90, 0.99, 359) == "disagrees"
    assert _accuracy_band(1.0, 1.0, 100) == 0.005  # no variance: half an example


def _results(seed: int, tight_hard: float, tight_ls: float, mi_hard: float, mi_ls: float, teacher: tuple[float, float]) -> dict:
    point = lambda curve, alpha, t, acc: {"curve": curve, "alpha": alpha, "temperature": t, "accuracy": acc, "gamma": 0.5}
    return {
        "config": {"seed": seed},
        "data": {"n_test": 400},
        "projection": {
            "tightness": {
                HARD: {s: {"plane": tight_hard, "full": 1.0} for s in ("train", "validation")},
                SMOOTHED: {s: {"plane": tight_ls, "full": 1.0} for s in ("train", "validation")},
            }
        },
        "mutual_info": {"curves": {HARD: [[0, 2.0], [3, mi_hard]], SMOOTHED: [[0, 2.0], [3, mi_ls]]}, "log_n": 3.0},
        "distillation": {
            "points": [
                point(TEACHER, 0.0, 1.0, teacher[0]),
                point(TEACHER, 0.1, 1.0, teacher[1]),
                point(FROM_HARD, 0.0, 2.0, 0.90),
                point(FROM_LS, 0.1, 1.0, 0.85),
                point(STUDENT, 0.1, 1.0, 0.88),
            ]
        },
    }


SEEDS = {
    0: _results(0, 0.50, 0.30, 1.20, 0.80, (0.90, 0.93)),
    1: _results(1, 0.52, 0.35, 1.10, 1.12, (0.91, 0.90)),
    2: _results(2, 0.49, 0.31, 1.30, 0.90, (0.92, 0.94)),
}


def test_one_seeds_claims_follow_the_figures_with_their_bands():
    found = claims(SEEDS[0])  # no calibration: 2 projection, 3 distillation, 1 mutual information
    assert [c["claim"][:6] for c in found] == ["Fig. 1", "Fig. 1", "Fig. 5", "Fig. 5", "Fig. 5", "Fig. 6"]
    by_claim = {c.claim: c for c in comparisons(SEEDS[0])}
    tight = by_claim["Fig. 1: label smoothing makes the clusters tighter (train, template plane)"]
    assert (tight.difference, tight.band) == pytest.approx((0.30 - 0.50, 0.025 * 0.80), rel=1e-12)
    assert found[0]["verdict"] == "agrees"
    mi = next(c for c in found if c["claim"].startswith("Fig. 6"))
    assert mi["verdict"] == "agrees"  # 0.8 vs 1.2: outside 5% of the mean
    teacher = next(c for c in found if "teacher's accuracy" in c["claim"])
    assert teacher["verdict"] == "inconclusive"  # 0.93 vs 0.90 on 400 images: within 2 SE (0.038)


def test_over_seeds_the_t_interval_of_the_differences_decides():
    decided = {c["claim"]: c for c in seed_comparison_claims(SEEDS)}
    assert len(decided) == 6
    mi = decided["Fig. 6: label smoothing lowers the mutual information between example and logits late in training"]
    diffs = [0.80 - 1.20, 1.12 - 1.10, 0.90 - 1.30]
    half = student_t.ppf(0.975, df=2) * statistics.stdev(diffs) / math.sqrt(3)
    assert mi["difference"] == pytest.approx(statistics.mean(diffs), abs=1e-12)
    assert (mi["low"], mi["high"]) == pytest.approx((statistics.mean(diffs) - half, statistics.mean(diffs) + half), rel=1e-9)
    assert mi["basis"] == "t-interval over 3 seeds" and mi["verdict"] == "inconclusive"  # seed 1 goes the other way
    assert [s["verdict"] for s in mi["seeds"]] == ["agrees", "inconclusive", "agrees"]  # each seed's own band
    tight = decided["Fig. 1: label smoothing makes the clusters tighter (validation, template plane)"]
    assert tight["verdict"] == "agrees" and tight["high"] < 0  # every seed tighter by 0.17-0.20
    teacher = decided["Fig. 5: label smoothing improves the teacher's accuracy"]
    assert teacher["difference"] == pytest.approx((0.03 - 0.01 + 0.02) / 3, abs=1e-12)
    assert teacher["verdict"] == "inconclusive"


def test_a_claim_measured_by_some_seeds_is_decided_over_those():
    partial = {**SEEDS, 3: {k: v for k, v in SEEDS[0].items() if k != "mutual_info"} | {"config": {"seed": 3}}}
    decided = {c["claim"][:6] + c["quantity"]: c for c in seed_comparison_claims(partial)}
    assert decided["Fig. 6I(X;Y)(LS) - I(X;Y)(hard)"]["basis"] == "t-interval over 3 seeds"
    assert decided["Fig. 1tightness(LS) - tightness(hard)"]["basis"] == "t-interval over 4 seeds"

"""Seed intervals against scipy's t distribution written out, the paired BLEU bootstrap against a brute-force
resampling written here, and the verdict rule on every side of 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ls_seq.studies.significance import paired_bootstrap_bleu, seed_interval, verdict


def test_seed_interval_is_the_student_t_interval_of_the_mean():
    values = [29.28, 29.07, 29.51]
    got = seed_interval(values)
    mean, std = np.mean(values), np.std(values, ddof=1)
    half = 4.302652729911275 * std / math.sqrt(3)  # t_{0.975, 2}
    assert got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(std)
    assert got["low"] == pytest.approx(mean - half) and got["high"] == pytest.approx(mean + half)
    assert seed_interval([1.0])["low"] is None
    with pytest.raises(ValueError, match="at least one number"):
        seed_interval([])


def test_paired_bootstrap_bleu_equals_a_brute_force_resampling():
    """sacrebleu's test, resampled here: the same seeded indices, corpus BLEU of every resample, the same p-value."""
    import sacrebleu

    g = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    refs = [" ".join(g.choice(words, 8)) for _ in range(40)]

    def noisy(sentence, p):
        return " ".join(w if g.random() > p else g.choice(words) for w in sentence.split())

    base, system = [noisy(r, 0.5) for r in refs], [noisy(r, 0.3) for r in refs]
    got = paired_bootstrap_bleu(base, system, refs, n_samples=200, seed=7)
    idx = np.random.default_rng(7).choice(len(refs), size=(200, len(refs)), replace=True)

    def bleu(hyps, sample):
        return sacrebleu.corpus_bleu([hyps[i] for i in sample], [[refs[i] for i in sample]]).score

    b0, s0 = sacrebleu.corpus_bleu(base, [refs]).score, sacrebleu.corpus_bleu(system, [refs]).score
    diffs = np.array([abs(bleu(system, s) - bleu(base, s)) for s in idx])
    p = (np.sum(diffs - diffs.mean() > abs(s0 - b0)) + 1) / 201
    assert got["baseline_bleu"] == pytest.approx(b0) and got["system_bleu"] == pytest.approx(s0)
    assert got["p_value"] == pytest.approx(p, abs=1e-12)
    assert got["difference"] > 0 and got["p_value"] < 0.05
    with pytest.raises(ValueError, match="the same sentences"):
        paired_bootstrap_bleu(base[:3], system, refs)


@pytest.mark.parametrize(
    ("low", "high", "expected", "result"),
    [
        (-0.3, -0.1, "lower", "agrees"),
        (0.1, 0.3, "lower", "disagrees"),
        (-0.1, 0.2, "lower", "inconclusive"),
        (0.1, 0.3, "higher", "agrees"),
        (-0.3, -0.1, "higher", "disagrees"),
        (None, None, "higher", "inconclusive"),
    ],
)
def test_verdict_rule(low, high, expected, result):
    assert verdict(low, high, expected) == result


def test_verdict_refuses_bad_input():
    with pytest.raises(ValueError, match="`expected` must be one of"):
        verdict(0.0, 1.0, "smaller")
    with pytest.raises(ValueError, match="`low` must be <= `high`"):
        verdict(1.0, 0.0, "lower")

"""Seeds and significance: intervals over seeds, paired bootstrap tests of BLEU, and the rule that turns them
into a verdict on a claim of the paper.

* :func:`seed_interval`: mean, standard deviation and the Student-t interval of the mean over seeds.
* :func:`paired_bootstrap_bleu`: sacrebleu's paired bootstrap resampling test (Koehn 2004, as in Moses'
  ``bootstrap-hypothesis-difference-significance.pl``): the BLEU difference of two systems on the same
  references, its p-value and the system's 95% interval.
* :func:`verdict`: ``agrees`` / ``disagrees`` / ``inconclusive`` for a claimed direction of a difference, from
  an interval of that difference: it agrees when the whole interval lies on the claimed side of 0, disagrees
  when it lies on the other side, and is inconclusive when it holds 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ls_seq._extras import require

__all__ = ["DIRECTIONS", "paired_bootstrap_bleu", "seed_interval", "verdict"]

DIRECTIONS = ("lower", "higher")


def seed_interval(values: Sequence[float], level: float = 0.95) -> dict[str, float | int | None]:
    """``mean``, ``std`` (sample), ``n`` and the two-sided Student-t interval ``low``/``high`` of the mean.

    With one value the interval is undefined (``None``): a single seed says nothing about seed variation.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("`values` must hold at least one number (one per seed), got none")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level}")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": None, "n": 1, "low": None, "high": None}
    t = require("scipy.stats", extra="studies", feature="the t-interval over seeds").t

    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, df=n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half}


def paired_bootstrap_bleu(
    baseline: Sequence[str], system: Sequence[str], references: Sequence[str], *, n_samples: int = 1000, seed: int = 12345
) -> dict[str, Any]:
    """sacrebleu's paired bootstrap test of ``system`` against ``baseline`` on the same ``references``.

    Returns ``baseline_bleu``, ``system_bleu``, ``difference`` (system - baseline), ``p_value`` (of the
    absolute difference, two-sided, ``(#{resampled |d| - mean > |d|} + 1) / (n_samples + 1)``), the
    resampled ``system_mean`` and the half-width ``system_ci95`` of its 95% interval, and the test's settings.
    """
    import os

    BLEU = require("sacrebleu.metrics", extra="studies", feature="the paired bootstrap test of BLEU").BLEU
    significance = require("sacrebleu.significance", extra="studies", feature="the paired bootstrap test of BLEU")
    PairedTest, Result = significance.PairedTest, significance.Result

    if not (len(baseline) == len(system) == len(references)):
        raise ValueError(
            f"`baseline`, `system` and `references` must be the same sentences: got {len(baseline)}, {len(system)} and {len(references)}"
        )
    if len(references) < 2:
        raise ValueError(f"a bootstrap over sentences needs at least 2, got {len(references)}")
    previous = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)  # PairedTest reads its seed from the environment
    try:
        test = PairedTest(
            [("baseline", list(baseline)), ("system", list(system))],
            {"BLEU": BLEU()},
            references=[list(references)],
            test_type="bs",
            n_samples=n_samples,
        )
        _, scores = test()
    finally:
        if previous is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = previous
    base, sys_ = scores["BLEU"]
    assert isinstance(base, Result) and isinstance(sys_, Result)  # only the "System" column holds names
    return {
        "baseline_bleu": base.score,
        "system_bleu": sys_.score,
        "difference": sys_.score - base.score,
        "p_value": sys_.p_value,
        "system_mean": sys_.mean,
        "system_ci95": sys_.ci,
        "n_samples": n_samples,
        "seed": seed,
    }


def verdict(low: float | None, high: float | None, expected: str) -> str:
    """``agrees`` if the interval ``[low, high]`` of a difference lies wholly on the ``expected`` side of 0
    (``"lower"``: below 0, ``"higher"``: above), ``disagrees`` if wholly on the other, else ``inconclusive``
    (also when there is no interval)."""
    if expected not in DIRECTIONS:
        raise ValueError(f"`expected` must be one of {DIRECTIONS}, got {expected!r}")
    if low is None or high is None:
        return "inconclusive"
    if low > high:
        raise ValueError(f"`low` must be <= `high`, got [{low}, {high}]")
    below, above = high < 0, low > 0
    if (expected == "lower" and below) or (expected == "higher" and above):
        return "agrees"
    if (expected == "lower" and above) or (expected == "higher" and below):
        return "disagrees"
    return "inconclusive"

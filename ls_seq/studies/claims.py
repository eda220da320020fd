"""The paper's claims against a study's measurements: one rule turns intervals into a verdict, for every study.

A claim is a direction of a difference between two measured quantities, e.g. "label smoothing lowers the
ECE" is ``ECE(LS) - ECE(hard) < 0``. Each seed gives the difference and, where the study can resample its
test set, a paired-bootstrap interval of it (:mod:`ls_seq.studies.intervals`; BLEU: sacrebleu's paired
bootstrap p-value). :func:`decide` applies :data:`VERDICT_RULE`:

* with two or more seeds, the 95% Student-t interval of the per-seed differences
  (:func:`ls_seq.studies.significance.seed_interval`), which holds the variation between trainings;
* with one seed, that seed's bootstrap interval (a p-value below 0.05 counts as an interval that excludes 0,
  on the side of the measured difference), which holds only the variation of the test set;

and :func:`ls_seq.studies.significance.verdict`: *agrees* when the interval lies wholly on the claimed side of 0,
*disagrees* when wholly on the other, *inconclusive* when it holds 0. A claim of "about as good as" is a
one-sided claim with a ``margin``: "A exceeds B by less than ``margin``", i.e. the interval of
``A - B - margin`` lies below 0.

Examples:
    >>> c = decide("LS lowers the ECE", "ECE(LS) - ECE(hard)", "lower",
    ...            [SeedEvidence(42, -0.05, -0.06, -0.04), SeedEvidence(43, -0.04, -0.05, -0.03),
    ...             SeedEvidence(44, -0.045, -0.055, 0.001)])
    >>> c.verdict, [s.verdict for s in c.seeds], c.basis
    ('agrees', ['agrees', 'agrees', 'inconclusive'], 't-interval over 3 seeds')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ls_seq.studies.significance import seed_interval, verdict

__all__ = [
    "AGREES",
    "DISAGREES",
    "INCONCLUSIVE",
    "VERDICT_RULE",
    "Claim",
    "SeedEvidence",
    "claims_table",
    "decide",
    "markdown_cell",
]

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"
P_VALUE_LEVEL = 0.05

VERDICT_RULE = (
    "Each claim is the sign of a per-seed difference between two models on the same test set (the column "
    "*difference*: its mean over seeds). With two or more seeds the verdict comes from the 95% Student-t interval "
    "of the per-seed differences (the variation between trainings); with one seed from that seed's own test where "
    "there is one (BLEU: sacrebleu's paired bootstrap, p < 0.05 counting as an interval that excludes 0; a study "
    "that resamples its test set gives a paired-bootstrap interval), and *inconclusive* where there is none. "
    "*agrees*: the interval lies wholly on the claimed side of 0 (of the margin, where one is stated); "
    "*disagrees*: wholly on the other side; *inconclusive*: it holds it. The per-seed verdicts use each seed's "
    "own test."
)


@dataclass(frozen=True)
class SeedEvidence:
    """One seed's measurement of a claim's difference: the value, and its bootstrap interval or p-value if any."""

    seed: int
    difference: float
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    verdict: str = INCONCLUSIVE


@dataclass(frozen=True)
class Claim:
    """A claim with its evidence and verdict (see :data:`VERDICT_RULE`)."""

    claim: str
    quantity: str
    expected: str
    margin: float
    difference: float
    low: float | None
    high: float | None
    basis: str
    verdict: str
    seeds: list[SeedEvidence] = field(default_factory=list)
    measured: str = ""


def _seed_verdict(evidence: SeedEvidence, expected: str, margin: float) -> str:
    if evidence.low is not None and evidence.high is not None:
        return verdict(evidence.low - margin, evidence.high - margin, expected)
    if evidence.p_value is not None and evidence.p_value < P_VALUE_LEVEL and margin == 0:
        side = evidence.difference  # the test excludes 0: the interval lies on the side of the difference
        return verdict(side, side, expected) if side != 0 else INCONCLUSIVE
    return INCONCLUSIVE


def decide(
    claim: str,
    quantity: str,
    expected: str,
    evidence: Sequence[SeedEvidence],
    *,
    margin: float = 0.0,
    measured: str = "",
) -> Claim:
    """The :class:`Claim` ``quantity < margin`` (``expected="lower"``) or ``> margin`` (``"higher"``) decided from
    ``evidence``, one :class:`SeedEvidence` per seed (see the module docstring for the rule)."""
    if not evidence:
        raise ValueError(f"`evidence` must hold at least one seed's measurement for the claim {claim!r}")
    seeds = [SeedEvidence(e.seed, e.difference, e.low, e.high, e.p_value, _seed_verdict(e, expected, margin)) for e in evidence]
    if len(seeds) >= 2:
        over = seed_interval([e.difference for e in seeds])
        low, high, basis = over["low"], over["high"], f"t-interval over {len(seeds)} seeds"
        assert low is not None and high is not None  # seed_interval gives an interval for 2 or more values
        decided = verdict(low - margin, high - margin, expected)
    else:
        (one,) = seeds
        low, high = one.low, one.high
        basis = "paired bootstrap" if low is not None else ("sacrebleu paired bootstrap" if one.p_value is not None else "none")
        decided = one.verdict
    mean = sum(e.difference for e in seeds) / len(seeds)
    return Claim(claim, quantity, expected, margin, mean, low, high, basis, decided, seeds, measured)


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def markdown_cell(text: str) -> str:
    """``text`` for a Markdown table cell: a ``|`` (as in ``|log T|``) would end the cell, so it is escaped."""
    return text.replace("|", "\\|")


def claims_table(claims: Sequence[Claim], digits: int = 4) -> list[str]:
    """Markdown lines: one row per claim (quantity, expected sign, difference and its interval, per-seed verdicts)."""
    lines = [
        "| claim | quantity (claimed sign) | difference [95% interval] (basis) | per seed | measured | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in claims:
        sign = "< " if c.expected == "lower" else "> "
        claimed = sign + (f"{c.margin:g}" if c.margin else "0")
        interval = f"{_num(c.difference, digits)} [{_num(c.low, digits)}, {_num(c.high, digits)}] ({c.basis})"
        per_seed = ", ".join(
            f"{s.seed}: {s.verdict}" + (f" (p={s.p_value:.3f})" if s.p_value is not None else "") for s in c.seeds
        )
        cells = (c.claim, f"{c.quantity} {claimed}", interval, per_seed, c.measured)
        lines.append("| " + " | ".join(markdown_cell(cell) for cell in cells) + f" | **{c.verdict}** |")
    return lines

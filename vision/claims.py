"""The paper's claims about the image studies, from one seed's results and over seeds.

Every claim is the sign of a difference between two measured quantities (``tightness(LS) - tightness(hard)``
below 0: label smoothing makes the clusters tighter), decided by the rule of :mod:`ls_seq.studies.claims`:

* the calibration claims (Table 3, Sec. 3) from each seed's paired bootstrap interval over the test images
  (:func:`vision.calibration.paired_evidence`);
* the projection, distillation and mutual-information claims (:func:`comparisons`) have no resampling of their
  own. With one seed each has a noise band instead: two binomial standard errors of an accuracy difference
  (``sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n)``, a Wald interval), 5% of the mean for tightness and mutual
  information; a difference inside its band is *inconclusive*. Over seeds the Student-t interval of the
  per-seed differences decides them, like every other claim (:func:`seed_comparison_claims`); the band then
  gives each seed's own verdict.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ls_seq.studies.claims import SeedEvidence, decide
from ls_seq.studies.significance import verdict
from vision.calibration import HARD, HARD_TS, SMOOTHED, paired_evidence
from vision.distillation import FROM_HARD, FROM_LS, STUDENT, TEACHER, DistillationPoint

__all__ = ["Comparison", "claims", "comparisons", "seed_comparison_claims"]

BAND_SHARE = 0.025  # tightness and mutual information: a band of 2.5% of the sum, 5% of the mean


@dataclass(frozen=True)
class Comparison:
    """One seed's measurement of a claim without a resampling test: ``difference`` should be ``expected``
    (``"lower"`` or ``"higher"`` than 0); ``band`` is its single-seed noise band (``|difference| <= band``:
    *inconclusive*)."""

    claim: str
    quantity: str
    expected: str
    difference: float
    band: float
    measured: str

    @property
    def evidence_band(self) -> tuple[float, float]:
        return self.difference - self.band, self.difference + self.band


def _accuracy_band(a: float, b: float, n: int) -> float:
    """Two binomial standard errors of the difference of accuracies ``a`` and ``b`` on ``n`` examples (at
    least half an example)."""
    return max(2 * math.sqrt((a * (1 - a) + b * (1 - b)) / n), 0.5 / n)


def comparisons(results: dict[str, Any]) -> list[Comparison]:
    """The projection (Fig. 1), distillation (Fig. 5) and mutual-information (Fig. 6) claims of one seed."""
    out = []
    if "projection" in results:
        t = results["projection"]["tightness"]
        for split in ("train", "validation"):
            h, s = t[HARD][split]["plane"], t[SMOOTHED][split]["plane"]
            out.append(
                Comparison(
                    f"Fig. 1: label smoothing makes the clusters tighter ({split}, template plane)",
                    "tightness(LS) - tightness(hard)",
                    "lower",
                    s - h,
                    BAND_SHARE * (h + s),
                    f"tightness hard {h:.3f} vs LS {s:.3f} (lower = tighter)",
                )
            )
    if "distillation" in results:
        pts = [DistillationPoint(**p) for p in results["distillation"]["points"]]
        n = results["data"]["n_test"]

        def best(curve: str, exclude_alpha0: bool = False) -> DistillationPoint:
            return max((p for p in pts if p.curve == curve and not (exclude_alpha0 and p.alpha == 0)), key=lambda p: p.accuracy)

        def higher(claim: str, quantity: str, better: DistillationPoint, other: DistillationPoint, measured: str) -> None:
            out.append(
                Comparison(
                    claim,
                    quantity,
                    "higher",
                    better.accuracy - other.accuracy,
                    _accuracy_band(better.accuracy, other.accuracy, n),
                    measured,
                )
            )

        hard_teacher = next(p for p in pts if p.curve == TEACHER and p.alpha == 0.0)
        ls_teacher = best(TEACHER, exclude_alpha0=True)
        higher(
            "Fig. 5: label smoothing improves the teacher's accuracy",
            "accuracy(best LS teacher) - accuracy(hard teacher)",
            ls_teacher,
            hard_teacher,
            f"teacher alpha=0 {hard_teacher.accuracy:.4f} vs best alpha={ls_teacher.alpha:g} {ls_teacher.accuracy:.4f}",
        )
        fh = best(FROM_HARD)
        if any(p.curve == FROM_LS for p in pts):
            fl = best(FROM_LS)
            higher(
                "Fig. 5: students of a hard-target teacher (best T) beat students of LS teachers",
                "accuracy(best student of the hard teacher) - accuracy(best student of an LS teacher)",
                fh,
                fl,
                f"best from hard teacher {fh.accuracy:.4f} (T={fh.temperature:g}) vs best from LS teacher "
                f"{fl.accuracy:.4f} (alpha={fl.alpha:g})",
            )
        st = best(STUDENT)  # over the student's whole alpha grid, 0 included: distillation must beat every one
        higher(
            "Fig. 5: distillation from the hard teacher beats training the student with label smoothing",
            "accuracy(best distilled student) - accuracy(best label-trained student)",
            fh,
            st,
            f"best distilled {fh.accuracy:.4f} vs best label-trained student {st.accuracy:.4f} (alpha={st.alpha:g})",
        )
    if "mutual_info" in results:
        c = results["mutual_info"]["curves"]
        h, s = c[HARD][-1][1], c[SMOOTHED][-1][1]
        out.append(
            Comparison(
                "Fig. 6: label smoothing lowers the mutual information between example and logits late in training",
                "I(X;Y)(LS) - I(X;Y)(hard)",
                "lower",
                s - h,
                BAND_SHARE * (h + s),
                f"final I(X;Y) hard {h:.3f} vs LS {s:.3f} nats (log N = {results['mutual_info']['log_n']:.3f})",
            )
        )
    return out


def _band_verdict(c: Comparison) -> str:
    return verdict(*c.evidence_band, c.expected)


def _calibration_claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One seed's calibration claims: each difference's paired bootstrap interval over the test images; the
    fitted temperatures have none (inconclusive with one seed)."""
    r, seed = results["calibration"]["rows"], results["config"]["seed"]
    ts, ls = r[HARD_TS], r[SMOOTHED]
    t_ls, t_hard = ls["fitted_temperature"], r[HARD]["fitted_temperature"]
    decided = [
        decide(
            "Fig. 2 / Table 3: label smoothing lowers the ECE of hard targets",
            "ECE(LS) - ECE(hard)",
            "lower",
            [paired_evidence(r, HARD, SMOOTHED, "ece", seed)],
            measured=f"ECE hard {r[HARD]['ece']:.4f} vs LS {ls['ece']:.4f}",
        ),
        decide(
            "Table 3: label smoothing calibrates about as well as temperature scaling",
            "ECE(LS) - ECE(hard, fitted T)",
            "lower",
            [paired_evidence(r, HARD_TS, SMOOTHED, "ece", seed)],
            margin=0.01,
            measured=f"ECE temperature scaling {ts['ece']:.4f} (T={ts['temperature']:.2f}) vs LS {ls['ece']:.4f}",
        ),
        decide(
            "Sec. 3: a label-smoothed network needs less temperature scaling (fitted T nearer 1)",
            "|log T(LS)| - |log T(hard)|",
            "lower",
            [SeedEvidence(seed, abs(math.log(t_ls)) - abs(math.log(t_hard)))],
            measured=f"T fitted to LS {t_ls:.2f} vs hard {t_hard:.2f}",
        ),
    ]
    return [
        {
            "claim": c.claim,
            "measured": c.measured,
            "verdict": c.verdict,
            "quantity": c.quantity,
            "difference": c.difference,
            "low": c.low,
            "high": c.high,
            "basis": c.basis,
        }
        for c in decided
    ]


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One seed's claims in the order of the paper's figures, each with the numbers measured and a verdict:
    calibration from the paired bootstrap, the others from their noise bands (module docstring)."""
    found = comparisons(results)
    plain = [{"claim": c.claim, "measured": c.measured, "verdict": _band_verdict(c)} for c in found]
    n_projection = sum(c.claim.startswith("Fig. 1") for c in found)
    calibration = _calibration_claims(results) if "calibration" in results else []
    return plain[:n_projection] + calibration + plain[n_projection:]


def seed_comparison_claims(results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The projection, distillation and mutual-information claims over seeds: the t-interval of the per-seed
    differences decides; each seed's verdict is its noise band's. A claim measured by some seeds only (a study
    not run for all) is decided over those."""
    by_claim: dict[str, list[tuple[int, Comparison]]] = {}
    for seed, res in sorted(results.items()):
        for c in comparisons(res):
            by_claim.setdefault(c.claim, []).append((seed, c))
    out = []
    for claim, measured in by_claim.items():
        first = measured[0][1]
        evidence = [SeedEvidence(seed, c.difference, *c.evidence_band) for seed, c in measured]
        decided = decide(
            claim, first.quantity, first.expected, evidence, measured="; ".join(f"{seed}: {c.measured}" for seed, c in measured)
        )
        out.append(dataclasses.asdict(decided))
    return out

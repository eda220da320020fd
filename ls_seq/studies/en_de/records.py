"""What one EN-DE model's ``evaluation.json`` holds: a frozen record per evaluation stage
(:class:`~ls_seq.studies.stages.StageRecord`), and :class:`Evaluation`, the records done so far, which
:func:`ls_seq.studies.en_de.summary.summarize_model` reads.

The file's layout is the one the study wrote before these records existed (the records' keys side by side),
so older run directories resume: ``teacher_forced`` and ``reliability`` (:class:`TeacherForced`),
``nll_shuffled_sources`` and ``source_check_skipped`` (:class:`ShuffledSources`), ``test_bleu`` and
``share_distinct_outputs`` (:class:`TestBleu`), ``sweep_bleu`` and ``sweep_bleu_sentences``
(:class:`SweepBleu`), ``validation_teacher_forced`` (:class:`ValidationSweep`). NLLs are in nats.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ls_seq.studies.stages import StageRecord, StageStore, json_object, read_record

__all__ = [
    "EVALUATION_RECORDS",
    "Evaluation",
    "ShuffledSources",
    "SweepBleu",
    "TeacherForced",
    "TestBleu",
    "ValidationSweep",
    "evaluation_store",
]

# The per-temperature measures of the teacher-forced pass, in the order evaluation.json holds them.
_MEASURES = ("nll", "ece", "mce", "rms", "accuracy", "mean_confidence")
# The 95% token-level bootstrap bounds (ls_seq.calibration.measures, "bootstrap"), when measured.
_INTERVALS = ("ece_low", "ece_high", "accuracy_low", "accuracy_high")


def _floats(values: Any, name: str, n: int | None = None) -> tuple[float, ...]:
    """``values`` as a tuple of floats, ``n`` of them when given (ValueError/TypeError otherwise)."""
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of numbers, got {type(values).__name__}")
    out = tuple(float(v) for v in values)
    if n is not None and len(out) != n:
        raise ValueError(f"`{name}` holds {len(out)} values for {n} temperatures")
    return out


@dataclass(frozen=True)
class TeacherForced(StageRecord):
    """Stage 1: one teacher-forced pass over the test split at every temperature of the grid and 1.0.

    ``nll`` ... ``mean_confidence`` hold one value per temperature; ``intervals`` the bootstrap bounds per
    temperature (``ece_low``, ...; empty when not measured, as in the fairseq study); ``replicates`` the
    (T, R) bootstrap replicates per measure (None when not measured); ``reliability`` the T = 1 diagram.
    """

    stage = "teacher_forced"
    keys = ("teacher_forced", "reliability")

    temperatures: tuple[float, ...]
    nll: tuple[float, ...]
    ece: tuple[float, ...]
    mce: tuple[float, ...]
    rms: tuple[float, ...]
    accuracy: tuple[float, ...]
    mean_confidence: tuple[float, ...]
    n_tokens: int
    reliability: dict[str, list[float]]
    intervals: dict[str, tuple[float, ...]]
    replicates: dict[str, list[list[float]]] | None = None

    def at(self, temperature: float) -> int:
        """The index of ``temperature`` in ``temperatures``."""
        return self.temperatures.index(float(temperature))

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {"temperatures": list(self.temperatures)}
        values.update({name: list(getattr(self, name)) for name in _MEASURES})
        values.update({name: list(v) for name, v in self.intervals.items()})
        values["n_tokens"] = self.n_tokens
        if self.replicates is not None:
            values["replicates"] = self.replicates
        return {"teacher_forced": values, "reliability": self.reliability}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TeacherForced:
        tf = json_object(doc["teacher_forced"], "teacher_forced")
        temperatures = _floats(tf["temperatures"], "teacher_forced.temperatures")
        n = len(temperatures)
        replicates = tf.get("replicates")
        return cls(
            temperatures=temperatures,
            **{name: _floats(tf[name], f"teacher_forced.{name}", n) for name in _MEASURES},
            n_tokens=int(tf["n_tokens"]),
            reliability=json_object(doc["reliability"], "reliability"),
            intervals={name: _floats(tf[name], f"teacher_forced.{name}", n) for name in _INTERVALS if name in tf},
            replicates=None if replicates is None else json_object(replicates, "teacher_forced.replicates"),
        )


@dataclass(frozen=True)
class ShuffledSources(StageRecord):
    """Stage 2: the T = 1 test NLL with the sources deranged against the targets, or why it was skipped
    (:func:`ls_seq.studies.en_de.evaluation.source_check_skipped`; ``nll`` is None then)."""

    stage = "shuffled_sources"
    keys = ("nll_shuffled_sources", "source_check_skipped")

    nll: float | None
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {"nll_shuffled_sources": self.nll}
        if self.skipped is not None:
            values["source_check_skipped"] = self.skipped
        return values

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ShuffledSources:
        nll, skipped = doc["nll_shuffled_sources"], doc.get("source_check_skipped")
        if skipped is not None and not isinstance(skipped, str):
            raise TypeError(f"`source_check_skipped` must be a string, got {type(skipped).__name__}")
        return cls(nll=None if nll is None else float(nll), skipped=skipped)


@dataclass(frozen=True)
class TestBleu(StageRecord):
    """Stage 3: beam search at T = 1 on the whole test split: its BLEU and the share of distinct outputs."""

    __test__ = False  # not a pytest test class, whatever its name

    stage = "test_bleu"
    keys = ("test_bleu", "share_distinct_outputs")

    bleu: float
    share_distinct_outputs: float

    def to_json(self) -> dict[str, Any]:
        return {"test_bleu": self.bleu, "share_distinct_outputs": self.share_distinct_outputs}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TestBleu:
        return cls(bleu=float(doc["test_bleu"]), share_distinct_outputs=float(doc["share_distinct_outputs"]))


@dataclass(frozen=True)
class SweepBleu(StageRecord):
    """Stage 4: beam-search BLEU on the first ``sentences`` test pairs at each temperature measured so far,
    as ``(temperature, bleu)`` in the order they were measured (a resume that adds temperatures appends)."""

    stage = "sweep_bleu"
    keys = ("sweep_bleu", "sweep_bleu_sentences")

    sentences: int
    points: tuple[tuple[float, float], ...] = ()

    def bleu(self, temperature: float) -> float | None:
        """The BLEU at ``temperature``, None when not measured yet."""
        return next((b for t, b in self.points if t == float(temperature)), None)

    def with_point(self, temperature: float, bleu: float) -> SweepBleu:
        """This record with the BLEU at ``temperature`` added (or replaced, in place)."""
        t = float(temperature)
        if any(p == t for p, _ in self.points):
            points = tuple((p, bleu if p == t else b) for p, b in self.points)
        else:
            points = (*self.points, (t, bleu))
        return SweepBleu(sentences=self.sentences, points=points)

    def to_json(self) -> dict[str, Any]:
        # The keys are repr(float(T)): "1.0", "0.8", as the study has always written them.
        return {"sweep_bleu": {repr(t): b for t, b in self.points}, "sweep_bleu_sentences": self.sentences}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SweepBleu:
        sweep = json_object(doc["sweep_bleu"], "sweep_bleu")
        return cls(sentences=int(doc["sweep_bleu_sentences"]), points=tuple((float(t), float(b)) for t, b in sweep.items()))


@dataclass(frozen=True)
class ValidationSweep(StageRecord):
    """Stage 5: teacher-forced NLL and ECE over the grid on the validation split (to choose a temperature
    without the test set)."""

    stage = "validation"
    keys = ("validation_teacher_forced",)

    temperatures: tuple[float, ...]
    nll: tuple[float, ...]
    ece: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "validation_teacher_forced": {"temperatures": list(self.temperatures), "nll": list(self.nll), "ece": list(self.ece)}
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ValidationSweep:
        val = json_object(doc["validation_teacher_forced"], "validation_teacher_forced")
        temperatures = _floats(val["temperatures"], "validation_teacher_forced.temperatures")
        n = len(temperatures)
        return cls(
            temperatures,
            _floats(val["nll"], "validation_teacher_forced.nll", n),
            _floats(val["ece"], "validation_teacher_forced.ece", n),
        )


EVALUATION_RECORDS: tuple[type[StageRecord], ...] = (TeacherForced, ShuffledSources, TestBleu, SweepBleu, ValidationSweep)


def evaluation_store(path: str | os.PathLike) -> StageStore:
    """The (not yet loaded) store of one model's evaluation stages in ``path`` (``evaluation.json``)."""
    return StageStore(path, EVALUATION_RECORDS)


@dataclass(frozen=True)
class Evaluation:
    """The evaluation stages of one model done so far (None: not done)."""

    teacher_forced: TeacherForced | None = None
    shuffled_sources: ShuffledSources | None = None
    test_bleu: TestBleu | None = None
    sweep_bleu: SweepBleu | None = None
    validation: ValidationSweep | None = None

    def records(self) -> tuple[StageRecord, ...]:
        """The stages done, in the order of the study."""
        return tuple(r for r in (getattr(self, name) for name in _FIELDS) if r is not None)

    @classmethod
    def from_store(cls, store: StageStore) -> Evaluation:
        records: dict[str, Any] = {name: store.get(record_type) for name, record_type in _FIELDS.items()}
        return cls(**records)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], source: str = "the evaluation record") -> Evaluation:
        """From the content of an ``evaluation.json`` (the fairseq study builds one in memory)."""
        records: dict[str, Any] = {name: read_record(record_type, doc, source) for name, record_type in _FIELDS.items()}
        return cls(**records)


# Evaluation's fields and the record each holds.
_FIELDS: dict[str, type[StageRecord]] = {
    "teacher_forced": TeacherForced,
    "shuffled_sources": ShuffledSources,
    "test_bleu": TestBleu,
    "sweep_bleu": SweepBleu,
    "validation": ValidationSweep,
}
assert set(_FIELDS) == {f.name for f in fields(Evaluation)} and set(_FIELDS.values()) == set(EVALUATION_RECORDS), (
    "every Evaluation field holds one of EVALUATION_RECORDS"
)

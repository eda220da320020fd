"""The vision study's measurements as typed stage records (:class:`ls_seq.studies.StageRecord`), one per study,
kept in ``output_dir/stages.json`` so that ``--resume`` reuses a finished study instead of measuring it again.

Each record's ``to_json()`` is ``{study name: what results.json holds under it}``, so ``results.json`` is the
same whether a study was measured now or read back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ls_seq.studies import StageRecord, StageStore
from ls_seq.studies.stages import json_object
from vision.distillation import DistillationPoint

__all__ = [
    "ON_BASE_RUNS",
    "STAGES_NAME",
    "CalibrationStage",
    "DistillationStage",
    "MeasuredRuns",
    "MutualInfoStage",
    "ProjectionStage",
    "stage_store",
]

STAGES_NAME = "stages.json"


@dataclass(frozen=True)
class ProjectionStage(StageRecord):
    """Penultimate-layer projection: per run and split, the cluster tightness on the templates' plane and in
    the full space (``{"plane", "full", "n_examples"}``), and the figure."""

    stage = "projection"
    keys = ("projection",)

    classes: tuple[int, ...]
    tightness: dict[str, dict[str, dict[str, float]]]
    figure: str

    def to_json(self) -> dict[str, Any]:
        return {"projection": {"classes": list(self.classes), "tightness": self.tightness, "figure": self.figure}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ProjectionStage:
        value = json_object(doc["projection"], "projection")
        return cls(
            tuple(int(c) for c in value["classes"]), json_object(value["tightness"], "projection.tightness"), str(value["figure"])
        )


@dataclass(frozen=True)
class CalibrationStage(StageRecord):
    """Calibration table rows (:meth:`vision.calibration.CalibrationRow.as_dict` by row name), the figure, and
    the calibration along training when it was measured."""

    stage = "calibration"
    keys = ("calibration",)

    rows: dict[str, dict[str, Any]]
    figure: str
    along_training: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"rows": self.rows, "figure": self.figure}
        if self.along_training is not None:
            value["along_training"] = self.along_training
        return {"calibration": value}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CalibrationStage:
        value = json_object(doc["calibration"], "calibration")
        along = value.get("along_training")
        return cls(
            json_object(value["rows"], "calibration.rows"),
            str(value["figure"]),
            None if along is None else json_object(along, "calibration.along_training"),
        )


@dataclass(frozen=True)
class MutualInfoStage(StageRecord):
    """Mutual information between input and representation along training: ``curves`` maps a run to its
    ``[epoch, mutual information]`` points (nats), bounded by ``log_n``."""

    stage = "mutual_info"
    keys = ("mutual_info",)

    classes: tuple[int, ...]
    n_examples: int
    n_augmentations: int
    log_n: float
    curves: dict[str, list[list[float]]]
    figure: str

    def to_json(self) -> dict[str, Any]:
        return {
            "mutual_info": {
                "classes": list(self.classes),
                "n_examples": self.n_examples,
                "n_augmentations": self.n_augmentations,
                "log_n": self.log_n,
                "curves": self.curves,
                "figure": self.figure,
            }
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MutualInfoStage:
        value = json_object(doc["mutual_info"], "mutual_info")
        return cls(
            tuple(int(c) for c in value["classes"]),
            int(value["n_examples"]),
            int(value["n_augmentations"]),
            float(value["log_n"]),
            json_object(value["curves"], "mutual_info.curves"),
            str(value["figure"]),
        )


@dataclass(frozen=True)
class DistillationStage(StageRecord):
    """Distillation: one :class:`~vision.distillation.DistillationPoint` per trained network, and the figure."""

    stage = "distillation"
    keys = ("distillation",)

    points: tuple[DistillationPoint, ...]
    figure: str

    def to_json(self) -> dict[str, Any]:
        return {"distillation": {"points": [asdict(p) for p in self.points], "figure": self.figure}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DistillationStage:
        value = json_object(doc["distillation"], "distillation")
        return cls(tuple(DistillationPoint(**p) for p in value["points"]), str(value["figure"]))


@dataclass(frozen=True)
class MeasuredRuns(StageRecord):
    """The trained runs (their directories under ``runs/``) that the projection, calibration and
    mutual-information records measured: a resume that trains other ones (adding ``mutual_info`` trains the
    base networks again with its callback) measures those studies again."""

    stage = "measured_runs"
    keys = ("measured_runs",)

    runs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"measured_runs": list(self.runs)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MeasuredRuns:
        if not isinstance(doc["measured_runs"], list):
            raise TypeError(f"`measured_runs` must be a list, got {type(doc['measured_runs']).__name__}")
        return cls(tuple(str(r) for r in doc["measured_runs"]))


# The records that measure the base networks (MeasuredRuns says which ones).
ON_BASE_RUNS = (ProjectionStage, CalibrationStage, MutualInfoStage)


def stage_store(path: str) -> StageStore:
    """The (not yet loaded) store of the vision studies' records in ``path``."""
    return StageStore(path, (*ON_BASE_RUNS, DistillationStage, MeasuredRuns))

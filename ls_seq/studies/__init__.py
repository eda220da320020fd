"""What every ls-seq study shares: run directory, presets, stage records, stage boundaries, calibration along
training, claims, seeds.

:mod:`ls_seq.studies.run_dir`
    :class:`RunDirectory`: the output directory, locked for the run, with the resolved configuration that
    ``--resume`` is checked against.
:mod:`ls_seq.studies.presets`
    :class:`PresetRegistry` of frozen dataclass presets, :func:`apply_overrides` from the command line.
:mod:`ls_seq.studies.stages`
    :class:`StageStore`: a study's finished stages as typed records in one JSON file, what ``--resume`` skips.
:mod:`ls_seq.studies.failpoints`
    :func:`stage_boundary`: the named points between a study's stages, where the fault tests kill it.
:mod:`ls_seq.studies.trajectory`
    Calibration along training: the point a model turns over-confident, one compute and one plot function.
:mod:`ls_seq.studies.claims`
    The paper's claims against a study's measurements: one rule from intervals to a verdict.
:mod:`ls_seq.studies.intervals`
    Paired bootstrap intervals of the difference between two models on the same evaluation set.
:mod:`ls_seq.studies.seeds`
    What a study over several seeds shares: seed directories, summaries over seeds, the report's tables.
"""

from ls_seq.studies.failpoints import stage_boundary
from ls_seq.studies.presets import PresetRegistry, apply_overrides, preset_dict
from ls_seq.studies.run_dir import (
    RunDirectory,
    RunLock,
    config_differences,
    extend_config,
)
from ls_seq.studies.stages import StageRecord, StageRecordError, StageStore
from ls_seq.studies.trajectory import (
    TrajectoryCurve,
    TrajectoryPoint,
    overconfident_from,
    plot_trajectory,
    trajectory_curves,
)

__all__ = [
    "PresetRegistry",
    "RunDirectory",
    "RunLock",
    "StageRecord",
    "StageRecordError",
    "StageStore",
    "TrajectoryCurve",
    "TrajectoryPoint",
    "apply_overrides",
    "config_differences",
    "extend_config",
    "overconfident_from",
    "plot_trajectory",
    "preset_dict",
    "stage_boundary",
    "trajectory_curves",
]

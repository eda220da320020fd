"""The vision study: train, measure and plot the paper's image experiments, and write the results.

:func:`run_study` wires the pieces together (it holds no math of its own; its configuration is
:mod:`vision.config`, its report :mod:`vision.report`):

1. load the data (:mod:`vision.data`);
2. for ``projection``, ``calibration`` and ``mutual_info``: train the base network twice with one training
   function (:func:`vision.train.train_model`), with hard targets (``alpha = 0``) and with label smoothing
   (``alpha``); the mutual-information callback rides along when that study is asked for;
3. projection (:mod:`vision.projection`), calibration (:mod:`vision.calibration`), distillation
   (:mod:`vision.distillation`), each plotted by :mod:`vision.plots` or ``ls_seq.calibration.plots``;
4. ``results.json``, ``report.md`` and the PNG figures in ``output_dir``, each written atomically (the
   figures first, ``report.md`` and ``results.json`` last, as one set).

``output_dir`` is a :class:`ls_seq.studies.RunDirectory`: locked for the run, with its configuration in
``run_config.json``. Checkpoints live in ``output_dir/runs/<run>/``, and each finished study's record in
``output_dir/stages.json`` (:mod:`vision.stages`); ``--resume`` continues every run from its checkpoint and
reads finished studies back when the configuration is the same (another ``--study`` may be added; anything
else that differs is refused, listing the differences), ``--overwrite_output_dir`` starts over.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from ls_seq.calibration.plots import plot_reliability_diagram
from ls_seq.checkpoints import set_aside
from ls_seq.errors import InputError, LsSeqWarning
from ls_seq.io import atomic_savefig, atomic_write_files, json_bytes
from ls_seq.studies import RunDirectory, StageRecord
from ls_seq.studies.trajectory import TrajectoryPoint, overconfident_from, plot_trajectory, trajectory_curves
from vision.calibration import (
    HARD,
    SMOOTHED,
    CalibrationAlongTraining,
    calibration_table,
    trajectory_points,
)
from vision.claims import claims
from vision.config import PRESETS, STUDIES, VisionPreset, VisionStudyConfig
from vision.data import (
    HFImageDataset,
    VisionData,
    load_vision_data,
)
from vision.distillation import (
    distillation_study,
)
from vision.information import MutualInformationCallback, select_two_class_indices
from vision.plots import plot_distillation, plot_mutual_information, plot_projection
from vision.projection import (
    cluster_tightness,
    template_plane_basis,
    template_plane_projection,
)
from vision.report import study_report
from vision.stages import (
    ON_BASE_RUNS,
    STAGES_NAME,
    CalibrationStage,
    DistillationStage,
    MeasuredRuns,
    MutualInfoStage,
    ProjectionStage,
    stage_store,
)
from vision.train import TrainResult, collect_outputs, train_model

# the configuration (vision.config) is importable from here too: the recipe and the seeds loop read it with the study
__all__ = ["PRESETS", "STUDIES", "VisionPreset", "VisionStudyConfig", "run_study"]


def _labels(dataset: Any) -> torch.Tensor:
    if isinstance(dataset, HFImageDataset):
        return torch.as_tensor(dataset.hf_dataset.select(dataset.indices)[dataset.label_column]).long()
    return dataset.labels


def _images(dataset: Any, indices: torch.Tensor) -> torch.Tensor:
    if hasattr(dataset, "images"):
        return dataset.images[indices]
    return torch.stack([dataset[int(i)][0] for i in indices])


# ------------------------------------------------------------------------------------------------ studies


def _projection(cfg: VisionStudyConfig, data: VisionData, runs: dict[str, TrainResult], out: str) -> ProjectionStage:
    classes = cfg.projection_classes
    g = torch.Generator().manual_seed(cfg.seed)
    panels, tightness = {}, {}
    for run_name, result in runs.items():
        head = result.model.get_classifier()
        weight, bias = head.weight.detach().cpu(), head.bias.detach().cpu()
        origin, basis = template_plane_basis(weight, bias, classes)
        tmpl = torch.cat([weight, bias[:, None]], dim=1).double()[classes]
        tmpl_2d = (tmpl - origin) @ basis  # (3, 2)
        tightness[run_name] = {}
        for split_name, split in (("train", data.train), ("validation", data.val)):
            labels = _labels(split)
            idx = torch.nonzero(torch.isin(labels, torch.tensor(classes))).flatten()
            if idx.numel() > cfg.max_plot_points:
                idx = idx[torch.randperm(idx.numel(), generator=g)[: cfg.max_plot_points]]
            subset = torch.utils.data.TensorDataset(_images(split, idx), labels[idx])
            outputs = collect_outputs(result.model, subset, features=True)
            points = template_plane_projection(outputs.features, weight, bias, classes)  # (n, 2)
            full = torch.cat([outputs.features.double(), torch.ones(len(idx), 1, dtype=torch.float64)], dim=1)
            tightness[run_name][split_name] = {
                "plane": cluster_tightness(points, outputs.labels, classes),
                "full": cluster_tightness(full, outputs.labels, classes),
                "n_examples": int(idx.numel()),
            }
            panels[f"{run_name}, {split_name}"] = (points, outputs.labels, tmpl_2d)
    names = [data.class_names[c] for c in classes]
    title = f"{data.name}: penultimate layer on the plane of the templates of classes {', '.join(names)}"
    fig = plot_projection(panels, classes, class_names=data.class_names, title=title)
    atomic_savefig(fig, os.path.join(out, "projection.png"), dpi=120)
    return ProjectionStage(tuple(classes), tightness, "projection.png")


def _calibration(cfg: VisionStudyConfig, data: VisionData, runs: dict[str, TrainResult], out: str) -> CalibrationStage:
    def outs(result: TrainResult, split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        o = collect_outputs(result.model, split)
        return o.logits, o.labels

    rows = calibration_table(
        outs(runs[HARD], data.val),
        outs(runs[HARD], data.test),
        outs(runs[SMOOTHED], data.val),
        outs(runs[SMOOTHED], data.test),
        n_bins=cfg.n_bins,
    )
    fig = plot_reliability_diagram(
        {f"{name} (T={row.temperature:.2f})": row.reliability for name, row in rows.items()},
        title=f"{data.name}, test split, {cfg.n_bins} bins",
    )
    atomic_savefig(fig, os.path.join(out, "reliability.png"), dpi=120)
    trajectories = {name: trajectory_points(r.history) for name, r in runs.items()}
    along = _along_training(cfg, trajectories, out) if all(trajectories.values()) else None
    return CalibrationStage({name: row.as_dict() for name, row in rows.items()}, "reliability.png", along)


def _along_training(cfg: VisionStudyConfig, trajectories: dict[str, list[TrajectoryPoint]], out: str) -> dict:
    """Validation calibration along training of the base networks: the points, the epoch from which each stays
    over-confident, and ``calibration_along_training.png``."""
    fig = plot_trajectory(
        trajectory_curves({name: {cfg.seed: pts} for name, pts in trajectories.items()}),
        x_label="epoch",
        title="Validation calibration along training",
    )
    atomic_savefig(fig, os.path.join(out, "calibration_along_training.png"), dpi=120)
    return {
        "every": cfg.calibration_every,
        "runs": {
            name: {"points": [asdict(p) for p in pts], "overconfident_from_epoch": overconfident_from(pts)}
            for name, pts in trajectories.items()
        },
        "figure": "calibration_along_training.png",
    }


def _mutual_info_callback(cfg: VisionStudyConfig, data: VisionData) -> MutualInformationCallback:
    g = torch.Generator().manual_seed(cfg.seed)
    idx = select_two_class_indices(_labels(data.train), cfg.mi_classes, cfg.mi_examples, g)
    augment = data.augment
    if augment is None:
        raise ValueError(f"dataset {data.name!r} has no augmentation; the MI study needs one")
    return MutualInformationCallback(_images(data.train, idx), cfg.mi_classes, augment, cfg.mi_augmentations, seed=cfg.seed)


def _mutual_info(cfg: VisionStudyConfig, data: VisionData, runs: dict[str, TrainResult], out: str) -> MutualInfoStage:
    log_n = math.log(cfg.mi_examples)
    fig = plot_mutual_information(
        {name: r.history for name, r in runs.items()},
        upper_bound=log_n,
        title=f"{data.name}: classes {cfg.mi_classes}, N={cfg.mi_examples}, L={cfg.mi_augmentations}",
    )
    atomic_savefig(fig, os.path.join(out, "mutual_information.png"), dpi=120)
    curves = {
        name: [[h["epoch"], h["mutual_information"]] for h in r.history if "mutual_information" in h] for name, r in runs.items()
    }
    return MutualInfoStage(tuple(cfg.mi_classes), cfg.mi_examples, cfg.mi_augmentations, log_n, curves, "mutual_information.png")


def _distillation(cfg: VisionStudyConfig, data: VisionData, out: str) -> DistillationStage:
    points = distillation_study(
        data,
        teacher_model=cfg.teacher_model,
        student_model=cfg.student_model,
        teacher_config=cfg.train_config(0.0),
        student_config=cfg.train_config(0.0, t2_scaling=cfg.distill_t2_scaling),
        alphas=cfg.distill_alphas,
        temperatures=cfg.distill_temperatures,
        run_root=os.path.join(out, "runs", "distillation"),
        progress=cfg.progress,
    )
    fig = plot_distillation(points, title=f"{data.name}: {cfg.teacher_model} -> {cfg.student_model}")
    atomic_savefig(fig, os.path.join(out, "distillation.png"), dpi=120)
    return DistillationStage(tuple(points), "distillation.png")


_NOT_CONFIGURATION = ("study", "output_dir", "data_dir", "cache_dir", "progress", "resume", "overwrite_output_dir", "seeds")


def run_config(cfg: VisionStudyConfig, data: VisionData) -> dict[str, Any]:
    """What ``run_config.json`` holds and ``--resume`` compares: the arguments that decide the results (the
    studies as a list, which a resume may extend), and the data by its sizes."""
    config = {k: v for k, v in asdict(cfg).items() if k not in _NOT_CONFIGURATION}
    config["studies"] = sorted(cfg.studies())
    config["data"] = {
        "name": data.name,
        "num_classes": data.num_classes,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
    }
    return config


def run_study(cfg: VisionStudyConfig, command: str | None = None) -> dict:
    """Run the studies of ``cfg`` and write ``results.json``, ``report.md`` and figures to ``cfg.output_dir``.

    Returns the results dict written to ``results.json`` (history of the base runs, each study's numbers,
    and ``claims``: the paper's claims with the measured numbers and a verdict). ``command`` is recorded in
    ``run_config.json`` (default: ``sys.argv``).
    """
    if not isinstance(cfg, VisionStudyConfig):
        raise TypeError(f"`cfg` must be a VisionStudyConfig, got {type(cfg).__name__}")
    run = RunDirectory(cfg.output_dir, "vision")  # refuses an unusable output_dir before any work
    data = load_vision_data(
        cfg.dataset,
        data_dir=cfg.data_dir,
        cache_dir=cfg.cache_dir,
        seed=cfg.seed,
        max_train_samples=cfg.max_train_samples,
        val_size=cfg.val_size,
    )
    main_process = int(os.environ.get("RANK", "0")) == 0
    config = run_config(cfg, data)
    if main_process:
        config = run.open(
            config,
            command=command or " ".join(sys.argv),
            resume=cfg.resume,
            overwrite=cfg.overwrite_output_dir,
            extendable={"studies": "sort"},
        )
    try:
        return _run_studies(cfg, data, set(config["studies"]), os.fspath(run.path), write=main_process)
    finally:
        run.close()


def _run_studies(cfg: VisionStudyConfig, data: VisionData, studies: set[str], out: str, *, write: bool) -> dict:
    results: dict[str, Any] = {
        # not the flags of this invocation (resume, progress): a resumed run writes what an uninterrupted one does
        "config": {
            **{k: v for k, v in asdict(cfg).items() if k not in ("resume", "overwrite_output_dir", "progress", "seeds")},
            "studies": sorted(studies),
        },
        "data": {
            "name": data.name,
            "num_classes": data.num_classes,
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_test": len(data.test),
        },
    }
    timings: dict[str, Any] = {}
    stages = stage_store(os.path.join(out, STAGES_NAME))
    if cfg.resume:
        try:
            stages.load()
        except InputError as exc:  # not JSON (a record that does not parse is refused by get, naming it)
            if write:
                moved = set_aside(stages.path)
                warnings.warn(f"{exc}; set aside as {str(moved)!r}, measuring again", LsSeqWarning, stacklevel=2)

    def measured(record_type: type[StageRecord], measure: Callable[[], StageRecord]) -> dict[str, Any]:
        """What results.json holds for one study: its record read back (a resume), or measured and saved."""
        record = stages.get(record_type)
        if record is None:
            record = measure()
            stages.put(record)
            if write:
                stages.save()
        return record.to_json()[record_type.keys[0]]

    if studies & {"projection", "calibration", "mutual_info"}:
        callbacks = [_mutual_info_callback(cfg, data)] if "mutual_info" in studies else []
        along = CalibrationAlongTraining(data.val, cfg.calibration_every, n_bins=cfg.n_bins) if cfg.calibration_every else None
        runs, run_dirs = {}, []
        for name, alpha in ((HARD, 0.0), (SMOOTHED, cfg.alpha)):
            tag = "alpha0" if alpha == 0 else f"alpha{alpha:g}"
            mixing = (f"_mixup{cfg.mixup:g}" if cfg.mixup else "") + (f"_cutmix{cfg.cutmix:g}" if cfg.cutmix else "")
            run_dir = os.path.join(out, "runs", f"{cfg.model}_{tag}{mixing}" + ("_mi" if callbacks else ""))
            run_dirs.append(run_dir)
            start, calibration_before = time.perf_counter(), along.seconds if along else 0.0
            runs[name] = train_model(
                cfg.model,
                data,
                cfg.train_config(alpha, mixup=cfg.mixup, cutmix=cfg.cutmix),
                run_dir=run_dir,
                callbacks=[*callbacks, *([along] if along else [])],
                progress=cfg.progress,
                description=f"{name}",
            )
            seconds = time.perf_counter() - start
            timings[name] = {"train_seconds_this_run": round(seconds, 2)}
            if along:  # included in the training time
                spent = along.seconds - calibration_before
                timings[name] |= {
                    "calibration_along_training_seconds": round(spent, 2),
                    "calibration_share_of_training": round(spent / max(seconds, 1e-9), 4),
                }
        results["runs"] = {name: r.history for name, r in runs.items()}
        trained = MeasuredRuns(tuple(os.path.basename(d) for d in run_dirs))
        if stages.get(MeasuredRuns) != trained:  # records of other networks are not these networks' measurements
            for record_type in ON_BASE_RUNS:
                stages.drop(record_type)
            stages.put(trained)
        if "projection" in studies:
            results["projection"] = measured(ProjectionStage, lambda: _projection(cfg, data, runs, out))
        if "calibration" in studies:
            results["calibration"] = measured(CalibrationStage, lambda: _calibration(cfg, data, runs, out))
        if "mutual_info" in studies:
            results["mutual_info"] = measured(MutualInfoStage, lambda: _mutual_info(cfg, data, runs, out))
    if "distillation" in studies:
        results["distillation"] = measured(DistillationStage, lambda: _distillation(cfg, data, out))
    results["claims"] = claims(results)
    if write:  # the figures are written; the report and the results that name them come last, together
        atomic_write_files(
            {
                # wall-clock apart, so that results.json is a deterministic function of the configuration
                os.path.join(out, "timings.json"): json_bytes(timings),
                os.path.join(out, "report.md"): study_report(cfg, results, studies),
                os.path.join(out, "results.json"): json_bytes(results),
            }
        )
    return results

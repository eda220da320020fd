"""The vision study: train, measure and plot the paper's image experiments, and write the results.

:func:`run_study` wires the pieces together (it holds no math of its own):

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

import dataclasses
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ls_seq.calibration.plots import plot_reliability_diagram
from ls_seq.checks import (
    check_alpha,
    check_choice,
    check_positive_int,
    check_seeds,
    check_temperatures,
)
from ls_seq.errors import InputError, LsSeqWarning
from ls_seq.io import atomic_savefig, atomic_write_files, json_bytes
from ls_seq.studies import PresetRegistry, RunDirectory, StageRecord
from ls_seq.studies.checkpoints import set_aside
from ls_seq.studies.claims import markdown_cell
from ls_seq.studies.trajectory import TrajectoryPoint, overconfident_from, plot_trajectory, trajectory_curves
from vision.calibration import (
    HARD,
    SMOOTHED,
    CalibrationAlongTraining,
    calibration_table,
    trajectory_points,
)
from vision.claims import claims
from vision.data import (
    DATASETS,
    HFImageDataset,
    VisionData,
    check_data_dir,
    load_vision_data,
)
from vision.distillation import (
    distillation_study,
)
from vision.information import MutualInformationCallback, select_two_class_indices
from vision.models import MODELS
from vision.plots import plot_distillation, plot_mutual_information, plot_projection
from vision.projection import (
    check_classes,
    cluster_tightness,
    template_plane_basis,
    template_plane_projection,
)
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
from vision.train import TrainConfig, TrainResult, collect_outputs, train_model

__all__ = ["PRESETS", "STUDIES", "VisionPreset", "VisionStudyConfig", "run_study"]

STUDIES = ("projection", "calibration", "distillation", "mutual_info", "all")

@dataclass(frozen=True)
class VisionPreset:
    """A named setting of the vision study: the dataset, its networks and SGD schedule (flags override each).

    ``calibration_every``: epochs between two points of the calibration along training (vision.calibration);
    ``max_train_samples``: None trains on the whole training split; ``num_classes``: None is read from the
    ImageNet folder.
    """

    dataset: str
    model: str
    teacher_model: str
    student_model: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    num_classes: int | None
    calibration_every: int
    max_train_samples: int | None = None


# Per-dataset defaults: the paper's architectures (AlexNet on CIFAR-10, ResNet-56 on CIFAR-100,
# Inception-v4 on ImageNet, a ResNet-56 teacher for an AlexNet student) and standard SGD schedules.
_DIGITS = VisionPreset("digits", "digits_cnn", "digits_cnn", "digits_mlp", epochs=30, batch_size=64, lr=0.05,
                       weight_decay=5e-4, num_classes=10, calibration_every=3)  # fmt: skip
PRESETS: PresetRegistry[VisionPreset] = PresetRegistry({
    "digits": _DIGITS,
    "cifar10": VisionPreset("cifar10", "alexnet_cifar", "resnet56", "alexnet_cifar", epochs=160, batch_size=128,
                            lr=0.05, weight_decay=5e-4, num_classes=10, calibration_every=10),
    "cifar100": VisionPreset("cifar100", "resnet56", "resnet56", "alexnet_cifar", epochs=160, batch_size=128, lr=0.1,
                             weight_decay=1e-4, num_classes=100, calibration_every=10),
    "imagenet": VisionPreset("imagenet", "inception_v4", "inception_v4", "resnet56", epochs=90, batch_size=256, lr=0.1,
                             weight_decay=1e-4, num_classes=None, calibration_every=5),
    # The over-confident regime on a CPU (docs/vision.md): few training images, long training, no weight decay.
    "digits-lowdata": dataclasses.replace(_DIGITS, epochs=60, weight_decay=0.0, max_train_samples=200, calibration_every=5),
})  # fmt: skip


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class VisionStudyConfig:
    """Arguments of the vision study (also the recipe's command line). ``None`` means the dataset's preset."""

    dataset: str = _help(f"one of {', '.join(DATASETS)}", default="digits")
    study: str = _help(f"one of {', '.join(STUDIES)}", default="all")
    output_dir: str = _help("where results.json, report.md, the figures and runs/ are written", default="outputs/vision")
    epochs: int | None = _help("training epochs of every network (preset: digits 30, CIFAR 160)", default=None)
    batch_size: int | None = _help("training batch size", default=None)
    lr: float | None = _help("initial SGD learning rate (x0.1 at half and three quarters of training)", default=None)
    weight_decay: float | None = _help("SGD weight decay", default=None)
    alpha: float = _help("label-smoothing strength of the smoothed network (paper: 0.1)", default=0.1)
    model: str | None = _help(f"network of projection/calibration/MI, one of {', '.join(MODELS)}", default=None)
    teacher_model: str | None = _help("distillation teacher network", default=None)
    student_model: str | None = _help("distillation student network", default=None)
    projection_classes: list[int] | None = _help("three distinct classes for the projection (default 0 1 2)", default=None)
    mi_classes: list[int] | None = _help("two distinct classes for the mutual information (default 0 1)", default=None)
    mi_examples: int = _help("N: training examples (of the two classes) in the MI estimate", default=60)
    mi_augmentations: int = _help("L: augmentations of each example in the MI estimate", default=32)
    distill_alphas: list[float] = _help(
        "label smoothing of the teachers and plain students (0 is always added)",
        default_factory=lambda: [0.1, 0.2, 0.4, 0.6],
    )
    distill_temperatures: list[float] = _help(
        "temperatures at which the hard-target teacher is distilled", default_factory=lambda: [1.0, 2.0, 4.0, 8.0]
    )
    distill_t2_scaling: bool = _help("multiply the distillation term by T^2 (Hinton et al.)", default=True)
    n_bins: int = _help("confidence bins of ECE and reliability diagrams (paper: 15)", default=15)
    preset: str | None = _help(
        f"named setting, one of {', '.join(PRESETS)} (default: the dataset's; digits-lowdata: 200 training images, "
        "60 epochs, no weight decay, where the hard-target network is over-confident)", default=None,
    )
    mixup: float = _help("MixUp Beta(a, a) parameter for the two base networks (0: off; Zhang et al. 2018)", default=0.0)
    cutmix: float = _help("CutMix Beta(a, a) parameter for the two base networks (0: off; with --mixup: one per batch)", default=0.0)
    calibration_every: int | None = _help(
        "validation ECE/NLL/best temperature of the base networks every n epochs (0: off; preset: digits 5)", default=None
    )
    max_train_samples: int | None = _help("train on a stratified subset of this size (quick runs)", default=None)
    val_size: int | None = _help("held-out training images for temperature fitting (CIFAR 5000, ImageNet 10000)", default=None)
    max_plot_points: int = _help("examples per projection panel", default=1500)
    data_dir: str | None = _help("local data: a CIFAR save_to_disk/parquet folder, or the ImageNet train/ val/ tree", default=None)
    cache_dir: str | None = _help("datasets cache directory", default=None)
    seed: int = _help("seed of splits, initialisation, shuffling and augmentation", default=0)
    seeds: list[int] | None = _help(
        "run the whole study once per seed in output_dir/seed_<s>/ and summarise over seeds (vision.seeds); "
        "replaces --seed", default=None,
    )
    mixed_precision: str = _help("accelerate mixed precision: no, fp16 or bf16", default="no")
    cpu: bool = _help("train on the CPU even when a GPU is present", default=False)
    progress: bool = _help("show tqdm progress bars", default=True)
    resume: bool = _help("continue the run in output_dir (same configuration; another --study may be added)", default=False)
    overwrite_output_dir: bool = _help("start over in an output_dir that holds a run", default=False)

    def __post_init__(self) -> None:
        check_choice(self.dataset, "dataset", DATASETS)
        check_choice(self.study, "study", STUDIES)
        if not isinstance(self.output_dir, (str, os.PathLike)) or not os.fspath(self.output_dir):
            raise ValueError(f"`output_dir` must be a non-empty path, got {self.output_dir!r}")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise ValueError(f"`output_dir` must be a directory, got {os.fspath(self.output_dir)!r}, an existing file")
        if self.preset is None:
            self.preset = self.dataset
        preset = PRESETS[self.preset]  # a ValueError naming the presets for an unknown name
        if preset.dataset != self.dataset:
            raise ValueError(f"`preset` {self.preset!r} is a {preset.dataset} setting, got dataset={self.dataset!r}")
        for name in ("epochs", "batch_size", "lr", "weight_decay", "model", "teacher_model", "student_model",
                     "max_train_samples", "calibration_every"):  # fmt: skip
            if getattr(self, name) is None:
                setattr(self, name, getattr(preset, name))
        for name in ("model", "teacher_model", "student_model"):
            check_choice(getattr(self, name), name, tuple(MODELS))
        for name in ("epochs", "batch_size", "mi_examples", "n_bins", "max_plot_points"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.mi_augmentations, "mi_augmentations", minimum=2)
        check_positive_int(self.seed, "seed", minimum=0)
        if self.seeds is not None:
            self.seeds = check_seeds(self.seeds)
        for name in ("max_train_samples", "val_size"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name)
        check_positive_int(self.calibration_every or 0, "calibration_every", minimum=0)
        self.alpha = check_alpha(self.alpha, "alpha", allow_one=False)
        if self.alpha == 0:
            raise ValueError("`alpha` must be > 0: the study compares alpha=0 with label smoothing alpha, got 0")
        self.distill_alphas = [check_alpha(a, f"distill_alphas[{i}]", allow_one=False) for i, a in enumerate(self.distill_alphas)]
        self.distill_temperatures = check_temperatures(self.distill_temperatures, "distill_temperatures")
        check_choice(self.mixed_precision, "mixed_precision", ("no", "fp16", "bf16"))
        if self.resume and self.overwrite_output_dir:
            raise ValueError("`resume` and `overwrite_output_dir` exclude each other: keep the run or start over")
        check_data_dir(self.data_dir, required=self.dataset == "imagenet")
        num_classes = preset.num_classes or _count_imagenet_classes(self.data_dir)
        self.projection_classes = list(check_classes(self.projection_classes or [0, 1, 2], num_classes, 3, "projection_classes"))
        self.mi_classes = list(check_classes(self.mi_classes or [0, 1], num_classes, 2, "mi_classes"))
        # the base training config is built now so that its own checks also run before any work
        self.train_config(0.0, mixup=self.mixup, cutmix=self.cutmix)

    def studies(self) -> set[str]:
        return set(STUDIES[:-1]) if self.study == "all" else {self.study}

    def train_config(self, alpha: float, **overrides: Any) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay, alpha=alpha,
            seed=self.seed, mixed_precision=self.mixed_precision, cpu=self.cpu, **overrides,
        )


def _count_imagenet_classes(data_dir: str) -> int:
    train = os.path.join(data_dir, "train")
    if not os.path.isdir(train):
        raise ValueError(f"`data_dir` must hold a train/ folder of class sub-folders, got {data_dir!r} without one")
    n = sum(os.path.isdir(os.path.join(train, d)) for d in os.listdir(train))
    if n < 3:
        raise ValueError(f"`data_dir`/train must hold at least 3 class folders, got {n}")
    return n


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
        outs(runs[HARD], data.val), outs(runs[HARD], data.test),
        outs(runs[SMOOTHED], data.val), outs(runs[SMOOTHED], data.test), n_bins=cfg.n_bins,
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
    fig = plot_trajectory(trajectory_curves({name: {cfg.seed: pts} for name, pts in trajectories.items()}),
                          x_label="epoch", title="Validation calibration along training")  # fmt: skip
    atomic_savefig(fig, os.path.join(out, "calibration_along_training.png"), dpi=120)
    return {
        "every": cfg.calibration_every,
        "runs": {name: {"points": [asdict(p) for p in pts], "overconfident_from_epoch": overconfident_from(pts)}
                 for name, pts in trajectories.items()},  # fmt: skip
        "figure": "calibration_along_training.png",
    }


def _mutual_info_callback(cfg: VisionStudyConfig, data: VisionData) -> MutualInformationCallback:
    g = torch.Generator().manual_seed(cfg.seed)
    idx = select_two_class_indices(_labels(data.train), cfg.mi_classes, cfg.mi_examples, g)
    augment = data.augment
    if augment is None:
        raise ValueError(f"dataset {data.name!r} has no augmentation; the MI study needs one")
    return MutualInformationCallback(
        _images(data.train, idx), cfg.mi_classes, augment, cfg.mi_augmentations, seed=cfg.seed
    )


def _mutual_info(cfg: VisionStudyConfig, data: VisionData, runs: dict[str, TrainResult], out: str) -> MutualInfoStage:
    log_n = math.log(cfg.mi_examples)
    fig = plot_mutual_information(
        {name: r.history for name, r in runs.items()}, upper_bound=log_n,
        title=f"{data.name}: classes {cfg.mi_classes}, N={cfg.mi_examples}, L={cfg.mi_augmentations}",
    )
    atomic_savefig(fig, os.path.join(out, "mutual_information.png"), dpi=120)
    curves = {
        name: [[h["epoch"], h["mutual_information"]] for h in r.history if "mutual_information" in h]
        for name, r in runs.items()
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


def _report(cfg: VisionStudyConfig, results: dict, studies: set[str]) -> str:
    lines = [f"# Vision study: {cfg.dataset}, studies: {', '.join(sorted(studies))}", ""]
    d = results["data"]
    lines += [
        f"{d['num_classes']} classes; {d['n_train']} train / {d['n_val']} validation / {d['n_test']} test examples. "
        f"Model {cfg.model}, {cfg.epochs} epochs, alpha={cfg.alpha:g}, seed {cfg.seed}."
        + (f" Both base networks train on MixUp (a={cfg.mixup:g}) targets." if cfg.mixup else "")
        + (f" Both base networks train on CutMix (a={cfg.cutmix:g}) targets." if cfg.cutmix else ""),
        "",
    ]
    if "runs" in results:
        lines += ["## Base networks", "", "| run | final train acc | val acc | val NLL |", "|---|---|---|---|"]
        for name, hist in results["runs"].items():
            last = hist[-1]
            lines.append(f"| {name} | {last['train_accuracy']:.4f} | {last['eval_accuracy']:.4f} | {last['eval_nll']:.4f} |")
        lines.append("")
    if "calibration" in results:
        lines += ["## Calibration (test split)", "", "| | accuracy | ECE | NLL | T applied | T fitted on val |", "|---|---|---|---|---|---|"]
        for name, r in results["calibration"]["rows"].items():
            lines.append(
                f"| {name} | {r['accuracy']:.4f} | {r['ece']:.4f} | {r['nll']:.4f} | {r['temperature']:.2f} | "
                f"{r['fitted_temperature']:.2f} |"
            )
        lines += ["", "![reliability](reliability.png)", ""]
        along = results["calibration"].get("along_training")
        if along:
            lines += ["## Calibration along training (validation)", "",
                      f"Every {along['every']} epochs. A lowest-ECE temperature above 1: over-confident there.", ""]
            lines += [f"- {name}: " + (f"over-confident from epoch {r['overconfident_from_epoch']}"
                                       if r["overconfident_from_epoch"] is not None else "not over-confident at the last point")
                      for name, r in along["runs"].items()]  # fmt: skip
            lines += ["", "| run | epoch | ECE | NLL | accuracy | best-ECE T | best-NLL T |", "|---|---|---|---|---|---|---|"]
            for name, r in along["runs"].items():
                lines += [f"| {name} | {p['epoch']:g} | {p['ece']:.4f} | {p['nll']:.4f} | {p['accuracy']:.4f} | "
                          f"{p['best_ece_temperature']} | {p['best_nll_temperature']} |" for p in r["points"]]  # fmt: skip
            lines += ["", "![calibration along training](calibration_along_training.png)", ""]
    if "projection" in results:
        lines += ["## Projection", "", f"Classes {results['projection']['classes']}; tightness = mean distance to own "
                  "class mean / mean distance between class means (lower = tighter).", "",
                  "| run | split | plane | full (D+1) |", "|---|---|---|---|"]
        for run, splits in results["projection"]["tightness"].items():
            for split, t in splits.items():
                lines.append(f"| {run} | {split} | {t['plane']:.3f} | {t['full']:.3f} |")
        lines += ["", "![projection](projection.png)", ""]
    if "distillation" in results:
        lines += ["## Distillation", "", "| curve | alpha | T | gamma | test accuracy |", "|---|---|---|---|---|"]
        for p in results["distillation"]["points"]:
            lines.append(f"| {p['curve']} | {p['alpha']:g} | {p['temperature']:g} | {p['gamma']:.3f} | {p['accuracy']:.4f} |")
        lines += ["", "![distillation](distillation.png)", ""]
    if "mutual_info" in results:
        mi = results["mutual_info"]
        lines += ["## Mutual information", "", f"N={mi['n_examples']}, L={mi['n_augmentations']}, log N = {mi['log_n']:.3f} nats.", "",
                  "| epoch | " + " | ".join(mi["curves"]) + " |", "|---" * (len(mi["curves"]) + 1) + "|"]
        epochs = [e for e, _ in next(iter(mi["curves"].values()))]
        for i, e in enumerate(epochs):
            lines.append(f"| {e} | " + " | ".join(f"{c[i][1]:.3f}" for c in mi["curves"].values()) + " |")
        lines += ["", "![mutual information](mutual_information.png)", ""]
    lines += [
        "## The paper's claims against this run", "",
        "Calibration claims: the sign of the difference between two models on the same test images, decided from "
        "its 95% paired bootstrap interval (the metric's 200 Poisson replicates, the same resamples for every "
        "model): *agrees* when it lies wholly on the claimed side of 0 (of the margin, where one is stated), "
        "*disagrees* when wholly on the other, *inconclusive* when it holds it or there is no interval (the fitted "
        "temperatures: decide it over seeds with --seeds). Other claims: tightness or mutual information within 5% "
        "of each other, accuracies within two binomial standard errors are inconclusive (one run, one seed; --seeds "
        "decides them by the t-interval over seeds).", "",
        "| claim | measured | difference [95% interval] | verdict |", "|---|---|---|---|",
    ]
    for c in results["claims"]:
        interval = "-"
        if "difference" in c:
            interval = f"{c['difference']:+.4f}" + (f" [{c['low']:+.4f}, {c['high']:+.4f}]" if c["low"] is not None else " (no interval)")
        lines.append(f"| {c['claim']} | {markdown_cell(c['measured'])} | {interval} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


# What decides the numbers, beside the data: everything but where things are written, shown or cached.
_NOT_CONFIGURATION = ("study", "output_dir", "data_dir", "cache_dir", "progress", "resume", "overwrite_output_dir", "seeds")


def run_config(cfg: VisionStudyConfig, data: VisionData) -> dict[str, Any]:
    """What ``run_config.json`` holds and ``--resume`` compares: the arguments that decide the results (the
    studies as a list, which a resume may extend), and the data by its sizes."""
    config = {k: v for k, v in asdict(cfg).items() if k not in _NOT_CONFIGURATION}
    config["studies"] = sorted(cfg.studies())
    config["data"] = {"name": data.name, "num_classes": data.num_classes, "n_train": len(data.train),
                      "n_val": len(data.val), "n_test": len(data.test)}  # fmt: skip
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
        cfg.dataset, data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, seed=cfg.seed,
        max_train_samples=cfg.max_train_samples, val_size=cfg.val_size,
    )
    main_process = int(os.environ.get("RANK", "0")) == 0
    config = run_config(cfg, data)
    if main_process:
        config = run.open(
            config, command=command or " ".join(sys.argv), resume=cfg.resume, overwrite=cfg.overwrite_output_dir,
            extendable={"studies": "sort"},
        )  # fmt: skip
    try:
        return _run_studies(cfg, data, set(config["studies"]), os.fspath(run.path), write=main_process)
    finally:
        run.close()


def _run_studies(cfg: VisionStudyConfig, data: VisionData, studies: set[str], out: str, *, write: bool) -> dict:
    results: dict[str, Any] = {
        # not the flags of this invocation (resume, progress): a resumed run writes what an uninterrupted one does
        "config": {**{k: v for k, v in asdict(cfg).items() if k not in ("resume", "overwrite_output_dir", "progress", "seeds")},
                   "studies": sorted(studies)},
        "data": {"name": data.name, "num_classes": data.num_classes, "n_train": len(data.train),
                 "n_val": len(data.val), "n_test": len(data.test)},
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
                cfg.model, data, cfg.train_config(alpha, mixup=cfg.mixup, cutmix=cfg.cutmix), run_dir=run_dir, callbacks=[*callbacks, *([along] if along else [])],
                progress=cfg.progress, description=f"{name}",
            )
            seconds = time.perf_counter() - start
            timings[name] = {"train_seconds_this_run": round(seconds, 2)}
            if along:  # included in the training time
                spent = along.seconds - calibration_before
                timings[name] |= {"calibration_along_training_seconds": round(spent, 2),
                                  "calibration_share_of_training": round(spent / max(seconds, 1e-9), 4)}  # fmt: skip
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
        atomic_write_files({
            # wall-clock apart, so that results.json is a deterministic function of the configuration
            os.path.join(out, "timings.json"): json_bytes(timings),
            os.path.join(out, "report.md"): _report(cfg, results, studies),
            os.path.join(out, "results.json"): json_bytes(results),
        })  # fmt: skip
    return results

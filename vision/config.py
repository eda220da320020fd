"""The vision study's configuration: named presets per dataset, and the arguments (also the recipe's command line).

:data:`PRESETS` holds the paper's architectures and SGD schedules per dataset (and ``digits-lowdata``, the
over-confident regime on a CPU); :class:`VisionStudyConfig` checks every argument once, fills what is None from
the preset and builds each network's :class:`vision.train.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ls_seq.checks import check_alpha, check_choice, check_positive_int, check_seeds, check_temperatures
from ls_seq.studies import PresetRegistry
from vision.data import DATASETS, check_data_dir
from vision.models import MODELS
from vision.projection import check_classes
from vision.train import TrainConfig

__all__ = ["PRESETS", "STUDIES", "VisionPreset", "VisionStudyConfig"]

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
_DIGITS = VisionPreset(
    "digits",
    "digits_cnn",
    "digits_cnn",
    "digits_mlp",
    epochs=30,
    batch_size=64,
    lr=0.05,
    weight_decay=5e-4,
    num_classes=10,
    calibration_every=3,
)
PRESETS: PresetRegistry[VisionPreset] = PresetRegistry(
    {
        "digits": _DIGITS,
        "cifar10": VisionPreset(
            "cifar10",
            "alexnet_cifar",
            "resnet56",
            "alexnet_cifar",
            epochs=160,
            batch_size=128,
            lr=0.05,
            weight_decay=5e-4,
            num_classes=10,
            calibration_every=10,
        ),
        "cifar100": VisionPreset(
            "cifar100",
            "resnet56",
            "resnet56",
            "alexnet_cifar",
            epochs=160,
            batch_size=128,
            lr=0.1,
            weight_decay=1e-4,
            num_classes=100,
            calibration_every=10,
        ),
        "imagenet": VisionPreset(
            "imagenet",
            "inception_v4",
            "inception_v4",
            "resnet56",
            epochs=90,
            batch_size=256,
            lr=0.1,
            weight_decay=1e-4,
            num_classes=None,
            calibration_every=5,
        ),
        # The over-confident regime on a CPU (docs/vision.md): few training images, long training, no weight decay.
        "digits-lowdata": dataclasses.replace(_DIGITS, epochs=60, weight_decay=0.0, max_train_samples=200, calibration_every=5),
    }
)


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
        "60 epochs, no weight decay, where the hard-target network is over-confident)",
        default=None,
    )
    mixup: float = _help("MixUp Beta(a, a) parameter for the two base networks (0: off; Zhang et al. 2018)", default=0.0)
    cutmix: float = _help(
        "CutMix Beta(a, a) parameter for the two base networks (0: off; with --mixup: one per batch)", default=0.0
    )
    calibration_every: int | None = _help(
        "validation ECE/NLL/best temperature of the base networks every n epochs (0: off; preset: digits 5)", default=None
    )
    max_train_samples: int | None = _help("train on a stratified subset of this size (quick runs)", default=None)
    val_size: int | None = _help("held-out training images for temperature fitting (CIFAR 5000, ImageNet 10000)", default=None)
    max_plot_points: int = _help("examples per projection panel", default=1500)
    data_dir: str | None = _help(
        "local data: a CIFAR save_to_disk/parquet folder, or the ImageNet train/ val/ tree", default=None
    )
    cache_dir: str | None = _help("datasets cache directory", default=None)
    seed: int = _help("seed of splits, initialisation, shuffling and augmentation", default=0)
    seeds: list[int] | None = _help(
        "run the whole study once per seed in output_dir/seed_<s>/ and summarise over seeds (vision.seeds); replaces --seed",
        default=None,
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
        for name in (
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "model",
            "teacher_model",
            "student_model",
            "max_train_samples",
            "calibration_every",
        ):
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
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            alpha=alpha,
            seed=self.seed,
            mixed_precision=self.mixed_precision,
            cpu=self.cpu,
            **overrides,
        )


def _count_imagenet_classes(data_dir: str) -> int:
    train = os.path.join(data_dir, "train")
    if not os.path.isdir(train):
        raise ValueError(f"`data_dir` must hold a train/ folder of class sub-folders, got {data_dir!r} without one")
    n = sum(os.path.isdir(os.path.join(train, d)) for d in os.listdir(train))
    if n < 3:
        raise ValueError(f"`data_dir`/train must hold at least 3 class folders, got {n}")
    return n

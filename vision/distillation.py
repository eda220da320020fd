r"""Knowledge distillation with and without label-smoothed teachers (Müller et al. 2019, Sec. 4, Fig. 5).

Four curves of test accuracy against the smoothness of the training targets:

* ``teacher``: the teacher network trained with label smoothing ``alpha`` (x = ``alpha``);
* ``student``: the student network trained with label smoothing ``alpha``, no teacher (x = ``alpha``);
* ``distilled from hard teacher``: students trained on the ``alpha = 0`` teacher at temperature ``T``
  (``beta = 1``), each at x = the teacher's smoothness index ``gamma(T)``;
* ``distilled from LS teacher``: students trained on the ``alpha``-smoothed teachers at ``T = 1``
  (``beta = 1``), each at x = that teacher's ``gamma(1)``.

``gamma = E[1 - p_y(z / T)] * K / (K - 1)`` (``ls_seq.smoothness_index``) over the teacher's training-set
logits (no augmentation); a teacher that fits its smoothed targets exactly has ``gamma = alpha``, which is
why one x axis serves all four curves. The paper's finding: label-smoothed teachers are better teachers
than their accuracy suggests, but their students are worse than those of a hard-target teacher distilled at
a matching temperature.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ls_seq import smoothness_index
from vision.data import VisionData
from vision.train import TrainConfig, collect_outputs, train_model

__all__ = ["CURVES", "DistillationPoint", "distillation_study"]

TEACHER = "teacher"
STUDENT = "student"
FROM_HARD = "distilled from hard teacher"
FROM_LS = "distilled from LS teacher"
CURVES = (TEACHER, STUDENT, FROM_HARD, FROM_LS)


@dataclass
class DistillationPoint:
    """One trained network: its curve, the smoothing that produced its targets, ``gamma`` and test accuracy."""

    curve: str
    alpha: float
    temperature: float
    gamma: float
    accuracy: float


def _accuracy(model: torch.nn.Module, dataset, batch_size: int) -> float:
    out = collect_outputs(model, dataset, batch_size=batch_size)
    return float((out.logits.argmax(-1) == out.labels).float().mean())


def distillation_study(
    data: VisionData,
    *,
    teacher_model: str,
    student_model: str,
    teacher_config: TrainConfig,
    student_config: TrainConfig,
    alphas: Sequence[float],
    temperatures: Sequence[float],
    run_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[DistillationPoint]:
    """Train the teachers, plain students and distilled students of Fig. 5 and measure them on ``data.test``.

    Args:
        data: the task; teachers and students train on ``data.train`` with ``data.augment``.
        teacher_model, student_model: names in :data:`vision.models.MODELS`.
        teacher_config, student_config: training settings; their ``alpha``/``temperature`` are overridden
            per run (students distil with ``beta = student_config.beta``).
        alphas: label-smoothing strengths of the teachers and plain students; ``0`` is the hard teacher.
        temperatures: temperatures at which the hard teacher is distilled.
        run_root: checkpoints go to ``run_root/<run>/`` so an interrupted study resumes run by run.

    Returns:
        The points of the four curves (``len(alphas)`` teachers and students, ``len(temperatures)`` students
        of the hard teacher, one student per ``alpha > 0`` teacher).
    """
    alphas = sorted({float(a) for a in alphas} | {0.0})

    def run_dir(name: str) -> str | None:
        return None if run_root is None else os.path.join(os.fspath(run_root), name)

    points: list[DistillationPoint] = []
    teachers: dict[float, torch.nn.Module] = {}
    teacher_gamma: dict[float, float] = {}
    bs = teacher_config.eval_batch_size
    for alpha in alphas:
        cfg = replace(teacher_config, alpha=alpha)
        teacher = train_model(
            teacher_model,
            data,
            cfg,
            run_dir=run_dir(f"teacher_alpha{alpha:g}"),
            progress=progress,
            description=f"teacher alpha={alpha:g}",
        ).model
        teachers[alpha] = teacher
        train_out = collect_outputs(teacher, data.train, batch_size=bs)
        teacher_gamma[alpha] = float(smoothness_index(train_out.logits, train_out.labels, 1.0))
        points.append(DistillationPoint(TEACHER, alpha, 1.0, teacher_gamma[alpha], _accuracy(teacher, data.test, bs)))

        cfg = replace(student_config, alpha=alpha)
        student = train_model(
            student_model,
            data,
            cfg,
            run_dir=run_dir(f"student_alpha{alpha:g}"),
            progress=progress,
            description=f"student alpha={alpha:g}",
        ).model
        points.append(DistillationPoint(STUDENT, alpha, 1.0, alpha, _accuracy(student, data.test, bs)))

    hard_train = collect_outputs(teachers[0.0], data.train, batch_size=bs)
    distil_runs = [(0.0, float(t), FROM_HARD) for t in temperatures] + [(a, 1.0, FROM_LS) for a in alphas if a > 0]
    for alpha, temperature, curve in distil_runs:
        teacher = teachers[alpha]
        if alpha == 0.0:
            gamma = float(smoothness_index(hard_train.logits, hard_train.labels, temperature))
        else:
            gamma = teacher_gamma[alpha]
        cfg = replace(student_config, alpha=0.0, temperature=temperature)
        student = train_model(
            student_model,
            data,
            cfg,
            run_dir=run_dir(f"distilled_alpha{alpha:g}_T{temperature:g}"),
            teacher=teacher,
            progress=progress,
            description=f"distil alpha={alpha:g} T={temperature:g}",
        ).model
        points.append(DistillationPoint(curve, alpha, temperature, gamma, _accuracy(student, data.test, bs)))
    return points

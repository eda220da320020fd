"""Distillation (Fig. 5): each point's gamma against the smoothness-index formula, and the four curves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ls_seq import smoothness_index
from vision.data import load_digits
from vision.distillation import CURVES, FROM_HARD, FROM_LS, STUDENT, TEACHER, distillation_study
from vision.train import TrainConfig, collect_outputs, train_model


def _gamma(logits: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    """gamma = E[1 - p_y(z / T)] * K / (K - 1), written out."""
    k = logits.shape[-1]
    p_y = F.softmax(logits.double() / t, dim=-1).gather(1, labels[:, None]).squeeze(1)
    return float((1 - p_y).mean() * k / (k - 1))


def test_gamma_of_a_smoothed_target_is_alpha():
    k, alpha = 10, 0.3
    labels = torch.arange(20) % k
    target = torch.full((20, k), alpha / k)
    target[torch.arange(20), labels] += 1 - alpha
    assert float(smoothness_index(target.log(), labels)) == pytest.approx(alpha, abs=1e-6)
    logits = torch.randn(20, k)
    for t in (0.5, 1.0, 4.0):
        assert float(smoothness_index(logits, labels, t)) == pytest.approx(_gamma(logits, labels, t), rel=1e-6)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    data = load_digits(seed=0, max_train_samples=200)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, cpu=True)
    root = tmp_path_factory.mktemp("distil")
    points = distillation_study(
        data,
        teacher_model="digits_mlp",
        student_model="digits_mlp",
        teacher_config=cfg,
        student_config=TrainConfig(epochs=2, batch_size=32, lr=0.05, cpu=True, t2_scaling=True),
        alphas=[0.3],
        temperatures=[1.0, 4.0],
        run_root=root,
        progress=False,
    )
    return data, cfg, root, points


def test_study_has_the_four_curves_with_their_runs(tiny_study):
    _, _, root, points = tiny_study
    curves = [p.curve for p in points]
    assert set(curves) == set(CURVES)
    assert curves.count(TEACHER) == 2 and curves.count(STUDENT) == 2  # alpha 0 is always added
    assert [(p.alpha, p.temperature) for p in points if p.curve == FROM_HARD] == [(0.0, 1.0), (0.0, 4.0)]
    assert [(p.alpha, p.temperature) for p in points if p.curve == FROM_LS] == [(0.3, 1.0)]
    assert all(0.0 <= p.accuracy <= 1.0 for p in points)
    assert sorted(d.name for d in root.iterdir()) == sorted(
        [
            "teacher_alpha0",
            "teacher_alpha0.3",
            "student_alpha0",
            "student_alpha0.3",
            "distilled_alpha0_T1",
            "distilled_alpha0_T4",
            "distilled_alpha0.3_T1",
        ]
    )


def test_each_point_sits_at_its_teachers_smoothness_index(tiny_study):
    data, cfg, root, points = tiny_study
    # the teachers resume from their checkpoints: the same networks the study measured
    teachers = {
        a: train_model(
            "digits_mlp", data, TrainConfig(**{**cfg.__dict__, "alpha": a}), run_dir=root / f"teacher_alpha{a:g}", progress=False
        ).model
        for a in (0.0, 0.3)
    }
    outs = {a: collect_outputs(m, data.train) for a, m in teachers.items()}
    for p in points:
        if p.curve == STUDENT:
            assert p.gamma == p.alpha
        else:
            t = p.temperature if p.curve == FROM_HARD else 1.0
            assert p.gamma == pytest.approx(_gamma(outs[p.alpha].logits, outs[p.alpha].labels, t), rel=1e-5)
    hard = {p.temperature: p.gamma for p in points if p.curve == FROM_HARD}
    assert hard[4.0] > hard[1.0]  # a hotter teacher is smoother

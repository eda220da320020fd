"""MixUp and CutMix in the vision loop: the mixed batch is what the papers define, and a training step with
label smoothing on mixed targets moves the weights as the dense loss written here does."""

from __future__ import annotations

import copy

import pytest
import torch

from vision.models import create_model
from vision.train import EpochSampler, TrainConfig, _epoch_seed, mix_batch, mixing_generator, train_classifier


def test_mixup_mixes_inputs_and_targets_with_one_weight():
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8) % 3
    m = mix_batch(x, 0.4, 0.0, mixing_generator(0, 1))
    assert 0 <= m.lam <= 1 and m.box is None and sorted(m.permutation.tolist()) == list(range(8))
    torch.testing.assert_close(m.x, m.lam * x + (1 - m.lam) * x[m.permutation], rtol=0, atol=1e-6)
    expected = torch.zeros(8, 3)
    for i in range(8):
        expected[i, y[i]] += m.lam
        expected[i, y[m.permutation[i]]] += 1 - m.lam
    torch.testing.assert_close(m.targets(y, 3), expected)


def test_cutmix_pastes_a_box_and_weights_by_the_area_left():
    x = torch.randn(8, 1, 8, 8)
    m = mix_batch(x, 0.0, 1.0, mixing_generator(5, 2))
    top, bottom, left, right = m.box
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert m.lam == pytest.approx(1 - inside.float().mean().item())
    torch.testing.assert_close(m.x[..., inside], x[m.permutation][..., inside], rtol=0, atol=0)
    torch.testing.assert_close(m.x[..., ~inside], x[..., ~inside], rtol=0, atol=0)


def test_both_switch_between_mixup_and_cutmix_per_batch():
    x = torch.randn(4, 1, 8, 8)
    kinds = {mix_batch(x, 0.4, 1.0, mixing_generator(0, e)).box is None for e in range(1, 40)}
    assert kinds == {True, False}


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0)])
def test_one_step_equals_sgd_on_the_dense_smoothed_mixed_loss(mixup, cutmix):
    """One epoch of one batch, plain SGD: the weights equal a step on
    mean_i sum_k -[(1 - alpha) t_ik + alpha / K] log softmax(z_i)_k, t the mixed one-hot targets."""
    g = torch.Generator().manual_seed(0)
    n, k, alpha, lr = 16, 10, 0.1, 0.5
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, k, (n,), generator=g)
    torch.manual_seed(1)
    model = create_model("digits_cnn", k, 1, 8)
    reference = copy.deepcopy(model)
    cfg = TrainConfig(
        epochs=1,
        batch_size=n,
        lr=lr,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        alpha=alpha,
        mixup=mixup,
        cutmix=cutmix,
        seed=3,
        cpu=True,
    )
    train_classifier(model, torch.utils.data.TensorDataset(x, y), cfg, progress=False)

    sampler = EpochSampler(n, cfg.seed)  # the loop's order of epoch 1
    sampler.set_epoch(1)
    order = torch.tensor(list(sampler))
    xb, yb = x[order], y[order]
    mixed = mix_batch(xb, mixup, cutmix, mixing_generator(cfg.seed, 1))
    t = torch.zeros(n, k)
    t[torch.arange(n), yb] += mixed.lam
    t[torch.arange(n), yb[mixed.permutation]] += 1 - mixed.lam
    torch.manual_seed(_epoch_seed(cfg.seed, 1, 1))
    reference.train()
    log_p = torch.log_softmax(reference(mixed.x), dim=-1)
    loss = -(((1 - alpha) * t + alpha / k) * log_p).sum(-1).mean()
    loss.backward()
    with torch.no_grad():
        for p_ref, p in zip(reference.parameters(), model.parameters()):
            torch.testing.assert_close(p, p_ref - lr * p_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"mixup": -0.1}, {"cutmix": float("nan")}, {"mixup": True}])
def test_bad_mixing_parameters_are_refused(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"`{name}` must be a finite number >= 0"):
        TrainConfig(**kwargs)

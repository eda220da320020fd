"""Mutual information over training (Fig. 6): the callback against the estimator's limits and a manual Y."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from vision.information import MutualInformationCallback, logit_difference_samples, select_two_class_indices


def _noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + torch.randn(x.shape, generator=g)


def _identity_logit_model() -> nn.Module:
    """Logits (x, 0) of a 1-pixel image x: Y = z_0 - z_1 = x."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model[1].bias.zero_()
    return model


def test_well_separated_examples_carry_log_n_nats():
    n = 12
    images = (100.0 * torch.arange(n, dtype=torch.float32)).view(n, 1, 1, 1)  # 100 noise sds apart
    cb = MutualInformationCallback(images, (0, 1), _noise, 64, seed=0)
    value = cb.on_epoch_end(1, _identity_logit_model())["mutual_information"]
    assert value == pytest.approx(math.log(n), abs=1e-6)


def test_identical_examples_carry_almost_no_information():
    images = torch.zeros(12, 1, 1, 1)
    cb = MutualInformationCallback(images, (0, 1), _noise, 200, seed=0)
    value = cb.on_train_begin(_identity_logit_model())["mutual_information"]
    # only the finite-sample spread of the 12 means remains: about (N-1) / (2 N L) = 0.0023 nats
    assert 0.0 <= value < 0.02


def test_samples_are_the_logit_difference_of_fixed_augmentations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    images = torch.randn(5, 1, 2, 2)
    cb = MutualInformationCallback(images, (2, 0), _noise, 6, seed=1, batch_size=4)
    y = logit_difference_samples(model, cb.augmented, (2, 0), batch_size=7)  # (5, 6)
    z = model(cb.augmented.view(30, 1, 2, 2)).double()
    assert_close(y, (z[:, 2] - z[:, 0]).view(5, 6), rtol=1e-12, atol=1e-12)
    # the augmentations are drawn once: the same model gives the same estimate every epoch
    assert cb.on_epoch_end(1, model) == cb.on_epoch_end(2, model)


def test_select_two_class_indices_balances_the_classes():
    labels = torch.tensor([0, 1, 2] * 10)
    idx = select_two_class_indices(labels, (2, 0), 7, torch.Generator().manual_seed(0))
    assert labels[idx].tolist() == [2, 2, 2, 2, 0, 0, 0]
    assert len(set(idx.tolist())) == 7
    with pytest.raises(ValueError, match="needs 12 examples of class 1"):
        select_two_class_indices(labels, (1, 0), 24, torch.Generator())
    with pytest.raises(ValueError, match="distinct"):
        select_two_class_indices(labels, (1, 1), 4, torch.Generator())


def test_callback_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`n_augmentations`"):
        MutualInformationCallback(torch.zeros(3, 1, 1, 1), (0, 1), _noise, 1)
    with pytest.raises(ValueError, match="`classes`"):
        MutualInformationCallback(torch.zeros(3, 1, 1, 1), (0, 0), _noise, 4)

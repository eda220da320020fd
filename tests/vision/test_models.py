"""The paper's networks: one interface (forward_features / forward_head), the right depth, a clear timm error."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from vision.models import MODELS, ImageClassifier, create_model

CASES = [("digits_cnn", 1, 8, 64), ("digits_mlp", 1, 8, 32), ("alexnet_cifar", 3, 32, 192), ("resnet56", 3, 32, 64)]


@pytest.mark.parametrize("name, channels, size, width", CASES)
def test_head_of_features_is_the_forward_pass(name, channels, size, width):
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size).eval()
    x = torch.randn(3, channels, size, size)
    h = model.forward_features(x)
    assert h.shape == (3, width)
    assert_close(model.forward_head(h, pre_logits=True), h, rtol=0, atol=0)
    # the classifier's weight and bias are the class templates: logits are an affine map of the features
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.weight.shape == (7, width)
    assert_close(model(x), h @ head.weight.T + head.bias, rtol=1e-5, atol=1e-5)


def test_resnet56_has_56_weighted_layers_and_option_a_shortcuts():
    model = create_model("resnet56", num_classes=100)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 56
    # option A shortcuts carry no weights: every conv is 3x3
    assert {m.kernel_size for m in convs} == {(3, 3)}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_alexnet_is_the_two_conv_three_fc_network():
    model = create_model("alexnet_cifar", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.kernel_size for m in convs] == [(5, 5), (5, 5)]
    assert [m.out_features for m in linears] == [384, 192, 10]


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_inception_v4_without_timm_says_how_to_install_it():
    with pytest.raises(ImportError, match=r"ls-seq\[timm\]"):
        create_model("inception_v4", num_classes=10, image_size=299)


def test_every_registered_model_is_an_image_classifier():
    for name in MODELS:
        if name == "inception_v4" and importlib.util.find_spec("timm") is None:
            continue
        size = 8 if name.startswith("digits") else 32
        assert isinstance(create_model(name, num_classes=3, in_channels=1 if size == 8 else 3, image_size=size), ImageClassifier)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(name="vgg", num_classes=10), ValueError, "`model` must be one of"),
        (dict(name="digits_mlp", num_classes=1), ValueError, "`num_classes` must be an int >= 2"),
        (dict(name="digits_mlp", num_classes=10, in_channels=1.5), TypeError, "`in_channels`"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_model(**kwargs)

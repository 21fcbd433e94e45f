"""zoo-convmixer: installed through its entry point, conforming, and what the paper says."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.errors import ModelArgumentError, WeightsError
from zoo.models import plugins
from zoo.testing import assert_conforms


def test_models_come_from_the_entry_point() -> None:
    info = [p for p in plugins.load_plugins() if p.distribution == "zoo-convmixer"]
    assert len(info) == 1 and info[0].error is None
    assert info[0].models == ["convmixer_128_4", "convmixer_256_8"]
    assert zoo.list_models("convmixer_*") == ["convmixer_128_4", "convmixer_256_8"]


def test_small_model_conforms() -> None:
    assert_conforms("convmixer_128_4")


@pytest.mark.slow
def test_default_model_conforms() -> None:
    assert_conforms("convmixer_256_8")


def conv(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return c_in // groups * c_out * k * k + c_out


def test_param_count_follows_the_architecture() -> None:
    # stem: patch conv + BN; per layer: depthwise conv + BN, pointwise conv + BN; head.
    dim, depth, kernel, patch = 256, 8, 5, 2
    layer = conv(dim, dim, kernel, groups=dim) + 2 * dim + conv(dim, dim, 1) + 2 * dim
    expected = conv(3, dim, patch) + 2 * dim + depth * layer + dim * 10 + 10
    model = zoo.create("convmixer_256_8")
    assert sum(p.numel() for p in model.parameters()) == expected


def test_depthwise_then_pointwise_with_gelu_and_batchnorm() -> None:
    model = zoo.create("convmixer_128_4", in_chans=1, img_size=28, num_classes=7)
    layer = model.blocks[0]
    assert layer.depthwise.groups == 128 and layer.depthwise.kernel_size == (5, 5)
    assert layer.pointwise.kernel_size == (1, 1)
    assert isinstance(layer.act1, nn.GELU) and isinstance(layer.norm1, nn.BatchNorm2d)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ModelArgumentError, match="img_size 31 must be a positive multiple of"):
        zoo.create("convmixer_256_8", img_size=31)
    with pytest.raises(ModelArgumentError, match="kernel"):
        zoo.create("convmixer_256_8", kernal_size=3)
    with pytest.raises(WeightsError, match="no built-in pretrained weights"):
        zoo.create("convmixer_256_8", pretrained=True)

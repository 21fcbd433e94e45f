"""zoo.create (zoo/weights/factory.py): features_only=True, as timm's create_model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo.errors import ModelArgumentError
from zoo.models import registry
from zoo.weights.files import save_model_files

SMALL_MIXER = {"embed_dim": 16, "num_blocks": 2, "img_size": 16, "num_classes": 3}


def test_features_only_returns_the_feature_maps_of_resnet18() -> None:
    backbone = zoo.create("resnet18", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    maps = backbone(torch.randn(2, 3, 32, 32))
    assert isinstance(maps, list)
    assert [tuple(m.shape) for m in maps] == [
        (2, 64, 32, 32),
        (2, 128, 16, 16),
        (2, 256, 8, 8),
        (2, 512, 4, 4),
    ]
    assert backbone.feature_info.channels() == [64, 128, 256, 512]


def test_features_only_wraps_the_model_after_its_weights_are_loaded(tmp_path: Path) -> None:
    torch.manual_seed(3)
    trained = zoo.create("mlpmixer_p4", **SMALL_MIXER).eval()
    save_model_files(trained, tmp_path, input_size=[3, 16, 16], mean=[0.5] * 3, std=[0.2] * 3)
    backbone = zoo.create(str(tmp_path), features_only=True, out_indices=(-1,)).eval()
    x = torch.randn(2, 3, 16, 16)
    (got,) = backbone(x)
    (want,) = trained.forward_intermediates(x, indices=1, intermediates_only=True)
    assert got.shape == (2, 16, 4, 4)  # the token map on the 4x4 patch grid
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # same process: bit-exact


def test_features_only_is_refused_for_a_model_without_forward_intermediates(
    isolated_registry: None,
) -> None:
    def plain_net(pretrained: bool = False, num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))

    registry.register_model(plain_net)
    with pytest.raises(ModelArgumentError, match=r"plain_net.*features_only.*forward_interm"):
        zoo.create("plain_net", features_only=True)
    assert isinstance(zoo.create("plain_net"), nn.Sequential)  # without it, it builds


def test_out_indices_without_features_only_is_refused() -> None:
    with pytest.raises(ModelArgumentError, match="out_indices=2 needs features_only=True"):
        zoo.create("resnet18", out_indices=2)

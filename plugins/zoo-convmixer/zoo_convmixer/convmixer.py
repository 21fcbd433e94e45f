"""ConvMixer.

Patches Are All You Need?, Trockman & Kolter, 2022 (https://arxiv.org/abs/2201.09792).

A patch embedding (Conv2d, kernel = stride = patch size) keeps a spatial grid of tokens;
each ConvMixer layer mixes space with a depthwise convolution behind a residual
connection, then mixes channels with a pointwise (1x1) convolution. Every convolution is
followed by GELU and BatchNorm; global average pooling and a Linear layer classify.
Small configurations suit 32x32 images (the paper's appendix trains ConvMixer-256/8 on
CIFAR-10).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.errors import ModelArgumentError
from zoo.registry import build_model, register_model

__all__ = ["ConvMixer", "ConvMixerLayer"]


class ConvMixerLayer(nn.Module):
    """x + BN(GELU(DepthwiseConv(x))), then BN(GELU(PointwiseConv(.)))."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same")
        self.act1 = nn.GELU()
        self.norm1 = nn.BatchNorm2d(dim)
        self.pointwise = nn.Conv2d(dim, dim, 1)
        self.act2 = nn.GELU()
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.act1(self.depthwise(x)))
        return self.norm2(self.act2(self.pointwise(x)))


class ConvMixer(nn.Module):
    """ConvMixer-``dim``/``depth`` classifier for ``img_size`` x ``img_size`` images."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        dim: int = 256,
        depth: int = 8,
        kernel_size: int = 5,
        patch_size: int = 2,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        for key, value in (
            ("num_classes", num_classes),
            ("in_chans", in_chans),
            ("dim", dim),
            ("depth", depth),
            ("kernel_size", kernel_size),
        ):
            if value <= 0:
                raise ModelArgumentError(f"{key} must be positive, got {value!r}")
        if patch_size <= 0 or img_size % patch_size:
            raise ModelArgumentError(
                f"img_size {img_size} must be a positive multiple of patch_size {patch_size}"
            )
        # img_size does not change the weights (global pooling); it is recorded so exported
        # configs state the input size the model was trained on.
        self.img_size = img_size
        self.patch_size = patch_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), nn.GELU(), nn.BatchNorm2d(dim)
        )
        self.blocks = nn.Sequential(*[ConvMixerLayer(dim, kernel_size) for _ in range(depth)])
        self.num_features = dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes)
        # Weight init: PyTorch's defaults for every layer, as in the paper's reference code,
        # so there is no init_weights method to override them.

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_convmixer(
    variant: str, pretrained: bool, pinned: dict[str, Any], kwargs: dict[str, Any]
) -> nn.Module:
    # build_model rejects unknown kwargs (naming the accepted ones), refuses
    # pretrained=True (no weights ship with the plugin) and records model.zoo_cfg.
    return build_model(ConvMixer, variant, pretrained, pinned, kwargs)


# Pretrained weights: none ship with this plugin. Train one with `zoo train` and publish it
# with `zoo publish RUN --tag TAG`; it is then available as e.g. convmixer_256_8.TAG.


@register_model
def convmixer_256_8(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ConvMixer-256/8 for 32x32 images: patch 2, kernel 5."""
    pinned = {"dim": 256, "depth": 8, "patch_size": 2, "kernel_size": 5}
    return _create_convmixer("convmixer_256_8", pretrained, pinned, kwargs)


@register_model
def convmixer_128_4(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ConvMixer-128/4 for 32x32 images: patch 2, kernel 5 (a tiny model for quick runs)."""
    pinned = {"dim": 128, "depth": 4, "patch_size": 2, "kernel_size": 5}
    return _create_convmixer("convmixer_128_4", pretrained, pinned, kwargs)

"""ResNet-18 for 32x32 images (the CIFAR variant).

Deep Residual Learning for Image Recognition, He et al., 2015 (https://arxiv.org/abs/1512.03385).
The CIFAR variant replaces the 7x7 stride-2 stem and max-pool with one 3x3 stride-1 conv,
so a 32x32 image keeps its resolution into the first stage. Module names follow
torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zoo.models._layers import check_positive
from zoo.registry import build_model, register_model

__all__ = ["BasicBlock", "ResNet", "first_conv_kernels"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (1x1 conv-BN when shapes change)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, four stages of BasicBlocks, global average pool, Linear."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        # img_size does not change the architecture (global pooling); it is recorded so
        # exported configs state the input size the weights were trained on.
        check_positive(num_classes=num_classes, in_chans=in_chans, img_size=img_size)
        self.img_size = img_size
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_planes = widths[0]
        for i, (depth, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, width, stride))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_planes
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_planes, num_classes)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def first_conv_kernels(model: nn.Module) -> torch.Tensor:
    """The first convolution's weights, ``(out_channels, in_chans, k, k)``, detached on CPU."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    return conv.weight.detach().float().cpu().clone()


def _create_resnet(
    variant: str, pretrained: bool, pinned: dict[str, Any], kwargs: dict[str, Any]
) -> nn.Module:
    return build_model(ResNet, variant, pretrained, pinned, kwargs)


@register_model
def resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool), BasicBlocks [2, 2, 2, 2]."""
    return _create_resnet("resnet18", pretrained, {"layers": (2, 2, 2, 2)}, kwargs)

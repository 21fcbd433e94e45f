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

from zoo.errors import ModelArgumentError
from zoo.models._layers import (
    Dropout,
    attach_data_cfg,
    check_drop_rate,
    check_global_pool,
    check_num_classes,
    check_output_fmt,
    check_positive,
    checkpoint_seq,
    default_data_cfg,
    drop_path,
    drop_path_rates,
    feature_take_indices,
    param_device_dtype,
)
from zoo.models.registry import build_model, register_model

__all__ = ["BasicBlock", "ResNet", "first_conv_kernels"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (1x1 conv-BN when shapes change).
    ``drop_path`` drops the residual branch per sample (stochastic depth) while training."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, drop_path_rate: float = 0.0
    ) -> None:
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
        self.drop_path = drop_path(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.drop_path(self.bn2(self.conv2(out)))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, four stages of BasicBlocks, global average pool, Linear.

    ``drop_path_rate`` is the stochastic-depth rate of the last block; earlier blocks get
    linearly smaller rates (timm's rule). ``num_classes=0`` builds no head.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        # img_size does not change the architecture (global pooling); it is recorded so
        # exported configs state the input size the weights were trained on.
        check_num_classes(num_classes)
        check_positive(in_chans=in_chans, img_size=img_size)
        check_drop_rate(drop_rate)
        check_drop_rate(drop_path_rate, "drop_path_rate")
        if len(layers) != 4 or len(widths) != 4:
            raise ModelArgumentError(
                f"layers and widths need 4 entries (one per stage), got {list(layers)} and "
                f"{list(widths)}"
            )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.global_pool = "avg"
        self.grad_checkpointing = False
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.feature_info: list[dict[str, Any]] = [
            {"module": "relu", "num_chs": widths[0], "reduction": 1}
        ]
        rates = iter(drop_path_rates(drop_path_rate, sum(layers)))
        stages = []
        in_planes, reduction = widths[0], 1
        for i, (depth, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, width, stride, next(rates)))
                in_planes = width
            reduction *= 2 if i > 0 else 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(
                {"module": f"layer{i + 1}", "num_chs": width, "reduction": reduction}
            )
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = self.head_hidden_size = in_planes
        self.drop = Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(in_planes, num_classes) if num_classes else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def first_layer_weights(self) -> tuple[torch.Tensor, str]:
        """The stem convolution's kernels ``(out, in_chans, k, k)`` and a title (``zoo viz``)."""
        kernels = first_conv_kernels(self)
        return (
            kernels,
            f"first conv: {len(kernels)} kernels {kernels.shape[-2]}x{kernels.shape[-1]}",
        )

    # -- timm's model API ------------------------------------------------------------------

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Stem, then each BasicBlock (each stage when ``coarse``); the head comes last."""
        return {
            "stem": r"^conv1\.|^bn1\.",
            "blocks": r"^layer(\d+)\." if coarse else r"^layer(\d+)\.(\d+)\.",
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each BasicBlock in the backward pass instead of storing it (BatchNorm
        running statistics are updated once, as without checkpointing)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Nothing beyond BatchNorm and bias parameters, which timm already exempts (1-D)."""
        return set()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: ``nn.Identity``, as timm), PyTorch's default
        Linear init as at build time. ``global_pool`` ``'avg'`` or ``''`` (no pooling: the
        head then gets the feature map, so only with ``num_classes=0``); None keeps it."""
        check_num_classes(num_classes)
        pool = self.global_pool if global_pool is None else global_pool
        check_global_pool(self, pool, ("avg", ""))
        if pool == "" and num_classes > 0:
            raise ModelArgumentError(
                "global_pool='' leaves the (B, C, H, W) feature map unpooled, which a Linear "
                "head cannot classify; use global_pool='avg' or num_classes=0"
            )
        self.num_classes, self.global_pool = num_classes, pool
        if num_classes > 0:
            self.fc = nn.Linear(self.num_features, num_classes, **param_device_dtype(self))
        else:
            self.fc = nn.Identity()
        self.fc.train(self.training)

    def _stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(stage.children(), x)
        return stage(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps of the stem (index 0) and the four stages (1-4) at ``indices``
        (None: all; int n: the last n; a list: those, negative from the end). ``norm`` has no
        effect (a ResNet has no final norm)."""
        check_output_fmt(self, output_fmt, ("NCHW",))
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.relu(self.bn1(self.conv1(x)))
        intermediates = [x] if 0 in take else []
        stages = self._stages()[:max_index] if stop_early else self._stages()
        for i, stage in enumerate(stages, start=1):
            x = self._run_stage(stage, x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Empty the stages after the last of ``indices`` (and drop the head); returns the
        absolute indices to pass to :meth:`forward_intermediates`."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        for i in range(max_index + 1, len(self.feature_info)):
            setattr(self, f"layer{i}", nn.Sequential())
        prune_end = max_index < len(self.feature_info) - 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self._stages():
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def first_conv_kernels(model: nn.Module) -> torch.Tensor:
    """The first convolution's weights, ``(out_channels, in_chans, k, k)``, detached on CPU."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    return conv.weight.detach().float().cpu().clone()


def _create_resnet(
    variant: str, pretrained: bool, pinned: dict[str, Any], kwargs: dict[str, Any]
) -> nn.Module:
    model = build_model(ResNet, variant, pretrained, pinned, kwargs)
    assert isinstance(model, ResNet)
    cfg = default_data_cfg(
        "cifar10",
        in_chans=model.in_chans,
        img_size=model.img_size,
        num_classes=model.num_classes,
        first_conv="conv1",
        classifier="fc",
        fixed_input_size=False,  # global pooling takes any size
    )
    attach_data_cfg(model, cfg)
    return model


@register_model
def resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool), BasicBlocks [2, 2, 2, 2]."""
    return _create_resnet("resnet18", pretrained, {"layers": (2, 2, 2, 2)}, kwargs)

"""ConvMixer.

Patches Are All You Need?, Trockman & Kolter, 2022 (https://arxiv.org/abs/2201.09792).

A patch embedding (Conv2d, kernel = stride = patch size) keeps a spatial grid of tokens;
each ConvMixer layer mixes space with a depthwise convolution behind a residual
connection, then mixes channels with a pointwise (1x1) convolution. Every convolution is
followed by GELU and BatchNorm; global average pooling and a Linear layer classify.
Small configurations suit 32x32 images (the paper's appendix trains ConvMixer-256/8 on
CIFAR-10).

The model speaks timm's model API (``num_classes``, ``num_features``, ``get_classifier``,
``reset_classifier``, ``forward_features``, ``forward_head(x, pre_logits)``,
``forward_intermediates`` + ``feature_info``, ``set_grad_checkpointing``, ``group_matcher``,
``no_weight_decay``) and its builders set ``pretrained_cfg``, so timm's optimizer factory,
feature extraction and data config take it as it is; ``zoo check`` tests all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from zoo.errors import ModelArgumentError
from zoo.models.registry import build_model, register_model

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
    """ConvMixer-``dim``/``depth`` classifier for ``img_size`` x ``img_size`` images
    (``num_classes=0``: no head, the model returns pooled features)."""

    pretrained_cfg: dict[str, Any]  # timm's data config, set by the builders
    default_cfg: dict[str, Any]  # timm's older name for the same dict

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
        if num_classes < 0:
            raise ModelArgumentError(f"num_classes must be >= 0, got {num_classes!r}")
        for key, value in (
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
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.patch_size = patch_size
        self.global_pool = "avg"
        self.grad_checkpointing = False
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), nn.GELU(), nn.BatchNorm2d(dim)
        )
        self.blocks = nn.Sequential(*[ConvMixerLayer(dim, kernel_size) for _ in range(depth)])
        # One entry per map forward_intermediates can return: features_only reads it.
        self.feature_info = [
            {"module": f"blocks.{i}", "num_chs": dim, "reduction": patch_size} for i in range(depth)
        ]
        self.num_features = dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        # Weight init: PyTorch's defaults for every layer, as in the paper's reference code,
        # so there is no init_weights method to override them.

    # -- timm's model API ------------------------------------------------------------------

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-wise lr decay: the stem, then each layer."""
        return {"stem": r"^stem\.", "blocks": r"^blocks\.(\d+)\."}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return set()  # biases and BatchNorm (1-D) are exempt in timm anyway

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: ``nn.Identity()``); ``global_pool`` ``'avg'`` or
        ``''`` (no pooling, with ``num_classes=0`` only); None keeps the current one."""
        pool = self.global_pool if global_pool is None else global_pool
        if pool not in ("avg", "") or (pool == "" and num_classes > 0):
            raise ModelArgumentError(
                f"global_pool={global_pool!r} is not supported with num_classes={num_classes}; "
                "use 'avg', or '' (no pooling) with num_classes=0"
            )
        self.num_classes, self.global_pool = num_classes, pool
        weight = self.stem[0].weight
        self.head = (
            nn.Linear(self.num_features, num_classes, device=weight.device, dtype=weight.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        self.head.train(self.training)

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            # The block's activations are recomputed in the backward pass instead of stored
            # (its BatchNorm running statistics then update twice per step, as in timm).
            out: torch.Tensor = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            return out
        return block(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The output of each layer at ``indices`` (None: all; int n: the last n; a list:
        those, negative from the end), as ``(B, dim, H/p, W/p)`` maps."""
        if output_fmt != "NCHW":
            raise ModelArgumentError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = _take_indices(len(self.blocks), indices)
        x = self.stem(x)
        intermediates = []
        for i, block in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = self._run(block, x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last of ``indices`` (and the head); returns the absolute
        indices for forward_intermediates."""
        take, last = _take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = self._run(block, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _take_indices(count: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's convention: None = all, int n = the last n, a list = those (negative from the
    end). Returns the absolute indices and the largest."""
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ModelArgumentError(f"cannot take the last {indices} of {count} layers")
        take = list(range(count - indices, count))
    else:
        take = [i + count if i < 0 else i for i in indices]
        if not take or not all(0 <= i < count for i in take):
            raise ModelArgumentError(f"layer indices {list(indices)} must lie in 0..{count - 1}")
    return take, max(take)


def _create_convmixer(
    variant: str, pretrained: bool, pinned: dict[str, Any], kwargs: dict[str, Any]
) -> nn.Module:
    # build_model rejects unknown kwargs (naming the accepted ones), refuses
    # pretrained=True (no weights ship with the plugin) and records model.zoo_cfg.
    model = build_model(ConvMixer, variant, pretrained, pinned, kwargs)
    assert isinstance(model, ConvMixer)
    # timm's data config (what timm.data.resolve_data_config and `zoo predict` read), for the
    # dataset the model is designed for: CIFAR-10. Published weights override these values.
    rgb = model.in_chans == 3
    model.pretrained_cfg = model.default_cfg = {
        "input_size": (model.in_chans, model.img_size, model.img_size),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": (0.4914, 0.4822, 0.4465) if rgb else (0.5,) * model.in_chans,
        "std": (0.2470, 0.2435, 0.2616) if rgb else (0.5,) * model.in_chans,
        "num_classes": model.num_classes,
        "label_names": None,
        "first_conv": "stem.0",
        "classifier": "head",
    }
    return model


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

"""MLP-Mixer.

MLP-Mixer: An all-MLP Architecture for Vision, Tolstikhin et al., 2021
(https://arxiv.org/abs/2105.01601).

A patch embedding (Conv2d, kernel = stride = patch size) turns the image into a grid of
tokens; each Mixer block mixes information across tokens (token-mixing MLP over the patch
axis) and then across channels (channel-mixing MLP), each behind a pre-LayerNorm and a
residual connection. Module names follow timm's ``MlpMixer`` (``stem.proj``,
``blocks.N.mlp_tokens.fc1``, ...), so state dicts are interchangeable with timm's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zoo.errors import ModelArgumentError
from zoo.models._layers import check_drop_rate, check_positive, get_activation
from zoo.registry import build_model, register_model

__all__ = ["MixerBlock", "MlpMixer", "first_token_mixing"]


class Mlp(nn.Module):
    """Linear -> activation -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module], drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MixerBlock(nn.Module):
    """x + TokenMLP(LN(x)^T)^T, then x + ChannelMLP(LN(x)), on tokens ``(B, N, C)``."""

    def __init__(
        self,
        dim: int,
        num_patches: int,
        token_hidden: int,
        channel_hidden: int,
        act: type[nn.Module],
        drop: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(num_patches, token_hidden, act, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channel_hidden, act, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = patch size, flattened to tokens ``(B, N, C)``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MlpMixer(nn.Module):
    """MLP-Mixer classifier: patch embedding, Mixer blocks, LayerNorm, mean over patches,
    Linear head. ``mlp_ratio`` = (token, channel) hidden sizes as multiples of embed_dim."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        patch_size: int = 4,
        embed_dim: int = 256,
        num_blocks: int = 4,
        mlp_ratio: Sequence[float] = (0.5, 4.0),
        drop_rate: float = 0.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        check_positive(
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            num_blocks=num_blocks,
        )
        check_drop_rate(drop_rate)
        if img_size % patch_size:
            raise ModelArgumentError(
                f"img_size {img_size} is not divisible by patch_size {patch_size}; "
                f"use an img_size that is a multiple of {patch_size}"
            )
        if len(mlp_ratio) != 2:
            raise ModelArgumentError(f"mlp_ratio must be (token, channel), got {mlp_ratio!r}")
        act = get_activation(activation)
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        num_patches = self.grid_size**2
        token_hidden = int(mlp_ratio[0] * embed_dim)
        channel_hidden = int(mlp_ratio[1] * embed_dim)
        self.stem = PatchEmbed(in_chans, embed_dim, patch_size)
        self.blocks = nn.Sequential(
            *[
                MixerBlock(embed_dim, num_patches, token_hidden, channel_hidden, act, drop_rate)
                for _ in range(num_blocks)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x.mean(dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def first_token_mixing(model: nn.Module) -> tuple[torch.Tensor, tuple[int, int]]:
    """The first token-mixing layer's weights ``(hidden, num_patches)`` and the patch grid
    ``(rows, cols)`` each hidden unit's weights reshape to."""
    if not isinstance(model, MlpMixer):
        raise ValueError(f"{type(model).__name__} is not an MlpMixer")
    block = model.blocks[0]
    assert isinstance(block, MixerBlock)
    weight = block.mlp_tokens.fc1.weight.detach().float().cpu().clone()
    return weight, (model.grid_size, model.grid_size)


def _create_mixer(
    variant: str, pretrained: bool, pinned: dict[str, Any], kwargs: dict[str, Any]
) -> nn.Module:
    return build_model(MlpMixer, variant, pretrained, pinned, kwargs)


@register_model
def mlpmixer_p2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MLP-Mixer, patch 2, 256 dim, 4 blocks, for 32x32 images."""
    return _create_mixer("mlpmixer_p2", pretrained, {"patch_size": 2}, kwargs)


@register_model
def mlpmixer_p4(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MLP-Mixer, patch 4, 256 dim, 4 blocks, for 32x32 images."""
    return _create_mixer("mlpmixer_p4", pretrained, {"patch_size": 4}, kwargs)


@register_model
def mlpmixer_p8(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MLP-Mixer, patch 8, 256 dim, 4 blocks, for 32x32 images."""
    return _create_mixer("mlpmixer_p8", pretrained, {"patch_size": 8}, kwargs)


@register_model
def mlpmixer_p16(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MLP-Mixer, patch 16, 256 dim, 4 blocks, for 32x32 images."""
    return _create_mixer("mlpmixer_p16", pretrained, {"patch_size": 16}, kwargs)


_PAPER = {"img_size": 224, "patch_size": 16, "num_classes": 1000}


@register_model
def mlpmixer_s16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mixer-S/16 (paper): 224x224, 512 dim, 8 blocks, token 256, channel 2048."""
    pinned = {**_PAPER, "embed_dim": 512, "num_blocks": 8}
    return _create_mixer("mlpmixer_s16_224", pretrained, pinned, kwargs)


@register_model
def mlpmixer_b16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mixer-B/16 (paper): 224x224, 768 dim, 12 blocks, token 384, channel 3072."""
    pinned = {**_PAPER, "embed_dim": 768, "num_blocks": 12}
    return _create_mixer("mlpmixer_b16_224", pretrained, pinned, kwargs)


@register_model
def mlpmixer_l16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mixer-L/16 (paper): 224x224, 1024 dim, 24 blocks, token 512, channel 4096."""
    pinned = {**_PAPER, "embed_dim": 1024, "num_blocks": 24}
    return _create_mixer("mlpmixer_l16_224", pretrained, pinned, kwargs)

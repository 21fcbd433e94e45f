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

from collections.abc import Iterable, Sequence
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
    get_activation,
    param_device_dtype,
)
from zoo.models.registry import build_model, register_model

__all__ = ["MixerBlock", "MlpMixer", "first_token_mixing"]


class Mlp(nn.Module):
    """Linear -> activation -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module], drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.drop1 = Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MixerBlock(nn.Module):
    """x + TokenMLP(LN(x)^T)^T, then x + ChannelMLP(LN(x)), on tokens ``(B, N, C)``; each
    residual branch behind stochastic depth when ``drop_path_rate > 0``."""

    def __init__(
        self,
        dim: int,
        num_patches: int,
        token_hidden: int,
        channel_hidden: int,
        act: type[nn.Module],
        drop: float,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(num_patches, token_hidden, act, drop)
        self.drop_path = drop_path(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channel_hidden, act, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = patch size, flattened to tokens ``(B, N, C)``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MlpMixer(nn.Module):
    """MLP-Mixer classifier: patch embedding, Mixer blocks, LayerNorm, mean over patches,
    Linear head. ``mlp_ratio`` = (token, channel) hidden sizes as multiples of embed_dim.

    ``drop_path_rate`` is the stochastic-depth rate of the last block; earlier blocks get
    linearly smaller rates (timm's ResNet/ViT rule; timm's Mixer uses one rate for all).
    ``num_classes=0`` builds no head.
    """

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
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        check_positive(
            in_chans=in_chans,
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            num_blocks=num_blocks,
        )
        check_drop_rate(drop_rate)
        check_drop_rate(drop_path_rate, "drop_path_rate")
        if img_size % patch_size:
            raise ModelArgumentError(
                f"img_size {img_size} is not divisible by patch_size {patch_size}; "
                f"use an img_size that is a multiple of {patch_size}"
            )
        if len(mlp_ratio) != 2:
            raise ModelArgumentError(f"mlp_ratio must be (token, channel), got {mlp_ratio!r}")
        act = get_activation(activation)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.patch_size = patch_size
        self.global_pool = "avg"
        self.grad_checkpointing = False
        self.grid_size = img_size // patch_size
        num_patches = self.grid_size**2
        token_hidden = int(mlp_ratio[0] * embed_dim)
        channel_hidden = int(mlp_ratio[1] * embed_dim)
        self.stem = PatchEmbed(in_chans, embed_dim, patch_size)
        rates = drop_path_rates(drop_path_rate, num_blocks)
        self.blocks = nn.Sequential(
            *[
                MixerBlock(
                    embed_dim, num_patches, token_hidden, channel_hidden, act, drop_rate, rate
                )
                for rate in rates
            ]
        )
        self.feature_info: list[dict[str, Any]] = [
            {"module": f"blocks.{i}", "num_chs": embed_dim, "reduction": patch_size}
            for i in range(num_blocks)
        ]
        self.norm: nn.Module = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = self.head_hidden_size = embed_dim
        self.head_drop = Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _init_linear(m)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def first_layer_weights(self) -> tuple[torch.Tensor, str]:
        """The first token-mixing layer, each hidden unit's weights on the patch grid
        ``(hidden, 1, rows, cols)``, and a title (``zoo viz``)."""
        weight, (rows, cols) = first_token_mixing(self)
        title = f"first token-mixing layer: {len(weight)} units on the {rows}x{cols} patch grid"
        return weight.reshape(-1, 1, rows, cols), title

    # -- timm's model API ------------------------------------------------------------------

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's Mixer groups: the stem, each block, the final norm with the last block."""
        return {"stem": r"^stem\.", "blocks": [(r"^blocks\.(\d+)\.", None), (r"^norm\.", (99999,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each Mixer block in the backward pass instead of storing it."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Nothing beyond LayerNorm and bias parameters, which timm already exempts (1-D)."""
        return set()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new Xavier-initialised head for ``num_classes`` (0: ``nn.Identity``, as timm).
        ``global_pool``: ``'avg'`` (mean over patches) or ``''`` (per-token outputs ``(B, N,
        ...)``, as timm's Mixer); None keeps the current one."""
        check_num_classes(num_classes)
        if global_pool is not None:
            check_global_pool(self, global_pool, ("avg", ""))
            self.global_pool = global_pool
        self.num_classes = num_classes
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes, **param_device_dtype(self))
            with torch.no_grad():
                _init_linear(head)
            self.head = head
        else:
            self.head = nn.Identity()
        self.head.train(self.training)

    def _run_blocks(self, blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(blocks, x)
        for block in blocks:
            x = block(x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs at ``indices`` (None: all; int n: the last n; a list: those, negative
        from the end), as token maps ``(B, C, H/p, W/p)`` (``'NCHW'``) or tokens ``(B, N, C)``
        (``'NLC'``); ``norm`` applies the final LayerNorm to each."""
        check_output_fmt(self, output_fmt, ("NCHW", "NLC"))
        take, max_index = feature_take_indices(len(self.blocks), indices)
        batch, _, height, width = x.shape
        x = self.stem(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_blocks([block], x)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        if output_fmt == "NCHW":
            rows, cols = height // self.patch_size, width // self.patch_size
            intermediates = [
                y.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2).contiguous()
                for y in intermediates
            ]
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (the final norm when ``prune_norm``,
        the head when ``prune_head``); returns the absolute indices to pass to
        :meth:`forward_intermediates`."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self._run_blocks(self.blocks, self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_linear(m: nn.Linear) -> None:
    nn.init.xavier_uniform_(m.weight)
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
    variant: str,
    pretrained: bool,
    pinned: dict[str, Any],
    kwargs: dict[str, Any],
    dataset: str = "cifar10",
) -> nn.Module:
    model = build_model(MlpMixer, variant, pretrained, pinned, kwargs)
    assert isinstance(model, MlpMixer)
    cfg = default_data_cfg(
        dataset,
        in_chans=model.in_chans,
        img_size=model.img_size,
        num_classes=model.num_classes,
        first_conv="stem.proj",
        classifier="head",
        fixed_input_size=True,  # the token-mixing MLPs are sized for one patch grid
    )
    attach_data_cfg(model, cfg)
    return model


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


# The paper configurations pin the architecture; the ImageNet input size and class count are
# only defaults, overridable like every model's (fine-tuning to 10 classes, smaller images).
_PAPER_DEFAULTS = {"img_size": 224, "num_classes": 1000}


def _create_paper_mixer(
    variant: str, pretrained: bool, dim: int, blocks: int, kwargs: dict[str, Any]
) -> nn.Module:
    pinned = {"patch_size": 16, "embed_dim": dim, "num_blocks": blocks}
    args = {**_PAPER_DEFAULTS, **kwargs}
    return _create_mixer(variant, pretrained, pinned, args, "imagenet")


@register_model
def mlpmixer_s16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mixer-S/16 (paper): 224x224, 512 dim, 8 blocks, token 256, channel 2048."""
    return _create_paper_mixer("mlpmixer_s16_224", pretrained, 512, 8, kwargs)


@register_model
def mlpmixer_b16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mixer-B/16 (paper): 224x224, 768 dim, 12 blocks, token 384, channel 3072."""
    return _create_paper_mixer("mlpmixer_b16_224", pretrained, 768, 12, kwargs)


@register_model
def mlpmixer_l16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Mixer-L/16 (paper): 224x224, 1024 dim, 24 blocks, token 512, channel 4096."""
    return _create_paper_mixer("mlpmixer_l16_224", pretrained, 1024, 24, kwargs)

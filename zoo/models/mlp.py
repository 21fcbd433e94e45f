"""Multi-layer perceptron baselines.

The course assignment's MLP: flatten the image, four hidden Linear layers of sizes
[1024, 512, 64, 64] each followed by the named activation, and a Linear classifier.
Weights are Xavier-normal, biases zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zoo.models._layers import check_drop_rate, check_positive, get_activation
from zoo.registry import build_model, register_model

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Flatten -> [Linear -> activation -> Dropout] x len(hidden_sizes) -> Linear."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        hidden_sizes: Sequence[int] = (1024, 512, 64, 64),
        activation: str = "relu",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive(num_classes=num_classes, in_chans=in_chans, img_size=img_size)
        check_drop_rate(drop_rate)
        for size in hidden_sizes:
            check_positive(hidden_size=size)
        act = get_activation(activation)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_chans * img_size * img_size
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), act()]
            if drop_rate > 0:
                layers.append(nn.Dropout(drop_rate))
            width = size
        self.features = nn.Sequential(*layers)
        self.num_features = width
        self.head = nn.Linear(width, num_classes)
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)


def _create_mlp(
    variant: str, pretrained: bool, activation: str, kwargs: dict[str, Any]
) -> nn.Module:
    return build_model(Mlp, variant, pretrained, {"activation": activation}, kwargs)


@register_model
def mlp_relu(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MLP [1024, 512, 64, 64] with ReLU."""
    return _create_mlp("mlp_relu", pretrained, "relu", kwargs)


@register_model
def mlp_tanh(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MLP [1024, 512, 64, 64] with tanh."""
    return _create_mlp("mlp_tanh", pretrained, "tanh", kwargs)


@register_model
def mlp_sigmoid(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MLP [1024, 512, 64, 64] with sigmoid."""
    return _create_mlp("mlp_sigmoid", pretrained, "sigmoid", kwargs)

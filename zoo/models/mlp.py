"""Multi-layer perceptron baselines.

The course assignment's MLP: flatten the image, four hidden Linear layers of sizes
[1024, 512, 64, 64] each followed by the named activation, and a Linear classifier.
Weights are Xavier-normal, biases zero.

Feature maps: an MLP has no spatial axes, so its feature maps (``forward_intermediates``,
``features_only``) are the activations of each hidden layer, ``(B, C)`` tensors whatever
``output_fmt`` asks for; ``feature_info`` gives each one ``reduction = img_size`` (one vector per
image, as a 1x1 map of stride ``img_size`` would be).

State-dict keys depend only on the layer sizes: activation and dropout form one
parameter-free module, so the Linear layers are ``features.1``, ``features.3``, ... with or
without dropout, and weights trained with one ``drop_rate`` load into a model with another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from zoo.models._layers import (
    Dropout,
    attach_data_cfg,
    check_drop_rate,
    check_global_pool,
    check_num_classes,
    check_output_fmt,
    check_positive,
    checkpoint_call,
    default_data_cfg,
    feature_take_indices,
    get_activation,
    param_device_dtype,
)
from zoo.models.registry import build_model, register_model

__all__ = ["ActDropout", "MlpClassifier", "checkpoint_filter_fn"]


class ActDropout(nn.Module):
    """Activation then dropout (Identity for rate 0), one module without parameters."""

    def __init__(self, act: type[nn.Module], drop_rate: float = 0.0) -> None:
        super().__init__()
        self.act = act()
        self.drop = Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(x))


class MlpClassifier(nn.Module):
    """Flatten -> [Linear -> ActDropout] x len(hidden_sizes) -> Linear head.

    ``num_classes=0`` builds no head: the model returns the last hidden layer's activations.
    """

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
        check_num_classes(num_classes)
        check_positive(in_chans=in_chans, img_size=img_size)
        check_drop_rate(drop_rate)
        for size in hidden_sizes:
            check_positive(hidden_size=size)
        act = get_activation(activation)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.global_pool = ""  # the features are one vector per image: nothing to pool
        self.grad_checkpointing = False
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_chans * img_size * img_size
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), ActDropout(act, drop_rate)]
            width = size
        self.features = nn.Sequential(*layers)
        self.feature_info: list[dict[str, Any]] = [
            {"module": f"features.{2 * i + 2}", "num_chs": size, "reduction": img_size}
            for i, size in enumerate(hidden_sizes)
        ]
        self.num_features = self.head_hidden_size = width
        self.head: nn.Module = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _init_linear(m)

    # -- timm's model API ------------------------------------------------------------------

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The first hidden layer (which reads the pixels) is the stem, each later hidden
        layer a block; the head is unmatched, so timm puts it last."""
        return {"stem": r"^features\.1\.", "blocks": r"^features\.(\d+)\."}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each hidden layer in the backward pass instead of storing it."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Nothing beyond the biases, which timm already exempts (1-D parameters)."""
        return set()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new Xavier-initialised head for ``num_classes`` (0: ``nn.Identity``, as timm).
        An MLP has nothing to pool: ``global_pool`` may be None or ``''`` only."""
        check_num_classes(num_classes)
        if global_pool is not None:
            check_global_pool(self, global_pool, ("",))
        self.num_classes = num_classes
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes, **param_device_dtype(self))
            with torch.no_grad():
                _init_linear(head)
            self.head = head
        else:
            self.head = nn.Identity()
        self.head.train(self.training)

    def _hidden_layers(self) -> list[tuple[nn.Module, nn.Module]]:
        layers = list(self.features)  # Flatten, then (Linear, ActDropout) pairs
        return list(zip(layers[1::2], layers[2::2], strict=True))

    def _layer(self, linear: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_call(lambda t: act(linear(t)), x)
        return act(linear(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Hidden-layer activations ``(B, C)`` at ``indices`` (None: all; int n: the last n;
        a list: those, negative from the end). ``norm`` has no effect (no final norm)."""
        check_output_fmt(self, output_fmt, ("NCHW", "NLC"))
        layers = self._hidden_layers()
        take, max_index = feature_take_indices(len(layers), indices)
        if stop_early:
            layers = layers[: max_index + 1]
        x = self.features[0](x)
        intermediates = []
        for i, (linear, act) in enumerate(layers):
            x = self._layer(linear, act, x)
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
        """Drop the hidden layers after the last of ``indices`` (and the head); returns the
        absolute indices to pass to :meth:`forward_intermediates`."""
        take, max_index = feature_take_indices(len(self._hidden_layers()), indices)
        prune_end = max_index < len(self._hidden_layers()) - 1
        self.features = self.features[: 2 * max_index + 3]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return self.features(x)
        x = self.features[0](x)
        for linear, act in self._hidden_layers():
            x = self._layer(linear, act, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_linear(m: nn.Linear) -> None:
    nn.init.xavier_normal_(m.weight)
    nn.init.zeros_(m.bias)


def checkpoint_filter_fn(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Today's keys for MLP weights saved in the old layout (timm's name for such a hook).

    Before activation and dropout became one module, a model with ``drop_rate > 0`` had a
    Dropout module after each activation, so its Linear layers sat at ``features.1``,
    ``features.4``, ``features.7``, ... instead of ``features.1``, ``features.3``, ... A state
    dict in that layout is renumbered; any other is returned unchanged.
    """
    found = {int(m.group(1)) for k in state_dict if (m := _FEATURE_KEY.match(k))}
    old = [1 + 3 * i for i in range(len(found))]
    if len(found) < 2 or sorted(found) != old:
        return dict(state_dict)
    new = {index: 1 + 2 * i for i, index in enumerate(old)}

    def renamed(key: str) -> str:
        m = _FEATURE_KEY.match(key)
        return f"features.{new[int(m.group(1))]}.{m.group(2)}" if m else key

    return {renamed(k): v for k, v in state_dict.items()}


_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(.+)$")


def _create_mlp(
    variant: str, pretrained: bool, activation: str, kwargs: dict[str, Any]
) -> nn.Module:
    model = build_model(MlpClassifier, variant, pretrained, {"activation": activation}, kwargs)
    assert isinstance(model, MlpClassifier)
    cfg = default_data_cfg(
        "cifar10",
        in_chans=model.in_chans,
        img_size=model.img_size,
        num_classes=model.num_classes,
        first_conv=None,  # the first layer is a Linear over all pixels, not a conv
        classifier="head",
        fixed_input_size=True,
    )
    attach_data_cfg(model, cfg)
    return model


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

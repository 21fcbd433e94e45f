"""Feature extraction: a model as a backbone that returns a list of feature maps, as timm's
``features_only=True`` does.

    >>> backbone = features_only(zoo.create("resnet18"), out_indices=(1, 2, 3, 4))
    >>> maps = backbone(torch.randn(2, 3, 32, 32))   # [(2, 64, 32, 32), ..., (2, 512, 4, 4)]
    >>> backbone.feature_info.channels(), backbone.feature_info.reduction()
    ([64, 128, 256, 512], [1, 2, 4, 8])

Any model that speaks timm's feature API works: ``forward_intermediates(x, indices, norm,
stop_early, output_fmt, intermediates_only)`` and ``feature_info``, a list of
``{"module", "num_chs", "reduction"}`` dicts (one per feature map), optionally
``prune_intermediate_layers``. zoo's built-ins, timm's models and the zoo-convmixer plugin do.
:class:`FeatureGetter` is the counterpart of timm's ``FeatureGetterNet`` and
:class:`FeatureInfo` has the accessors of timm's ``FeatureInfo``, without importing timm.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zoo.errors import ModelArgumentError
from zoo.models._layers import feature_take_indices

__all__ = ["FeatureGetter", "FeatureInfo", "features_only"]

OutIndices = int | Sequence[int] | None


class FeatureInfo:
    """Channels, reduction (stride relative to the input) and module name of each feature map
    a model can return, and the ``out_indices`` a feature extractor returns."""

    def __init__(self, info: Sequence[dict[str, Any]], out_indices: Sequence[int]) -> None:
        self.info = [dict(d, index=d.get("index", i)) for i, d in enumerate(info)]
        self.out_indices = tuple(out_indices)

    def from_other(self, out_indices: Sequence[int]) -> FeatureInfo:
        return FeatureInfo(copy.deepcopy(self.info), out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """``key`` of each returned map (``idx`` None), of map ``idx``, or of maps ``idx``."""
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(
        self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None
    ) -> Any:
        def pick(i: int) -> dict[str, Any]:
            return dict(self.info[i]) if keys is None else {k: self.info[i][k] for k in keys}

        if idx is None:
            return [pick(i) for i in self.out_indices]
        return pick(idx) if isinstance(idx, int) else [pick(i) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return (
            f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, "
            f"reduction={self.reduction()})"
        )


class FeatureGetter(nn.Module):
    """Wrap ``model`` so that ``forward(x)`` returns its feature maps at ``out_indices``
    (``model.forward_intermediates(..., intermediates_only=True)``); see
    :func:`features_only`."""

    def __init__(
        self,
        model: nn.Module,
        out_indices: OutIndices = None,
        *,
        norm: bool = False,
        output_fmt: str = "NCHW",
        prune: bool = True,
    ) -> None:
        super().__init__()
        info = _feature_info_of(model)
        take, _ = feature_take_indices(len(info), out_indices)
        prune_fn = getattr(model, "prune_intermediate_layers", None)
        if prune and callable(prune_fn):
            take = list(prune_fn(take, prune_norm=not norm))
        self.model = model
        self.out_indices = tuple(take)
        self.feature_info = FeatureInfo(info, take)
        self.norm = norm
        self.output_fmt = output_fmt
        for key in ("pretrained_cfg", "default_cfg"):  # so timm's resolve_data_config works
            if key in vars(model):
                vars(self)[key] = vars(model)[key]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        model: Any = self.model  # any model with timm's feature API
        features: list[torch.Tensor] = model.forward_intermediates(
            x,
            indices=list(self.out_indices),
            norm=self.norm,
            output_fmt=self.output_fmt,
            intermediates_only=True,
        )
        return features


def features_only(
    model: nn.Module,
    out_indices: OutIndices = None,
    *,
    norm: bool = False,
    output_fmt: str = "NCHW",
    prune: bool = True,
) -> FeatureGetter:
    """``model`` as a feature extractor: a module whose ``forward(x)`` returns a list of feature
    maps and whose ``feature_info`` describes them (``channels()``, ``reduction()``).

    ``out_indices``: None for every feature map the model has, an int ``n`` for the last
    ``n``, or a sequence of indices (negative ones count from the end), as timm. ``norm``
    applies the model's final norm to each map (where it has one). ``prune`` (default True, as
    timm) removes from ``model`` -- in place -- the layers after the last map requested and the
    classifier; pass ``prune=False`` to keep the model whole.
    """
    return FeatureGetter(model, out_indices, norm=norm, output_fmt=output_fmt, prune=prune)


def _feature_info_of(model: nn.Module) -> list[dict[str, Any]]:
    name = type(model).__name__
    if not callable(getattr(model, "forward_intermediates", None)):
        raise ModelArgumentError(
            f"{name} cannot return feature maps: it has no forward_intermediates(x, indices, "
            "norm, stop_early, output_fmt, intermediates_only) method (timm's feature API; "
            "zoo.models.mixer.MlpMixer shows one)"
        )
    info = getattr(model, "feature_info", None)
    if isinstance(getattr(info, "info", None), list):  # a FeatureInfo (zoo's or timm's)
        info = info.info  # type: ignore[union-attr]
    if not isinstance(info, list | tuple) or not all(
        isinstance(d, dict) and {"num_chs", "reduction", "module"} <= d.keys() for d in info
    ):
        raise ModelArgumentError(
            f"{name} has no usable feature_info: set model.feature_info to a list with one "
            "dict(module=..., num_chs=..., reduction=...) per feature map forward_intermediates "
            "can return"
        )
    return [dict(d) for d in info]

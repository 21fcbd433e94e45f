"""Pretrained weights for a model of another class count or input channel count.

Fine-tuning starts from weights trained for other data: a different number of classes, or
grey images instead of colour ones. :func:`load_adapted` loads such weights the way timm's
``_builder.load_pretrained`` does, and is strict about everything else:

- every tensor whose shape fits is loaded as it is;
- a classifier (``pretrained_cfg["classifier"]``, else ``get_classifier()``, else the last
  Linear) whose class count differs keeps the model's fresh initialisation (re-initialised);
- the first layer (``pretrained_cfg["first_conv"]``, else the first Conv2d or Linear: conv
  stems, the Mixer's patch embedding, the MLP's first Linear over ``C*H*W`` pixels) is
  adapted to another ``in_chans`` as timm's ``adapt_input_conv`` does: one channel sums the
  pretrained channels; more channels repeat them, scaled by ``base / in_chans``;
- any other missing, unexpected or mis-shaped key is refused, naming them all.

The outcome is a :class:`LoadReport`: one log line and the ``pretrained`` entry of a run's
``summary.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.weights import files

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "LoadReport",
    "adapt_input_weight",
    "classifier_name",
    "first_layer_name",
    "load_adapted",
    "per_channel",
    "plan_fit",
]

log = logging.getLogger(__name__)

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_adapted` did with the tensors of ``source``."""

    source: str
    loaded: int  # tensors taken from the weights (adapted ones included)
    reinitialised: tuple[str, ...] = ()  # classifier tensors left at their fresh values
    adapted: tuple[str, ...] = ()  # first-layer tensors adapted to another in_chans
    dropped: tuple[str, ...] = ()  # classifier tensors of a model built without one
    mean: tuple[float, ...] | None = None  # the data config the weights were trained with
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "loaded": self.loaded,
            "reinitialised": list(self.reinitialised),
            "adapted": list(self.adapted),
        }
        if self.dropped:
            out["dropped"] = list(self.dropped)
        if self.mean is not None and self.std is not None:
            out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadReport:
        """Inverse of :meth:`to_dict` (as ``model.zoo_cfg["pretrained"]`` holds it)."""
        return cls(
            source=str(data["source"]),
            loaded=int(data["loaded"]),
            reinitialised=tuple(data.get("reinitialised", ())),
            adapted=tuple(data.get("adapted", ())),
            dropped=tuple(data.get("dropped", ())),
        )

    def line(self) -> str:
        return (
            f"pretrained weights from {self.source}: loaded {self.loaded} tensors, "
            f"re-initialised [{', '.join(self.reinitialised)}], "
            f"adapted [{', '.join(self.adapted)}]"
            + (f", dropped [{', '.join(self.dropped)}]" if self.dropped else "")
        )


def _module_names(model: nn.Module, kinds: tuple[type, ...]) -> list[str]:
    return [name for name, m in model.named_modules() if name and isinstance(m, kinds)]


def _cfg_name(model: nn.Module, key: str) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None)
    value = cfg.get(key) if isinstance(cfg, Mapping) else None
    if isinstance(value, list | tuple):  # timm allows several classifiers; take the first
        value = value[0] if value else None
    return value if isinstance(value, str) and value else None


def classifier_name(model: nn.Module) -> str | None:
    """The module name of the classifier (``head``, ``fc``): ``pretrained_cfg["classifier"]``,
    else the module ``get_classifier()`` returns, else the last Linear; None if none."""
    from torch import nn

    name = _cfg_name(model, "classifier")
    if name is not None:
        return name
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        for name, module in model.named_modules():
            if name and module is head:
                return name
    linears = _module_names(model, (nn.Linear,))
    return linears[-1] if linears else None


def first_layer_name(model: nn.Module) -> str | None:
    """The module that reads the pixels: ``pretrained_cfg["first_conv"]``, else the first
    Conv2d or Linear in definition order (the MLP's first Linear over ``C*H*W`` inputs)."""
    from torch import nn

    name = _cfg_name(model, "first_conv")
    if name is not None:
        return name
    layers = _module_names(model, (nn.Conv2d, nn.Linear))
    return layers[0] if layers else None


def _in_chans(model: nn.Module) -> int | None:
    value = getattr(model, "in_chans", None)
    if isinstance(value, int):
        return value
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
    return int(size[0]) if size else None


def plan_fit(
    own: Shapes,
    found: Shapes,
    source: str,
    *,
    classifier: str | None,
    first_layer: str | None,
    in_chans: int | None,
    base_chans: int | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """``(reinitialised, adapted, dropped)`` keys that make ``found`` fit ``own``; any other
    mismatch raises :class:`WeightsError` listing every missing, unexpected and mis-shaped
    key (:func:`zoo.weights.files.check_fit`). ``base_chans`` is the weights' channel count
    when known (config.json): a first Linear's input size alone cannot tell 3 channels of
    H*W pixels from 1 channel of 3*H*W, so without it only 1 or 3 channels are assumed."""
    reinit: list[str] = []
    adapted: list[str] = []
    dropped: list[str] = []
    for key in sorted(set(own) & set(found)):
        a, b = own[key], found[key]
        if a == b:
            continue
        module, _, kind = key.rpartition(".")
        if module == classifier and kind in ("weight", "bias") and a[1:] == b[1:]:
            reinit.append(key)  # another class count: keep the fresh head
        elif (
            module == first_layer
            and kind == "weight"
            and in_chans is not None
            and _adaptable(a, b, in_chans, base_chans)
        ):
            adapted.append(key)
    if classifier is not None and not any(k.startswith(classifier + ".") for k in own):
        # a model built without a classifier (num_classes=0) takes the rest of the weights
        dropped = sorted(k for k in found if k.startswith(classifier + ".") and k not in own)
    handled = set(reinit) | set(adapted)
    files.check_fit(
        {k: v for k, v in own.items() if k not in handled},
        {k: v for k, v in found.items() if k not in handled and k not in dropped},
        source,
    )
    return reinit, adapted, dropped


def _adaptable(
    own: tuple[int, ...], found: tuple[int, ...], in_chans: int, base_chans: int | None
) -> bool:
    """Whether a first-layer weight of shape ``found`` adapts to ``own`` by channel count."""
    if len(own) != len(found) or own[0] != found[0]:
        return False
    if len(own) == 4:  # Conv2d (O, C, k, k)
        return own[2:] == found[2:] and base_chans in (None, found[1])
    if len(own) == 2:  # Linear over flattened (C, H, W) pixels: the same H*W per channel
        pixels, rest = divmod(own[1], in_chans)
        if rest or not pixels or found[1] % pixels:
            return False
        base = found[1] // pixels
        return base == base_chans if base_chans is not None else base in (1, 3)
    return False


def adapt_input_weight(weight: torch.Tensor, in_chans: int, base_chans: int) -> torch.Tensor:
    """``weight`` of a layer reading ``base_chans`` channels, for ``in_chans`` channels
    (timm's ``adapt_input_conv``): 1 channel sums the pretrained ones; otherwise they are
    repeated to ``in_chans`` and scaled by ``base_chans / in_chans``, so a grey image copied
    into every channel gives the same activations. A 2-D weight is a Linear over flattened
    ``(C, H, W)`` inputs; each channel's block of ``H*W`` columns is treated as one channel."""
    if in_chans == base_chans:
        return weight
    dtype, shape = weight.dtype, weight.shape
    w = weight.float()
    if w.ndim == 2:
        w = w.reshape(shape[0], base_chans, shape[1] // base_chans, 1)
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        repeat = math.ceil(in_chans / base_chans)
        w = w.repeat(1, repeat, 1, 1)[:, :in_chans] * (base_chans / in_chans)
    if weight.ndim == 2:
        w = w.reshape(shape[0], -1)
    return w.to(dtype)


def load_adapted(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    base_chans: int | None = None,
) -> LoadReport:
    """Load ``state`` into ``model``: strictly, except for the classifier's class count and
    the first layer's input channels (see the module docstring). ``mean``/``std`` are the
    data config the weights were trained with; they are recorded for ``model.in_chans``.
    ``base_chans`` is the channel count the weights were trained for, when known.
    The report is logged, returned, and kept as ``model.zoo_cfg["pretrained"]``."""
    import torch

    own_state = model.state_dict()
    in_chans = _in_chans(model)
    reinit, adapted, dropped = plan_fit(
        {k: tuple(v.shape) for k, v in own_state.items()},
        {k: tuple(v.shape) for k, v in state.items()},
        source,
        classifier=classifier_name(model),
        first_layer=first_layer_name(model),
        in_chans=in_chans,
        base_chans=base_chans,
    )
    merged = {k: v for k, v in state.items() if k not in dropped}
    for key in reinit:
        merged[key] = own_state[key]
    for key in adapted:
        assert in_chans is not None  # plan_fit adapts only when it is known
        found = state[key]
        base = (
            found.shape[1]
            if found.ndim == 4
            else found.shape[1] * in_chans // own_state[key].shape[1]
        )
        merged[key] = adapt_input_weight(found, in_chans, base)
    if not any(p.is_meta for p in own_state.values()):  # meta: shapes checked, nothing to copy
        with torch.no_grad():
            model.load_state_dict(merged, strict=True)
    report = LoadReport(
        source=source,
        loaded=len(merged) - len(reinit),
        reinitialised=tuple(reinit),
        adapted=tuple(adapted),
        dropped=tuple(dropped),
        mean=per_channel(mean, in_chans) if mean is not None else None,
        std=per_channel(std, in_chans) if std is not None else None,
    )
    vars(model)["zoo_cfg"] = {**getattr(model, "zoo_cfg", {}), "pretrained": report.to_dict()}
    log.info("%s", report.line())
    return report


def per_channel(values: Sequence[float], in_chans: int | None) -> tuple[float, ...]:
    """Per-channel statistics of the pretraining data for ``in_chans`` channels: themselves
    when the count matches, else their average repeated (as adapting the first layer assumes
    each new channel sees what the old ones saw on average)."""
    values = tuple(float(v) for v in values)
    if in_chans is None or len(values) == in_chans:
        return values
    average = sum(values) / len(values)
    return (average,) * in_chans

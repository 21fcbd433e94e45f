"""Small pieces shared by the built-in model files: argument checks, activations, dropout,
stochastic depth, gradient checkpointing, feature-index selection and the default data
config."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from zoo.errors import ModelArgumentError

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def get_activation(name: str) -> type[nn.Module]:
    """The activation class called ``name`` (``relu``, ``gelu``, ...)."""
    try:
        return _ACTIVATIONS[name.lower()]
    except (KeyError, AttributeError):
        raise ModelArgumentError(
            f"unknown activation {name!r}; choose one of: {', '.join(_ACTIVATIONS)}"
        ) from None


def check_positive(**values: int | float) -> None:
    """Raise ModelArgumentError for the first value that is not > 0."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ModelArgumentError(f"{key} must be a positive number, got {value!r}")


def check_num_classes(num_classes: int) -> None:
    """A class count is an int >= 0; 0 builds the model without a classifier (as timm)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ModelArgumentError(
            f"num_classes must be an int >= 0 (0 = no classifier, the model returns pooled "
            f"features), got {num_classes!r}"
        )


def check_drop_rate(drop_rate: float, name: str = "drop_rate") -> None:
    """Raise ModelArgumentError unless ``0 <= drop_rate < 1`` (``name`` says which rate)."""
    if (
        isinstance(drop_rate, bool)
        or not isinstance(drop_rate, int | float)
        or not 0.0 <= drop_rate < 1.0
    ):
        raise ModelArgumentError(f"{name} must be in [0, 1), got {drop_rate!r}")


def check_global_pool(model: nn.Module, global_pool: str, allowed: Sequence[str]) -> None:
    if global_pool not in allowed:
        raise ModelArgumentError(
            f"{type(model).__name__} does not support global_pool={global_pool!r}; choose one "
            f"of {', '.join(map(repr, allowed))} ('' = no pooling)"
        )


def check_output_fmt(model: nn.Module, output_fmt: str, allowed: Sequence[str]) -> None:
    if output_fmt not in allowed:
        raise ModelArgumentError(
            f"{type(model).__name__}.forward_intermediates does not support "
            f"output_fmt={output_fmt!r}; choose one of {', '.join(map(repr, allowed))}"
        )


def param_device_dtype(model: nn.Module) -> dict[str, Any]:
    """``device`` and ``dtype`` of the model's first parameter, for building a new layer (a
    head on the meta device stays on meta)."""
    p = next(model.parameters(), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


# -- dropout -------------------------------------------------------------------------------


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` (same arguments, no state) with a faster mask on CPU.

    torch's CPU dropout draws one Mersenne Twister number per element, which costs 30x a
    multiply (16 ms for 2M bf16 elements on one Xeon core against 0.5 ms): a Mixer with
    ``drop_rate=0.1`` trained 2.7x slower in bf16 than without dropout. Here each element
    gets 16 bits of one 64-bit draw (four elements a draw, from the same generator, so seeds,
    checkpoint replays and resumes behave as before): it is kept where its bits are at least
    ``round(p * 65536)`` and scaled by ``65536 / (65536 - that)``, so the output is unbiased
    and the rate is ``p`` to within 1/131072. The backward pass saves the multiplier in the
    input's dtype (torch saves a bool mask). Other devices (CUDA's kernel is fused and
    fast), eval mode, ``inplace`` and rates that round to 0 or 1 use :class:`nn.Dropout`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped = round(self.p * 65536)
        if (
            not self.training
            or self.inplace
            or x.device.type != "cpu"
            or not x.is_floating_point()
            or not 0 < dropped < 65536
        ):
            return super().forward(x)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        bits = words.view(torch.int16)[:n].view(x.shape)  # uniform on -32768..32767
        keep = (bits >= dropped - 32768).view(torch.uint8)  # uint8 converts 5x faster than bool
        # A multiplier, not torch.where: the backward pass is one multiply by what is saved.
        return x * keep.to(x.dtype).mul_(65536 / (65536 - dropped))


# -- stochastic depth ----------------------------------------------------------------------


def drop_path_rates(drop_path_rate: float, num_blocks: int) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 at the first block to
    ``drop_path_rate`` at the last (timm's ResNet rule, the same as ViT's linspace)."""
    if num_blocks <= 1:
        return [0.0] * num_blocks
    return [drop_path_rate * i / (num_blocks - 1) for i in range(num_blocks)]


def drop_path(rate: float) -> nn.Module:
    """timm's ``DropPath(rate)``, or ``nn.Identity()`` for rate 0. Neither has parameters, so
    the rate never changes the state dict."""
    if rate <= 0.0:
        return nn.Identity()
    from timm.layers import DropPath  # imported on use only: timm takes seconds to import

    module: nn.Module = DropPath(rate)
    return module


# -- gradient checkpointing ----------------------------------------------------------------


@contextlib.contextmanager
def _buffers_restored(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Put every buffer of ``modules`` back as it was on entry: recomputing a block in the
    backward pass must not update BatchNorm running statistics a second time."""
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _contexts(
    modules: Sequence[nn.Module],
) -> tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]:
    return contextlib.nullcontext(), _buffers_restored(modules)


def checkpoint_call(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    modules: Sequence[nn.Module] = (),
) -> torch.Tensor:
    """``fn(x)`` under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant): activations
    inside ``fn`` are recomputed in the backward pass instead of stored. Dropout masks are
    replayed (the RNG state is preserved) and the buffers of ``modules`` are restored after the
    recomputation, so outputs, gradients and running statistics equal an unchecked run."""
    if not any(True for m in modules for _ in m.buffers()):
        out: torch.Tensor = torch.utils.checkpoint.checkpoint(fn, x, use_reentrant=False)
        return out
    out = torch.utils.checkpoint.checkpoint(
        fn, x, use_reentrant=False, context_fn=functools.partial(_contexts, tuple(modules))
    )
    return out


def checkpoint_seq(blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Run ``blocks`` in order, each one checkpointed (see :func:`checkpoint_call`)."""
    for block in blocks:
        x = checkpoint_call(block, x, (block,))
    return x


# -- intermediate features -----------------------------------------------------------------


def feature_take_indices(
    num_features: int, indices: int | Sequence[int] | None = None
) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``: the absolute indices to take and the largest one.

    ``None`` takes all ``num_features``; an int ``n`` the last ``n``; a sequence those indices
    (negative ones count from the end). Out-of-range values raise ModelArgumentError.
    """
    if num_features <= 0:
        raise ModelArgumentError("this model has no intermediate features to take")
    span = f"0..{num_features - 1}, or -{num_features}..-1 from the end"
    if indices is None:
        indices = num_features
    if isinstance(indices, bool):
        raise ModelArgumentError(f"feature indices must be an int or a list of ints, got {indices}")
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ModelArgumentError(
                f"cannot take the last {indices} of {num_features} features; pass an int in "
                f"1..{num_features} or a list of indices ({span})"
            )
        take = list(range(num_features - indices, num_features))
    else:
        take = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if not 0 <= idx < num_features:
                raise ModelArgumentError(
                    f"feature index {i!r} is out of range: the model has {num_features} "
                    f"features ({span})"
                )
            take.append(idx)
        if not take:
            raise ModelArgumentError(f"no feature indices given; choose some of {span}")
    return take, max(take)


# -- default data config (timm's pretrained_cfg keys) --------------------------------------

# Models may not import zoo.data (same level), so the facts live here too; tests check that
# they equal zoo.data.catalog's and timm.data's.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # timm.data.IMAGENET_DEFAULT_MEAN
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# design dataset -> (mean, std, crop_pct, num_classes, label names or None)
_DESIGN_DATA: dict[str, tuple[tuple[float, ...], tuple[float, ...], float, int, Any]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD, 1.0, 10, CIFAR10_CLASSES),
    # ImageNet-1k's 1000 names are not embedded; timm.data.ImageNetInfo() provides them.
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875, 1000, None),
}


def per_channel(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """``values`` (one per RGB channel) for ``in_chans`` channels: themselves for 3, else
    their average repeated ``in_chans`` times (a grey image's statistics are close to the
    average of its colour channels; other channel counts have no better default)."""
    if in_chans == len(values):
        return tuple(values)
    average = round(sum(values) / len(values), 4)
    return (average,) * in_chans


def default_data_cfg(
    dataset: str,
    *,
    in_chans: int,
    img_size: int,
    num_classes: int,
    first_conv: str | None,
    classifier: str,
    fixed_input_size: bool,
) -> dict[str, Any]:
    """A model's ``pretrained_cfg`` (timm's keys) for the dataset it was designed for
    (``cifar10`` or ``imagenet``), before any weights say otherwise.

    ``mean``/``std`` are the dataset's, for ``in_chans`` channels by :func:`per_channel`;
    ``label_names`` are the dataset's class names only when the model has its class count and
    3 input channels (a 1-channel 10-class model is not a CIFAR-10 model), else None.
    """
    mean, std, crop_pct, classes, names = _DESIGN_DATA[dataset]
    matches = num_classes == classes and in_chans == 3
    return {
        "input_size": (in_chans, img_size, img_size),
        "fixed_input_size": fixed_input_size,
        "interpolation": "bilinear",
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "mean": per_channel(mean, in_chans),
        "std": per_channel(std, in_chans),
        "num_classes": num_classes,
        "label_names": tuple(names) if matches and names is not None else None,
        "first_conv": first_conv,
        "classifier": classifier,
    }


def attach_data_cfg(model: nn.Module, cfg: dict[str, Any]) -> None:
    """Set ``model.pretrained_cfg`` and its timm alias ``model.default_cfg`` (one dict)."""
    vars(model)["pretrained_cfg"] = vars(model)["default_cfg"] = cfg

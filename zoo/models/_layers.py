"""Small pieces shared by the built-in model files."""

from __future__ import annotations

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


def check_drop_rate(drop_rate: float) -> None:
    if (
        isinstance(drop_rate, bool)
        or not isinstance(drop_rate, int | float)
        or not 0.0 <= drop_rate < 1.0
    ):
        raise ModelArgumentError(f"drop_rate must be in [0, 1), got {drop_rate!r}")

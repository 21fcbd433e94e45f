"""Training a pretrained model: frozen parameters (``model.freeze``) and a separate learning
rate for the classifier (``optim.head_lr_mult``). Loading and adapting the weights is
:mod:`zoo.weights.adapt`'s."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zoo.errors import RecipeError, did_you_mean
from zoo.weights.adapt import classifier_name

if TYPE_CHECKING:
    from torch import nn

    from zoo.recipe import OptimSpec

__all__ = ["BODY", "freeze", "head_parameter_names", "param_groups"]

BODY = "body"  # model.freeze: body -- everything but the classifier


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classifier's parameters (empty when the model has none)."""
    head = classifier_name(model)
    if head is None:
        return set()
    return {n for n, _ in model.named_parameters() if n.startswith(head + ".")}


def freeze(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Stop training the parameters whose names match any fnmatch pattern (``body``: all but
    the classifier); return their names. A pattern that matches nothing is refused."""
    names = [n for n, _ in model.named_parameters()]
    head = head_parameter_names(model)
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern == BODY:
            if not head:
                raise RecipeError(
                    "model.freeze: body needs a classifier to leave trainable, but the model "
                    "has none; list the parameters to freeze instead"
                )
            matched = [n for n in names if n not in head]
        else:
            matched = fnmatch.filter(names, pattern)
        if not matched:
            raise RecipeError(
                f"model.freeze: pattern {pattern!r} matches no parameter."
                f"{did_you_mean(pattern, names)} Parameter names look like {names[0]!r}; "
                f"use fnmatch patterns such as 'stem.*' or {BODY!r}"
            )
        chosen.update(matched)
    if len(chosen) == len(names):
        raise RecipeError(
            f"model.freeze {list(patterns)} freezes every parameter: nothing would train"
        )
    for name, param in model.named_parameters():
        if name in chosen:
            param.requires_grad_(False)
    return sorted(chosen)


def param_groups(model: nn.Module, spec: OptimSpec) -> list[Any]:
    """The trainable parameters; with ``head_lr_mult``, two groups: the body at ``lr`` and
    the classifier at ``lr * head_lr_mult``."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if spec.head_lr_mult is None:
        return [p for _, p in trainable]
    head = head_parameter_names(model)
    if not head:
        raise RecipeError(
            "optim.head_lr_mult needs a classifier, but the model has none; remove it"
        )
    body = [p for n, p in trainable if n not in head]
    top = [p for n, p in trainable if n in head]
    groups = [{"params": body, "lr": spec.lr}] if body else []
    return [*groups, {"params": top, "lr": spec.lr * spec.head_lr_mult}]

"""The optimizer and learning-rate schedule a recipe asks for (its ``optim:`` and
``schedule:`` sections).

The schedule is stepped once per optimizer step (iteration), not per epoch;
``warmup_epochs`` and ``step_size`` are given in epochs and converted to iterations.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from zoo.errors import RecipeError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.recipe import OptimSpec, Recipe, ScheduleSpec

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(model: nn.Module, spec: OptimSpec) -> torch.optim.Optimizer:
    """sgd (no momentum), momentum (SGD with momentum), adam (L2 weight decay, as torch
    does), adamw (decoupled decay); any other name goes to timm's optimizer factory.
    momentum, adam and adamw use torch's fused kernels where the device has them."""
    import torch

    from zoo.devices import fused_optimizer
    from zoo.training.finetune import param_groups

    params = param_groups(model, spec)  # frozen parameters left out; head_lr_mult groups
    if spec.layer_decay is not None:  # timm's groups by depth (group_matcher), lr folded in
        from zoo.training.regularise import layer_decay_groups

        params = layer_decay_groups(model, spec)
    name = spec.name.lower()
    betas = (spec.betas[0], spec.betas[1]) if spec.betas else (0.9, 0.999)
    wd = spec.weight_decay
    # torch's fused kernels where they exist (fused_optimizer); plain SGD's per-parameter
    # step is one op per tensor already, and measured no faster fused
    if name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.0, weight_decay=wd)
    if name == "momentum":
        sgd = torch.optim.SGD
        return fused_optimizer(sgd, params, lr=spec.lr, momentum=spec.momentum, weight_decay=wd)
    if name == "adam":
        return fused_optimizer(torch.optim.Adam, params, lr=spec.lr, betas=betas, weight_decay=wd)
    if name == "adamw":
        return fused_optimizer(torch.optim.AdamW, params, lr=spec.lr, betas=betas, weight_decay=wd)
    from timm.optim import create_optimizer_v2, list_optimizers

    extra: dict[str, Any] = {"betas": betas} if spec.betas else {}
    # timm groups a whole model's parameters by weight decay; explicit groups pass as they are
    whole = spec.head_lr_mult is None and spec.layer_decay is None
    whole = whole and all(p.requires_grad for p in model.parameters())
    try:
        return create_optimizer_v2(
            model if whole else params,
            opt=name,
            lr=spec.lr,
            weight_decay=wd,
            momentum=spec.momentum,
            **extra,
        )
    except (ValueError, AssertionError, KeyError, TypeError) as e:
        known = ["sgd", "momentum", "adam", "adamw", *map(str, list_optimizers())]
        from zoo.errors import did_you_mean

        raise RecipeError(
            f"optimizer {spec.name!r} cannot be built ({e}).{did_you_mean(name, known)} "
            "Use sgd, momentum, adam, adamw or a timm optimizer name"
        ) from None


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-iteration schedule over ``recipe.epochs * steps`` optimizer steps: torch's
    OneCycleLR for ``onecycle`` (lr only; momentum is left as the optimizer has it), else a
    LambdaLR over :func:`lr_factor`, whose checkpointed state is a step counter (so runs
    saved before stay resumable bit for bit)."""
    import functools

    import torch

    spec = recipe.schedule
    if spec.name == "onecycle":
        if spec.pct_start * recipe.epochs * steps == 1:  # torch divides by zero at step 0
            raise RecipeError(
                f"schedule.pct_start {spec.pct_start:g} makes a warm-up of exactly 1 of "
                f"{recipe.epochs * steps} steps, which OneCycleLR cannot do; change it"
            )
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[float(g["lr"]) for g in optimizer.param_groups],
            total_steps=recipe.epochs * steps,
            pct_start=spec.pct_start,
            div_factor=spec.div_factor,
            final_div_factor=spec.final_div_factor,
            cycle_momentum=False,
        )
    factor = functools.partial(
        lr_factor,
        spec=recipe.schedule,
        steps_per_epoch=steps,
        total_steps=recipe.epochs * steps,
        base_lr=recipe.optim.lr,
    )
    lr_factor(0, **factor.keywords)  # raises on an unknown schedule name before training
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def lr_factor(
    step: int, spec: ScheduleSpec, *, steps_per_epoch: int, total_steps: int, base_lr: float
) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    warmup = round(spec.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup  # linear warm-up, never exactly 0
    if spec.name == "none":
        return 1.0
    if spec.name == "step":
        return float(spec.gamma ** ((step // steps_per_epoch) // spec.step_size))
    if spec.name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        floor = spec.min_lr / base_lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise RecipeError(f"unknown schedule {spec.name!r}; use none, cosine, step or onecycle")

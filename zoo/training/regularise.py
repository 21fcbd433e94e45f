"""The regularisers a recipe turns on, as the trainer applies them: mixup/cutmix
(``mixup:``, timm.data.Mixup), random erasing (``data.augment.erase:``, timm's
RandomErasing), weight EMA (``ema:``, timm.utils.ModelEmaV3), layer-wise lr decay
(``optim.layer_decay``, timm's param_groups_layer_decay) and the arithmetic of gradient
accumulation (``optim.grad_accum_steps``).

Determinism: timm's Mixup draws from numpy's global generator and RandomErasing from
Python's ``random`` and torch's; :func:`seeded` runs them on states seeded from the epoch's
own generator and restores the global ones afterwards, so a batch's mixing and erasing
depend only on (seed, epoch, step) and a resumed run repeats them exactly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.errors import RecipeError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.recipe import OptimSpec, Recipe

__all__ = [
    "Regularisers",
    "accumulation_group",
    "build_regularisers",
    "layer_decay_groups",
    "optimizer_steps",
    "seeded",
]


# -- gradient accumulation -------------------------------------------------------------------


def optimizer_steps(batches: int, accum: int) -> int:
    """Optimizer steps in an epoch of ``batches`` micro-batches (a short last group steps)."""
    return math.ceil(batches / accum)


def accumulation_group(step: int, batches: int, accum: int) -> tuple[bool, bool, int]:
    """For micro-batch ``step`` (1-based) of ``batches``: (first of its group, last of its
    group, micro-batches in its group). The loss is divided by the group's size, so the
    epoch's short last group averages over what it has, as timm's train.py does."""
    first = (step - 1) % accum == 0
    last = step % accum == 0 or step == batches
    start = (step - 1) // accum * accum
    return first, last, min(accum, batches - start)


# -- layer-wise lr decay ---------------------------------------------------------------------


def layer_decay_groups(model: nn.Module, spec: OptimSpec) -> list[dict[str, Any]]:
    """timm's ``param_groups_layer_decay``: one group per depth given by the model's
    ``group_matcher()``, lr x layer_decay^(layers above it); weight decay on matrices and
    convolutions only (timm's rule). ``lr_scale`` is folded into each group's ``lr`` so that
    zoo's schedules (which scale every group's initial lr) apply it."""
    from timm.optim import param_groups_layer_decay

    if not callable(getattr(model, "group_matcher", None)):
        raise RecipeError(
            f"optim.layer_decay needs a model with group_matcher(); {type(model).__name__} has "
            "none (zoo's resnet18 and mlpmixer_* have it); remove optim.layer_decay"
        )
    assert spec.layer_decay is not None
    skip = getattr(model, "no_weight_decay", None)
    groups = param_groups_layer_decay(
        model,
        weight_decay=spec.weight_decay,
        layer_decay=spec.layer_decay,
        no_weight_decay_list=tuple(skip()) if callable(skip) else (),
    )
    for group in groups:
        group["lr"] = spec.lr * group.pop("lr_scale")
    return groups


# -- per-batch regularisers and EMA ----------------------------------------------------------


@contextlib.contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """Run the block with torch's (CPU, and the CUDA device's), Python's and numpy's global
    generators seeded from ``seed``; restore them afterwards."""
    import numpy as np
    import torch

    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@dataclass
class Regularisers:
    """What a recipe turned on; all None (and :meth:`batch` the identity) when nothing is."""

    mixup: Any = None  # timm.data.Mixup
    erase: Any = None  # timm.data.random_erasing.RandomErasing
    ema: Any = None  # timm.utils.ModelEmaV3
    num_classes: int = 0
    device: str = "cpu"

    @property
    def per_batch(self) -> bool:
        return self.mixup is not None or self.erase is not None

    def batch(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Erase, then mix the normalised batch ``x`` in place: (x, target), where target is
        ``y`` without mixup, else soft (N, classes) targets. Draws one number from
        ``generator``, and only when something is on."""
        if not self.per_batch:
            return x, y
        import torch

        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with seeded(seed, self.device):
            if self.erase is not None:
                x = self.erase(x)
            if self.mixup is not None:
                return x, self._mix(x, y)
        return x, y

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """timm's Mixup (batch mode) pairs image i with N-1-i and wants an even batch: an odd
        last batch mixes all but its last image, which keeps its own (smoothed) label."""
        import torch
        from timm.data.mixup import mixup_target

        n = len(y) - len(y) % 2
        if n == len(y):
            return self.mixup(x, y)[1]
        smoothing = self.mixup.label_smoothing
        last = mixup_target(y[n:], self.num_classes, 1.0, smoothing)
        if n == 0:
            return last
        return torch.cat([self.mixup(x[:n], y[:n])[1], last])

    def loss(self, logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
        """Soft-target cross-entropy for mixed targets, else cross-entropy with smoothing."""
        import torch.nn.functional as F

        if target.dim() == 2:  # timm's SoftTargetCrossEntropy
            return (-target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=smoothing)

    def update_ema(self, model: nn.Module, step: int) -> None:
        """After optimizer step ``step`` (1-based, counted over the whole run: it drives the
        EMA's warm-up, and a resumed run recomputes it)."""
        if self.ema is not None:
            self.ema.update(model, step=step)

    def ema_for_eval(self, device: str) -> nn.Module:
        """The EMA model on ``device`` in eval mode (a copy when it is kept elsewhere)."""
        module: nn.Module = self.ema.module
        if next(module.parameters()).device != _device(device):
            module = copy.deepcopy(module).to(device)
        return module.eval()

    def state(self) -> dict[str, Any] | None:
        return self.ema.module.state_dict() if self.ema is not None else None

    def load(self, state: dict[str, Any] | None) -> None:
        if self.ema is not None and state is not None:
            self.ema.module.load_state_dict(state)


def _device(name: str) -> torch.device:
    import torch

    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def build_regularisers(
    recipe: Recipe, model: nn.Module, num_classes: int, device: str
) -> Regularisers:
    """The recipe's mixup, erasing and EMA around ``model`` (unwrapped: the EMA copies it)."""
    reg = Regularisers(num_classes=num_classes, device=device)
    m, erase, ema = recipe.mixup, recipe.data.augment.erase, recipe.ema
    if m is not None:
        from timm.data import Mixup

        reg.mixup = Mixup(
            mixup_alpha=m.mixup_alpha,
            cutmix_alpha=m.cutmix_alpha,
            prob=m.prob,
            switch_prob=m.switch_prob,
            mode="batch",
            label_smoothing=m.label_smoothing,
            num_classes=num_classes,
        )
    if erase is not None:
        from timm.data.random_erasing import RandomErasing

        reg.erase = RandomErasing(probability=erase.prob, mode=erase.mode, device=device)
    if ema is not None:
        import torch
        from timm.utils import ModelEmaV3

        where = torch.device(ema.device) if ema.device is not None else None
        reg.ema = ModelEmaV3(model, decay=ema.decay, use_warmup=ema.warmup, device=where)
    return reg

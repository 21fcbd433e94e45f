"""Per-key recipe rules: the range and choice table that every value is checked against as
it is read (see :data:`CHECKS`), and the limits and choices they use."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from zoo.devices import RECIPE_PRECISIONS
from zoo.errors import did_you_mean
from zoo.recipe.problems import fail, show

__all__ = ["CHECKS"]

MAX_BATCH_SIZE = 65_536  # larger batches exhaust memory before the first step
MAX_PARAMS = 1_000_000_000  # 4 GB of fp32 weights, 16 GB with Adam state

BUILTIN_OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("none", "cosine", "step", "onecycle")
ON_NAN: tuple[str, ...] = ("stop", "skip")
MONITORS: tuple[str, ...] = ("valid_acc", "valid_loss")  # see zoo.training.loop
TEST_WEIGHTS: tuple[str, ...] = ("best", "final", "ema")
BATCH_SIZE_MODES: tuple[str, ...] = ("per_rank", "global")  # see zoo.training.distributed
ERASE_MODES: tuple[str, ...] = ("const", "rand", "pixel")  # timm's RandomErasing modes
EMA_DEVICES: tuple[str, ...] = ("cpu",)
# data.augment.auto: timm-style RandAugment strings, TrivialAugmentWide, AutoAugment (ImageNet)
AUTO_AUGMENT_RE = re.compile(r"^(rand-m(\d|10)(-n[1-4])?(-mstd\d(\.\d+)?)?|trivial|autoaugment)$")
MAX_GRAD_ACCUM = 1024
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # no dots: `model.tag` splits at the last dot
HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def _range(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    fix: str = "",
) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        bad = (low is not None and (value <= low if low_open else value < low)) or (
            high is not None and (value >= high if high_open else value > high)
        )
        if bad:
            lo = "" if low is None else ("(" if low_open else "[") + _number(low)
            hi = "" if high is None else _number(high) + (")" if high_open else "]")
            interval = f"in {lo or '(-inf'}, {hi or 'inf)'}"
            fail(source, where, f"got {show(value)}, must be {interval}", fix or "change it")

    return check


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _choice(choices: Sequence[str]) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        if value not in choices:
            hint = did_you_mean(value, choices).strip()
            fix = hint or f"choose one of {', '.join(choices)}"
            fail(source, where, f"got {show(value)}", fix)

    return check


def _pair(low: float, high: float | None, fix: str) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        if value is None:
            return
        a, b = value
        if a <= low or b < a or (high is not None and b > high):
            fail(source, where, f"got {show(list(value))}", fix)

    return check


def _betas(value: Any, where: str, source: str) -> None:
    if value is not None and not all(0 <= b < 1 for b in value):
        fail(
            source,
            where,
            f"got {show(list(value))}",
            "use two values in [0, 1), e.g. [0.9, 0.999]",
        )


def _regex(pattern: re.Pattern[str], fix: str) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        if not pattern.match(value) or ".." in value or value.startswith("."):
            fail(source, where, f"got {show(value)}", fix)

    return check


_POSITIVE_INT = _range(1, fix="give a positive integer")
CHECKS: dict[str, Callable[[Any, str, str], None]] = {
    "name": _regex(
        SAFE_NAME_RE,
        "use 1 to 100 letters, digits, '.', '_' and '-' (no '/', no '..', not starting with '.')",
    ),
    "epochs": _range(1, 1_000_000, fix="train for at least 1 epoch"),
    "seed": _range(0, 2**32 - 1, fix="use a seed between 0 and 4294967295"),
    "label_smoothing": _range(0, 1, high_open=True, fix="use 0.0 (off) to 0.2"),
    "grad_clip": _range(0, low_open=True, fix="use a positive max norm such as 1.0, or null"),
    "precision": _choice(RECIPE_PRECISIONS),
    "device": _regex(DEVICE_RE, "use auto, cpu, cuda, cuda:N or mps"),
    "on_nan": _choice(ON_NAN),
    "limit_train_batches": _POSITIVE_INT,
    "limit_eval_batches": _POSITIVE_INT,
    "data.batch_size": _range(1, MAX_BATCH_SIZE, fix=f"use 1 to {MAX_BATCH_SIZE}, e.g. 128"),
    "data.batch_size_mode": _choice(BATCH_SIZE_MODES),
    "data.eval_batch_size": _range(1, MAX_BATCH_SIZE, fix=f"use 1 to {MAX_BATCH_SIZE} or null"),
    "data.valid_size": _range(0, fix="hold out 0 or more images, or null for the default"),
    "data.split_seed": _range(0, 2**32 - 1, fix="use a seed between 0 and 4294967295"),
    "data.train_subset": _POSITIVE_INT,
    "data.test_subset": _POSITIVE_INT,
    "data.img_size": _range(1, 4096, fix="use 1 to 4096 pixels, e.g. 224, or null"),
    "data.augment.crop_scale": _pair(0, 1, "use (min, max) with 0 < min <= max <= 1"),
    "data.augment.crop_ratio": _pair(0, None, "use (min, max) with 0 < min <= max"),
    "data.augment.crop_padding": _range(0, 64, fix="use 0 (off) to 64 pixels, e.g. 4"),
    "optim.lr": _range(0, low_open=True, fix="use a positive learning rate such as 0.001"),
    "optim.momentum": _range(0, 1, high_open=True, fix="use a value in [0, 1) such as 0.9"),
    "optim.weight_decay": _range(0, fix="use 0 (off) or a small value such as 5e-4"),
    "optim.betas": _betas,
    "schedule.name": _choice(SCHEDULES),
    "schedule.warmup_epochs": _range(0, fix="use 0 (off) or a few epochs"),
    "schedule.step_size": _range(1, fix="decay every 1 or more epochs"),
    "schedule.gamma": _range(0, 1, low_open=True, fix="use a factor in (0, 1] such as 0.1"),
    "schedule.min_lr": _range(0, fix="use 0 or a small positive learning rate"),
    "optim.head_lr_mult": _range(0, low_open=True, fix="use a positive factor such as 10"),
    "optim.grad_accum_steps": _range(1, MAX_GRAD_ACCUM, fix=f"use 1 (off) to {MAX_GRAD_ACCUM}"),
    "optim.layer_decay": _range(0, 1, low_open=True, fix="use a factor in (0, 1] such as 0.75"),
    "schedule.pct_start": _range(0, 1, low_open=True, high_open=True, fix="use e.g. 0.3"),
    "schedule.div_factor": _range(1, fix="use a factor >= 1 such as 25"),
    "schedule.final_div_factor": _range(1, fix="use a factor >= 1 such as 10000"),
    "data.augment.auto": _regex(
        AUTO_AUGMENT_RE,
        "use rand-m9-mstd0.5 (rand-m<0-10>[-n<1-4>][-mstd<std>]), trivial or autoaugment",
    ),
    "data.augment.erase.prob": _range(0, 1, low_open=True, fix="use a chance in (0, 1]"),
    "data.augment.erase.mode": _choice(ERASE_MODES),
    "mixup.mixup_alpha": _range(0, fix="use 0 (off) or a Beta alpha such as 0.8"),
    "mixup.cutmix_alpha": _range(0, fix="use 0 (off) or a Beta alpha such as 1.0"),
    "mixup.prob": _range(0, 1, low_open=True, fix="use a chance in (0, 1], e.g. 1.0"),
    "mixup.switch_prob": _range(0, 1, fix="use a chance in [0, 1], e.g. 0.5"),
    "mixup.label_smoothing": _range(0, 1, high_open=True, fix="use 0.0 (off) to 0.2"),
    "ema.decay": _range(0, 1, low_open=True, high_open=True, fix="use e.g. 0.9998"),
    "ema.device": _choice(EMA_DEVICES),
    "checkpoint.monitor": _choice(MONITORS),
    "early_stopping.patience": _range(1, fix="wait at least 1 epoch for an improvement"),
    "early_stopping.min_delta": _range(0, fix="use 0 or a small positive change such as 0.001"),
    "test_weights": _choice(TEST_WEIGHTS),
    "publish.hub": _regex(HUB_REPO_RE, "use a Hub repo id like your-name/mixer-p4"),
    "publish.tag": _regex(TAG_RE, "use letters, digits, '_' and '-' (no dots), e.g. cifar10_best"),
}

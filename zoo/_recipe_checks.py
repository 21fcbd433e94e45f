"""Recipe validation rules: the per-key range and choice table, the checks that need more
than one field (datasets, optimisers, the model built on the meta device), and the
one-line error helpers every recipe module raises through.

The dataclasses live in :mod:`zoo.recipe`; this module only reads them, so it imports them
for type checking alone and :mod:`zoo.recipe` can import it without a cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from zoo.errors import RecipeError, ZooError, did_you_mean

if TYPE_CHECKING:
    from zoo.recipe import DataSpec, Recipe

MAX_BATCH_SIZE = 65_536  # larger batches exhaust memory before the first step
MAX_PARAMS = 1_000_000_000  # 4 GB of fp32 weights, 16 GB with Adam state
MAX_SYNTHETIC_BYTES = 4 << 30  # uint8 pixels over all synthetic splits

# Used only until zoo.data (which owns the list) can be imported.
FALLBACK_DATASETS: tuple[str, ...] = ("cifar10", "fashion_mnist", "synthetic")
BUILTIN_OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
SCHEDULES: tuple[str, ...] = ("none", "cosine", "step")
ON_NAN: tuple[str, ...] = ("stop", "skip")
BATCH_SIZE_MODES: tuple[str, ...] = ("per_rank", "global")  # see zoo.distributed
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # no dots: `model.tag` splits at the last dot
HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# (classes, channels, image size) of the real datasets and their official split sizes.
_GEOMETRY = {"cifar10": (10, 3, 32), "fashion_mnist": (10, 1, 28)}
_OFFICIAL_SIZES = {"cifar10": (50_000, 10_000), "fashion_mnist": (60_000, 10_000)}
_SYNTHETIC_KEYS: tuple[str, ...] = ("num_classes", "in_chans", "img_size", "seed")
_SYNTHETIC_KEYS += ("train_size", "valid_size", "test_size")


# ---------------------------------------------------------------------------------------
# Errors


class _KeyPathError(RecipeError):
    """A RecipeError about one key path, so a caller can say which override set it."""

    def __init__(self, message: str, key_path: str) -> None:
        super().__init__(message)
        self.key_path = key_path


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "a string"}
    return kinds.get(type(value), "a list" if isinstance(value, list) else type(value).__name__)


def _fail(source: str, key_path: str, problem: str, fix: str) -> NoReturn:
    where = f"{source}: {key_path}" if key_path else source
    raise _KeyPathError(f"{where}: {problem}; {fix}", key_path)


def _suggest(name: str, choices: Iterable[str]) -> str:
    hint = did_you_mean(name, choices).strip()
    return hint or f"valid keys: {', '.join(choices)}"


# ---------------------------------------------------------------------------------------
# Range checks per key path


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
            _fail(source, where, f"got {_show(value)}, must be {interval}", fix or "change it")

    return check


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _choice(choices: Sequence[str]) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        if value not in choices:
            hint = did_you_mean(value, choices).strip()
            fix = hint or f"choose one of {', '.join(choices)}"
            _fail(source, where, f"got {_show(value)}", fix)

    return check


def _pair(low: float, high: float | None, fix: str) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        if value is None:
            return
        a, b = value
        if a <= low or b < a or (high is not None and b > high):
            _fail(source, where, f"got {_show(list(value))}", fix)

    return check


def _betas(value: Any, where: str, source: str) -> None:
    if value is not None and not all(0 <= b < 1 for b in value):
        _fail(
            source,
            where,
            f"got {_show(list(value))}",
            "use two values in [0, 1), e.g. [0.9, 0.999]",
        )


def _regex(pattern: re.Pattern[str], fix: str) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        if not pattern.match(value) or ".." in value or value.startswith("."):
            _fail(source, where, f"got {_show(value)}", fix)

    return check


_POSITIVE_INT = _range(1, fix="give a positive integer")
_CHECKS: dict[str, Callable[[Any, str, str], None]] = {
    "name": _regex(
        SAFE_NAME_RE,
        "use only letters, digits, '.', '_' and '-' (no '/', no '..', not starting with '.')",
    ),
    "epochs": _range(1, 1_000_000, fix="train for at least 1 epoch"),
    "seed": _range(0, 2**32 - 1, fix="use a seed between 0 and 4294967295"),
    "label_smoothing": _range(0, 1, high_open=True, fix="use 0.0 (off) to 0.2"),
    "grad_clip": _range(0, low_open=True, fix="use a positive max norm such as 1.0, or null"),
    "precision": _choice(PRECISIONS),
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
    "publish.hub": _regex(HUB_REPO_RE, "use a Hub repo id like your-name/mixer-p4"),
    "publish.tag": _regex(TAG_RE, "use letters, digits, '_' and '-' (no dots), e.g. cifar10_best"),
}


# ---------------------------------------------------------------------------------------
# Checks that need more than one field: registry, datasets, optimisers


def _data_module() -> Any:
    """zoo.data, or None while it does not exist (it owns the dataset list)."""
    import importlib

    try:
        return importlib.import_module("zoo.data")
    except ModuleNotFoundError as e:
        if e.name != "zoo.data":
            raise
        return None


def _datasets() -> tuple[str, ...]:
    data = _data_module()
    return FALLBACK_DATASETS if data is None else tuple(data.DATASETS)


def _synthetic_settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    data = _data_module()
    defaults = getattr(data, "SYNTHETIC_DEFAULTS", {}) if data is not None else {}
    return {**defaults, **(given or {})}


def _check_data(spec: DataSpec, source: str) -> None:
    datasets = _datasets()
    if spec.dataset not in datasets:
        hint = did_you_mean(spec.dataset, datasets).strip()
        fix = hint or f"choose one of {', '.join(datasets)}"
        _fail(source, "data.dataset", f"unknown dataset {_show(spec.dataset)}", fix)
    if spec.synthetic is not None and spec.dataset != "synthetic":
        fix = "remove data.synthetic or set data.dataset: synthetic"
        _fail(source, "data.synthetic", f"is set for dataset {spec.dataset!r}", fix)
    if spec.synthetic is not None:
        _check_synthetic(spec.synthetic, source)
    sizes = _OFFICIAL_SIZES.get(spec.dataset)
    if sizes is None:
        return
    train, test = sizes
    valid = 5_000 if spec.valid_size is None else spec.valid_size
    if valid >= train:
        fix = f"hold out fewer than {train} of {spec.dataset}'s {train} training images"
        _fail(source, "data.valid_size", f"got {valid}", fix)
    if spec.train_subset is not None and spec.train_subset > train - valid:
        fix = f"use at most {train - valid} ({train} minus {valid} held out), or null"
        _fail(source, "data.train_subset", f"got {spec.train_subset}", fix)
    if spec.test_subset is not None and spec.test_subset > test:
        _fail(source, "data.test_subset", f"got {spec.test_subset}", f"use at most {test}")


def _check_synthetic(synthetic: Mapping[str, Any], source: str) -> None:
    limits = {"num_classes": 100_000, "in_chans": 64, "img_size": 4096, "seed": 2**32 - 1}
    for key, value in synthetic.items():
        where = f"data.synthetic.{key}"
        if key not in _SYNTHETIC_KEYS:
            choices = [f"data.synthetic.{k}" for k in _SYNTHETIC_KEYS]
            _fail(source, where, "unknown key", _suggest(where, choices))
        low = 0 if key in ("seed", "valid_size") else 1
        high = limits.get(key, 10_000_000)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            _fail(source, where, f"got {_show(value)}", f"give an integer from {low} to {high}")
    settings = _synthetic_settings(synthetic)
    pixels = settings.get("in_chans", 1) * settings.get("img_size", 1) ** 2
    images = sum(settings.get(k, 0) for k in ("train_size", "valid_size", "test_size"))
    if pixels * images > MAX_SYNTHETIC_BYTES:
        gib = pixels * images / 2**30
        _fail(source, "data.synthetic", f"needs {gib:.0f} GiB of images", "use fewer or smaller")


def _check_optimizer(name: str, source: str) -> None:
    if name in BUILTIN_OPTIMIZERS:
        return
    try:
        import timm.optim

        offered = [str(n) for n in timm.optim.list_optimizers()]
    except ImportError:
        offered = []
    if name in offered:
        return
    hint = did_you_mean(name, dict.fromkeys([*BUILTIN_OPTIMIZERS, *offered])).strip()
    fix = hint or f"use {', '.join(BUILTIN_OPTIMIZERS)} or a timm optimizer name"
    _fail(source, "optim.name", f"unknown optimizer {_show(name)}", fix)


def _geometry(recipe: Recipe, source: str) -> dict[str, int]:
    """num_classes / in_chans / img_size the trainer will pass, checked against model.args."""
    data = recipe.data
    known = _GEOMETRY.get(data.dataset)
    geometry = dict(zip(("num_classes", "in_chans", "img_size"), known or (), strict=False))
    if data.dataset == "synthetic":
        settings = _synthetic_settings(data.synthetic)
        geometry = {k: v for k, v in settings.items() if k in _GEOMETRY_KEYS}
    for key, value in geometry.items():
        chosen = recipe.model.args.get(key, value)
        fits = chosen >= value if key == "num_classes" else chosen == value
        if not isinstance(chosen, int) or isinstance(chosen, bool) or not fits:
            need = f"at least {value}" if key == "num_classes" else f"{value}"
            fix = f"{data.dataset} needs {need}; remove model.args.{key} or change the dataset"
            _fail(source, f"model.args.{key}", f"got {_show(chosen)}", fix)
    return geometry


_GEOMETRY_KEYS = ("num_classes", "in_chans", "img_size")


# Upper bounds for the size arguments builders commonly take: building even on the meta
# device loops over blocks, so `num_blocks: 1e9` would hang instead of failing.
_ARG_LIMITS = {
    "num_classes": 100_000,
    "in_chans": 64,
    "img_size": 4096,
    "patch_size": 4096,
    "embed_dim": 65_536,
    "num_blocks": 1_000,
    "depth": 1_000,
    "num_heads": 1_024,
    "hidden_sizes": 1_048_576,
    "width": 65_536,
}


def _check_arg_limits(args: Mapping[str, Any], source: str) -> None:
    for key, limit in _ARG_LIMITS.items():
        value = args.get(key)
        values = value if isinstance(value, tuple) else (value,)
        too_big = [v for v in values if isinstance(v, int) and v > limit]
        if too_big or len(values) > _ARG_LIMITS["num_blocks"]:
            fix = f"use at most {limit}" if too_big else "use fewer layers"
            _fail(source, f"model.args.{key}", f"got {_show(value)}", fix)


def _check_model(recipe: Recipe, source: str) -> None:
    """Build the model on the meta device: no memory, no time, but every argument checked."""
    import torch

    from zoo import registry

    spec = recipe.model
    kwargs = {**_geometry(recipe, source), **spec.args}
    _check_arg_limits(kwargs, source)
    try:
        registry.get_entry(spec.name, spec.plugin)
    except ZooError as e:
        raise _KeyPathError(f"{source}: model.name: {e}", "model.name") from None
    try:
        with torch.device("meta"):
            model = registry.create(spec.name, plugin=spec.plugin, **kwargs)
    except ZooError as e:
        message = " ".join(str(e).split())
        if not message.startswith(spec.name):
            message = f"{spec.name}: {message}"
        fix = f"fix model.args {_show(dict(spec.args))}" if spec.args else "set model.args"
        _fail(source, "model.args", message, f"{fix} or choose another model or dataset")
    except Exception as e:  # a builder choking on a value of the wrong kind
        fix = f"check model.args {_show(dict(spec.args))} against `zoo models {spec.name}`"
        problem = f"building {spec.name} failed ({type(e).__name__}: {' '.join(str(e).split())})"
        _fail(source, "model.args", problem, fix)
    params = sum(p.numel() for p in model.parameters())
    if params > MAX_PARAMS:
        fix = f"make the model smaller (limit {MAX_PARAMS:,} parameters)"
        _fail(source, "model.args", f"{spec.name} would have {params:,} parameters", fix)


def _check_combinations(recipe: Recipe, source: str) -> None:
    if recipe.schedule.warmup_epochs > recipe.epochs:
        fix = f"warm up for at most the {recipe.epochs} epochs the run has"
        _fail(source, "schedule.warmup_epochs", f"got {recipe.schedule.warmup_epochs}", fix)
    if recipe.schedule.name == "cosine" and recipe.schedule.min_lr >= recipe.optim.lr:
        fix = f"use a min_lr below optim.lr ({recipe.optim.lr:g})"
        _fail(source, "schedule.min_lr", f"got {recipe.schedule.min_lr:g}", fix)
    if recipe.precision == "fp16" and recipe.device in ("cpu", "mps"):
        _fail(source, "precision", "fp16 needs a CUDA device", "use bf16 on CPU, or fp32")

"""Recipe checks that need more than one field: the dataset and its geometry, the optimiser
name, combinations of keys, and the model built on the meta device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zoo.data import catalog
from zoo.errors import ZooError, did_you_mean
from zoo.recipe.problems import KeyPathError, fail, show, suggest
from zoo.recipe.rules import BUILTIN_OPTIMIZERS, MAX_PARAMS
from zoo.recipe.schema import DataSpec, Recipe

__all__ = ["check_combinations", "check_data", "check_model", "check_optimizer"]

_SYNTHETIC_KEYS: tuple[str, ...] = ("num_classes", "in_chans", "img_size", "seed")
_SYNTHETIC_KEYS += ("train_size", "valid_size", "test_size")


def _synthetic_settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**catalog.SYNTHETIC_DEFAULTS, **(given or {})}


def check_data(spec: DataSpec, source: str) -> None:
    datasets = catalog.DATASETS
    if spec.dataset not in datasets:
        hint = did_you_mean(spec.dataset, datasets).strip()
        fix = hint or f"choose one of {', '.join(datasets)}"
        fail(source, "data.dataset", f"unknown dataset {show(spec.dataset)}", fix)
    if spec.synthetic is not None and spec.dataset != "synthetic":
        fix = "remove data.synthetic or set data.dataset: synthetic"
        fail(source, "data.synthetic", f"is set for dataset {spec.dataset!r}", fix)
    if spec.synthetic is not None:
        _check_synthetic(spec.synthetic, source)
    if spec.dataset == "imagefolder" and not spec.root:
        fix = "set data.root to a folder with train/<class>/ images (optional val/, test/)"
        fail(source, "data.root", "is required for dataset imagefolder", fix)
    if spec.img_size is not None and spec.dataset != "imagefolder":
        fix = f"remove it: {spec.dataset} images have a fixed size (only imagefolder resizes)"
        fail(source, "data.img_size", f"is set for dataset {spec.dataset!r}", fix)
    sizes = catalog.OFFICIAL_SIZES.get(spec.dataset)
    if sizes is None:
        return
    train, test = sizes
    valid = catalog.DEFAULT_VALID_SIZE if spec.valid_size is None else spec.valid_size
    if valid >= train:
        fix = f"hold out fewer than {train} of {spec.dataset}'s {train} training images"
        fail(source, "data.valid_size", f"got {valid}", fix)
    if spec.train_subset is not None and spec.train_subset > train - valid:
        fix = f"use at most {train - valid} ({train} minus {valid} held out), or null"
        fail(source, "data.train_subset", f"got {spec.train_subset}", fix)
    if spec.test_subset is not None and spec.test_subset > test:
        fail(source, "data.test_subset", f"got {spec.test_subset}", f"use at most {test}")


def _check_synthetic(synthetic: Mapping[str, Any], source: str) -> None:
    limits = {"num_classes": 100_000, "in_chans": 64, "img_size": 4096, "seed": 2**32 - 1}
    for key, value in synthetic.items():
        where = f"data.synthetic.{key}"
        if key not in _SYNTHETIC_KEYS:
            choices = [f"data.synthetic.{k}" for k in _SYNTHETIC_KEYS]
            fail(source, where, "unknown key", suggest(where, choices))
        low = 0 if key in ("seed", "valid_size") else 1
        high = limits.get(key, 10_000_000)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            fail(source, where, f"got {show(value)}", f"give an integer from {low} to {high}")
    settings = _synthetic_settings(synthetic)
    pixels = settings.get("in_chans", 1) * settings.get("img_size", 1) ** 2
    images = sum(settings.get(k, 0) for k in ("train_size", "valid_size", "test_size"))
    if pixels * images > catalog.MAX_SYNTHETIC_BYTES:
        gib = pixels * images / 2**30
        fail(source, "data.synthetic", f"needs {gib:.0f} GiB of images", "use fewer or smaller")


def check_optimizer(name: str, source: str) -> None:
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
    fail(source, "optim.name", f"unknown optimizer {show(name)}", fix)


def _geometry(recipe: Recipe, source: str) -> dict[str, int]:
    """num_classes / in_chans / img_size the trainer will pass, checked against model.args."""
    data = recipe.data
    known = catalog.GEOMETRY.get(data.dataset)
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
            fail(source, f"model.args.{key}", f"got {show(chosen)}", fix)
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
            fail(source, f"model.args.{key}", f"got {show(value)}", fix)


def check_model(recipe: Recipe, source: str) -> None:
    """Build the model on the meta device: no memory, no time, but every argument checked."""
    import torch

    from zoo.models import registry

    spec = recipe.model
    kwargs = {**_geometry(recipe, source), **spec.args}
    _check_arg_limits(kwargs, source)
    try:
        registry.get_entry(spec.name, spec.plugin)
    except ZooError as e:
        from zoo.models import scripts

        if recipe.imports and scripts.is_deferred():
            return  # registered by imports a dry run does not run: checked when they run
        raise KeyPathError(f"{source}: model.name: {e}", "model.name") from None
    try:
        with torch.device("meta"):
            model = registry.build(spec.name, plugin=spec.plugin, **kwargs)
    except ZooError as e:
        message = " ".join(str(e).split())
        if not message.startswith(spec.name):
            message = f"{spec.name}: {message}"
        fix = f"fix model.args {show(dict(spec.args))}" if spec.args else "set model.args"
        fail(source, "model.args", message, f"{fix} or choose another model or dataset")
    except Exception as e:  # a builder choking on a value of the wrong kind
        fix = f"check model.args {show(dict(spec.args))} against `zoo models {spec.name}`"
        problem = f"building {spec.name} failed ({type(e).__name__}: {' '.join(str(e).split())})"
        fail(source, "model.args", problem, fix)
    params = sum(p.numel() for p in model.parameters())
    if params > MAX_PARAMS:
        fix = f"make the model smaller (limit {MAX_PARAMS:,} parameters)"
        fail(source, "model.args", f"{spec.name} would have {params:,} parameters", fix)


def _check_imagefolder(recipe: Recipe, source: str) -> None:
    args, size = recipe.model.args, recipe.data.img_size
    if args.get("in_chans", 1) not in (1, 3):
        fix = "imagefolder converts images to 1 (grayscale) or 3 (RGB) channels; use 1 or 3"
        fail(source, "model.args.in_chans", f"got {show(args['in_chans'])}", fix)
    if size is not None and args.get("img_size", size) != size:
        fix = f"remove one of them, or make both {size}"
        fail(source, "model.args.img_size", f"{args['img_size']} != data.img_size {size}", fix)


def check_combinations(recipe: Recipe, source: str) -> None:
    if recipe.data.dataset == "imagefolder":
        _check_imagefolder(recipe, source)
    if recipe.schedule.warmup_epochs > recipe.epochs:
        fix = f"warm up for at most the {recipe.epochs} epochs the run has"
        fail(source, "schedule.warmup_epochs", f"got {recipe.schedule.warmup_epochs}", fix)
    if recipe.schedule.name == "cosine" and recipe.schedule.min_lr >= recipe.optim.lr:
        fix = f"use a min_lr below optim.lr ({recipe.optim.lr:g})"
        fail(source, "schedule.min_lr", f"got {recipe.schedule.min_lr:g}", fix)
    if recipe.precision == "fp16" and recipe.device in ("cpu", "mps"):
        fail(source, "precision", "fp16 needs a CUDA device", "use bf16 on CPU, or fp32")
    if recipe.sweep and recipe.publish.tag:
        fail(
            source,
            "publish.tag",
            "every point of the sweep would publish to the same tag",
            "leave it out and publish the point you choose afterwards with "
            "`zoo publish SWEEP_DIR/POINT --tag TAG`",
        )
    _check_regularisers(recipe, source)


def _check_regularisers(recipe: Recipe, source: str) -> None:
    """mixup, ema, layer_decay and onecycle against the keys they replace or need."""
    mixup, schedule = recipe.mixup, recipe.schedule
    if mixup is not None and mixup.mixup_alpha == 0 and mixup.cutmix_alpha == 0:
        fix = "set mixup.mixup_alpha and/or mixup.cutmix_alpha above 0, or remove mixup"
        fail(source, "mixup", "mixup_alpha and cutmix_alpha are both 0", fix)
    if mixup is not None and recipe.label_smoothing > 0:
        fix = f"move it to mixup.label_smoothing: {recipe.label_smoothing:g} and remove the top key"
        fail(source, "label_smoothing", "is ignored when mixup builds soft targets", fix)
    if recipe.test_weights == "ema" and recipe.ema is None:
        fail(source, "test_weights", "got 'ema' but there is no ema section", "add `ema: {}`")
    if recipe.optim.layer_decay is not None and recipe.optim.head_lr_mult is not None:
        fix = "keep one: layer_decay already gives the classifier the full lr"
        fail(source, "optim.layer_decay", "cannot be combined with optim.head_lr_mult", fix)
    if schedule.name == "onecycle" and schedule.warmup_epochs > 0:
        fix = "remove schedule.warmup_epochs; onecycle warms up over schedule.pct_start"
        fail(source, "schedule.warmup_epochs", f"got {schedule.warmup_epochs:g}", fix)

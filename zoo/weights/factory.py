"""``zoo.create``: a model by name, with weights from wherever they are.

``name`` may be a registered model (``mlpmixer_p4``), a model with a weight tag
(``mlpmixer_p4.cifar10_best``), a Hub repo (``hf-hub:org/repo[@rev]``) or a local run or
export directory. This module sits above the registry as timm's ``_factory`` sits above
``_registry``: the registry builds architectures, this module finds and loads weights
(:mod:`~zoo.weights.files` strict loading, :mod:`~zoo.weights.hub`, :mod:`~zoo.weights.store`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import ModelArgumentError, WeightsError
from zoo.models import registry
from zoo.weights import adapt, files, hub, store

if TYPE_CHECKING:
    from torch import nn

__all__ = ["create", "create_from_source", "list_models", "model_info", "source_config"]


def create(
    name: str,
    pretrained: bool | str = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | None = None,
    plugin: str | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a model by name.

    ``name`` may be a registered model (``mlpmixer_p4``), a model with a weight tag
    (``mlpmixer_p4.cifar10_best``), a Hub repo (``hf-hub:org/repo[@rev]``) or a local run or
    export directory. ``pretrained`` is a bool, or a weights source (``hf-hub:...`` or a
    directory) to load into the named architecture. ``num_classes``, ``in_chans`` and
    ``img_size`` override the architecture's defaults; other keyword arguments go to the
    builder. Weight loading is strict.

    ``features_only=True`` returns the model (weights loaded) as a feature extractor, as
    timm's ``create_model`` does: calling it gives a list of feature maps, at ``out_indices``
    (None: all; see :func:`zoo.models.features.features_only`).
    """
    model = _create(name, pretrained, num_classes, in_chans, img_size, plugin, overrides)
    if features_only:
        return _as_features(model, name, out_indices)
    if out_indices is not None:
        raise ModelArgumentError(
            f"out_indices={out_indices!r} needs features_only=True: "
            f"zoo.create({name!r}, features_only=True, out_indices=...)"
        )
    return model


def _as_features(model: nn.Module, name: str, out_indices: Any) -> nn.Module:
    from zoo.models.features import features_only

    if not callable(getattr(model, "forward_intermediates", None)):
        raise ModelArgumentError(
            f"{name!r} ({type(model).__name__}) cannot be created with features_only=True: it "
            "has no forward_intermediates (timm's feature API); use zoo.create(name) and "
            "model.forward_features(x) instead"
        )
    return features_only(model, out_indices)


def _create(
    name: str,
    pretrained: bool | str,
    num_classes: int | None,
    in_chans: int | None,
    img_size: int | None,
    plugin: str | None,
    overrides: dict[str, Any],
) -> nn.Module:
    if not isinstance(name, str) or not name:
        raise WeightsError(
            f"zoo.create needs a model name, tag, hf-hub: source or directory, got {name!r}; "
            "list names with `zoo models`"
        )
    kwargs = dict(overrides)
    for key, value in (
        ("num_classes", num_classes),
        ("in_chans", in_chans),
        ("img_size", img_size),
    ):
        if value is not None:
            kwargs[key] = value
    if name.startswith(hub.HUB_PREFIX) or (
        not registry.is_registered(name) and (Path(name).is_dir() or _is_weights_file(name))
    ):
        return create_from_source(name, plugin=plugin, **kwargs)
    base, tag = registry.split_tag(name)
    entry = registry.get_entry(base, plugin)
    if isinstance(pretrained, str):
        return create_from_source(pretrained, architecture=entry.name, plugin=plugin, **kwargs)
    if tag is not None or (pretrained and store.tags_for(entry.name)):
        source = store.tag_source(entry.name, store.resolve_tag(entry.name, tag))
        return create_from_source(source, architecture=entry.name, plugin=plugin, **kwargs)
    return registry.build(entry.name, plugin=plugin, pretrained=bool(pretrained), **kwargs)


def create_from_source(
    source: str,
    architecture: str | None = None,
    plugin: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model stored at ``source`` and load its weights.

    ``source`` is ``hf-hub:org/repo[@rev]``, a run/export directory, ``NAME.TAG`` or a
    ``.safetensors`` file (which needs ``architecture``, unless it is the
    ``model.safetensors`` of a directory). ``architecture`` (from ``zoo.create(NAME,
    pretrained=source)``) must match the one the weights were trained for. ``kwargs``
    override model arguments. Loading is strict, except that a ``num_classes`` or
    ``in_chans`` other than the weights' re-initialises the classifier or adapts the first
    layer (:mod:`zoo.weights.adapt`); ``model.zoo_cfg["pretrained"]`` says what was done.
    """
    if _is_weights_file(source):
        path = Path(source)
        if architecture is None and path.name == files.WEIGHTS_NAME:
            return create_from_source(str(path.parent), plugin=plugin, **kwargs)
        if architecture is None:
            raise WeightsError(
                f"{source} holds bare weights without a config.json naming their architecture; "
                f"use zoo.create(NAME, pretrained={source!r}) or model.name + model.pretrained "
                "in a recipe"
            )
        model = registry.build(architecture, plugin=plugin, **kwargs)
        adapt.load_adapted(model, files.load_state_dict(path), source)
        return _weights_from(model, source)
    directory = _directory_of(source)
    config = files.read_config(directory)
    found = files.architecture_of(config)
    if architecture is not None and found != architecture:
        raise WeightsError(
            f"{source} holds weights for {found!r}, not {architecture!r}; "
            f"use zoo.create({source!r}) to build {found!r}"
        )
    size = config.get("input_size")
    trained = {
        "num_classes": config.get("num_classes"),
        "in_chans": size[0] if isinstance(size, list) and size else None,
    }
    changed = {
        k: kwargs[k]
        for k, value in trained.items()
        if kwargs.get(k) is not None and value is not None and kwargs[k] != value
    }
    stats = {"mean": config.get("mean"), "std": config.get("std")}
    if not all(isinstance(v, list) for v in stats.values()):
        stats = {}
    same = {k: v for k, v in kwargs.items() if k not in changed}
    pretrained = files.load_model_dir(directory, plugin=plugin, **same)  # strict
    if not changed:
        adapt.load_adapted(pretrained, pretrained.state_dict(), source, **stats)
        return _weights_from(pretrained, source)
    # another class count or channel count: a fresh model, then what fits of the weights
    model = registry.build(found, plugin=plugin, **{**config["model_args"], **kwargs})
    report = adapt.load_adapted(
        model, pretrained.state_dict(), source, base_chans=trained["in_chans"], **stats
    )
    own_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(own_cfg, dict) and report.mean is not None:
        own_cfg.update(mean=report.mean, std=report.std)
    return _weights_from(model, source)


def source_config(source: str) -> dict[str, Any] | None:
    """The ``config.json`` of a weights source (input size, mean/std, ...), without building
    the model; None for a bare ``.safetensors`` file."""
    if _is_weights_file(source):
        path = Path(source)
        if path.name != files.WEIGHTS_NAME or not (path.parent / files.CONFIG_NAME).is_file():
            return None
        return files.read_config(path.parent)
    return files.read_config(_directory_of(source))


def _weights_from(model: nn.Module, source: str) -> nn.Module:
    vars(model)["zoo_cfg"] = {**getattr(model, "zoo_cfg", {}), "weights": source}
    return model


def _is_weights_file(source: str) -> bool:
    return source.endswith(".safetensors") and not source.startswith(hub.HUB_PREFIX)


def _directory_of(source: str) -> Path:
    """The local directory holding ``source``'s config.json and model.safetensors."""
    if source.startswith(hub.HUB_PREFIX):
        return hub.pull(source, allow_patterns=list(hub.MODEL_FILES))
    directory = Path(source)
    if directory.is_dir():
        return directory
    base, tag = registry.split_tag(source)
    if tag is not None:
        entry = registry.get_entry(base)
        return _directory_of(store.tag_source(entry.name, store.resolve_tag(entry.name, tag)))
    raise WeightsError(
        f"weights source {source!r} is neither hf-hub:ORG/NAME[@REV], NAME.TAG, a directory "
        "nor a .safetensors file"
    )


def list_models(
    pattern: str | list[str] = "*", pretrained: bool = False, plugin: str | None = None
) -> list[str]:
    """Model names matching the fnmatch ``pattern`` (or any of several patterns), sorted
    with numbers in natural order (``mlpmixer_p2`` before ``mlpmixer_p16``, as timm does).

    With ``pretrained=True`` the result lists ``name.tag`` for every published weight tag.
    ``plugin`` keeps only the models of that distribution.
    """
    return registry.list_models(pattern, plugin, tags=store.tags_for if pretrained else None)


def model_info(name: str, plugin: str | None = None, params: bool = False) -> dict[str, Any]:
    """Metadata of a registered model and its published weight tags; ``params=True`` also
    counts parameters and reports the default arguments (built on the meta device)."""
    info = registry.model_info(name, plugin, params=params)
    info["pretrained_tags"] = store.tags_for(info["name"])
    return info

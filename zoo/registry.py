"""The model registry: one dict from model name to the builders that provide it.

Builders are plain functions ``fn(pretrained=False, **kwargs) -> nn.Module`` decorated with
:func:`register_model`; the function name is the model name. Built-in architectures and
third-party plugins register the same way, by being imported through the ``zoo.models``
entry-point group (see :mod:`zoo.plugins`).

A name provided by two distributions is ambiguous rather than overwritten: :func:`create`
then asks the caller to choose with ``plugin=DIST``.

This module does not import torch; only building a model does.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import functools
import importlib.metadata
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from zoo.errors import (
    AmbiguousModelError,
    DuplicateModelError,
    ModelArgumentError,
    UnknownModelError,
    WeightsError,
    did_you_mean,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ModelEntry",
    "build_model",
    "create",
    "get_entry",
    "list_models",
    "model_info",
    "register_model",
    "register_namespace",
]

Builder = Callable[..., "nn.Module"]
F = TypeVar("F", bound=Callable[..., Any])
HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class ModelEntry:
    """One registered builder and where it comes from."""

    name: str
    builder: Builder = field(repr=False)
    family: str  # the module that defines the builder
    distribution: str
    version: str

    @property
    def pretrained_tags(self) -> list[str]:
        """Tags of the weights published for this model in the local weights store."""
        from zoo import store

        return store.tags_for(self.name)


@dataclass(frozen=True)
class Namespace:
    """A family of names like ``timm/<name>`` that a plugin lists and builds on demand, so
    registering it costs nothing until someone asks for one of its names."""

    prefix: str  # e.g. "timm/"
    list_names: Callable[[], list[str]] = field(repr=False)  # names without the prefix
    builder_for: Callable[[str], Builder | None] = field(repr=False)
    distribution: str
    version: str


_REGISTRY: dict[str, list[ModelEntry]] = {}
_NAMESPACES: dict[str, Namespace] = {}

# The distribution being imported by plugin discovery; register_model attributes builders
# to it. Outside discovery the distribution is looked up from the builder's package.
_SOURCE: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "zoo_registry_source", default=None
)


@contextlib.contextmanager
def registering_as(distribution: str, version: str) -> Iterator[None]:
    """Attribute every model registered inside the block to ``distribution``."""
    token = _SOURCE.set((distribution, version))
    try:
        yield
    finally:
        _SOURCE.reset(token)


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _source_of(module: str) -> tuple[str, str]:
    source = _SOURCE.get()
    if source is not None:
        return source
    top = module.split(".")[0]
    dists = _packages_distributions().get(top)
    if dists:
        try:
            return dists[0], importlib.metadata.version(dists[0])
        except importlib.metadata.PackageNotFoundError:
            pass
    return top, ""


def register_model(fn: F) -> F:
    """Register ``fn`` as the builder of the model called ``fn.__name__``.

    Raises :class:`DuplicateModelError` when the same distribution already registered that
    name. A different distribution registering it makes the name ambiguous instead.
    """
    distribution, version = _source_of(fn.__module__)
    entry = ModelEntry(fn.__name__, fn, fn.__module__, distribution, version)
    entries = _REGISTRY.setdefault(entry.name, [])
    for other in entries:
        if other.distribution == distribution:
            raise DuplicateModelError(
                f"model {entry.name!r} is registered twice by distribution {distribution!r} "
                f"(in {other.family} and {entry.family}); rename one of the builders"
            )
    entries.append(entry)
    return fn


def register_namespace(
    prefix: str,
    list_names: Callable[[], list[str]],
    builder_for: Callable[[str], Builder | None],
) -> None:
    """Register a lazily listed family of models named ``prefix + name``.

    ``list_names()`` returns the names without the prefix and is called only when a listing
    pattern starts with ``prefix``; ``builder_for(name)`` returns the builder for one name, or
    None when the name does not exist.
    """
    if not prefix.endswith("/"):
        raise ValueError(f"namespace prefix must end with '/', got {prefix!r}")
    distribution, version = _source_of(builder_for.__module__)
    other = _NAMESPACES.get(prefix)
    if other is not None and other.distribution != distribution:
        raise DuplicateModelError(
            f"namespace {prefix!r} is claimed by {other.distribution} and {distribution}"
        )
    _NAMESPACES[prefix] = Namespace(prefix, list_names, builder_for, distribution, version)


def _from_namespace(name: str) -> list[ModelEntry] | None:
    for prefix, ns in _NAMESPACES.items():
        if name.startswith(prefix):
            builder = ns.builder_for(name[len(prefix) :])
            if builder is None:
                return None
            entry = ModelEntry(name, builder, builder.__module__, ns.distribution, ns.version)
            _REGISTRY[name] = [entry]
            return _REGISTRY[name]
    return None


def _discover() -> None:
    from zoo import plugins

    plugins.load_plugins()


def _all_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def _failed_plugins() -> str:
    """`` Plugins that failed to load: ...`` (the model may come from one of them), or ``""``."""
    from zoo import plugins

    failed = [f"{p.distribution} ({p.error})" for p in plugins.load_plugins() if p.error]
    if not failed:
        return ""
    return f" Plugins that failed to load (see `zoo plugins`): {'; '.join(failed)}"


def get_entry(name: str, plugin: str | None = None) -> ModelEntry:
    """Return the entry for ``name``, choosing the distribution ``plugin`` when given."""
    _discover()
    entries = _REGISTRY.get(name) or _from_namespace(name)
    if not entries:
        choices: list[str] = list(_REGISTRY)
        for prefix, ns in _NAMESPACES.items():
            if name.startswith(prefix):
                choices = [prefix + n for n in ns.list_names()]
        raise UnknownModelError(
            f"unknown model {name!r}.{did_you_mean(name, choices)} "
            f"List models with `zoo models`; install plugins to add more.{_failed_plugins()}"
        )
    if plugin is not None:
        for entry in entries:
            if entry.distribution == plugin:
                return entry
        providers = ", ".join(e.distribution for e in entries)
        raise UnknownModelError(
            f"model {name!r} is not provided by distribution {plugin!r}; provided by: {providers}"
        )
    if len(entries) > 1:
        dists = [e.distribution for e in entries]
        raise AmbiguousModelError(
            f"model {name!r} is registered by {len(dists)} distributions "
            f"({', '.join(dists)}); choose one with create({name!r}, plugin={dists[0]!r}) "
            "or `plugin:` in the recipe's model section"
        )
    return entries[0]


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(
    pattern: str | list[str] = "*", pretrained: bool = False, plugin: str | None = None
) -> list[str]:
    """Model names matching the fnmatch ``pattern`` (or any of several patterns), sorted
    with numbers in natural order (``mlpmixer_p2`` before ``mlpmixer_p16``, as timm does).

    With ``pretrained=True`` the result lists ``name.tag`` for every published weight tag.
    ``plugin`` keeps only the models of that distribution.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    _discover()
    from zoo import store

    # name -> distributions providing it
    found = {
        name: [e.distribution for e in entries]
        for name, entries in _REGISTRY.items()
        if not any(name.startswith(prefix) for prefix in _NAMESPACES)
    }
    for prefix, ns in _NAMESPACES.items():
        # Namespaced families (timm/...) are listed only when a pattern asks for them, so
        # listing zoo's own models never imports the library behind a namespace.
        if any(p.startswith(prefix) for p in patterns):
            found.update({prefix + n: [ns.distribution] for n in ns.list_names()})
    names = []
    for name in sorted(found, key=_natural_key):
        if plugin is not None and plugin not in found[name]:
            continue
        candidates = [f"{name}.{tag}" for tag in store.tags_for(name)] if pretrained else [name]
        names += [c for c in candidates if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    return names


def model_info(name: str, plugin: str | None = None, params: bool = False) -> dict[str, Any]:
    """Metadata of a registered model; ``params=True`` also counts parameters and reports
    the default arguments (the model is built on the meta device, so this is cheap)."""
    entry = get_entry(name, plugin)
    info: dict[str, Any] = {
        "name": entry.name,
        "family": entry.family,
        "distribution": entry.distribution,
        "version": entry.version,
        "pretrained_tags": entry.pretrained_tags,
        "doc": inspect.getdoc(entry.builder) or "",
    }
    if params:
        import torch

        with torch.device("meta"):
            model = _build(entry, {}, pretrained=False)
        info["params"] = sum(p.numel() for p in model.parameters())
        info["default_args"] = dict(getattr(model, "zoo_cfg", {}).get("args", {}))
    return info


def build_model(
    cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    pinned: Mapping[str, Any],
    kwargs: Mapping[str, Any],
) -> nn.Module:
    """Build ``cls`` for the registered ``variant``: ``pinned`` architecture arguments, then
    the caller's ``kwargs``. Used by every built-in ``_create_<family>`` helper.

    Unknown kwargs raise :class:`ModelArgumentError` naming the accepted ones; the resolved
    arguments are recorded on ``model.zoo_cfg`` so the model can be rebuilt exactly.
    """
    if pretrained:
        raise WeightsError(
            f"{variant} has no built-in pretrained weights; train one with `zoo train` and "
            f"publish it with `zoo publish RUN --tag TAG`, then use {variant}.TAG"
        )
    signature = inspect.signature(cls)
    accepted = [
        n
        for n, p in signature.parameters.items()
        if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelArgumentError(
            f"{variant} does not accept {', '.join(unknown)}; it accepts: {', '.join(accepted)}"
        )
    bound = signature.bind(**{**pinned, **kwargs})
    bound.apply_defaults()
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items()}
    model = cls(**bound.arguments)
    vars(model)["zoo_cfg"] = {"architecture": variant, "args": args}
    return model


def _build(entry: ModelEntry, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    try:
        model = entry.builder(pretrained=pretrained, **kwargs)
    except TypeError as e:
        # Third-party builders without build_model: turn a bad keyword into a clear error.
        if "unexpected keyword argument" not in str(e):
            raise
        raise ModelArgumentError(
            f"{entry.name} (from {entry.distribution}) rejected its arguments: {e}"
        ) from None
    cfg = dict(getattr(model, "zoo_cfg", None) or {"args": dict(kwargs)})
    cfg.update(architecture=entry.name, distribution=entry.distribution, version=entry.version)
    vars(model)["zoo_cfg"] = cfg  # plain attribute: how to rebuild this model
    return model


def _split_tag(name: str) -> tuple[str, str | None]:
    if name in _REGISTRY or "." not in name:
        return name, None
    base, tag = name.rsplit(".", 1)
    return (base, tag) if base in _REGISTRY or _from_namespace(base) else (name, None)


def create(
    name: str,
    pretrained: bool | str = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | None = None,
    plugin: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a model by name.

    ``name`` may be a registered model (``mlpmixer_p4``), a model with a weight tag
    (``mlpmixer_p4.cifar10_best``), a Hub repo (``hf-hub:org/repo[@rev]``) or a local run or
    export directory. ``pretrained`` is a bool, or a weights source (``hf-hub:...`` or a
    directory) to load into the named architecture. ``num_classes``, ``in_chans`` and
    ``img_size`` override the architecture's defaults; other keyword arguments go to the
    builder. Weight loading is strict.
    """
    kwargs = dict(overrides)
    for key, value in (
        ("num_classes", num_classes),
        ("in_chans", in_chans),
        ("img_size", img_size),
    ):
        if value is not None:
            kwargs[key] = value
    _discover()
    if name.startswith(HUB_PREFIX) or (name not in _REGISTRY and Path(name).is_dir()):
        from zoo import hub

        return hub.create_from_source(name, plugin=plugin, **kwargs)
    base, tag = _split_tag(name)
    entry = get_entry(base, plugin)
    if isinstance(pretrained, str):
        from zoo import hub

        return hub.create_from_source(pretrained, architecture=entry.name, plugin=plugin, **kwargs)
    if tag is not None or (pretrained and entry.pretrained_tags):
        from zoo import store

        return store.create_tagged(entry, tag, plugin=plugin, **kwargs)
    return _build(entry, kwargs, pretrained=bool(pretrained))

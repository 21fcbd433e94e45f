"""The model registry: one dict from model name to the builders that provide it.

Builders are plain functions ``fn(pretrained=False, **kwargs) -> nn.Module`` decorated with
:func:`register_model`; the function name is the model name. Built-in architectures and
third-party plugins register the same way, by being imported through the ``zoo.models``
entry-point group (see :mod:`zoo.models.plugins`).

A name provided by two distributions is ambiguous rather than overwritten: :func:`get_entry`
then asks the caller to choose with ``plugin=DIST``.

The registry knows names and builders only: weights, tags, the Hub and files are
:mod:`zoo.weights.factory`'s (``zoo.create``), as timm's ``_registry`` knows nothing of
``_hub``. This module does not import torch; only building a model does.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import functools
import importlib.metadata
import inspect
import numbers
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

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
    "build",
    "build_model",
    "forget",
    "get_entry",
    "is_registered",
    "list_models",
    "model_info",
    "provided_by",
    "register_model",
    "register_namespace",
    "registering_as",
    "set_discovery",
    "split_tag",
]

Builder = Callable[..., "nn.Module"]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ModelEntry:
    """One registered builder and where it comes from."""

    name: str
    builder: Builder = field(repr=False)
    family: str  # the module that defines the builder
    distribution: str
    version: str


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
BUILTIN_DISTRIBUTION = "zoo-classifiers"  # the distribution of zoo's own architectures
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
    """The distribution that registers from ``module``: the one that installed the module's
    own top-level package when that is known, else the plugin being loaded. So a plugin that
    merely imports ``zoo.models.mlp`` (registering zoo's MLPs on the way) does not become
    their source."""
    source = _SOURCE.get()
    top = module.split(".")[0]
    own = _own_distribution(top)
    if own is not None and (source is None or own[0] != source[0]):
        return own
    if source is not None:
        return source
    return top, ""


def _own_distribution(top: str) -> tuple[str, str] | None:
    if top == "zoo":  # zoo's built-ins, even from a source tree that was never installed
        from zoo._version import __version__

        return BUILTIN_DISTRIBUTION, __version__
    dists = _packages_distributions().get(top)
    if dists:
        try:
            return dists[0], importlib.metadata.version(dists[0])
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


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


class _Plugin(Protocol):
    distribution: str
    error: str | None


# Set by zoo.models.plugins when it is imported (zoo.models imports it): the registry looks
# models up; plugin discovery fills it. Without a hook the registry holds what was registered.
_discovery: Callable[[], Sequence[_Plugin]] | None = None


def set_discovery(discover: Callable[[], Sequence[_Plugin]] | None) -> None:
    """Install the function that imports plugins on first lookup (and returns them)."""
    global _discovery
    _discovery = discover


def _discover() -> Sequence[_Plugin]:
    return _discovery() if _discovery is not None else ()


def provided_by(distribution: str, module: str) -> list[str]:
    """Names registered by ``distribution`` from ``module`` or its submodules, sorted, with
    ``prefix*`` for each namespace the distribution registered."""
    names = sorted(
        name
        for name, entries in _REGISTRY.items()
        for entry in entries
        if entry.distribution == distribution and _within(entry.family, module)
    )
    return names + sorted(
        ns.prefix + "*" for ns in _NAMESPACES.values() if ns.distribution == distribution
    )


def forget(distribution: str, module: str) -> None:
    """Unregister what ``distribution`` registered from ``module`` (a plugin that failed
    half-way is skipped whole, not half-loaded)."""
    for name, entries in list(_REGISTRY.items()):
        entries[:] = [
            e for e in entries if not (e.distribution == distribution and _within(e.family, module))
        ]
        if not entries:
            del _REGISTRY[name]


def _within(family: str, module: str) -> bool:
    return family == module or family.startswith(module + ".")


def _all_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def _failed_plugins() -> str:
    """`` Plugins that failed to load: ...`` (the model may come from one of them), or ``""``."""
    failed = [f"{p.distribution} ({p.error})" for p in _discover() if p.error]
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
    pattern: str | list[str] = "*",
    plugin: str | None = None,
    tags: Callable[[str], list[str]] | None = None,
) -> list[str]:
    """Model names matching the fnmatch ``pattern`` (or any of several patterns), sorted
    with numbers in natural order (``mlpmixer_p2`` before ``mlpmixer_p16``, as timm does).

    ``plugin`` keeps only the models of that distribution. With ``tags`` (a function from a
    model name to its weight tags) the result lists ``name.tag`` for each tag instead.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    _discover()

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
        candidates = [f"{name}.{tag}" for tag in tags(name)] if tags is not None else [name]
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

    A caller may override what the variant pins (a recipe's ``mlp_tanh`` with ``activation:
    relu``): timm and torchvision builders accept that too, and recipes rely on it. The name
    then no longer says what was built, so ``zoo_cfg["overrides"]`` records each changed pin
    as ``{"pinned": ..., "used": ...}``; config.json and the model card show it.
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
    for key, value in kwargs.items():
        _check_argument_type(variant, key, value, signature.parameters[key].default)
    bound = signature.bind(**{**pinned, **kwargs})
    bound.apply_defaults()
    args = {k: _plain(v) for k, v in bound.arguments.items()}
    model = cls(**bound.arguments)
    vars(model)["zoo_cfg"] = {"architecture": variant, "args": args}
    overrides = {
        k: {"pinned": _plain(v), "used": args[k]} for k, v in pinned.items() if _plain(v) != args[k]
    }
    if overrides:
        vars(model)["zoo_cfg"]["overrides"] = overrides
    return model


def _plain(value: Any) -> Any:
    """A pinned value as ``zoo_cfg`` records arguments (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _check_size(entry: ModelEntry, kwargs: dict[str, Any]) -> None:
    """Build ``entry`` on the ``meta`` device (no memory) and refuse arguments whose weights
    would not fit in this machine's memory, with the estimate, before allocating them."""
    import torch

    from zoo.devices import gib, memory_budget

    if torch.get_default_device().type == "meta":
        return  # already a dry build
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
    try:
        with torch.device("meta"):
            skeleton = entry.builder(pretrained=False, **kwargs)
        tensors = [*skeleton.parameters(), *skeleton.buffers()]
        need = sum(t.numel() * t.element_size() for t in tensors)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit too: the real build below reports it
        if not isinstance(e, Exception) or not _too_large(e):
            return  # the real build below reports bad arguments in its own words
        raise ModelArgumentError(
            f"{entry.name} with {shown} is too large to build: a size overflows what torch or "
            f"this machine can hold ({_short(e)}); choose smaller arguments"
        ) from None
    budget = memory_budget("cpu")
    if budget is not None and need > budget:
        count = sum(t.numel() for t in skeleton.parameters())
        raise ModelArgumentError(
            f"{entry.name} with {shown} has {count:,} parameters: its weights alone need "
            f"{gib(need)}, more than the {gib(budget)} of memory available; choose smaller "
            "arguments"
        )


def _too_large(e: Exception) -> bool:
    """Whether a dry (``meta``) build failed because a size is absurd, not an argument wrong."""
    if isinstance(e, MemoryError | OverflowError):
        return True
    text = str(e).lower()
    return isinstance(e, TypeError | RuntimeError | ValueError) and "overflow" in text


def _short(e: BaseException) -> str:
    """``Type: message``, the message's first line without the C++ stack torch appends."""
    text = str(e).split("Exception raised from")[0].strip()
    first = (text.splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _check_argument_type(variant: str, key: str, value: Any, default: Any) -> None:
    """A float where the default is an int (``img_size=2.5``), or a scalar where it is a
    list, is refused naming the argument (None keeps meaning "the default")."""
    if value is None or default is None or default is inspect.Parameter.empty:
        return
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = integral
    elif isinstance(default, float):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif isinstance(default, list | tuple):
        ok = isinstance(value, list | tuple)
    else:
        return
    if not ok:
        kind = "a list" if isinstance(default, list | tuple) else type(default).__name__
        raise ModelArgumentError(
            f"{variant}: argument {key}={value!r} must be {kind}, like its default {default!r}"
        )


def _build(entry: ModelEntry, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    _check_size(entry, kwargs)
    try:
        model = entry.builder(pretrained=pretrained, **kwargs)
    except TypeError as e:
        # Third-party builders without build_model: turn a bad keyword into a clear error.
        if "unexpected keyword argument" not in str(e):
            raise _rejected(entry, kwargs, e) from None
        raise ModelArgumentError(
            f"{entry.name} (from {entry.distribution}) rejected its arguments: {e}"
        ) from None
    except ValueError as e:  # e.g. a layer refusing a size computed from the arguments
        raise _rejected(entry, kwargs, e) from None
    except (SystemExit, GeneratorExit) as e:  # a builder cannot end zoo, or fake success
        raise ModelArgumentError(
            f"{entry.name} (from {entry.distribution}) tried to exit the program while "
            f"building ({_short(e)}); fix or uninstall that builder"
        ) from None
    cfg = dict(getattr(model, "zoo_cfg", None) or {"args": dict(kwargs)})
    cfg.update(architecture=entry.name, distribution=entry.distribution, version=entry.version)
    vars(model)["zoo_cfg"] = cfg  # plain attribute: how to rebuild this model
    return model


def _rejected(entry: ModelEntry, kwargs: Mapping[str, Any], e: Exception) -> ModelArgumentError:
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
    return ModelArgumentError(
        f"{entry.name} cannot be built with {shown} ({_short(e)}); "
        f"see `zoo info {entry.name}` for its arguments"
    )


def split_tag(name: str) -> tuple[str, str | None]:
    """``("mlpmixer_p4", "cifar10_best")`` for ``mlpmixer_p4.cifar10_best``; ``(name, None)``
    when ``name`` is a registered model or has no dot after one."""
    _discover()
    if name in _REGISTRY or "." not in name:
        return name, None
    base, tag = name.rsplit(".", 1)
    return (base, tag) if base in _REGISTRY or _from_namespace(base) else (name, None)


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model (after plugin discovery)."""
    _discover()
    return name in _REGISTRY or _from_namespace(name) is not None


def build(
    name: str, plugin: str | None = None, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build the registered model ``name`` (weight tags, files and the Hub are
    :func:`zoo.create`'s). ``pretrained`` goes to the builder, which may have weights of its
    own. Unknown names and arguments raise with suggestions."""
    return _build(get_entry(name, plugin), kwargs, pretrained=pretrained)

"""Plugin discovery through the ``zoo.models`` entry-point group.

Each entry point names a module whose import registers models (see
:func:`zoo.register_model`). zoo's own architectures are registered the same way, through
the entry points in zoo's ``setup.cfg``.

Discovery is lazy (first lookup or listing), happens once per process, and is isolated: a
plugin that fails to import is recorded with its error and skipped. Setting
``ZOO_DISABLE_PLUGIN_AUTOLOAD=1`` loads only zoo's built-ins; third-party code is not imported.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import traceback
from dataclasses import dataclass, field

from zoo import registry

__all__ = ["DISABLE_ENV", "ENTRY_POINT_GROUP", "PluginInfo", "load_plugins"]

ENTRY_POINT_GROUP = "zoo.models"
DISABLE_ENV = "ZOO_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "zoo-classifiers"
# Used only when zoo runs from a source tree that was never installed (no entry points).
_BUILTIN_MODULES = {
    "mlp": "zoo.models.mlp",
    "resnet": "zoo.models.resnet",
    "mixer": "zoo.models.mixer",
}


@dataclass
class PluginInfo:
    """One ``zoo.models`` entry point and what loading it did."""

    name: str
    module: str
    distribution: str
    version: str
    location: str | None = None
    models: list[str] = field(default_factory=list)
    error: str | None = None
    builtin: bool = False


_lock = threading.RLock()
_plugins: list[PluginInfo] | None = None
_loading: list[PluginInfo] | None = None  # set while discovery runs (re-entrant lookups)


def autoload_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _entry_points() -> list[tuple[str, str, str, str]]:
    """(name, module, distribution, version) of every entry point, deduplicated."""
    seen: set[tuple[str, str]] = set()
    found = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else ""
        if (dist, ep.name) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((dist, ep.name))
        found.append((ep.name, ep.value, dist, version))
    if not any(dist == BUILTIN_DISTRIBUTION for _, _, dist, _ in found):
        from zoo import __version__

        found += [(n, m, BUILTIN_DISTRIBUTION, __version__) for n, m in _BUILTIN_MODULES.items()]
    return found


def _load(name: str, value: str, dist: str, version: str) -> PluginInfo:
    module_name = value.split(":")[0].strip()
    info = PluginInfo(name, module_name, dist, version, builtin=dist == BUILTIN_DISTRIBUTION)
    try:
        with registry.registering_as(dist, version):
            module = importlib.import_module(module_name)
            if ":" in value:  # an attribute to call, as in `name = pkg.mod:register`
                obj = getattr(module, value.split(":")[1].strip())
                if callable(obj):
                    obj()
        info.location = getattr(module, "__file__", None)
    except Exception as e:
        last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        where = f" ({last.filename}:{last.lineno})" if last else ""
        info.error = f"{type(e).__name__}: {e}{where}"
        _forget_models(dist, module_name)  # a failed plugin is skipped whole, not half-loaded
    info.models = sorted(
        name
        for name, entries in registry._REGISTRY.items()
        for entry in entries
        if entry.distribution == dist
        and (entry.family == module_name or entry.family.startswith(module_name + "."))
    ) + sorted(  # lazily listed families such as timm/*
        ns.prefix + "*" for ns in registry._NAMESPACES.values() if ns.distribution == dist
    )
    return info


def _forget_models(dist: str, module_name: str) -> None:
    """Unregister what a plugin that then failed had registered before failing."""
    for name, entries in list(registry._REGISTRY.items()):
        entries[:] = [
            e
            for e in entries
            if not (
                e.distribution == dist
                and (e.family == module_name or e.family.startswith(module_name + "."))
            )
        ]
        if not entries:
            del registry._REGISTRY[name]


def load_plugins() -> list[PluginInfo]:
    """Import every plugin once and return what happened to each."""
    global _plugins, _loading
    if _plugins is not None:
        return _plugins
    with _lock:
        if _loading is not None:  # a plugin looked models up while being imported
            return _loading
        if _plugins is None:
            disabled = autoload_disabled()
            _loading = []
            try:
                for name, value, dist, version in _entry_points():
                    if not (disabled and dist != BUILTIN_DISTRIBUTION):
                        _loading.append(_load(name, value, dist, version))
                _plugins = _loading
            finally:
                _loading = None
    return _plugins


def _reset() -> None:
    """Forget discovery so the next lookup scans entry points again (for tests)."""
    global _plugins
    with _lock:
        _plugins = None

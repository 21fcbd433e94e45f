"""Plugin discovery through the ``zoo.models`` entry-point group.

Each entry point names a module whose import registers models (see
:func:`zoo.register_model`). zoo's own architectures are registered the same way, through
the entry points in zoo's ``setup.cfg``.

Discovery is lazy (first lookup or listing), happens once per process, and is isolated: a
plugin that fails to import is recorded with its error and skipped. Setting
``ZOO_DISABLE_PLUGIN_AUTOLOAD=1`` loads only zoo's built-ins; third-party code is not imported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import io
import logging
import math
import os
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

from zoo.models import registry

log = logging.getLogger(__name__)

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "TIMEOUT_ENV",
    "PluginInfo",
    "describe_failure",
    "guarded_import",
    "load_plugins",
    "plugin_timeout",
]

ENTRY_POINT_GROUP = "zoo.models"
DISABLE_ENV = "ZOO_DISABLE_PLUGIN_AUTOLOAD"
TIMEOUT_ENV = "ZOO_PLUGIN_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 86_400.0  # a day; threading.Timer overflows past ~1e10 s
BUILTIN_DISTRIBUTION = registry.BUILTIN_DISTRIBUTION
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
        from zoo._version import __version__

        found += [(n, m, BUILTIN_DISTRIBUTION, __version__) for n, m in _BUILTIN_MODULES.items()]
    return found


def plugin_timeout() -> float:
    """Seconds a plugin import may take before a warning names it (``ZOO_PLUGIN_TIMEOUT``)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw or DEFAULT_TIMEOUT)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT:  # NaN, negative, inf or past what a timer can wait
        _warn_bad_timeout(raw[:40])
        return DEFAULT_TIMEOUT
    return value


@functools.cache
def _warn_bad_timeout(raw: str) -> None:
    log.warning(
        "ignoring %s=%r: give seconds above 0 and at most %g; using %g",
        TIMEOUT_ENV,
        raw,
        MAX_TIMEOUT,
        DEFAULT_TIMEOUT,
    )


def _watchdog(what: str, advice: str) -> threading.Timer:
    """A timer that names ``what`` on stderr if its import is still running after
    :func:`plugin_timeout` (an import cannot be interrupted; naming the culprit can be)."""
    timeout = plugin_timeout()

    def warn() -> None:
        log.warning("%s is still importing after %g s; %s", what, timeout, advice)

    timer = threading.Timer(timeout, warn)
    timer.daemon = True
    return timer


@contextlib.contextmanager
def guarded_import(what: str, advice: str) -> Iterator[None]:
    """Run third-party import code inside the block: a watchdog names ``what`` (with
    ``advice``) when it runs past :func:`plugin_timeout`, and what it prints goes to the log
    instead of stdout, where machine-readable output (``--json``, ``--format json``) goes.
    Exceptions pass through; callers decide what a failure means."""
    printed = io.StringIO()
    timer = _watchdog(what, advice)
    timer.start()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        timer.cancel()
        if printed.getvalue().strip():
            text = " ".join(printed.getvalue().split())
            log.info("%s printed while importing: %s", what, text[:500])


def _load(name: str, value: str, dist: str, version: str) -> PluginInfo:
    module_name = value.split(":")[0].strip()
    info = PluginInfo(name, module_name, dist, version, builtin=dist == BUILTIN_DISTRIBUTION)
    what = f"plugin {name} ({module_name}, from {dist})"
    advice = f"if it hangs, stop zoo and disable plugins with {DISABLE_ENV}=1 or uninstall {dist}"
    try:
        with registry.registering_as(dist, version), guarded_import(what, advice):
            module = importlib.import_module(module_name)
            if ":" in value:  # an attribute to call, as in `name = pkg.mod:register`
                obj = getattr(module, value.split(":")[1].strip())
                if callable(obj):
                    obj()
        info.location = getattr(module, "__file__", None)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit too: a plugin cannot end zoo, or fake success
        info.error = describe_failure(e)
        registry.forget(dist, module_name)  # a failed plugin is skipped whole, not half-loaded
    info.models = registry.provided_by(dist, module_name)
    return info


def describe_failure(e: BaseException) -> str:
    """``Type: message (file:line)`` of an exception raised by imported code."""
    last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" ({last.filename}:{last.lineno})" if last else ""
    return f"{type(e).__name__}: {e}{where}"


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


registry.set_discovery(load_plugins)


def _reset() -> None:
    """Forget discovery so the next lookup scans entry points again (for tests)."""
    global _plugins
    with _lock:
        _plugins = None

"""Models registered in a script: ``zoo train RECIPE --import my_models.py``.

A plain Python file (or an importable module) whose ``@zoo.register_model`` builders should
be trainable without packaging them as a plugin. :func:`import_source` imports it once per
process under a stable module name derived from the file's absolute path, so builders keep
the same ``__module__`` in every process, and attributes its models to the file (as their
``distribution``), so a run trained from it records where its architecture came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path

from zoo._fs import file_kind
from zoo.errors import PluginError
from zoo.models import registry
from zoo.models.plugins import describe_failure, guarded_import

__all__ = ["deferred", "import_all", "import_source", "is_deferred", "is_script"]

_MODULE_PREFIX = "zoo_scripts"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ADVICE = "if it hangs, stop zoo (Ctrl-C) and fix or drop the --import"
_imported: dict[str, str] = {}  # what was asked -> what is recorded (path or module name)
_deferred: list[str] | None = None  # what was not imported, inside deferred()


def is_script(spec: str) -> bool:
    """Whether ``spec`` names a file (``.py``, or any path with a separator) rather than an
    importable module."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem) or "script"
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    return f"{_MODULE_PREFIX}.{stem}_{digest}"


@contextlib.contextmanager
def deferred() -> Iterator[list[str]]:
    """Inside the block, :func:`import_source` resolves what it is given (the file must
    exist, the module name must be valid) but runs none of it; the list collects what was
    not imported. ``zoo train --dry-run`` reads a recipe this way: its ``imports:`` are code,
    and a dry run must not run code."""
    global _deferred
    previous, _deferred = _deferred, []
    try:
        yield _deferred
    finally:
        _deferred = previous


def is_deferred() -> bool:
    """Whether imports are being resolved without running them (see :func:`deferred`)."""
    return _deferred is not None


def import_source(spec: str, base: str | Path | None = None) -> str:
    """Import the file or module ``spec`` (once per process) and return what a run records:
    the file's absolute path, or the module name. A relative path is looked up from the
    current directory, then from ``base`` (the recipe's directory)."""
    if spec in _imported:
        return _imported[spec]
    if not is_script(spec):
        if not _MODULE_NAME.match(spec):
            raise PluginError(f"--import {spec!r} is neither a .py file nor a module name")
        if _deferred is not None:
            _deferred.append(spec)
            return spec
        try:
            with guarded_import(f"--import {spec}", _ADVICE):
                importlib.import_module(spec)
        except ImportError as e:
            raise PluginError(
                f"--import {spec}: cannot import module ({e}); give a file path such as "
                "./my_models.py or install the package"
            ) from None
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # SystemExit too: an import cannot end zoo, or fake success
            raise PluginError(f"--import {spec}: failed to import ({describe_failure(e)})") from e
        _imported[spec] = spec
        return spec
    path = _find_file(spec, base).resolve()
    name = _module_name(path)
    if _deferred is not None and name not in sys.modules:
        _deferred.append(str(path))
        return str(path)
    if name not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"--import {spec}: {path} cannot be imported as Python")
        sys.modules.setdefault(_MODULE_PREFIX, _namespace())
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            with (
                registry.registering_as(str(path), ""),
                guarded_import(f"--import {spec} ({path})", _ADVICE),
            ):
                module_spec.loader.exec_module(module)
        except BaseException as e:  # SystemExit too: an import cannot end zoo, or fake success
            sys.modules.pop(name, None)
            registry.forget(str(path), name)
            if isinstance(e, KeyboardInterrupt):
                raise
            shown = spec if spec == str(path) else f"{spec} ({path})"
            raise PluginError(f"--import {shown}: failed to import ({describe_failure(e)})") from e
    _imported[spec] = str(path)
    return str(path)


def _find_file(spec: str, base: str | Path | None) -> Path:
    """``spec`` from the current directory, else from ``base``; a one-line error naming
    what is there when it is not a file (a directory, a FIFO: reading one would block)."""
    candidates = [Path(spec).expanduser()]
    if base is not None and not candidates[0].is_absolute():
        candidates.append(Path(base) / candidates[0])
    for path in candidates:
        if path.is_file():
            return path
    for path in candidates:
        if path.exists():
            raise PluginError(
                f"--import {spec}: {path} is {file_kind(path.stat().st_mode)}, not a file; "
                "give the path of a .py file"
            )
    raise PluginError(f"--import {spec}: no such file; give the path of a .py file")


def _namespace() -> types.ModuleType:
    package = types.ModuleType(_MODULE_PREFIX)
    package.__path__ = []
    return package


def import_all(specs: Iterable[str], base: str | Path | None = None) -> list[str]:
    """:func:`import_source` for each of ``specs``; the recorded forms, in order."""
    return [import_source(spec, base) for spec in specs]

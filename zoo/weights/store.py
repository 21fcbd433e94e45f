"""The local weights store: tagged weights, timm style (``mlpmixer_p4.cifar10_best``).

Layout under ``$ZOO_HOME`` (default: the user cache dir, ``~/.cache/zoo``)::

    weights/<model>/<tag>/            an export directory (model.safetensors, config.json, ...)
    weights/<model>/<tag>.json        or a pointer: {"source": "hf-hub:org/repo@rev"}

``zoo publish RUN --tag TAG`` fills it (:func:`publish`); ``zoo.create("model.tag")`` and
``zoo.create("model", pretrained=True)`` read it (:func:`resolve_tag`, :func:`tag_source`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from zoo._fs import read_capped
from zoo._io import atomic_write_json
from zoo.errors import WeightsError, did_you_mean

__all__ = ["home", "publish", "resolve_tag", "tag_source", "tags_for", "validate_tag"]

HOME_ENV = "ZOO_HOME"
DEFAULT_TAG = "default"
# Tags become directory names and follow a dot in model names: no dots, slashes or "..".
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")


def home() -> Path:
    """zoo's data directory: ``$ZOO_HOME``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "zoo"


def weights_dir(model: str) -> Path:
    return home() / "weights" / model.replace("/", "--")


def tags_for(model: str) -> list[str]:
    """Sorted tags published for ``model`` in the local store (cheap: no torch import)."""
    root = weights_dir(model)
    if not root.is_dir():
        return []
    tags = {p.name for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()}
    # not is_file(): a pointer that is a FIFO or a link to a device is listed, then refused
    # by name when it is read, rather than silently missing
    tags |= {p.stem for p in root.glob("*.json") if not p.is_dir()}
    return sorted(tags)


def tag_source(model: str, tag: str) -> str:
    """Where ``model.tag`` points: its export directory in the store, or the Hub source
    (``hf-hub:org/repo@rev``) a pointer tag names."""
    root = weights_dir(model)
    if (root / tag / "config.json").is_file():
        return str(root / tag)
    return _read_pointer(root / f"{tag}.json")


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid weight tag (it becomes a directory name), else raise."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise WeightsError(
            f"invalid weight tag {tag!r}: use 1-64 letters, digits, _ or -, starting with a "
            "letter or digit (e.g. cifar10_best)"
        )
    return tag


def publish(
    run_or_export: str | Path | None,
    model: str | None,
    tag: str,
    *,
    source: str | None = None,
    hub_repo: str | None = None,
    private: bool = False,
    force: bool = False,
) -> Path:
    """Store weights under ``model.tag`` and return the stored path.

    With a run or export directory, its export is copied into the store (``model`` defaults
    to the architecture in its config.json and must match it). With ``source``
    (``hf-hub:org/repo@rev``) the tag becomes a pointer to that Hub repo; with ``hub_repo``
    the run is pushed there first and the tag points at the pushed commit. An existing tag
    is refused (before anything is pushed) unless ``force``.
    """
    from zoo.runs.lock import check_unlocked, command_line, target_lock
    from zoo.weights import files as export
    from zoo.weights import hub

    validate_tag(tag)
    if run_or_export is not None:
        check_unlocked(run_or_export, "publish")  # a run being trained: its files are in flux
        export.check_finished(Path(run_or_export), "publish")
        found = export.architecture_of(export.read_config(run_or_export))
        if model is not None and model != found:
            raise WeightsError(f"{run_or_export} holds weights for {found!r}, not {model!r}")
        model = found
    if model is None:
        raise WeightsError("publish needs a run directory or a model name to store the tag under")
    _check_name(model)
    target, pointer = weights_dir(model) / tag, weights_dir(model) / f"{tag}.json"
    _check_free(model, tag, target, pointer, force=force)  # before anything is pushed
    if hub_repo is not None and run_or_export is None:
        raise WeightsError("publishing to the Hub needs a run or export directory")
    if source is None and run_or_export is None:
        raise WeightsError("publish needs a run directory or a hf-hub: source")
    with target_lock(target, f"publish {model}.{tag} to", command=command_line()):
        _check_free(model, tag, target, pointer, force=force)  # another publish may have won
        if hub_repo is not None:
            assert run_or_export is not None
            commit = hub.push_commit(run_or_export, hub_repo, private=private)
            source = f"{hub.HUB_PREFIX}{hub_repo}@{commit.oid}"  # pinned: the tag never drifts
        if source is not None:
            atomic_write_json(pointer, {"source": str(hub.parse_source(source))})
            shutil.rmtree(target, ignore_errors=True)
            return pointer
        assert run_or_export is not None
        run = Path(run_or_export)
        export.check_export_target(run, target, force=True)
        export.write_export(run, target)
        pointer.unlink(missing_ok=True)
    return target


def _check_free(model: str, tag: str, target: Path, pointer: Path, *, force: bool) -> None:
    if (target.exists() or pointer.exists()) and not force:
        raise WeightsError(
            f"{model}.{tag} is already published ({weights_dir(model)}); pass --force to "
            "replace it or choose another tag"
        )


def resolve_tag(model: str, tag: str | None) -> str:
    """``tag`` checked against the tags published for ``model``; None means the model's
    ``default`` tag, or its only one."""
    tags = tags_for(model)
    if tag is None:
        tag = _default_tag(model, tags)
    validate_tag(tag)
    if tag not in tags:
        raise WeightsError(
            f"{model} has no weights tagged {tag!r}.{did_you_mean(tag, tags)} "
            f"Published tags: {', '.join(tags) or 'none'}; publish a run with "
            f"`zoo publish RUN --tag {tag}`"
        )
    return tag


def _default_tag(model: str, tags: list[str]) -> str:
    if DEFAULT_TAG in tags or len(tags) == 1:
        return DEFAULT_TAG if DEFAULT_TAG in tags else tags[0]
    raise WeightsError(
        f"{model} has {len(tags)} weight tags ({', '.join(tags) or 'none'}) and none is "
        f"called {DEFAULT_TAG!r}; pick one, e.g. zoo.create('{model}.{(tags or ['TAG'])[0]}')"
    )


def _read_pointer(path: Path) -> str:
    from zoo.weights import hub

    try:
        data = json.loads(read_capped(path, 1 << 20, error=WeightsError, fix="publish it again"))
    except (OSError, ValueError, RecursionError) as e:  # bad JSON, too deep, a huge integer
        raise WeightsError(
            f"weights pointer {path} is unreadable ({e}); publish it again"
        ) from None
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, str) or not source.startswith(hub.HUB_PREFIX):
        raise WeightsError(
            f'weights pointer {path} must hold {{"source": "hf-hub:ORG/NAME@REV"}}, found {data!r}'
        )
    return str(hub.parse_source(source))


def _check_name(model: str) -> None:
    """Model names become directory names: refuse anything that could leave the store."""
    parts = model.split("/")
    if len(parts) > 2 or any(not p or p in (".", "..") or "\\" in p for p in parts):
        raise WeightsError(f"model name {model!r} cannot be stored (it is not a registry name)")

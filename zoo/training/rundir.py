"""The trainer's decisions about run directories: where a recipe's run goes
(:func:`default_run_dir`), whether it may be continued with a recipe
(:func:`resume_recipe`), and what follows training: curves, card, tag, push
(:func:`after_run`). The files themselves are :mod:`zoo.runs.files`'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import RunError, ZooError
from zoo.runs import files

if TYPE_CHECKING:
    from zoo.recipe import Recipe

__all__ = ["AfterRunError", "after_run", "check_publish", "default_run_dir", "resume_recipe"]

# The trainer's logger, whose INFO lines the CLI shows (as zoo.training.progress does).
log = logging.getLogger("zoo.training.loop")
# Keys that may change when resuming: more epochs, another device, where to publish.
_RESUMABLE_CHANGES = ("epochs", "device", "publish.")


def default_run_dir(recipe: Recipe, now: datetime | None = None) -> Path:
    """``runs/<recipe name>/<local time, YYYYmmdd-HHMMSS>``."""
    return files.default_run_dir(recipe.name, now)


def resume_recipe(run_dir: Path, recipe: Recipe | None) -> Recipe:
    """The recipe to resume ``run_dir`` with: its own, or ``recipe`` if it matches."""
    from zoo.recipe import load_recipe

    path = run_dir / files.RECIPE_NAME
    if not path.is_file():
        if run_dir.is_dir() and files.never_started(run_dir):
            # killed between creating the directory and recording the recipe: nothing to redo
            raise RunError(
                f"cannot resume {run_dir}: it holds no recipe.yaml (a run stopped before "
                f"recording it), so nothing was trained; start it with `zoo train RECIPE --out "
                f"{run_dir}`"
            )
        raise RunError(f"cannot resume {run_dir}: it holds no recipe.yaml, so it is not a zoo run")
    files.check_recipe(run_dir)  # an edited recipe.yaml is not the recipe that trained
    stored = load_recipe(path)
    if recipe is None:
        return stored
    old, new = _flatten(stored.to_dict()), _flatten(recipe.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    blocking = [k for k in changed if not k.startswith(_RESUMABLE_CHANGES)]
    if blocking:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in blocking[:6])
        raise RunError(
            f"cannot resume {run_dir} with a different recipe ({shown}); resume with the run's "
            f"own recipe (`zoo train --resume {run_dir}`) or start a new run with --out"
        )
    if changed:
        log.warning("resuming %s with changed %s", run_dir, ", ".join(changed))
    return recipe


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_publish(recipe: Recipe) -> None:
    """Refuse a ``publish.tag`` that is invalid or already published, before anything is
    trained: :func:`after_run` would otherwise train the whole run and then fail to store it.
    Reads the weights store only."""
    tag = recipe.publish.tag
    if not tag:
        return
    from zoo.weights import store

    store.validate_tag(tag)
    model = recipe.model.name
    if tag in store.tags_for(model):
        raise RunError(
            f"publish.tag {tag!r}: {model}.{tag} is already published "
            f"({store.weights_dir(model)}), so the run would train and then fail to store its "
            f"weights; zoo train has no flag that replaces a tag: choose another with --set "
            f"publish.tag=NEW, or leave it out with --set publish.tag=null and replace it after "
            f"training with `zoo publish RUN_DIR --tag {tag} --force`"
        )


class AfterRunError(RunError):
    """The run finished (summary.json is written) but a step after it failed: a figure, the
    card, the tag or the Hub push. Every step was tried; the message says how to redo each
    failed one. The command exits non-zero: what the user asked for did not all happen."""


def after_run(run_dir: Path, recipe: Recipe) -> None:
    """Curves, model card, local tag and Hub push. Every step is tried even when one fails;
    then the failures are raised together as one :class:`AfterRunError` naming the command
    that redoes each (the run itself is complete and stays so)."""
    from zoo.runs import card, plots

    failures: list[str] = []
    # curves first: the card embeds curves.png when it exists
    for step, retry in (
        (plots.plot_run, f"zoo plot {run_dir}"),
        (card.write_card, f"zoo export {run_dir}"),
    ):
        try:
            step(run_dir)
        except Exception as e:  # every step is tried; the failures are raised together
            failures.append(f"{step.__name__} failed ({_one_line(e)}; redo with `{retry}`)")
    tag, repo = recipe.publish.tag, recipe.publish.hub
    if tag:
        from zoo.weights import store

        retry = f"zoo publish {run_dir} --tag {tag}"
        failures += _publish_step(retry, store.publish, run_dir, None, tag)
    if repo:
        from zoo.weights import hub

        retry = f"zoo push {run_dir} {repo}"
        failures += _publish_step(retry, hub.push, run_dir, repo, private=recipe.publish.private)
    if failures:
        raise AfterRunError(f"the run in {run_dir} finished, but " + "; ".join(failures))


def _publish_step(retry: str, step: Callable[..., Any], *args: Any, **kwargs: Any) -> list[str]:
    try:
        result = step(*args, **kwargs)
    except ZooError as e:
        return [f"{step.__name__} failed ({_one_line(e)}; retry with `{retry}`)"]
    log.info("%s: %s", step.__name__, result)
    return []


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())

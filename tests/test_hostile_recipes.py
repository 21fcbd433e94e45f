"""Hostile catalogue, class 2 (issue 15): recipe includes. ``extends:`` resolves relative to
the recipe's folder and stays inside the recipes root (the first of the recipe's folder and
its parents named ``recipes`` or holding ``.git``, else the recipe's folder; or
``--recipes-root``). A file outside is refused before it is read, so nothing of it is ever
printed; a key from an extended file is blamed on that file."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hostile_helpers import (
    assert_refused,
    assert_unchanged,
    invoke,
    snapshot,
    tiny_recipe,
    write_recipe,
)

from zoo.errors import RecipeError
from zoo.recipe import load_recipe
from zoo.recipe.load import recipes_root

SECRET = "root_password: SECRET-LINE-0123\n"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """``project/`` (a git checkout with ``recipes/``) and a secret YAML file outside it."""
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "recipes" / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text(SECRET)
    return {"root": tmp_path, "project": project, "outside": outside}


def _refused_without_leak(result: Any, *fragments: str) -> None:
    line = assert_refused(result, *fragments)
    assert "SECRET" not in result.output and "SECRET" not in line


def test_absolute_extends_outside_is_refused_unread(tree: dict[str, Path]) -> None:
    recipe = {"extends": str(tree["outside"] / "secret.yaml"), **tiny_recipe()}
    path = write_recipe(tree["project"] / "recipes" / "r.yaml", recipe)
    before = snapshot(tree["root"])
    _refused_without_leak(invoke("train", str(path)), "extends", "outside the recipes root")
    assert_unchanged(tree["root"], before)


def test_absolute_extends_of_a_system_file_is_refused(tree: dict[str, Path]) -> None:
    path = write_recipe(tree["project"] / "recipes" / "r.yaml", {"extends": "/etc/passwd"})
    line = assert_refused(invoke("train", str(path)), "/etc/passwd", "outside")
    assert "root:" not in line


def test_relative_extends_climbing_out_is_refused(tree: dict[str, Path]) -> None:
    recipe = {"extends": "../../outside/secret.yaml", **tiny_recipe()}
    path = write_recipe(tree["project"] / "recipes" / "r.yaml", recipe)
    _refused_without_leak(invoke("train", str(path)), "outside the recipes root")


def test_extends_through_a_link_out_is_refused(tree: dict[str, Path]) -> None:
    recipes = tree["project"] / "recipes"
    (recipes / "base.yaml").symlink_to(tree["outside"] / "secret.yaml")
    path = write_recipe(recipes / "r.yaml", {"extends": "base.yaml", **tiny_recipe()})
    _refused_without_leak(invoke("train", str(path)), "base.yaml", "outside")


def test_a_chain_cannot_escape_from_a_nested_file(tree: dict[str, Path]) -> None:
    recipes = tree["project"] / "recipes"
    write_recipe(recipes / "sub" / "mid.yaml", {"extends": "../../../outside/secret.yaml"})
    path = write_recipe(recipes / "r.yaml", {"extends": "sub/mid.yaml", **tiny_recipe()})
    _refused_without_leak(invoke("train", str(path)), "mid.yaml", "outside")


def test_nul_byte_in_extends_is_one_line(tree: dict[str, Path]) -> None:
    path = write_recipe(
        tree["project"] / "recipes" / "r.yaml", 'extends: "base\\0.yaml"\nname: tiny\n'
    )
    assert_refused(invoke("train", str(path)), "extends", "NUL")


def test_extends_a_fifo_is_refused_without_hanging(tree: dict[str, Path]) -> None:
    recipes = tree["project"] / "recipes"
    os.mkfifo(recipes / "base.yaml")
    path = write_recipe(recipes / "r.yaml", {"extends": "base.yaml", **tiny_recipe()})
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(invoke("train", str(path))))
    worker.daemon = True
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "extends: FIFO hangs"
    assert_refused(results[0], "base.yaml", "regular file")


# -- what the root is -----------------------------------------------------------------------


def test_root_is_the_recipes_folder(tree: dict[str, Path]) -> None:
    recipes = tree["project"] / "recipes"
    assert recipes_root(recipes / "sub" / "r.yaml") == recipes.resolve()


def test_root_is_the_git_checkout(tree: dict[str, Path]) -> None:
    (tree["project"] / "exp").mkdir()
    assert recipes_root(tree["project"] / "exp" / "r.yaml") == tree["project"].resolve()


def test_root_defaults_to_the_recipe_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert recipes_root(tmp_path / "a" / "r.yaml") == (tmp_path / "a").resolve()


def test_extends_inside_the_root_still_works(tree: dict[str, Path]) -> None:
    recipes = tree["project"] / "recipes"
    write_recipe(recipes / "base.yaml", tiny_recipe(epochs=5))
    path = write_recipe(recipes / "sub" / "r.yaml", {"extends": "../base.yaml", "epochs": 3})
    assert load_recipe(path).epochs == 3
    absolute = write_recipe(recipes / "abs.yaml", {"extends": str(recipes / "base.yaml")})
    assert load_recipe(absolute).epochs == 5


def test_recipes_root_widens_the_boundary(tree: dict[str, Path]) -> None:
    write_recipe(tree["outside"] / "base.yaml", tiny_recipe(epochs=4))
    recipes = tree["project"] / "recipes"
    path = write_recipe(recipes / "r.yaml", {"extends": "../../outside/base.yaml"})
    with pytest.raises(RecipeError, match="outside the recipes root"):
        load_recipe(path)
    assert load_recipe(path, root=tree["root"]).epochs == 4


def test_cli_recipes_root_option(tree: dict[str, Path]) -> None:
    write_recipe(tree["outside"] / "base.yaml", tiny_recipe(epochs=1))
    path = write_recipe(
        tree["project"] / "recipes" / "r.yaml", {"extends": "../../outside/base.yaml"}
    )
    result = invoke("train", str(path), "--dry-run", "--recipes-root", str(tree["root"]))
    assert result.exit_code == 0, result.output


# -- errors name the file a key came from ---------------------------------------------------


def test_unknown_key_in_an_extended_file_names_that_file(tree: dict[str, Path]) -> None:
    recipes = tree["project"] / "recipes"
    write_recipe(recipes / "base.yaml", tiny_recipe(optim={"name": "adam", "lrr": 0.1}))
    path = write_recipe(recipes / "top.yaml", {"extends": "base.yaml", "epochs": 1})
    line = assert_refused(invoke("train", str(path)), "base.yaml", "optim.lrr", "top.yaml")
    assert line.startswith(f"error: {recipes / 'base.yaml'}")


def test_bad_value_in_an_extended_file_names_that_file(tree: dict[str, Path]) -> None:
    recipes = tree["project"] / "recipes"
    write_recipe(recipes / "base.yaml", tiny_recipe(epochs=-3))
    path = write_recipe(recipes / "top.yaml", {"extends": "base.yaml", "name": "x"})
    line = assert_refused(invoke("train", str(path)), "epochs", "-3")
    assert line.startswith(f"error: {recipes / 'base.yaml'} (extended by")


def test_a_key_the_outer_file_overrides_is_blamed_on_the_outer_file(
    tree: dict[str, Path],
) -> None:
    recipes = tree["project"] / "recipes"
    write_recipe(recipes / "base.yaml", tiny_recipe(epochs=2))
    path = write_recipe(recipes / "top.yaml", {"extends": "base.yaml", "epochs": -1})
    line = assert_refused(invoke("train", str(path)), "epochs", "-1")
    assert line.startswith(f"error: {path}: epochs")


def test_a_sweep_with_a_publish_tag_is_refused_before_training(tmp_path: Path) -> None:
    """Every point would publish to the same tag: the second failed after training."""
    recipe = tiny_recipe(epochs=1, sweep={"optim.lr": [0.1, 0.01]}, publish={"tag": "v2"})
    path = write_recipe(tmp_path / "s.yaml", recipe)
    for extra in ([], ["--dry-run"]):
        result = invoke("train", str(path), "--out", str(tmp_path / "sw"), *extra)
        assert_refused(result, "publish.tag", "same tag")
    assert not (tmp_path / "sw").exists()

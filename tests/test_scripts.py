"""Models registered in a script (zoo.models.scripts): ``--import FILE_OR_MODULE`` on the
command line, ``imports:`` in a recipe, and the one-line error of a run loaded without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import zoo
from zoo.errors import PluginError, RecipeError
from zoo.models import registry, scripts
from zoo.recipe import from_dict

SCRIPT = '''
import zoo


@zoo.register_model
def {name}(pretrained=False, **kwargs):
    """An MLP registered in a script, not in a package."""
    return zoo.create("mlp_relu", **kwargs)
'''


def _script(directory: Path, name: str) -> Path:
    path = directory / f"{name}_models.py"
    path.write_text(SCRIPT.format(name=name))
    return path


def _recipe(model: str, **changes: object) -> dict[str, object]:
    return {
        "name": "scripted",
        "model": {"name": model, "args": {"hidden_sizes": [16]}},
        "data": {
            "dataset": "synthetic",
            "batch_size": 32,
            "synthetic": {"num_classes": 3, "in_chans": 1, "img_size": 8, "train_size": 64,
                          "valid_size": 32, "test_size": 32},
        },
        "epochs": 1,
        "device": "cpu",
        **changes,
    }  # fmt: skip


def test_import_registers_once_under_a_stable_name_attributed_to_the_file(
    tmp_path: Path, isolated_registry: None
) -> None:
    path = _script(tmp_path, "stable_a")
    recorded = scripts.import_source(str(path))
    assert recorded == str(path.resolve())
    assert scripts.import_source(str(path)) == recorded  # a second import is a no-op
    entry = registry.get_entry("stable_a")
    assert entry.distribution == recorded
    assert entry.family.startswith("zoo_scripts.stable_a_models_")
    assert zoo.create("stable_a", num_classes=2).zoo_cfg["architecture"] == "stable_a"


def test_recipe_imports_resolve_from_the_recipe_directory(
    tmp_path: Path, isolated_registry: None
) -> None:
    _script(tmp_path, "relative_b")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(_recipe("relative_b", imports=["relative_b_models.py"])))
    from zoo.recipe import load_recipe

    recipe = load_recipe(recipe_file)
    assert recipe.imports == (str((tmp_path / "relative_b_models.py").resolve()),)


def test_bad_imports_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"--import nothere\.py: no such file"):
        scripts.import_source("nothere.py")
    with pytest.raises(PluginError, match="cannot import module"):
        scripts.import_source("no_such_module_xyz")
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('boom')\n")
    with pytest.raises(
        PluginError, match=r"failed to import \(ValueError: boom \(.*broken\.py:1\)\)"
    ):
        scripts.import_source(str(broken))
    with pytest.raises(RecipeError, match=r"imports: --import gone\.py: no such file"):
        from_dict(_recipe("mlp_relu", imports=["gone.py"]))


def test_import_of_a_directory_or_fifo_names_what_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_registry: None
) -> None:
    import os

    (tmp_path / "models_dir.py").mkdir()
    os.mkfifo(tmp_path / "pipe.py")  # reading it would block until a writer came
    with pytest.raises(PluginError, match=r"models_dir\.py is a directory, not a file"):
        scripts.import_source(str(tmp_path / "models_dir.py"))
    with pytest.raises(PluginError, match=r"pipe\.py is a FIFO \(named pipe\), not a file"):
        scripts.import_source("pipe.py", base=tmp_path)  # found from the recipe's directory
    # A file beside the recipe still wins over a non-file of that name in the current directory.
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "pipe.py").write_text(SCRIPT.format(name="beside_the_recipe"))
    monkeypatch.chdir(tmp_path)
    recorded = scripts.import_source("pipe.py", base=tmp_path / "recipes")
    assert recorded == str((tmp_path / "recipes" / "pipe.py").resolve())
    assert "beside_the_recipe" in zoo.list_models()


def _zoo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zoo", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.integration
@pytest.mark.slow
def test_cli_trains_a_script_model_and_a_new_process_says_which_file_to_import(
    tmp_path: Path,
) -> None:
    script = _script(tmp_path, "cli_c")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_recipe("cli_c")))
    refused = _zoo("train", "r.yaml", "--out", "run", cwd=tmp_path)
    assert refused.returncode != 0 and "cli_c" in refused.stderr
    done = _zoo("train", "r.yaml", "--import", script.name, "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["imports"] == [str(script.resolve())]
    assert yaml.safe_load((run / "recipe.yaml").read_text())["imports"] == [str(script.resolve())]
    assert json.loads((run / "summary.json").read_text())["imports"] == [str(script.resolve())]
    code = f"import zoo; zoo.create({str(run)!r})"
    alone = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    last = alone.stderr.strip().splitlines()[-1]
    assert f"--import {script.resolve()}" in last and "zoo.import_models(" in last
    code = (
        f"import zoo; zoo.import_models({str(script)!r}); "
        f"print(zoo.create({str(run)!r}).num_classes)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert loaded.stdout.strip() == "3", loaded.stderr
    checked = _zoo("check", "cli_c", "--import", str(script), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

"""The bad-input catalogue: every way a user (or a hostile file) can feed zoo something
wrong, driven through the real CLI. Each case must end with a non-zero exit, exactly one
``error:`` line on stderr that names what was wrong (a distinctive fragment is checked), no
traceback, and nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hostile_helpers import tiny_recipe, write_recipe
from publish_helpers import make_run

from zoo.cli import cli
from zoo.models import plugins


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_refused(result: Result, *fragments: str) -> str:
    """One ``error:`` line naming every fragment, a non-zero exit, no traceback."""
    assert result.exit_code not in (0, None), result.output
    # click turns ctx.exit() into SystemExit; anything else is an uncaught exception
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in result.output
    return lines[0]


def assert_click_refused(result: Result, *fragments: str) -> None:
    """Values that click itself checks (click.Path options) are answered in click's usage
    format: exit 2, a last line ``Error: Invalid value for ...``, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: Invalid value for "), last
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"


def assert_no_run_dir(root: Path) -> None:
    assert not (root / "runs").exists(), list((root / "runs").rglob("*"))


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every command from an empty directory, so a stray ``runs/`` is visible."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- recipes: syntax ------------------------------------------------------------------------


def test_malformed_yaml(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", "name: tiny\nmodel: {name: mlp_relu\nepochs: 2\n")
    assert_refused(invoke("train", str(path)), "r.yaml", "line")
    assert_no_run_dir(cwd)


def test_yaml_that_is_not_a_mapping(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", "- name: tiny\n- epochs: 2\n")
    assert_refused(invoke("train", str(path)), "r.yaml", "mapping")
    assert_no_run_dir(cwd)


def test_empty_recipe(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", "# nothing here\n")
    assert_refused(invoke("train", str(path)), "r.yaml")
    assert_no_run_dir(cwd)


def test_alias_bomb(cwd: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = write_recipe(cwd / "r.yaml", "\n".join(lines) + "\nname: tiny\n")
    assert_refused(invoke("train", str(path)), "r.yaml", "aliases")
    assert_no_run_dir(cwd)


def test_recipe_that_is_not_utf8(cwd: Path) -> None:
    path = cwd / "r.yaml"
    path.write_bytes(b"name: tiny\nepochs: \xff\xfe\n")
    assert_refused(invoke("train", str(path)), "r.yaml")
    assert_no_run_dir(cwd)


def test_huge_recipe_file(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", "# " + "x" * (2 << 20) + "\nname: tiny\n")
    assert_refused(invoke("train", str(path)), "r.yaml", "1 MiB")
    assert_no_run_dir(cwd)


# -- recipes: keys, types, values -----------------------------------------------------------


def test_unknown_top_level_key(cwd: Path) -> None:
    recipe = tiny_recipe()
    recipe["epocs"] = recipe.pop("epochs")
    path = write_recipe(cwd / "r.yaml", recipe)
    assert_refused(invoke("train", str(path)), "epocs", "epochs")
    assert_no_run_dir(cwd)


def test_unknown_nested_key(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(optim={"name": "adam", "lrr": 0.1}))
    assert_refused(invoke("train", str(path)), "optim.lrr", "lr")
    assert_no_run_dir(cwd)


def test_wrong_type(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs="ten"))
    assert_refused(invoke("train", str(path)), "epochs", "'ten'")
    assert_no_run_dir(cwd)


def test_wrong_type_in_a_section(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(data=[1, 2]))
    assert_refused(invoke("train", str(path)), "data")
    assert_no_run_dir(cwd)


def test_negative_epochs(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=-3))
    assert_refused(invoke("train", str(path)), "epochs", "-3")
    assert_no_run_dir(cwd)


def test_huge_batch_size_is_refused_before_allocating(cwd: Path) -> None:
    recipe = tiny_recipe()
    recipe["data"]["batch_size"] = 10**9
    path = write_recipe(cwd / "r.yaml", recipe)
    assert_refused(invoke("train", str(path)), "data.batch_size", "1000000000")
    assert_no_run_dir(cwd)


def test_huge_image_size_is_refused_before_allocating(cwd: Path) -> None:
    # 10^6 images of 4096x4096x3 would be 50 TB: refused by arithmetic, not by the OOM killer
    recipe = tiny_recipe()
    recipe["data"]["synthetic"].update(img_size=4096, in_chans=3, train_size=1_000_000)
    path = write_recipe(cwd / "r.yaml", recipe)
    assert_refused(invoke("train", str(path)), "synthetic")
    assert_no_run_dir(cwd)


def test_huge_model_is_refused_before_allocating(cwd: Path) -> None:
    recipe = tiny_recipe(model={"name": "mlp_relu", "args": {"hidden_sizes": [10**6, 10**6]}})
    path = write_recipe(cwd / "r.yaml", recipe)
    assert_refused(invoke("train", str(path)), "model")
    assert_no_run_dir(cwd)


def test_unknown_model_suggests_close_names(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(model={"name": "mlp_relux"}))
    assert_refused(invoke("train", str(path)), "mlp_relux", "mlp_relu")
    assert_no_run_dir(cwd)


def test_unknown_dataset(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(data={"dataset": "cifar100"}))
    assert_refused(invoke("train", str(path)), "cifar100", "cifar10")
    assert_no_run_dir(cwd)


def test_unknown_optimizer(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(optim={"name": "adamm"}))
    assert_refused(invoke("train", str(path)), "adamm")
    assert_no_run_dir(cwd)


def test_override_without_equals(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    assert_refused(invoke("train", str(path), "--set", "epochs"), "epochs", "=")
    assert_no_run_dir(cwd)


def test_override_of_unknown_key(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    assert_refused(invoke("train", str(path), "--set", "optim.lrate=0.1"), "optim.lrate")
    assert_no_run_dir(cwd)


def test_extends_a_missing_file(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", {"extends": "nowhere.yaml", **tiny_recipe()})
    assert_refused(invoke("train", str(path)), "nowhere.yaml")
    assert_no_run_dir(cwd)


def test_extends_cycle(cwd: Path) -> None:
    write_recipe(cwd / "a.yaml", {"extends": "b.yaml", "epochs": 1})
    write_recipe(cwd / "b.yaml", {"extends": "a.yaml", "epochs": 2})
    assert_refused(invoke("train", str(cwd / "a.yaml")), "a.yaml")
    assert_no_run_dir(cwd)


def test_unknown_device(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    assert_refused(invoke("train", str(path), "--device", "tpu"), "'tpu'", "cpu")
    assert_no_run_dir(cwd)


def test_fp16_on_cpu(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(precision="fp16", device="cpu"))
    assert_refused(invoke("train", str(path)), "fp16", "bf16")
    assert_no_run_dir(cwd)


def test_invalid_shard(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(sweep={"optim.lr": [0.1, 0.01]}))
    assert_refused(invoke("train", str(path), "--shard", "3/2", "--out", "o"), "3/2")
    assert not (cwd / "o").exists()


# -- recipes: files -------------------------------------------------------------------------


def test_missing_recipe_file(cwd: Path) -> None:
    assert_refused(invoke("train", str(cwd / "nope.yaml")), "nope.yaml")
    assert_no_run_dir(cwd)


def test_recipe_path_is_a_directory(cwd: Path) -> None:
    (cwd / "r.yaml").mkdir()
    assert_click_refused(invoke("train", str(cwd / "r.yaml")), "r.yaml", "is a directory")
    assert_no_run_dir(cwd)


def test_resume_a_directory_that_does_not_exist(cwd: Path) -> None:
    result = invoke("train", "--resume", str(cwd / "gone"))
    assert_click_refused(result, "--resume", "does not exist")
    assert not (cwd / "gone").exists()


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: chmod 000 does not stop reads (a directory stands in, above)",
)
def test_unreadable_recipe_file(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    path.chmod(0)
    try:
        assert_refused(invoke("train", str(path)), "r.yaml")
    finally:
        path.chmod(0o644)
    assert_no_run_dir(cwd)


def test_missing_dataset_files(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty root and a download that cannot happen (what torchvision raises offline).
    import urllib.error

    import torchvision.datasets

    def offline(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    (cwd / "empty").mkdir()
    recipe = tiny_recipe(data={"dataset": "cifar10", "root": str(cwd / "empty")})
    path = write_recipe(cwd / "r.yaml", recipe)
    assert_refused(invoke("train", str(path)), "could not download CIFAR-10", "empty")
    assert_no_run_dir(cwd)


# -- names that become paths ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "/abs/name", "a/../../b", ".."])
def test_run_name_with_path_traversal(cwd: Path, name: str) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(name=name))
    assert_refused(invoke("train", str(path)), "name")
    assert_no_run_dir(cwd)
    assert not (cwd.parent / "escape").exists()


def test_publish_tag_with_path_traversal_in_recipe(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(publish={"tag": "../../evil"}))
    assert_refused(invoke("train", str(path)), "publish.tag", "../../evil")
    assert_no_run_dir(cwd)


def test_publish_tag_with_path_traversal(cwd: Path, _zoo_home: Path) -> None:
    run, _ = make_run(cwd / "run")
    assert_refused(invoke("publish", str(run), "--tag", "../../evil"), "'../../evil'", "tag")
    assert not any(_zoo_home.rglob("*evil*"))
    assert not (cwd.parent / "evil").exists()


@pytest.mark.parametrize("repo_id", ["no-slash", "a/b/c", "../etc", "org/na me", "org/--x"])
def test_invalid_hub_repo_id(cwd: Path, repo_id: str) -> None:
    run, _ = make_run(cwd / "run")
    assert_refused(invoke("push", str(run), repo_id), "invalid Hub repo id")


def test_invalid_hub_revision(cwd: Path) -> None:
    assert_refused(invoke("pull", "me/tiny", "--revision", "../../main"), "invalid Hub revision")


def test_hub_file_names_that_escape_the_download_dir(
    cwd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hub_server import FakeHub
    from publish_helpers import TOKEN, point_client_at

    from zoo.weights import hub

    server = FakeHub(token=TOKEN).start(lifetime=60)
    try:
        point_client_at(monkeypatch, server.url, tmp_path / "hf")
        run, _ = make_run(cwd / "run")
        hub.push(run, "me/tiny")
        server.state.extra_siblings["me/tiny"] = ["../../outside.txt"]
        assert_refused(invoke("pull", "me/tiny"), "'../../outside.txt'", "escape")
    finally:
        server.stop()
    assert not list(tmp_path.rglob("outside.txt"))


# -- weights and config.json ----------------------------------------------------------------


@pytest.fixture
def run_dir(cwd: Path) -> Path:
    return make_run(cwd / "run")[0]


def test_truncated_safetensors(run_dir: Path) -> None:
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert_refused(invoke("export", str(run_dir)), "model.safetensors", "truncated")
    assert not (run_dir / "export").exists()


def test_corrupted_safetensors_header(run_dir: Path) -> None:
    weights = run_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"\x00garbage\xff\xfe{{"
    weights.write_bytes(bytes(data))
    assert_refused(invoke("export", str(run_dir)), "model.safetensors", "corrupted")
    assert not (run_dir / "export").exists()


def test_safetensors_with_absurd_header_length(run_dir: Path) -> None:
    weights = run_dir / "model.safetensors"
    weights.write_bytes((2**63).to_bytes(8, "little") + b"{}")
    assert_refused(invoke("export", str(run_dir)), "model.safetensors")
    assert not (run_dir / "export").exists()


@pytest.mark.parametrize(
    "command",
    [["viz"], ["bench", "--min-time", "0.01", "-b", "2"], ["publish", "--tag", "t1"]],
    ids=["viz", "bench", "publish"],
)
def test_truncated_weights_through_other_commands(
    run_dir: Path, command: list[str], _zoo_home: Path
) -> None:
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert_refused(invoke(command[0], str(run_dir), *command[1:]), "corrupted or truncated")
    assert not any(_zoo_home.rglob("*.safetensors"))  # publish stored nothing


def test_broken_metrics_file_for_plot(run_dir: Path, cwd: Path) -> None:
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": \n')
    result = invoke("plot", str(run_dir), "--out", str(cwd / "plots"))
    assert_refused(result, "metrics.jsonl line 1 is not valid JSON")
    assert not (cwd / "plots").exists() or not any((cwd / "plots").iterdir())


def test_broken_sweep_index_for_report(cwd: Path) -> None:
    (cwd / "sweep").mkdir()
    (cwd / "sweep" / "sweep.json").write_text("[1, 2")
    result = invoke("report", str(cwd / "sweep"), "--no-bench", "--out", str(cwd / "report"))
    assert_refused(result, "sweep.json is not valid JSON")
    assert not (cwd / "report").exists()


def test_missing_weights_file(run_dir: Path) -> None:
    (run_dir / "model.safetensors").unlink()
    assert_refused(invoke("export", str(run_dir)), "model.safetensors", "missing")
    assert not (run_dir / "export").exists()


def test_weights_of_the_wrong_shape(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    config["model_args"]["hidden_sizes"] = [16]  # the weights hold 8 hidden units
    (run_dir / "config.json").write_text(json.dumps(config))
    assert_refused(invoke("export", str(run_dir)), "shape mismatch", "(8, 16)")
    assert not (run_dir / "export").exists()


def test_config_naming_an_architecture_nobody_provides(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    config.update(architecture="resnet9000", distribution="zoo-resnet9000")
    (run_dir / "config.json").write_text(json.dumps(config))
    assert_refused(invoke("export", str(run_dir)), "'resnet9000'", "pip install zoo-resnet9000")
    assert not (run_dir / "export").exists()


def test_config_naming_a_path_as_architecture(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    config["architecture"] = "../../run"
    (run_dir / "config.json").write_text(json.dumps(config))
    assert_refused(invoke("export", str(run_dir)), "'../../run'", "not a model name")
    assert not (run_dir / "export").exists()


def test_config_that_is_not_json(run_dir: Path) -> None:
    (run_dir / "config.json").write_text("{'architecture': mlp_relu")
    assert_refused(invoke("export", str(run_dir)), "config.json", "not valid JSON")
    assert not (run_dir / "export").exists()


def test_config_that_is_not_an_object(run_dir: Path) -> None:
    (run_dir / "config.json").write_text("[1, 2, 3]")
    assert_refused(invoke("export", str(run_dir)), "config.json", "JSON object")
    assert not (run_dir / "export").exists()


def test_config_with_bad_model_args(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    config["model_args"]["no_such_arg"] = 1
    (run_dir / "config.json").write_text(json.dumps(config))
    assert_refused(invoke("export", str(run_dir)), "no_such_arg")
    assert not (run_dir / "export").exists()


# -- output directories and resume ----------------------------------------------------------


def test_existing_output_directory_is_refused(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    out = cwd / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_refused(invoke("train", str(path), "--out", str(out)), "already exists", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_output_path_that_is_a_file(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    (cwd / "out").write_text("a file")
    result = invoke("train", str(path), "--out", str(cwd / "out"))
    assert_click_refused(result, "--out", "is a file")
    assert (cwd / "out").read_text() == "a file"


def test_existing_export_directory_is_refused(run_dir: Path) -> None:
    (run_dir / "export").mkdir()
    (run_dir / "export" / "keep.txt").write_text("mine")
    assert_refused(invoke("export", str(run_dir)), "already exists", "--force")
    assert [p.name for p in (run_dir / "export").iterdir()] == ["keep.txt"]


def test_resume_a_directory_that_is_not_a_run(cwd: Path) -> None:
    (cwd / "somewhere").mkdir()
    assert_refused(invoke("train", "--resume", str(cwd / "somewhere")), "recipe.yaml")
    assert list((cwd / "somewhere").iterdir()) == []


def test_resume_with_a_changed_recipe_names_the_keys(cwd: Path) -> None:
    (cwd / "run").mkdir()
    write_recipe(cwd / "run" / "recipe.yaml", tiny_recipe())
    path = write_recipe(cwd / "r.yaml", tiny_recipe(optim={"name": "adam", "lr": 0.5}))
    result = invoke("train", str(path), "--resume", str(cwd / "run"))
    assert_refused(result, "optim.lr", "0.5")
    assert sorted(p.name for p in (cwd / "run").iterdir()) == ["recipe.yaml"]


def test_resume_without_a_checkpoint_starts_the_run_over(cwd: Path) -> None:
    # killed before its first checkpoint: --resume trains it from its own recipe (issue 15)
    (cwd / "run").mkdir()
    write_recipe(cwd / "run" / "recipe.yaml", tiny_recipe())
    result = invoke("train", "--resume", str(cwd / "run"))
    assert result.exit_code == 0, result.output
    assert (cwd / "run" / "summary.json").is_file()


# -- plugins --------------------------------------------------------------------------------


@pytest.fixture
def fake_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_registry: None
) -> Iterator[Path]:
    """A throwaway site directory on sys.path for *.dist-info plugins (see test_plugins)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        if name.startswith("zoo_badplugin_"):
            del sys.modules[name]
    plugins._reset()


def add_plugin(root: Path, dist: str, source: str) -> None:
    module = f"zoo_badplugin_{dist.replace('-', '_')}"
    (root / f"{module}.py").write_text(source, encoding="utf-8")
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[zoo.models]\n{dist} = {module}\n")


def _rescan() -> None:
    import importlib

    importlib.invalidate_caches()
    plugins._reset()
    plugins.load_plugins()


TWICE = """
import zoo
from zoo.models.mlp import mlp_relu


@zoo.register_model
def twice_tiny(pretrained=False, **kwargs):
    return mlp_relu(pretrained, **kwargs)


def twice_tiny_again(pretrained=False, **kwargs):
    return mlp_relu(pretrained, **kwargs)


twice_tiny_again.__name__ = "twice_tiny"
zoo.register_model(twice_tiny_again)
"""


def test_plugin_that_raises_is_named_when_its_model_is_asked_for(fake_site: Path) -> None:
    add_plugin(fake_site, "zoo-raises", "raise RuntimeError('cannot import me')\n")
    _rescan()
    line = assert_refused(invoke("info", "raises_tiny"), "'raises_tiny'")
    assert "zoo-raises" in line and "cannot import me" in line


def test_plugin_registering_a_name_twice(fake_site: Path) -> None:
    add_plugin(fake_site, "zoo-twice", TWICE)
    _rescan()
    line = assert_refused(invoke("info", "twice_tiny"), "twice_tiny")
    assert "zoo-twice" in line and "twice" in line


# -- a full disk while checkpointing --------------------------------------------------------


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.training import checkpoint

    real = checkpoint.atomic_write_bytes
    calls = []

    def fill_disk_on_second_checkpoint(path: Any, data: bytes) -> None:
        if Path(path).name.startswith("epoch-"):  # best.safetensors is written too
            calls.append(Path(path).name)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", fill_disk_on_second_checkpoint)
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=3))
    line = assert_refused(invoke("train", str(path), "--out", "run"), "No space left on device")
    assert "--resume" in line
    assert calls[:2] == ["epoch-0001.safetensors", "epoch-0002.safetensors"]
    saved = json.loads((cwd / "run" / "checkpoints" / "last.json").read_text())
    assert saved["epoch"] == 1
    assert sorted(p.name for p in (cwd / "run" / "checkpoints").iterdir()) == [
        "best.json",
        "best.safetensors",
        "epoch-0001.safetensors",
        "last.json",
    ]
    assert not (cwd / "run" / "model.safetensors").exists()


def test_corrupted_checkpoint_is_refused_on_resume(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    assert invoke("train", str(path), "--out", "run").exit_code == 0
    (tensors,) = (cwd / "run" / "checkpoints").glob("epoch-*.safetensors")
    tensors.write_bytes(tensors.read_bytes()[:-10])
    before = (cwd / "run" / "model.safetensors").read_bytes()
    result = invoke("train", "--resume", "run", "--set", "epochs=2")
    assert_refused(result, tensors.name, "does not match the hash")
    assert (cwd / "run" / "model.safetensors").read_bytes() == before


# -- numerical failures ---------------------------------------------------------------------


def test_nan_loss_names_epoch_step_and_the_usual_causes(cwd: Path) -> None:
    recipe = tiny_recipe(optim={"name": "sgd", "lr": 1e30}, epochs=3, precision="bf16")
    path = write_recipe(cwd / "r.yaml", recipe)
    line = assert_refused(invoke("train", str(path), "--out", "run"), "at epoch 1, step")
    assert "optim.lr" in line and "precision=fp32" in line and "on_nan=skip" in line
    assert not (cwd / "run" / "model.safetensors").exists()

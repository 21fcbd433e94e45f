"""Hostile catalogue, class 1 (issue 15): symlinks and special files in run, export and store
directories. A link leaving the directory, a FIFO or a device is refused with one line naming
it; nothing hangs; export, publish and push never copy a file from outside; nothing is
deleted through a link."""

from __future__ import annotations

import json
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
from PIL import Image
from publish_helpers import make_run

from zoo import _fs
from zoo.errors import RunError, ZooError
from zoo.runs import files

SECRET = "root:SECRET-LINE-0123:0:0\n"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A finished run in ``work/run`` and a secret file and folder outside it."""
    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "keep").mkdir()
    (outside / "keep" / "precious.txt").write_text("do not delete")
    run, _ = make_run(tmp_path / "work" / "run")
    return {"root": tmp_path, "run": run, "outside": outside}


def _link_out(run: Path, name: str, target: Path) -> None:
    path = run / name
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


def _no_secret_under(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"SECRET-LINE" not in path.read_bytes(), path


# -- export, publish, push never copy a file from outside -----------------------------------


@pytest.mark.parametrize(
    "name", ["summary.json", "metrics.jsonl", "recipe.yaml", "curves.png", "README.md"]
)
def test_export_refuses_a_publishable_file_linked_out(world: dict[str, Path], name: str) -> None:
    run = world["run"]
    _link_out(run, name, world["outside"] / "secret.txt")
    before = snapshot(world["outside"])
    line = assert_refused(invoke("export", str(run)), name, "outside")
    assert "SECRET" not in line
    assert not (run / "export").exists()
    assert_unchanged(world["outside"], before)
    _no_secret_under(world["root"] / "work")


def test_export_follows_a_link_that_stays_inside_the_run(world: dict[str, Path]) -> None:
    run = world["run"]
    (run / "notes").mkdir()
    (run / "notes" / "summary.json").write_bytes((run / "summary.json").read_bytes())
    _link_out(run, "summary.json", run / "notes" / "summary.json")
    result = invoke("export", str(run))
    assert result.exit_code == 0, result.output
    copied = run / "export" / "summary.json"
    assert copied.is_file() and not copied.is_symlink()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "curves.png"])
def test_export_refuses_a_fifo_without_hanging(world: dict[str, Path], name: str) -> None:
    run = world["run"]
    (run / name).unlink(missing_ok=True)
    os.mkfifo(run / name)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(invoke("export", str(run))))
    worker.daemon = True
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), f"zoo export hangs on a FIFO named {name}"
    assert_refused(results[0], name, "FIFO")
    assert not (run / "export").exists()


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", "summary.json"])
def test_a_device_file_is_refused_before_it_fills_memory(world: dict[str, Path], name: str) -> None:
    run = world["run"]
    _link_out(run, name, Path("/dev/zero"))
    assert_refused(invoke("export", str(run)), name)
    assert not (run / "export").exists()


def test_weights_linked_out_are_not_loaded(world: dict[str, Path]) -> None:
    run = world["run"]
    other, _ = make_run(world["outside"] / "other", seed=1)
    _link_out(run, "model.safetensors", other / "model.safetensors")
    assert_refused(invoke("export", str(run)), "model.safetensors", "outside")
    assert_refused(invoke("viz", str(run)), "model.safetensors", "outside")


def test_publish_refuses_a_link_out_and_stores_nothing(
    world: dict[str, Path], _zoo_home: Path
) -> None:
    run = world["run"]
    _link_out(run, "recipe.yaml", world["outside"] / "secret.txt")
    assert_refused(invoke("publish", str(run), "--tag", "t1"), "recipe.yaml", "outside")
    assert not any(_zoo_home.rglob("*.safetensors"))
    _no_secret_under(_zoo_home)


@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Hub API methods a command calls, recorded by a fake ``HfApi`` (nothing uploads)."""
    import huggingface_hub

    calls: list[str] = []

    class Api:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: calls.append(name)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    return calls


def test_push_refuses_a_link_out_before_uploading(
    world: dict[str, Path], hub_calls: list[str]
) -> None:
    run = world["run"]
    _link_out(run, "curves.png", world["outside"] / "secret.txt")
    assert_refused(invoke("push", str(run), "me/tiny"), "curves.png", "outside")
    assert hub_calls == []


def _hard_link_out(run: Path, name: str, target: Path) -> None:
    path = run / name
    path.unlink(missing_ok=True)
    os.link(target, path)


@pytest.mark.parametrize("name", ["README.md", "recipe.yaml", "metrics.jsonl", "curves.png"])
def test_export_refuses_a_hard_link_to_another_file(world: dict[str, Path], name: str) -> None:
    """A hard link is a regular file inside the run, but its content is another file's (here
    a secret outside it): published files must have one link only."""
    run = world["run"]
    _hard_link_out(run, name, world["outside"] / "secret.txt")
    line = assert_refused(invoke("export", str(run)), name, "2 hard links", "cp ")
    assert "SECRET" not in line
    assert not (run / "export").exists()


def test_push_and_publish_refuse_a_hard_link_before_anything_leaves(
    world: dict[str, Path], hub_calls: list[str], _zoo_home: Path
) -> None:
    run = world["run"]
    _hard_link_out(run, "README.md", world["outside"] / "secret.txt")
    assert_refused(invoke("push", str(run), "me/tiny"), "README.md", "hard links")
    assert hub_calls == []
    assert_refused(invoke("publish", str(run), "--tag", "t1"), "README.md", "hard links")
    _no_secret_under(_zoo_home)
    (run / "README.md").unlink()  # the fix the message gives, for a file of the run's own
    assert invoke("export", str(run)).exit_code == 0


def _sweep_with(root: Path, point: Any) -> Path:
    sweep = root / "sweep"
    sweep.mkdir()
    index = {"name": "s", "keys": ["optim.lr"], "points": point}
    (sweep / "sweep.json").write_text(json.dumps(index))
    return sweep


def test_report_refuses_a_sweep_point_linked_out(world: dict[str, Path]) -> None:
    sweep = _sweep_with(world["root"], [{"name": "optim.lr=0.1", "run_dir": "optim.lr=0.1"}])
    (sweep / "optim.lr=0.1").symlink_to(world["run"])  # a run outside the sweep
    out = world["root"] / "report"
    assert_refused(invoke("report", str(sweep), "--out", str(out)), "optim.lr=0.1", "outside")
    assert not out.exists()


@pytest.mark.parametrize(
    "points, fragment",
    [
        ([{"name": "x", "run_dir": "../work/run"}], "'../work/run'"),
        ([{"name": "x", "run_dir": ".."}], "'..'"),
        ([{"name": 3}], "3"),
        ({"a": 1}, "not a list"),
        (["x"], "not a list"),
    ],
)
def test_report_refuses_a_damaged_sweep_index(
    world: dict[str, Path], points: Any, fragment: str
) -> None:
    sweep = _sweep_with(world["root"], points)
    out = world["root"] / "report"
    line = assert_refused(invoke("report", str(sweep), "--out", str(out)), "sweep.json", fragment)
    assert "damaged" in line
    assert not out.exists()


def test_plot_refuses_metrics_linked_out(world: dict[str, Path]) -> None:
    run = world["run"]
    _link_out(run, "metrics.jsonl", world["outside"] / "secret.txt")
    line = assert_refused(invoke("plot", str(run)), "metrics.jsonl", "outside")
    assert "SECRET" not in line
    assert not (run / "curves.png").exists()


def test_store_pointer_that_is_a_device_is_refused(_zoo_home: Path) -> None:
    import zoo

    weights = _zoo_home / "weights" / "mlp_relu"
    weights.mkdir(parents=True)
    (weights / "default.json").symlink_to("/dev/zero")
    with pytest.raises(ZooError, match=r"default\.json"):
        zoo.create("mlp_relu.default")


# -- nothing is deleted through a link ------------------------------------------------------


def test_force_removes_a_linked_checkpoints_dir_but_not_its_target(
    world: dict[str, Path],
) -> None:
    root, outside = world["root"], world["outside"]
    path = write_recipe(root / "r.yaml", tiny_recipe(epochs=1))
    run = root / "work" / "run"
    _link_out(run, "checkpoints", outside / "keep")
    before = snapshot(outside)
    result = invoke("train", str(path), "--out", str(run), "--force")
    assert result.exit_code == 0, result.output
    assert_unchanged(outside, before)
    assert (run / "checkpoints").is_dir() and not (run / "checkpoints").is_symlink()


def test_force_on_a_linked_run_dir_is_refused(world: dict[str, Path]) -> None:
    root, outside = world["root"], world["outside"]
    make_run(outside / "their_run")
    path = write_recipe(root / "r.yaml", tiny_recipe(epochs=1))
    (root / "alias").symlink_to(outside / "their_run")
    before = snapshot(outside)
    assert_refused(invoke("train", str(path), "--out", "alias", "--force"), "alias", "link")
    assert_unchanged(outside, before)


def test_resume_refuses_a_checkpoints_dir_linked_out(world: dict[str, Path]) -> None:
    root, outside = world["root"], world["outside"]
    path = write_recipe(root / "r.yaml", tiny_recipe(epochs=1))
    assert invoke("train", str(path), "--out", "run2").exit_code == 0
    real = root / "run2" / "checkpoints"
    real.rename(outside / "ckpt")
    real.symlink_to(outside / "ckpt")
    before = snapshot(outside)
    result = invoke("train", "--resume", "run2", "--set", "epochs=2")
    assert_refused(result, "checkpoints", "outside")
    assert_unchanged(outside, before)


def test_checkpoint_rotation_never_writes_through_a_link(world: dict[str, Path]) -> None:
    import torch

    from zoo.training.checkpoint import save_checkpoint

    run, outside = world["run"], world["outside"]
    (run / "checkpoints").symlink_to(outside / "keep")
    before = snapshot(outside)
    with pytest.raises(RunError, match="outside"):
        save_checkpoint(run / "checkpoints", {"w": torch.zeros(2)}, 1)
    assert_unchanged(outside, before)


def test_export_force_replaces_a_linked_export_without_deleting_its_target(
    world: dict[str, Path],
) -> None:
    run, outside = world["run"], world["outside"]
    target = outside / "keep"
    (target / "config.json").write_text("{}")  # looks like an export
    (run / "export").symlink_to(target)
    before = snapshot(outside)
    result = invoke("export", str(run), "--force")
    assert result.exit_code == 0, result.output
    assert_unchanged(outside, before)
    assert (run / "export").is_dir() and not (run / "export").is_symlink()


# -- the readers themselves -----------------------------------------------------------------


def test_read_text_refuses_a_fifo_without_opening_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "metrics.jsonl")
    with pytest.raises(RunError, match="FIFO"):
        files.read_metrics(tmp_path)


def test_read_text_refuses_a_link_loop(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").symlink_to(tmp_path / "recipe.yaml")
    with pytest.raises(RunError, match=r"recipe\.yaml"):
        files.read_recipe_data(tmp_path)


def test_read_text_missing_ok_still_refuses_a_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "summary.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(RunError, match=r"summary\.json"):
        files.read_json(tmp_path / "summary.json", missing_ok=True)


def test_read_capped_stops_at_the_cap(tmp_path: Path) -> None:
    (tmp_path / "big.json").write_bytes(b"x" * 1000)
    with pytest.raises(ZooError, match=r"big\.json"):
        _fs.read_capped(tmp_path / "big.json", 999)
    assert _fs.read_capped(tmp_path / "big.json", 1000) == b"x" * 1000


def test_check_dir_refuses_a_file_and_a_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ZooError, match="not a directory"):
        _fs.check_dir(tmp_path / "f")
    with pytest.raises(ZooError, match="broken link"):
        _fs.check_dir(tmp_path / "d")
    assert _fs.check_dir(tmp_path / "missing") is None


def test_a_hugging_face_cache_snapshot_may_link_into_its_blobs(tmp_path: Path) -> None:
    repo = tmp_path / "models--me--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "blobs" / "0f0f").write_text("{}")
    (repo / "snapshots" / "abc123" / "config.json").symlink_to("../../blobs/0f0f")
    assert _fs.read_capped(repo / "snapshots" / "abc123" / "config.json", 100) == b"{}"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "0f0f").write_text("{}")
    (repo / "snapshots" / "abc123" / "summary.json").symlink_to(tmp_path / "other" / "0f0f")
    with pytest.raises(ZooError, match="outside"):
        _fs.read_capped(repo / "snapshots" / "abc123" / "summary.json", 100)


# -- outputs that are not regular files, configs that do not fit their model ---------------


def test_out_onto_a_fifo_is_refused_not_replaced(world: dict[str, Path]) -> None:
    """The atomic rename would replace a named pipe (or, as root, /dev/null) with a regular
    file; writes onto anything but a regular file or a link are refused."""
    target = world["root"] / "target"
    os.mkfifo(target)
    result = invoke("bench", "mlp_relu", "-b", "2", "--min-time", "0.01", "--out", str(target))
    assert_refused(result, str(target), "FIFO")
    assert target.is_fifo()
    assert not list(world["root"].glob(".target.*"))


def test_writing_onto_a_device_or_directory_is_refused(tmp_path: Path) -> None:
    from zoo._io import atomic_write_text

    with pytest.raises(ZooError, match="/dev/null: it is a device"):
        atomic_write_text("/dev/null", "x")
    assert Path("/dev/null").is_char_device()
    with pytest.raises(ZooError, match="it is a directory"):
        atomic_write_text(tmp_path, "x")


@pytest.mark.parametrize("size", [[3, 28, 28], [1, 8, 8]])
def test_config_input_size_that_does_not_fit_its_model_is_refused(
    world: dict[str, Path], size: list[int]
) -> None:
    run = world["run"]
    config = json.loads((run / "config.json").read_text())
    config["input_size"] = size
    (run / "config.json").write_text(json.dumps(config))
    Image.new("L", (28, 28)).save(world["root"] / "x.png")
    line = assert_refused(invoke("predict", str(run), str(world["root"] / "x.png")), "input_size")
    assert "does not fit" in line


def test_force_onto_a_sweep_removes_its_points_too(world: dict[str, Path]) -> None:
    """--force on a sweep's directory replaced sweep.json but left the points behind, mixed
    into the new run; a point linked out is unlinked, not followed."""
    root = world["root"]
    sweep = write_recipe(root / "s.yaml", tiny_recipe(epochs=1, sweep={"optim.lr": [0.1, 0.01]}))
    assert invoke("train", str(sweep), "--out", "sw").exit_code == 0
    points = sorted(p.name for p in (root / "sw").iterdir() if p.is_dir())
    assert points == ["optim.lr=0.01", "optim.lr=0.1"]
    (root / "sw" / "mine.txt").write_text("kept: not a file of the sweep")
    plain = write_recipe(root / "r.yaml", tiny_recipe(epochs=1))
    assert invoke("train", str(plain), "--out", "sw", "--force").exit_code == 0
    left = sorted(p.name for p in (root / "sw").iterdir())
    assert not any(name.startswith("optim.lr=") for name in left), left
    assert "mine.txt" in left and not (root / "sw" / "sweep.json").exists()

"""Hostile catalogue, classes 7 and 8 (issue 15): failures that lose the user's intent exit
non-zero (a Hub push or a figure after training, a --shard that cannot run, also under
--dry-run), and bad paths and values end in one ``error:`` line, never a traceback."""

from __future__ import annotations

import json
import os
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
from publish_helpers import make_run

import zoo
from zoo.errors import ModelArgumentError, ZooError

LONG = "n" * 300


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("I am a file")
    return tmp_path


@pytest.fixture
def run(cwd: Path) -> Path:
    return make_run(cwd / "run")[0]


# -- class 7: exit codes --------------------------------------------------------------------


def test_failed_hub_push_after_training_exits_non_zero(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    class Offline:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def create_repo(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1, publish={"hub": "me/tiny"}))
    line = assert_refused(
        invoke("train", str(path), "--out", "out"), "push", "zoo push out me/tiny"
    )
    assert "finished" in line
    assert (cwd / "out" / "summary.json").is_file()  # the run itself is complete


def test_figure_failure_after_training_exits_non_zero(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from zoo.runs import plots

    def full_disk(run_dir: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir))

    monkeypatch.setattr(plots, "plot_run", full_disk)
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    assert_refused(invoke("train", str(path), "--out", "out"), "No space left", "zoo plot out")
    assert (cwd / "out" / "summary.json").is_file()


def test_a_sweep_trains_every_point_then_reports_a_failed_figure(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.runs import plots

    def broken(run_dir: Any) -> None:
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(plots, "plot_run", broken)
    recipe = tiny_recipe(epochs=1, sweep={"optim.lr": [0.1, 0.01]})
    path = write_recipe(cwd / "s.yaml", recipe)
    assert_refused(invoke("train", str(path), "--out", "sw"), "2 sweep point(s)", "exploded")
    assert len(list((cwd / "sw").glob("*/summary.json"))) == 2


def test_dry_run_refuses_a_shard_of_a_recipe_without_sweep(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    result = invoke("train", str(path), "--dry-run", "--shard", "0/2", "--out", "o")
    assert_refused(result, "--shard", "sweep")
    assert not (cwd / "o").exists()


def test_dry_run_refuses_a_shard_without_out(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(sweep={"optim.lr": [0.1, 0.01]}))
    assert_refused(invoke("train", str(path), "--dry-run", "--shard", "1/2"), "--shard", "--out")


# -- class 8: paths that cannot be written --------------------------------------------------


@pytest.mark.parametrize("out", ["afile/run", "/proc/zoo-run", LONG], ids=["file", "proc", "long"])
def test_train_out_that_cannot_be_created(cwd: Path, out: str) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    before = snapshot(cwd)
    assert_refused(invoke("train", str(path), "--out", out), out[:40])
    assert_unchanged(cwd, before)


@pytest.mark.parametrize("out", ["afile/b.json", "/proc/b.json", LONG + ".json"])
def test_bench_out_that_cannot_be_written(cwd: Path, out: str) -> None:
    result = invoke("bench", "mlp_relu", "-b", "2", "--min-time", "0", "--out", out)
    assert_refused(result)


@pytest.mark.parametrize("out", ["afile/plots", "/proc/plots", LONG])
def test_plot_out_that_cannot_be_written(run: Path, out: str) -> None:
    assert_refused(invoke("plot", str(run), "--out", out))


@pytest.mark.parametrize("out", ["afile/rep", "/proc/rep"])
def test_report_out_that_cannot_be_written(run: Path, out: str) -> None:
    assert_refused(invoke("report", str(run), "--no-bench", "--out", out))


@pytest.mark.parametrize("out", ["afile/exp", "/proc/exp", LONG])
def test_export_out_that_cannot_be_written(run: Path, cwd: Path, out: str) -> None:
    before = snapshot(run)
    assert_refused(invoke("export", str(run), "--out", out))
    assert_unchanged(run, before)


def test_zoo_home_that_is_a_file(run: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_HOME", str(cwd / "afile"))
    assert_refused(invoke("publish", str(run), "--tag", "t1"))
    assert (cwd / "afile").read_text() == "I am a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_train_out_in_a_read_only_directory(cwd: Path) -> None:
    (cwd / "ro").mkdir()
    (cwd / "ro").chmod(0o555)
    try:
        path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
        assert_refused(invoke("train", str(path), "--out", "ro/run"), "ro/run")
    finally:
        (cwd / "ro").chmod(0o755)


# -- class 8: values ------------------------------------------------------------------------


def test_nul_byte_in_data_root(cwd: Path) -> None:
    recipe = tiny_recipe(epochs=1)
    recipe["data"] = {"dataset": "fashion_mnist", "root": "a\0b", "batch_size": 8}
    path = write_recipe(cwd / "r.yaml", recipe)
    assert_refused(invoke("train", str(path), "--out", "o"), "data.root", "NUL")
    assert not (cwd / "o").exists()


def test_bogus_compile_mode(cwd: Path) -> None:
    result = invoke("bench", "mlp_relu", "-b", "2", "--compile-mode", "bogus")
    assert_refused(result, "'bogus'", "max-autotune")


def test_non_integer_epoch_in_metrics(run: Path) -> None:
    (run / "metrics.jsonl").write_text('{"epoch": "one", "train_loss": 1.0}\n')
    assert_refused(invoke("plot", str(run)), "metrics.jsonl line 1", "'one'")


def test_sweep_index_whose_points_are_not_a_list(cwd: Path) -> None:
    recipe = tiny_recipe(epochs=1, sweep={"optim.lr": [0.1]})
    write_recipe(cwd / "recipe.yaml", recipe)
    (cwd / "sweep.json").write_text(json.dumps({"name": "tiny", "points": {"a": 1}}))
    result = invoke("sweep", "status", str(cwd))
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "missing" in result.output


def test_create_none() -> None:
    with pytest.raises(ZooError, match="None"):
        zoo.create(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name, kwargs, fragment",
    [
        ("mlp_relu", {"img_size": 2.5}, "img_size=2.5"),
        ("mlp_relu", {"hidden_sizes": None}, "hidden_sizes=None"),
        ("mlp_relu", {"hidden_sizes": 8}, "hidden_sizes=8"),
        ("resnet18", {"in_chans": 2.5}, "in_chans=2.5"),
        ("mlpmixer_p4", {"embed_dim": 2.5}, "embed_dim=2.5"),
        ("mlp_relu", {"num_classes": True}, "num_classes=True"),
    ],
)
def test_float_or_none_model_arguments(name: str, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ModelArgumentError, match=fragment.replace(".", r"\.")):
        zoo.create(name, **kwargs)


def test_sweep_keys_that_overlap(cwd: Path) -> None:
    sweep = {"optim.lr": [0.1, 0.01], "optim": [{"name": "sgd", "lr": 0.5}]}
    path = write_recipe(cwd / "s.yaml", tiny_recipe(sweep=sweep))
    assert_refused(invoke("train", str(path), "--dry-run"), "sweep.optim.lr", "overlaps")


def test_repeated_sweep_values(cwd: Path) -> None:
    path = write_recipe(cwd / "s.yaml", tiny_recipe(sweep={"optim.lr": [0.1, 0.01, 0.1]}))
    assert_refused(invoke("train", str(path), "--out", "sw"), "sweep.optim.lr", "repeats 0.1")
    assert not (cwd / "sw").exists()


# -- --dry-run refuses what the run refuses, and option values out of range ----------------


def _trained(cwd: Path, name: str, **changes: Any) -> Path:
    path = write_recipe(cwd / f"{name}.yaml", tiny_recipe(epochs=1, **changes))
    result = invoke("train", str(path), "--out", name)
    assert result.exit_code == 0, result.output
    return cwd / name


def _hold_lock(run_dir: Path) -> None:
    """A lock held by a live process on this host: the one that started the tests (the lock
    of this process itself would be its own, which it may use)."""
    import socket
    import time

    record = {"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}
    (run_dir / ".zoo-lock").write_text(json.dumps({**record, "command": "zoo train"}))


@pytest.mark.parametrize(
    "out, fragment",
    [
        ("run", "--force"),
        ("afile/x", "afile/x"),
        ("/proc/zoo-run", "/proc/zoo-run"),
        ("afile/deeper/x", "afile/deeper/x"),
    ],
    ids=["finished-run", "file", "proc", "file-deeper"],
)
def test_dry_run_refuses_an_out_the_run_refuses(
    run: Path, cwd: Path, out: str, fragment: str
) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    before = snapshot(cwd)
    assert_refused(invoke("train", str(path), "--dry-run", "--out", out), fragment)
    assert_unchanged(cwd, before)


def test_dry_run_of_a_resume_refuses_a_changed_recipe(cwd: Path) -> None:
    rr = _trained(cwd, "rr")
    before = snapshot(cwd)
    result = invoke("train", "--resume", str(rr), "--dry-run", "--set", "optim.lr=0.5")
    assert_refused(result, "cannot resume", "optim.lr")
    assert_unchanged(cwd, before)


@pytest.mark.parametrize(
    "args",
    [["--resume", "rl", "--dry-run"], ["r.yaml", "--out", "rl", "--force", "--dry-run"]],
    ids=["resume", "force"],
)
def test_dry_run_refuses_a_directory_a_live_process_writes(cwd: Path, args: list[str]) -> None:
    write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    _hold_lock(_trained(cwd, "rl"))
    before = snapshot(cwd)
    assert_refused(invoke("train", *args), "rl", "being written by", f"pid {os.getppid()}")
    assert_unchanged(cwd, before)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "train"])
def test_a_published_tag_is_refused_before_training(run: Path, cwd: Path, dry_run: bool) -> None:
    result = invoke("publish", str(run), "--tag", "exists")
    assert result.exit_code == 0, result.output
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    before = snapshot(cwd)
    args = ["train", str(path), "--out", "pt", "--set", "publish.tag=exists"]
    line = assert_refused(
        invoke(*args, *(["--dry-run"] if dry_run else [])),
        "mlp_relu.exists",
        "already published",
        "--force",
    )
    assert "zoo publish" in line and "publish.tag=" in line
    assert_unchanged(cwd, before)  # nothing trained, no pt/
    # the way out the message names works
    result = invoke(*args[:-1], "publish.tag=null", "--dry-run")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "train"])
def test_nproc_above_the_cpus_is_refused(
    cwd: Path, monkeypatch: pytest.MonkeyPatch, dry_run: bool
) -> None:
    def execv(*args: Any) -> None:
        raise AssertionError("torchrun was launched")

    monkeypatch.setattr(os, "execv", execv)
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    cpus = os.cpu_count() or 1
    before = snapshot(cwd)
    args = ["train", str(path), "--device", "cpu", "--nproc", str(cpus + 1), "--out", "o"]
    result = invoke(*args, *(["--dry-run"] if dry_run else []))
    assert_refused(result, f"--nproc {cpus + 1}", f"{cpus} CPU", f"--nproc {cpus} or fewer")
    assert_unchanged(cwd, before)


@pytest.mark.parametrize(
    "command, fragment",
    [
        (["bench", "mlp_relu", "-b", "2", "--min-time", "0", "--threads", "100000"], "--threads"),
        (["bench", "mlp_relu", "-b", "2", "--min-time", "0", "--threads", "0"], "--threads"),
        (["predict", "run", "img.png", "--num-workers", "5000"], "--num-workers 5000"),
        (["predict", "run", "img.png", "--num-workers", "-1"], "--num-workers -1"),
        (["predict", "run", "img.png", "--batch-size", "100000000"], "--batch-size"),
        (["eval", "run", "--batch-size", "0"], "--batch-size 0"),
        (["eval", "run", "--batch-size", "-5"], "--batch-size -5"),
    ],
    ids=[
        "bench-threads",
        "bench-threads-0",
        "predict-workers",
        "predict-workers-negative",
        "predict-batch",
        "eval-batch-0",
        "eval-batch-negative",
    ],
)
def test_counts_out_of_range(run: Path, cwd: Path, command: list[str], fragment: str) -> None:
    from PIL import Image

    Image.new("L", (4, 4)).save(cwd / "img.png")
    before = snapshot(cwd)
    assert_refused(invoke(*command), fragment, "from ")
    assert_unchanged(cwd, before)


BAD = "o\udcffut"  # what Python makes of the bytes b"o\xffut" (bash $'o\xffut')


@pytest.mark.parametrize(
    "args",
    [
        ["train", "r.yaml", "--out", BAD],
        ["train", "r.yaml", "--out", BAD, "--dry-run"],
        ["train", "--resume", BAD],
        ["plot", BAD],
        ["plot", "run", "--out", BAD],
        ["report", "run", "--no-bench", "--out", BAD],
        ["export", BAD],
        ["export", "run", "--out", BAD],
        ["publish", BAD, "--tag", "t1"],
        ["bench", "mlp_relu", "-b", "2", "--min-time", "0", "--out", BAD + ".json"],
        ["eval", "run", "--out", BAD],
        ["sweep", "status", BAD],
    ],
    ids=lambda args: "-".join(a for a in args if BAD not in a and not a.startswith("-"))[:40],
)
def test_paths_that_are_not_utf8(run: Path, cwd: Path, args: list[str]) -> None:
    write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    (cwd / BAD).mkdir()  # an existing directory of that name, for the commands that read one
    before = snapshot(cwd)
    assert_refused(invoke(*args), "o\\xffut", "not valid UTF-8")
    assert_unchanged(cwd, before)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "train"])
def test_resume_with_force_is_refused(run: Path, cwd: Path, dry_run: bool) -> None:
    before = snapshot(cwd)
    result = invoke("train", "--resume", str(run), "--force", *(["--dry-run"] if dry_run else []))
    assert_refused(result, "--force", "--resume")
    assert_unchanged(cwd, before)


def test_dry_run_of_a_sweep_refuses_what_the_sweep_refuses(cwd: Path) -> None:
    sweep = {"optim.lr": [0.1, 0.01]}
    path = write_recipe(cwd / "s.yaml", tiny_recipe(epochs=1, sweep=sweep))
    assert invoke("train", str(path), "--out", "sw").exit_code == 0
    before = snapshot(cwd)
    for args in (["--out", "sw"], ["--out", "afile/sw"], ["--out", "sw", "--shard", "0/2"]):
        assert_refused(invoke("train", str(path), "--dry-run", *args))
    assert_refused(invoke("train", "--resume", "sw", "--dry-run", "--set", "seed=5"), "seed")
    assert_unchanged(cwd, before)

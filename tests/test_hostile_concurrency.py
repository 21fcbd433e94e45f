"""Hostile catalogue, class 3 (issue 15): concurrent writers. While a process writes a run
directory it holds ``.zoo-lock`` (pid, host); a second writer -- ``--force``, ``--resume``,
``export --out`` onto it, a sweep point -- is refused with one line naming the holder, and a
lock left by a killed process is taken over with a line saying so. The other holder is a
real second process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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

from zoo.errors import RunError
from zoo.runs import lock
from zoo.runs.files import LOCK_NAME

HOLD = """
import sys, time
from pathlib import Path
from zoo.runs.lock import run_lock
with run_lock(Path(sys.argv[1]), command="holder-process"):
    print("locked", flush=True)
    time.sleep(120)
"""

HOLD_TARGET = """
import sys, time
from pathlib import Path
from zoo.runs.lock import target_lock
with target_lock(Path(sys.argv[1]), "hold", command="holder-process"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@contextlib.contextmanager
def _held(directory: Path, code: str = HOLD) -> Iterator[subprocess.Popen[str]]:
    """A second process (no torch: it starts fast) that holds the lock of ``directory``
    until the block ends (then it is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def holder(cwd: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A finished run in ``run`` whose lock another live process holds."""
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    assert invoke("train", str(path), "--out", "run").exit_code == 0
    with _held(cwd / "run") as proc:
        yield cwd / "run", proc


def test_force_onto_a_locked_run_is_refused_naming_the_holder(
    cwd: Path, holder: tuple[Path, subprocess.Popen[str]]
) -> None:
    run, proc = holder
    before = snapshot(run)
    result = invoke("train", str(cwd / "r.yaml"), "--out", "run", "--force")
    assert_refused(result, "run", f"pid {proc.pid}", socket.gethostname(), "holder-process")
    assert_unchanged(run, before)


def test_resume_of_a_locked_run_is_refused(
    cwd: Path, holder: tuple[Path, subprocess.Popen[str]]
) -> None:
    run, proc = holder
    before = snapshot(run)
    assert_refused(invoke("train", "--resume", "run", "--set", "epochs=2"), f"pid {proc.pid}")
    assert_unchanged(run, before)


def test_export_onto_a_locked_directory_is_refused(
    cwd: Path, holder: tuple[Path, subprocess.Popen[str]]
) -> None:
    run, proc = holder
    other, _ = make_run(cwd / "other")
    before = snapshot(run)
    result = invoke("export", str(other), "--out", "run", "--force")
    assert_refused(result, "export onto", f"pid {proc.pid}")
    assert_unchanged(run, before)


def test_eval_of_a_run_in_its_first_epoch_names_the_trainer(cwd: Path) -> None:
    """Before its first epoch ends a run has no config.json; eval names the process training
    it rather than calling the directory "not a zoo run"."""
    (cwd / "run").mkdir()
    with _held(cwd / "run") as proc:
        result = invoke("eval", "run", "--dataset", "fashion_mnist")
        assert_refused(result, "evaluate", f"pid {proc.pid}", "holder-process")
        assert "config.json" not in result.output


def test_two_exports_onto_one_target_cannot_both_succeed(cwd: Path) -> None:
    """While one export replaces ``--out`` (it holds the lock next to it), a second export
    onto the same target is refused naming the first; without the lock both exited 0 and one
    export was silently lost."""
    run, _ = make_run(cwd / "run")
    other, _ = make_run(cwd / "other", seed=1)
    assert invoke("export", str(run), "--out", "exp").exit_code == 0
    before = snapshot(cwd / "exp")
    with _held(cwd / "exp", HOLD_TARGET) as proc:
        result = invoke("export", str(other), "--out", "exp", "--force")
        assert_refused(result, "export onto", "exp", f"pid {proc.pid}", "holder-process")
    assert_unchanged(cwd / "exp", before)
    assert invoke("export", str(other), "--out", "exp", "--force").exit_code == 0  # stale: taken
    assert not list(cwd.glob(".exp*"))  # neither the lock nor a staging directory is left


def test_two_publishes_of_one_tag_cannot_both_succeed(cwd: Path) -> None:
    from zoo.weights import store

    run, _ = make_run(cwd / "run")
    target = store.weights_dir("mlp_relu") / "mine"
    with _held(target, HOLD_TARGET) as proc:
        result = invoke("publish", str(run), "--tag", "mine", "--force")
        assert_refused(result, "mlp_relu.mine", f"pid {proc.pid}")
    assert not target.exists() and "mine" not in store.tags_for("mlp_relu")
    assert invoke("publish", str(run), "--tag", "mine").exit_code == 0
    assert store.tags_for("mlp_relu") == ["mine"]
    assert not list(target.parent.glob(".mine*"))


def test_a_sweep_point_being_written_is_refused(cwd: Path) -> None:
    recipe = tiny_recipe(epochs=1, sweep={"optim.lr": [0.1, 0.01]})
    path = write_recipe(cwd / "s.yaml", recipe)
    with _held(cwd / "sweep" / "optim.lr=0.1") as proc:
        result = invoke("train", str(path), "--out", "sweep", "--force")
        assert_refused(result, "optim.lr=0.1", f"pid {proc.pid}")


def test_a_stale_lock_of_a_killed_process_is_taken_over(
    cwd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    with _held(cwd / "run") as proc:
        proc.send_signal(signal.SIGKILL)  # killed: its lock stays behind
        proc.wait()
    assert (cwd / "run" / LOCK_NAME).is_file()
    result = invoke("train", str(path), "--out", "run")
    assert result.exit_code == 0, result.output
    assert "stale lock" in caplog.text and f"pid {proc.pid}" in caplog.text
    assert not (cwd / "run" / LOCK_NAME).exists()  # released after the run


def test_a_lock_from_another_host_is_never_taken_over(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    record = {"pid": 1, "host": "elsewhere.example", "started": time.time(), "command": "x"}
    (tmp_path / "run" / LOCK_NAME).write_text(json.dumps(record))
    with (
        pytest.raises(RunError, match=r"elsewhere\.example.*remove .*\.zoo-lock"),
        lock.run_lock(tmp_path / "run"),
    ):
        pass


@pytest.mark.parametrize("content", ["", "garbage", "link"])
def test_a_lock_being_written_or_unreadable_counts_as_held(tmp_path: Path, content: str) -> None:
    """An empty lock is being written this instant; garbage or a link is not zoo's: refused
    all the same, saying what is there and how to clear it (not "pid None on ?")."""
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / LOCK_NAME
    if content == "link":
        path.symlink_to(tmp_path / "elsewhere.json")
    else:
        path.write_text(content)
    with pytest.raises(RunError, match="not a lock zoo can read") as caught:
        lock.check_unlocked(tmp_path / "run")
    assert "None" not in str(caught.value) and f"remove {path}" in str(caught.value)


def test_the_lock_is_released_and_an_unused_directory_removed(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    with lock.run_lock(target):
        assert (target / LOCK_NAME).is_file()
        assert lock.holder(target)["pid"] == os.getpid()  # type: ignore[index]
    assert not (tmp_path / "a").exists()
    with lock.run_lock(target):
        (target / "kept.txt").write_text("x")
    assert (target / "kept.txt").is_file() and not (target / LOCK_NAME).exists()


def test_a_failed_run_leaves_no_directory_behind(cwd: Path) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(model={"name": "mlp_relu", "args": {}}))
    recipe = tiny_recipe()
    recipe["data"]["synthetic"]["train_size"] = 0
    write_recipe(path, recipe)
    result = invoke("train", str(path), "--out", "deep/run")
    assert result.exit_code != 0
    assert not (cwd / "deep").exists()


@pytest.mark.slow
def test_two_real_trainings_onto_one_directory(cwd: Path) -> None:
    """Two `zoo train --out SAME --force` at once: exactly one trains, the other is refused
    with one line, and the directory holds one run's files only."""
    recipe = tiny_recipe(epochs=30)
    recipe["data"]["synthetic"]["train_size"] = 4096
    path = write_recipe(cwd / "r.yaml", recipe)
    command = [sys.executable, "-m", "zoo", "train", str(path), "--out", "same", "--force"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not (cwd / "same" / LOCK_NAME).exists():
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.2)
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode != 0
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"pid {first.pid}" in errors[0], second.stderr
    assert first.wait(timeout=600) == 0
    summary = json.loads((cwd / "same" / "summary.json").read_text())
    assert summary["epochs"] == 30


@pytest.mark.parametrize(
    "command",
    [
        ["export", "run", "--out", "exp"],
        ["publish", "run", "--tag", "t1"],
        ["push", "run", "me/tiny"],
        ["predict", "run", "img.png"],
        ["eval", "run"],
    ],
)
def test_reading_a_run_being_trained_is_refused(
    holder: tuple[Path, subprocess.Popen[str]], command: list[str]
) -> None:
    """Export, publish, push, predict and eval read a run's weights and history: while a
    process writes the run (a --resume adding epochs) those are in flux, and a snapshot
    would mix two states. Refused naming the writer."""
    run, proc = holder
    before = snapshot(run)
    assert_refused(invoke(*command), f"pid {proc.pid}")
    assert_unchanged(run, before)
    assert not (run.parent / "exp").exists()


def test_export_force_onto_a_training_run_is_refused(cwd: Path) -> None:
    """A finished run has config.json like an export, but also checkpoints/: replacing it
    whole would delete its checkpoints and history."""
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    assert invoke("train", str(path), "--out", "victim").exit_code == 0
    other, _ = make_run(cwd / "other")
    before = snapshot(cwd / "victim")
    line = assert_refused(invoke("export", str(other), "--out", "victim", "--force"), "victim")
    assert "training run" in line
    assert_unchanged(cwd / "victim", before)


def test_resume_of_an_export_is_refused_and_not_suggested(cwd: Path) -> None:
    """An export (weights, no checkpoints/) is not a run: --resume retrained it from its
    recipe.yaml and overwrote the exported weights."""
    run, _ = make_run(cwd / "run")
    assert invoke("export", str(run), "--out", "exp").exit_code == 0
    before = snapshot(cwd / "exp")
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    line = assert_refused(invoke("train", str(path), "--out", "exp"), "exp", "already exists")
    assert "--resume" not in line
    assert_refused(invoke("train", "--resume", "exp"), "export, not a run")
    assert_unchanged(cwd / "exp", before)


def test_a_run_resumed_and_stopped_before_finishing_is_not_exported(cwd: Path) -> None:
    """Its weights and summary are from the first finish, its history and checkpoint from the
    stopped resume: an export would mix the two."""
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    assert invoke("train", str(path), "--out", "run").exit_code == 0
    record = json.loads((cwd / "run" / "checkpoints" / "last.json").read_text())
    record["epoch"] = 5  # as a resume stopped at epoch 5 leaves it (summary: 1 epoch)
    (cwd / "run" / "checkpoints" / "last.json").write_text(json.dumps(record))
    for command in (["export", "run", "--out", "exp"], ["publish", "run", "--tag", "t"]):
        assert_refused(invoke(*command), "stopped at epoch 5", "zoo train --resume run")
    assert not (cwd / "exp").exists()


def test_force_of_one_shard_keeps_the_other_shards_points(cwd: Path) -> None:
    """`--shard 1/2 --force` deleted the points shard 0 had trained (the shared root was
    cleared whole); it replaces its own points only."""
    recipe = tiny_recipe(epochs=1, sweep={"optim.lr": [0.01, 0.02, 0.03]})
    path = write_recipe(cwd / "s.yaml", recipe)
    assert invoke("train", str(path), "--out", "sw", "--shard", "0/2").exit_code == 0
    mine = sorted(p.name for p in (cwd / "sw").iterdir() if p.is_dir())
    before = {name: snapshot(cwd / "sw" / name) for name in mine}
    result = invoke("train", str(path), "--out", "sw", "--shard", "1/2", "--force")
    assert result.exit_code == 0, result.output
    for name in mine:
        assert_unchanged(cwd / "sw" / name, before[name])
    other = write_recipe(cwd / "o.yaml", {**recipe, "epochs": 2})
    assert_refused(
        invoke("train", str(other), "--out", "sw", "--shard", "1/2", "--force"), "mix two recipes"
    )


def test_force_onto_a_sweep_refuses_while_a_point_is_being_written(cwd: Path) -> None:
    recipe = tiny_recipe(epochs=1, sweep={"optim.lr": [0.01, 0.02]})
    path = write_recipe(cwd / "s.yaml", recipe)
    assert invoke("train", str(path), "--out", "sw").exit_code == 0
    before = snapshot(cwd / "sw")
    with _held(cwd / "sw" / "optim.lr=0.01") as proc:
        result = invoke("train", str(path), "--out", "sw", "--force")
        assert_refused(result, "optim.lr=0.01", f"pid {proc.pid}")
    after = snapshot(cwd / "sw")
    after.pop("optim.lr=0.01/.zoo-lock", None)  # the holder's own lock file
    assert after == before

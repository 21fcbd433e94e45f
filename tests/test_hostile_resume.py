"""Hostile catalogue, class 6 (issue 15): resume tells the truth. Damaged metrics are refused
with their line number; fewer ``epochs`` than done, and ``--out`` with ``--resume``, are
refused; Ctrl-C or SIGTERM at any phase ends in one line with the command that continues, and
that command redoes what was interrupted; a run killed before its first checkpoint starts
over from its own recipe; an empty validation split writes standard JSON."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from hostile_helpers import (
    assert_refused,
    assert_unchanged,
    invoke,
    snapshot,
    tiny_recipe,
    write_recipe,
)
from safetensors.torch import load_file


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def finished(cwd: Path) -> Path:
    """A finished 2-epoch run in ``run``."""
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=2))
    result = invoke("train", str(path), "--out", "run")
    assert result.exit_code == 0, result.output
    return cwd / "run"


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "damage", ['{"epoch": 1, "train_loss": \n', "not json at all\n"], ids=["truncated", "garbage"]
)
def test_damaged_metrics_line_is_refused_by_resume(finished: Path, damage: str) -> None:
    lines = (finished / "metrics.jsonl").read_text().splitlines(keepends=True)
    (finished / "metrics.jsonl").write_text(lines[0] + damage)
    before = snapshot(finished)
    result = invoke("train", "--resume", "run", "--set", "epochs=3")
    assert_refused(result, "metrics.jsonl line 2")
    assert_unchanged(finished, before)


def test_fewer_epochs_than_done_is_refused(finished: Path) -> None:
    before = snapshot(finished)
    assert_refused(invoke("train", "--resume", "run", "--set", "epochs=1"), "epochs=1", "2 epochs")
    assert_unchanged(finished, before)
    assert json.loads((finished / "summary.json").read_text())["epochs"] == 2


def test_out_with_resume_is_refused(finished: Path, cwd: Path) -> None:
    before = snapshot(finished)
    result = invoke("train", "--resume", "run", "--out", "other", "--set", "epochs=3")
    assert_refused(result, "--out", "--resume")
    assert not (cwd / "other").exists()
    assert_unchanged(finished, before)


def test_resume_before_the_first_checkpoint_starts_over(
    finished: Path, cwd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference = load_file(finished / "model.safetensors")
    # what SIGKILL right after the first metrics line leaves: recipe, one metrics line
    first = (finished / "metrics.jsonl").read_text().splitlines(keepends=True)[0]
    for name in ("checkpoints", "summary.json", "model.safetensors", "config.json"):
        path = finished / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for extra in finished.glob("*.png"):
        extra.unlink()
    (finished / "metrics.jsonl").write_text(first)
    with caplog.at_level(logging.WARNING):
        result = invoke("train", "--resume", "run")
    assert result.exit_code == 0, result.output
    assert "starting it over from its recorded recipe" in caplog.text
    weights = load_file(finished / "model.safetensors")
    for key, value in reference.items():  # the weights of an uninterrupted run
        torch.testing.assert_close(weights[key], value)
    assert len((finished / "metrics.jsonl").read_text().splitlines()) == 2


def test_ctrl_c_during_the_test_evaluation_says_how_to_continue(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.training import loop

    real = loop._finish

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_finish", interrupted)
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    line = assert_refused(invoke("train", str(path), "--out", "run"), "zoo train --resume run")
    assert "Aborted" not in line
    assert not (cwd / "run" / "summary.json").exists()
    monkeypatch.setattr(loop, "_finish", real)
    result = invoke("train", "--resume", "run")  # redoes the finishing step
    assert result.exit_code == 0, result.output
    assert (cwd / "run" / "summary.json").is_file() and (cwd / "run" / "README.md").is_file()


def test_sigterm_during_training_checkpoints_and_says_how_to_continue(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.training import loop

    real = loop.train_epoch

    def killed_in_epoch_2(run: Any, epoch: int, progress: Any) -> Any:
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(run, epoch, progress)

    monkeypatch.setattr(loop, "train_epoch", killed_in_epoch_2)
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=3))
    result = invoke("train", str(path), "--out", "run")
    assert_refused(result, "epoch 1 is checkpointed", "zoo train --resume run")
    assert signal.getsignal(signal.SIGTERM) is not signal.default_int_handler  # restored
    monkeypatch.setattr(loop, "train_epoch", real)
    result = invoke("train", "--resume", "run")
    assert result.exit_code == 0, result.output
    assert json.loads((cwd / "run" / "summary.json").read_text())["epochs"] == 3


def test_interrupted_sweep_point_finishing_is_redone(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.training import rundir, sweep

    real = rundir.after_run
    calls: list[Path] = []

    def interrupted(run_dir: Path, recipe: Any) -> None:
        calls.append(run_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "after_run", interrupted)
    monkeypatch.setattr("zoo.training.loop.after_run", interrupted)
    path = write_recipe(cwd / "s.yaml", tiny_recipe(epochs=1, sweep={"optim.lr": [0.1, 0.01]}))
    assert_refused(invoke("train", str(path), "--out", "sw"), "zoo train --resume sw")
    point = calls[0]
    assert (point / "summary.json").is_file() and not (point / "README.md").exists()
    monkeypatch.setattr("zoo.training.loop.after_run", real)
    monkeypatch.setattr(sweep, "after_run", real)
    result = invoke("train", "--resume", "sw")
    assert result.exit_code == 0, result.output
    assert (point / "README.md").is_file()


def test_empty_validation_split_writes_standard_json(cwd: Path) -> None:
    recipe = tiny_recipe(epochs=1)
    recipe["data"]["synthetic"]["valid_size"] = 0
    path = write_recipe(cwd / "r.yaml", recipe)
    result = invoke("train", str(path), "--out", "run")
    assert result.exit_code == 0, result.output
    for line in (cwd / "run" / "metrics.jsonl").read_text().splitlines():
        assert _strict_json(line)["valid_acc"] is None
    summary = _strict_json((cwd / "run" / "summary.json").read_text())
    assert summary["best_valid_acc"] is None
    card = (cwd / "run" / "README.md").read_text()
    assert "-100.00" not in card and "nan %" not in card.lower() and "NaN" not in card


def test_edited_run_recipe_is_detected(finished: Path) -> None:
    path = finished / "recipe.yaml"
    path.write_text(path.read_text().replace("lr: 0.01", "lr: 0.5"))
    before = snapshot(finished)
    result = invoke("train", "--resume", "run", "--set", "epochs=3")
    assert_refused(result, "recipe.yaml", "edited")
    assert_unchanged(finished, before)


def test_resumed_recipe_is_recorded_honestly(finished: Path) -> None:
    result = invoke("train", "--resume", "run", "--set", "epochs=3")
    assert result.exit_code == 0, result.output
    assert "epochs: 3" in (finished / "recipe.yaml").read_text()
    assert "epochs: 3" in (finished / "README.md").read_text()
    again = invoke("train", "--resume", "run")  # no false alarm after an honest change
    assert again.exit_code == 0, again.output


def test_resume_of_a_run_killed_before_it_recorded_its_recipe_says_start_it(cwd: Path) -> None:
    # what SIGKILL between creating the directory and renaming recipe.yaml into it leaves
    (cwd / "run").mkdir()
    (cwd / "run" / ".recipe.yaml.x1y2z3.tmp").write_text("name: tiny\n")
    line = assert_refused(invoke("train", "--resume", "run"), "nothing was trained")
    assert "zoo train RECIPE --out run" in line and "--force" not in line
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    result = invoke("train", str(path), "--out", "run")  # as the line says: no --force needed
    assert result.exit_code == 0, result.output


def test_stop_of_a_run_without_out_names_its_directory(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.training import loop

    real = loop._choose_weights

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop during the test evaluation

    monkeypatch.setattr(loop, "_choose_weights", interrupted)
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=1))
    result = invoke("train", str(path))
    line = assert_refused(result, "training stopped by SIGTERM", "zoo train --resume runs/tiny/")
    assert result.exit_code == 143
    (run,) = (cwd / "runs" / "tiny").iterdir()
    assert f"zoo train --resume {run.relative_to(cwd)}`" in line
    monkeypatch.setattr(loop, "_choose_weights", real)
    assert invoke("train", "--resume", str(run)).exit_code == 0
    assert (run / "summary.json").is_file()


# -- a damaged history is restored from the checkpoint, an edited checkpoint refused -------


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "damage",
    [
        lambda rows: [],
        lambda rows: rows[1:],
        lambda rows: rows[::-1],
        lambda rows: [*rows, {**rows[0], "epoch": 7}],
        lambda rows: [{**rows[0], "valid_acc": 1.0}, rows[1]],
    ],
    ids=["emptied", "first-line-deleted", "out-of-order", "extra-epoch", "edited-value"],
)
def test_damaged_history_is_restored_from_the_checkpoint(
    finished: Path, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    original = _metrics(finished)
    text = "".join(json.dumps(row) + "\n" for row in damage(original))
    (finished / "metrics.jsonl").write_text(text)
    with caplog.at_level(logging.WARNING):
        result = invoke("train", "--resume", "run", "--set", "epochs=3")
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if "restored it from" in r.getMessage()]
    assert len(warnings) == 1 and "metrics.jsonl" in warnings[0], caplog.text
    rows = _metrics(finished)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[:2] == original
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["epochs_run"] == 3
    best = max(rows, key=lambda row: row["valid_acc"])  # the first best epoch
    assert summary["best_epoch"] == best["epoch"]


def test_emptied_history_of_a_finished_run_is_restored_without_training(
    finished: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = _metrics(finished)
    (finished / "metrics.jsonl").write_text("")
    with caplog.at_level(logging.WARNING):
        result = invoke("train", "--resume", "run")
    assert result.exit_code == 0, result.output
    assert "restored it from the metrics history the checkpoint carries" in caplog.text
    assert _metrics(finished) == original


def test_damaged_history_without_a_copy_in_the_checkpoint_is_refused(finished: Path) -> None:
    # a checkpoint written before checkpoints carried the metrics history
    path = finished / "checkpoints" / "last.json"
    record = json.loads(path.read_text())
    del record["state"]["history"]
    path.write_text(json.dumps(record))
    lines = (finished / "metrics.jsonl").read_text().splitlines(keepends=True)
    (finished / "metrics.jsonl").write_text(lines[1])
    result = invoke("train", "--resume", "run")
    assert_refused(result, "metrics.jsonl", "lacks epoch 1")
    assert (finished / "metrics.jsonl").read_text() == lines[1]


def test_intact_history_without_a_copy_in_the_checkpoint_still_resumes(finished: Path) -> None:
    path = finished / "checkpoints" / "last.json"
    record = json.loads(path.read_text())
    del record["state"]["history"]
    path.write_text(json.dumps(record))
    result = invoke("train", "--resume", "run", "--set", "epochs=3")
    assert result.exit_code == 0, result.output
    assert [row["epoch"] for row in _metrics(finished)] == [1, 2, 3]


@pytest.mark.parametrize("epoch", [1, 3])
def test_edited_checkpoint_epoch_is_refused(finished: Path, epoch: int) -> None:
    path = finished / "checkpoints" / "last.json"
    record = json.loads(path.read_text())
    record["epoch"] = epoch
    path.write_text(json.dumps(record))
    before = snapshot(finished)
    result = invoke("train", "--resume", "run", "--set", "epochs=3")
    assert_refused(result, "last.json", f"says epoch {epoch}", "epoch 2")
    after = snapshot(finished)  # epochs=3 rewrites recipe.yaml before the checkpoint is read
    assert {k: v for k, v in after.items() if k != "recipe.yaml"} == {
        k: v for k, v in before.items() if k != "recipe.yaml"
    }


def test_checkpoint_epoch_and_tensors_file_renamed_together_are_refused(finished: Path) -> None:
    directory = finished / "checkpoints"
    record = json.loads((directory / "last.json").read_text())
    (directory / "epoch-0002.safetensors").rename(directory / "epoch-0001.safetensors")
    record.update(epoch=1, tensors_file="epoch-0001.safetensors")
    (directory / "last.json").write_text(json.dumps(record))
    result = invoke("train", "--resume", "run")
    assert_refused(result, "last.json", "says epoch 1", "epoch 2")


def test_checkpoint_history_disagreeing_with_its_epoch_is_refused(finished: Path) -> None:
    path = finished / "checkpoints" / "last.json"
    record = json.loads(path.read_text())
    record["state"]["history"] = record["state"]["history"][:1]
    path.write_text(json.dumps(record))
    assert_refused(invoke("train", "--resume", "run"), "last.json", "history")


# -- a model that raises: one line naming it; the run directory left consistent -------------


def _failing_model(
    monkeypatch: pytest.MonkeyPatch, where: str = "forward", from_epoch: int = 1
) -> dict[str, int]:
    """Make the recipe's model raise ValueError('boom') in training from ``from_epoch`` on,
    in its forward pass or (``where="backward"``) its backward pass."""
    from zoo.training import loop

    real_model_for, real_train_epoch = loop.model_for, loop.train_epoch
    state = {"epoch": 0}

    def boom(*args: Any) -> None:
        raise ValueError("boom")

    def model_for(recipe: Any, data: Any) -> Any:
        model = real_model_for(recipe, data)
        forward = model.forward

        def failing(x: torch.Tensor) -> torch.Tensor:
            out = forward(x)
            if model.training and state["epoch"] >= from_epoch:
                if where == "forward":
                    boom()
                out.register_hook(boom)
            return out

        model.forward = failing
        return model

    def train_epoch(run: Any, epoch: int, progress: Any) -> Any:
        state["epoch"] = epoch
        return real_train_epoch(run, epoch, progress)

    monkeypatch.setattr(loop, "model_for", model_for)
    monkeypatch.setattr(loop, "train_epoch", train_epoch)
    return state


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_model_failing_before_the_first_checkpoint_leaves_nothing(
    cwd: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    with monkeypatch.context() as patch:
        _failing_model(patch, where)
        result = invoke("train", str(path), "--out", "run")
        line = assert_refused(
            result, "training mlp_relu failed", f"{where} pass", "ValueError: boom"
        )
    assert "nothing of the run is kept in run" in line
    assert result.exit_code == 1
    assert not (cwd / "run").exists()
    result = invoke("train", str(path), "--out", "run")  # the same command, as the line says
    assert result.exit_code == 0, result.output


def test_model_failure_with_debug_shows_the_cause(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.training.loop import ModelFailed

    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    _failing_model(monkeypatch)
    result = invoke("--debug", "train", str(path), "--out", "run")
    assert isinstance(result.exception, ModelFailed), result.output
    assert isinstance(result.exception.__cause__, ValueError)


def test_model_failing_in_a_directory_with_a_recipe_says_resume(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cwd / "run").mkdir()
    (cwd / "run" / "recipe.yaml").write_text("name: old\n")
    path = write_recipe(cwd / "r.yaml", tiny_recipe())
    with monkeypatch.context() as patch:
        _failing_model(patch)
        line = assert_refused(invoke("train", str(path), "--out", "run", "--force"), "ValueError")
    assert "`zoo train --resume run` starts run over from its recorded recipe" in line
    result = invoke("train", "--resume", "run")  # as the line says
    assert result.exit_code == 0, result.output
    assert (cwd / "run" / "summary.json").is_file()


def test_model_failing_after_a_checkpoint_keeps_it(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_recipe(cwd / "r.yaml", tiny_recipe(epochs=3))
    with monkeypatch.context() as patch:
        _failing_model(patch, from_epoch=2)
        line = assert_refused(invoke("train", str(path), "--out", "run"), "forward pass")
    assert "zoo train --resume run" in line
    assert [row["epoch"] for row in _metrics(cwd / "run")] == [1]
    result = invoke("train", "--resume", "run")
    assert result.exit_code == 0, result.output
    assert [row["epoch"] for row in _metrics(cwd / "run")] == [1, 2, 3]

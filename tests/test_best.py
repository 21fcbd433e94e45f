"""The best epoch (checkpoint.keep_best, checkpoint.monitor, test_weights) and early stopping
(zoo.training.best, zoo.training.checkpoint.save_best/load_best, through fit)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_train import assert_same_weights, metrics, tiny

from zoo.errors import RecipeError
from zoo.recipe import from_dict
from zoo.training.best import BestTracker
from zoo.training.checkpoint import load_best, load_checkpoint, save_best
from zoo.training.loop import RunOptions, TrainingInterrupted, fit


@pytest.fixture(autouse=True)
def _one_thread_no_card(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import zoo.training.loop

    monkeypatch.setattr(zoo.training.loop, "after_run", lambda run_dir, recipe: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def _wobbly(**changes: Any) -> dict[str, Any]:
    """tiny() with a learning rate high enough that validation goes up and down."""
    return tiny(**{"optim.lr": 0.12, "schedule.name": "none", "epochs": 5, **changes})


# -- the tracker, pure -----------------------------------------------------------------------


def test_tracker_follows_the_monitor_and_counts_patience() -> None:
    model = torch.nn.Linear(2, 2)
    loss = BestTracker(monitor="valid_loss", keep_weights=True, patience=2, min_delta=0.1)
    for epoch, value in enumerate([1.0, 0.95, float("nan"), 0.5, 0.45, 0.44], start=1):
        loss.update(epoch, {"valid_loss": value, "valid_acc": 0.0}, model)
        assert (loss.stop_reason() is not None) == (epoch == 3 or epoch == 6), epoch
    assert (loss.best_epoch, loss.best_value) == (6, 0.44)  # any improvement is the best
    assert loss.weights is not None and loss.weights["weight"].device.type == "cpu"
    acc = BestTracker(monitor="valid_acc")
    assert acc.update(1, {"valid_acc": 0.5}, model) and not acc.update(2, {"valid_acc": 0.5}, model)
    assert acc.weights is None and acc.stop_reason() is None  # no weights kept, no patience


def test_best_files_are_checked_and_an_interrupted_save_reads_as_missing(tmp_path: Path) -> None:
    weights = {"w": torch.arange(4.0)}
    save_best(tmp_path, weights, {"epoch": 3, "monitor": "valid_acc", "value": 0.5})
    torch.testing.assert_close(load_best(tmp_path, 3)["w"], weights["w"], rtol=0, atol=0)
    assert load_best(tmp_path, 4) is None  # best.json names another epoch
    assert load_best(tmp_path / "elsewhere", 3) is None  # none saved yet
    (tmp_path / "best.safetensors").write_bytes(b"new tensors whose record was not written")
    assert load_best(tmp_path, 3) is None


# -- through the trainer ---------------------------------------------------------------------


def test_keep_best_exports_and_tests_the_best_epoch(tmp_path: Path) -> None:
    recipe = _wobbly(checkpoint={"keep_best": True, "monitor": "valid_loss"})
    run = fit(from_dict(recipe), RunOptions(out_dir=tmp_path / "run", device="cpu"))
    rows, s = metrics(run), summary(run)
    losses = [r["valid_loss"] for r in rows]
    best = losses.index(min(losses)) + 1
    assert best < 5, "the recipe must not improve every epoch, or this tests nothing"
    assert (s["best_epoch"], s["monitor"], s["test_weights"]) == (best, "valid_loss", "best")
    assert s["best_value"] == min(losses) and s["stopped_early"] is False
    record = json.loads((run / "checkpoints" / "best.json").read_text())
    assert record["epoch"] == best
    best_weights = load_file(str(run / "checkpoints" / "best.safetensors"))
    exported = load_file(str(run / "model.safetensors"))
    last = load_checkpoint(run / "checkpoints")[0]["model"]
    for key, value in exported.items():
        assert torch.equal(value, best_weights[key]), key
    assert any(not torch.equal(exported[k], last[k]) for k in exported)  # not the last epoch
    final = fit(
        from_dict({**recipe, "test_weights": "final"}),
        RunOptions(out_dir=tmp_path / "final", device="cpu"),
    )
    assert summary(final)["test_weights"] == "final"
    for key, value in load_file(str(final / "model.safetensors")).items():
        assert torch.equal(value, last[key]), key


def test_default_test_weights_without_a_validation_split_are_final(tmp_path: Path) -> None:
    no_valid = tiny(**{"epochs": 1, "data.synthetic.valid_size": 0, "data.valid_size": 0})
    run = fit(from_dict(no_valid), RunOptions(out_dir=tmp_path / "run", device="cpu"))
    assert summary(run)["test_weights"] == "final"
    with pytest.raises(RecipeError, match="test_weights: best needs a validation split"):
        fit(from_dict({**no_valid, "test_weights": "best"}), RunOptions(out_dir=tmp_path / "b"))


def test_early_stopping_ends_the_run_and_says_why(tmp_path: Path) -> None:
    # min_delta 1.0 on accuracy: no epoch after the first can count as an improvement
    recipe = tiny(epochs=6, early_stopping={"patience": 2, "min_delta": 1.0})
    run = fit(from_dict(recipe), RunOptions(out_dir=tmp_path / "run", device="cpu"))
    s = summary(run)
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]
    assert s["stopped_early"] is True and s["epochs_run"] == 3
    assert "valid_acc did not improve by more than 1 for 2 epochs" in s["stop_reason"]


def _interrupt_after(epoch: int) -> Any:
    def progress(event: dict[str, Any]) -> None:
        if event["event"] == "epoch" and event["epoch"] == epoch:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("interrupt_at", [1, 2, 3])
def test_resume_with_keep_best_and_early_stopping_is_bit_identical(
    interrupt_at: int, tmp_path: Path
) -> None:
    recipe = from_dict(
        _wobbly(
            epochs=6,
            checkpoint={"keep_best": True, "monitor": "valid_loss"},
            early_stopping={"patience": 2, "min_delta": 0.0},
        )
    )
    whole = fit(recipe, RunOptions(out_dir=tmp_path / "whole", device="cpu"))
    part = tmp_path / "part"
    with pytest.raises(TrainingInterrupted):
        fit(recipe, RunOptions(out_dir=part, device="cpu", progress=_interrupt_after(interrupt_at)))
    fit(None, RunOptions(resume=part, device="cpu"))
    assert metrics(part) == metrics(whole)
    assert_same_weights(part, whole)
    keys = ("best_epoch", "best_value", "test_acc", "test_weights", "stopped_early", "epochs_run")
    assert {k: summary(part)[k] for k in keys} == {k: summary(whole)[k] for k in keys}

"""Run directories: where runs go, what --force clears, which recipe may resume a run."""

from __future__ import annotations

import errno
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from zoo.errors import RunError
from zoo.recipe import Recipe, from_dict
from zoo.runs.files import claim_run_dir, read_metrics, write_errors
from zoo.training.rundir import default_run_dir, resume_recipe


def recipe(**changes: Any) -> Recipe:
    return from_dict(
        {
            "name": "tiny",
            "model": {"name": "mlp_relu"},
            "data": {"dataset": "synthetic", "batch_size": 32},
            "optim": {"name": "adam", "lr": 0.01},
            "epochs": 3,
            **changes,
        }
    )


def test_default_run_dir_is_name_then_timestamp() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5)
    assert default_run_dir(recipe(), now) == Path("runs/tiny/20260102-030405")


def test_claim_refuses_a_used_directory_and_force_clears_only_run_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    claim_run_dir(run, force=False)  # created, parents too
    assert run.is_dir()
    (run / "notes.txt").write_text("mine")
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "checkpoints").mkdir()
    with pytest.raises(RunError, match=r"already exists.*--resume.*--force"):
        claim_run_dir(run, force=False)
    claim_run_dir(run, force=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="is not a directory"):
        claim_run_dir(tmp_path / "file", force=True)


def test_resume_accepts_more_epochs_and_refuses_other_changes(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"no recipe\.yaml"):
        resume_recipe(tmp_path, None)
    (tmp_path / "recipe.yaml").write_text(recipe().to_yaml())
    assert resume_recipe(tmp_path, None) == recipe()
    longer = recipe(epochs=5, device="cpu")
    assert resume_recipe(tmp_path, longer) is longer
    changed = recipe(optim={"name": "adam", "lr": 0.5}, data={"dataset": "synthetic"})
    with pytest.raises(RunError, match=r"data.batch_size: 32 -> 128; optim.lr: 0.01 -> 0.5"):
        resume_recipe(tmp_path, changed)


def test_read_metrics_refuses_a_torn_line_naming_it(tmp_path: Path) -> None:
    # metrics.jsonl is replaced atomically, so a torn line is damage: refuse, never drop it
    assert read_metrics(tmp_path, missing_ok=True) == []
    rows = [{"epoch": 1}, {"epoch": 2}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text)
    assert read_metrics(tmp_path) == rows
    (tmp_path / "metrics.jsonl").write_text(text + '{"epoch": 3, "tr')
    with pytest.raises(RunError, match=r"metrics\.jsonl line 3 is not valid JSON"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(text + '{"epoch": "3"}\n')
    with pytest.raises(RunError, match=r"line 3: epoch '3' is not an integer"):
        read_metrics(tmp_path)


def test_a_failed_write_says_what_was_kept(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    kept = pytest.raises(RunError, match=r"epoch 3 in .*; epoch 2 is the last complete.*--resume")
    with kept, write_errors(tmp_path, "the checkpoint of epoch 3", 2):
        raise full
    none = pytest.raises(RunError, match=r"No space left on device.*no epoch.*--force")
    with none, write_errors(tmp_path, "the checkpoint of epoch 1", 0):
        raise full

"""Sweeps on a cluster: shards run every point exactly once, `zoo sweep status` tells done,
running, failed and missing points apart, and `zoo report` reads a sweep assembled from
shards."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from zoo.cli import cli
from zoo.errors import RunError
from zoo.recipe import expand_sweep, from_dict
from zoo.training.checkpoint import CHECKPOINT_DIR, JSON_NAME
from zoo.training.launch import plan, run_recipe
from zoo.training.loop import RunOptions
from zoo.training.sweep import outside_points, sweep_status


@pytest.fixture(autouse=True)
def _one_thread_no_plots(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import zoo.training.loop

    monkeypatch.setattr(zoo.training.loop, "after_run", lambda run_dir, recipe: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sweep_recipe(values: list[Any], key: str = "seed", **changes: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "name": "tiny",
        "model": {"name": "mlp_relu", "args": {"hidden_sizes": [16]}},
        "data": {
            "dataset": "synthetic",
            "batch_size": 32,
            "synthetic": {
                "num_classes": 4,
                "in_chans": 1,
                "img_size": 8,
                "train_size": 64,
                "valid_size": 32,
                "test_size": 32,
            },
        },
        "optim": {"name": "sgd", "lr": 0.1},
        "epochs": 1,
        "device": "cpu",
        "sweep": {key: values},
        **changes,
    }
    return recipe


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shards_plan_every_point_exactly_once(tmp_path: Path, count: int) -> None:
    recipe = from_dict(sweep_recipe([1, 2, 3, 4, 5, 6, 7]))
    planned = [
        run["run_dir"]
        for i in range(count)
        for run in plan(recipe, tmp_path / "sweep", device="cpu", shard=(i, count))["runs"]
    ]
    expected = [str(tmp_path / "sweep" / p.name) for p in expand_sweep(recipe)]
    assert sorted(planned) == sorted(expected)  # each once: no point twice, none missing


def test_status_tells_done_running_failed_and_missing_apart(tmp_path: Path) -> None:
    # lr 1e30 diverges: that point fails; the sweep goes on
    recipe = from_dict(sweep_recipe([0.1, 1e30, 0.05, 0.01], key="optim.lr"))
    root = tmp_path / "sweep"
    run_recipe(recipe, RunOptions(out_dir=root, shard=(0, 2), device="cpu"))  # points 0 and 2
    run_recipe(
        recipe, RunOptions(out_dir=root, shard=(1, 2), device="cpu")
    )  # points 1 (fails) and 3
    names = [p.name for p in expand_sweep(recipe)]
    # point 3: checkpointed but no summary yet (being trained, or killed); point 2: never run
    running = root / names[3]
    (running / "summary.json").unlink()
    record = json.loads((running / CHECKPOINT_DIR / JSON_NAME).read_text())
    assert record["epoch"] == 1
    shutil.rmtree(root / names[2])

    rows = sweep_status(root, now=time.time() + 90)  # as seen a minute and a half later
    assert [r["status"] for r in rows] == ["done", "failed", "missing", "running"]
    assert (
        rows[0]["test_acc"]
        == json.loads((root / names[0] / "summary.json").read_text())["test_acc"]
    )
    assert "loss is" in rows[1]["error"]
    assert rows[3]["epoch"] == 1 and 90 <= rows[3]["updated_s_ago"] < 200

    result = CliRunner().invoke(cli, ["sweep", "status", str(root)])
    assert result.exit_code == 0, result.output
    assert "1 done, 1 running, 1 failed, 1 missing" in result.output
    line = next(line for line in result.output.splitlines() if names[3] in line)
    assert "running" in line and "1/1" in line and "ago" in line
    as_json = json.loads(CliRunner().invoke(cli, ["sweep", "status", "--json", str(root)]).output)
    assert as_json["counts"] == {"done": 1, "running": 1, "failed": 1, "missing": 1}
    assert [p["name"] for p in as_json["points"]] == names
    assert as_json["outside"] == []
    shutil.copytree(root / names[0], root / "optim.lr=0.5")  # a point of no grid of this recipe
    (root / ".cache").mkdir()  # hidden: not flagged
    assert outside_points(root) == ["optim.lr=0.5"]
    result = CliRunner().invoke(cli, ["sweep", "status", str(root)])
    assert result.output.splitlines()[-1] == (
        "not points of this sweep's recipe (no shard trains them): optim.lr=0.5"
    )
    assert [r["name"] for r in sweep_status(root)] == names  # the points are still the recipe's


def test_status_of_a_directory_that_is_not_a_sweep_says_so(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not a zoo sweep directory"):
        sweep_status(tmp_path)
    result = CliRunner().invoke(cli, ["sweep", "status", str(tmp_path)])
    assert result.exit_code != 0 and "not a zoo sweep directory" in result.output


def test_report_reads_a_sweep_assembled_from_shards(tmp_path: Path) -> None:
    from zoo.analysis.report import build_report

    recipe = from_dict(sweep_recipe([1, 2, 3]))
    root = tmp_path / "sweep"
    run_recipe(recipe, RunOptions(out_dir=root, shard=(1, 2), device="cpu"))
    run_recipe(recipe, RunOptions(out_dir=root, shard=(0, 2), device="cpu"))
    index = json.loads((root / "sweep.json").read_text())
    assert [p["status"] for p in index["points"]] == ["done"] * 3
    report = build_report([root], tmp_path / "report", bench=False)
    text = report.read_text()
    for point in expand_sweep(recipe):
        assert point.name in text
    assert "Best point" in text

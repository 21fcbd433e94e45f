"""``zoo eval`` (zoo/analysis/evaluate.py): trained weights scored on a dataset split, with the
trainer's own numbers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from hostile_helpers import image_folder_recipe

from zoo.analysis.evaluate import EvalOptions, evaluate_source
from zoo.cli import cli
from zoo.errors import DataError, WeightsError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_recipe(**data: Any) -> dict[str, Any]:
    """6 classes of 8x8 grey images, trained to a top-1 well below 1 in about a second."""
    return {
        "name": "tiny_eval",
        "model": {"name": "mlp_relu", "args": {"hidden_sizes": [16]}},
        "data": {
            "dataset": "synthetic",
            "batch_size": 32,
            "eval_batch_size": 24,  # not a divisor of 100: the last batch is partial
            "synthetic": {
                "num_classes": 6,
                "in_chans": 1,
                "img_size": 8,
                "train_size": 96,
                "valid_size": 60,
                "test_size": 100,
                "seed": 5,
            },
            **data,
        },
        "optim": {"name": "adam", "lr": 0.01},
        "epochs": 2,
        "seed": 1,
    }


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Training and scoring on one thread, as in tests/test_train.py: fast on a busy 2-core
    machine, and the same reduction order in the trainer and in zoo eval."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(out: Path, recipe: dict[str, Any]) -> Path:
    import zoo.training.loop
    from zoo.recipe import from_dict
    from zoo.training.loop import RunOptions, fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:  # no card, curves or tag: not under test here
        mp.setattr(zoo.training.loop, "after_run", lambda run_dir, recipe: None)
        try:
            return fit(from_dict(recipe), RunOptions(out_dir=out, device="cpu"))
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("eval") / "run", tiny_recipe())


def summary_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, ["eval", *args, "--device", "cpu"])


# -- the numbers ---------------------------------------------------------------------------


def test_eval_of_a_run_reproduces_the_trainers_test_evaluation(run: Path) -> None:
    summary = summary_of(run)
    result = evaluate_source(str(run), EvalOptions(device="cpu"))
    assert 0.3 < result.top1 < 0.95  # a test that a constant model could not pass
    assert result.top1 == summary["test_acc"]  # same process, same batches: exactly
    assert result.loss == pytest.approx(summary["test_loss"], abs=1e-6)
    assert (result.dataset, result.split, result.n, result.batch_size) == (
        "synthetic",
        "test",
        100,
        24,
    )
    assert result.top1 <= result.top5 <= 1 and result.scores.topk == 5
    per_class = result.per_class()
    assert [row["label"] for row in per_class] == [f"class_{i}" for i in range(6)]
    assert sum(row["n"] for row in per_class) == 100
    weighted = sum(row["n"] * row["accuracy"] for row in per_class) / 100
    assert weighted == pytest.approx(result.top1)
    assert 0 < result.ece < 1 and not result.notes


def test_valid_split_is_the_trainers_seeded_split(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = summary_of(run)
    tested = summary["best_epoch"] if summary.get("test_weights") == "best" else rows[-1]["epoch"]
    (epoch,) = [row for row in rows if row["epoch"] == tested]  # the exported weights' epoch
    result = evaluate_source(str(run), EvalOptions(split="valid", device="cpu"))
    assert result.n == 60
    assert result.top1 == epoch["valid_acc"]
    assert result.loss == pytest.approx(epoch["valid_loss"], abs=1e-6)
    train_split = evaluate_source(str(run), EvalOptions(split="train", device="cpu"))
    assert train_split.n == 96


def test_cli_json_and_table(run: Path) -> None:
    summary = summary_of(run)
    done = invoke(str(run), "--format", "json")
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["top1"] == summary["test_acc"] and data["n"] == 100
    assert {"top5", "loss", "ece", "per_class", "confusion", "calibration"} <= data.keys()
    assert data["per_class"][2]["label"] == "class_2" and len(data["calibration"]) == 15
    table = invoke(str(run))
    assert table.exit_code == 0, table.output
    assert f"top1   {summary['test_acc']:.4f}" in table.stdout and "class_5" in table.stdout


def test_out_writes_metrics_confusion_matrix_and_reliability_diagram(
    run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = invoke(str(run), "--out", str(out), "--format", "json", "--batch-size", "7")
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["top1"] == summary_of(run)["test_acc"]  # the batch size changes only speed
    names = ["confusion_matrix.png", "metrics.json", "reliability.png"]
    assert sorted(p.name for p in out.iterdir()) == names  # and no temp files
    assert json.loads((out / "metrics.json").read_text()) == data
    for name in ("confusion_matrix.png", "reliability.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert str(out / "metrics.json") in done.stderr


def test_out_with_other_files_is_refused_before_scoring_unless_forced(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    first = invoke(str(run), "--out", str(out))
    assert first.exit_code == 0, first.output
    again = invoke(str(run), "--out", str(out))  # only its own files there: rewritten
    assert again.exit_code == 0, again.output
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from zoo.analysis import evaluate

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("scored before the --out check")

    monkeypatch.setattr(evaluate, "evaluate_source", never)
    refused = invoke(str(run), "--out", str(out))
    assert refused.exit_code != 0
    assert "already holds other files (notes.txt)" in refused.output and "--force" in refused.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    forced = invoke(str(run), "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.json").is_file()


def test_a_tag_is_evaluated_like_its_run(run: Path) -> None:
    from zoo.weights import store

    store.publish(run, None, "evaltest")
    result = evaluate_source("mlp_relu.evaltest", EvalOptions(device="cpu"))
    assert (result.dataset, result.n, result.top1) == (
        "synthetic",
        100,
        summary_of(run)["test_acc"],
    )


def test_a_hub_repo_is_evaluated_like_its_run(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hub_server import FakeHub
    from publish_helpers import TOKEN, point_client_at

    from zoo.weights import hub

    fake = FakeHub(token=TOKEN).start(lifetime=120)
    try:
        point_client_at(monkeypatch, fake.url, tmp_path / "hf")
        hub.push(run, "me/tiny-eval")
        result = evaluate_source("hf-hub:me/tiny-eval", EvalOptions(device="cpu"))
    finally:
        fake.stop()
    assert (result.dataset, result.n) == ("synthetic", 100)
    assert result.top1 == summary_of(run)["test_acc"]  # recipe.yaml came along: same split


def test_an_image_folder_run_is_evaluated_on_its_folder(tmp_path: Path) -> None:
    recipe = image_folder_recipe(tmp_path / "images", ("cat", "dog"))
    run_dir = train(tmp_path / "run", recipe)
    result = evaluate_source(str(run_dir), EvalOptions(device="cpu"))
    assert (result.dataset, result.n, result.label_names) == ("imagefolder", 8, ("cat", "dog"))
    assert result.top1 == summary_of(run_dir)["test_acc"]
    assert evaluate_source(str(run_dir), EvalOptions(device="cpu", split="valid")).n == 4


# -- bad input -----------------------------------------------------------------------------


def test_unknown_dataset_is_one_line_listing_the_valid_ones(run: Path) -> None:
    done = invoke(str(run), "--dataset", "cifar100")
    assert done.exit_code != 0
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: unknown dataset 'cifar100'")
    assert "cifar10, fashion_mnist, synthetic" in line


def test_a_dataset_of_another_shape_is_refused_before_loading(run: Path) -> None:
    with pytest.raises(DataError, match=r"takes 1x8x8 images but cifar10 has 3x32x32"):
        evaluate_source(str(run), EvalOptions(dataset="cifar10", root="/nonexistent"))


@pytest.mark.parametrize("size", ["0", "-3"])
def test_batch_size_below_one_is_refused(run: Path, size: str) -> None:
    done = invoke(str(run), "--batch-size", size)
    assert done.exit_code != 0
    assert done.stderr.strip() == f"error: --batch-size {size}: give from 1 to 65536"


def test_an_empty_split_is_refused(run: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(run, tmp_path / "copy")
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    recipe["data"]["valid_size"] = 0
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    done = invoke(str(copy), "--split", "valid")
    assert done.exit_code != 0
    assert "the valid split of synthetic has 0 images" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_export_without_mean_and_std_falls_back_and_says_so_once(
    run: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(run, tmp_path / "old")
    config = json.loads((copy / "config.json").read_text())
    del config["mean"], config["std"]
    (copy / "config.json").write_text(json.dumps(config))
    done = invoke(str(copy), "--format", "json")
    assert done.exit_code == 0, done.output
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "training-split statistics" in notes[0]
    data = json.loads(done.stdout)
    # the trainer normalised with the same training-split statistics it wrote to config.json
    assert data["mean"] == pytest.approx(config_mean(run)) and data["n"] == 100


def config_mean(run_dir: Path) -> list[float]:
    return list(json.loads((run_dir / "config.json").read_text())["mean"])


def test_weights_that_do_not_say_their_dataset_need_dataset(run: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run / name, bare / name)
    done = invoke(str(bare))
    assert done.exit_code != 0
    assert done.stderr.strip() == (
        f"error: {bare} does not say which dataset it was trained on; pass --dataset, one of "
        "cifar10, fashion_mnist, synthetic, imagefolder"
    )
    done = invoke(str(bare), "--dataset", "synthetic")  # without a recipe: its defaults
    assert done.exit_code != 0
    assert "takes 1x8x8 images but synthetic has 3x32x32" in done.stderr


def test_a_source_without_weights_is_refused() -> None:
    with pytest.raises(WeightsError, match="mlp_relu has no trained weights"):
        evaluate_source("mlp_relu", EvalOptions(device="cpu"))
    with pytest.raises(WeightsError, match="not a run or export directory"):
        evaluate_source("no/such/run", EvalOptions(device="cpu"))


# -- real data -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_fashion_mnist_run_is_reproduced_with_its_class_names(tmp_path: Path) -> None:
    recipe = {
        "name": "fmnist_eval",
        "model": {"name": "mlp_relu", "args": {"hidden_sizes": [64]}},
        "data": {
            "dataset": "fashion_mnist",
            "batch_size": 128,
            "train_subset": 2000,
            "test_subset": 1000,
        },
        "optim": {"name": "adam", "lr": 1e-3},
        "epochs": 1,
    }
    run_dir = train(tmp_path / "run", recipe)
    summary = summary_of(run_dir)
    result = evaluate_source(str(run_dir), EvalOptions(device="cpu"))
    assert result.n == 1000 and result.top1 == summary["test_acc"] > 0.6
    assert result.loss == pytest.approx(summary["test_loss"], abs=1e-6)
    assert result.per_class()[9]["label"] == "Ankle boot"

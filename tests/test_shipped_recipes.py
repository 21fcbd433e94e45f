"""Every recipe in recipes/ validates and trains end to end on real Fashion-MNIST.

The seed's recipes target CIFAR-10, which cannot be fetched offline; they move to the
Fashion-MNIST files Debian installs with ``--set``, a batch limit and small evaluation
splits, as README.md shows, so each finishes in seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo.cli import cli
from zoo.data.datasets import default_root

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml") if not p.stem.startswith("_"))
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
# 28x28 images: Mixer patches must divide 28 (7 and 14 stand in for 8 and 16 of 32x32)
PATCHES = {
    "mixer_patch": ["--set", "sweep={model.args.patch_size: [4, 7]}"],
    "mixer_regularised": ["--set", "schedule.warmup_epochs=0"],  # 5 warm-up epochs of 300
}
# The fine-tuning template names weights and images the user has; here it starts from scratch
# on a built-in dataset (tests/test_finetune.py trains it from a real run on real PNGs).
TEMPLATES = {"finetune_imagefolder": ["--set", "model.pretrained=null", "--set", "data.root=null"]}
QUICK = [
    "--set", "data.dataset=fashion_mnist", "--set", "epochs=1", "--set", "data.valid_size=256",
    "--set", "data.test_subset=256", "--set", "data.batch_size=32", "--limit-train-batches", "2",
    "--device", "cpu",
]  # fmt: skip


def test_every_shipped_recipe_is_tested() -> None:
    assert {"quickstart", "mlp_activations", "resnet18_lr", "mixer_patch"} <= set(SHIPPED)
    assert {"resnet18_best", "mixer_best"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_dry_run(name: str, tmp_path: Path) -> None:
    args = ["train", str(ROOT / "recipes" / f"{name}.yaml"), "--dry-run", "--out", str(tmp_path)]
    result = CliRunner().invoke(
        cli, [*args, "--set", "data.dataset=synthetic", *TEMPLATES.get(name, [])]
    )
    assert result.exit_code == 0, result.output
    assert "dry run: nothing was trained" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(
    not FASHION.is_file() and not (default_root() / "FashionMNIST").exists(),
    reason="Fashion-MNIST not installed (make data)",
)
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_trains_on_fashion_mnist(name: str, tmp_path: Path) -> None:
    out = tmp_path / name
    args = ["train", str(ROOT / "recipes" / f"{name}.yaml"), "--out", str(out), *QUICK]
    result = CliRunner().invoke(cli, [*args, *PATCHES.get(name, []), *TEMPLATES.get(name, [])])
    assert result.exit_code == 0, result.output
    summaries = (
        [out / "summary.json"]
        if (out / "summary.json").is_file()
        else [out / p["run_dir"] / "summary.json" for p in _points(out)]
    )
    assert summaries
    for path in summaries:
        summary = json.loads(path.read_text(encoding="utf-8"))
        assert 0.0 <= summary["test_acc"] <= 1.0
        assert (path.parent / "model.safetensors").is_file()


def _points(sweep_dir: Path) -> list[dict[str, str]]:
    index = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
    assert all(p["status"] == "done" for p in index["points"]), index
    return list(index["points"])

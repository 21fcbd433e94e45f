"""zoo.weights.files: model files, strict loading and the publishable export of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from publish_helpers import TINY, make_run, sample_input
from safetensors import safe_open

import zoo
from zoo.cli import cli
from zoo.errors import RunError, WeightsError
from zoo.weights.files import export_run, load_model_dir, read_config


def test_export_holds_the_publishable_files(tmp_path: Path):
    run, net = make_run(tmp_path / "run")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.json").write_text("{}")
    (run / "curves.png").write_bytes(b"\x89PNG fake")
    out = export_run(run, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "curves.png", "metrics.jsonl", "model.safetensors",
        "recipe.yaml", "summary.json",
    ]  # fmt: skip
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == "mlp_relu" and meta["recipe_hash"] == "0123456789abcdef"
    assert meta["zoo_version"] == zoo.__version__
    config = read_config(out)
    assert config["architecture"] == "mlp_relu" and config["num_classes"] == 3
    assert config["input_size"] == [1, 4, 4] and config["mean"] == [0.5]
    assert config["distribution"] == "zoo-classifiers"
    assert config["model_args"]["hidden_sizes"] == [8]
    assert "![Loss and accuracy per epoch](curves.png)" in (out / "README.md").read_text()
    x = sample_input()
    assert torch.equal(zoo.create(str(out)).eval()(x), net(x))
    assert torch.equal(zoo.create(str(run)).eval()(x), net(x))


def test_export_defaults_to_run_export_and_refuses_to_overwrite(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    assert export_run(run) == run / "export"
    with pytest.raises(RunError, match=r"export already exists; pass --force"):
        export_run(run)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.25}\n')
    export_run(run, force=True)
    assert (run / "export" / "metrics.jsonl").read_text() == '{"epoch": 1, "train_loss": 0.25}\n'
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_force_never_replaces_a_directory_that_is_not_an_export(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(RunError, match="it is not a zoo export"):
        export_run(run, precious, force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_failed_export_writes_nothing(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(WeightsError, match="corrupted or truncated"):
        export_run(run, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_export_of_an_unfinished_run(tmp_path: Path):
    (tmp_path / "run").mkdir()
    with pytest.raises(WeightsError, match=r"config.json is missing; is .* a zoo run or export"):
        export_run(tmp_path / "run")
    with pytest.raises(RunError, match="does not exist"):
        export_run(tmp_path / "nope")


def test_cli_export(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path / "e")
    again = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / "e")])
    assert again.exit_code == 2 and "already exists" in again.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "header"])
def test_corrupted_weights_are_a_weights_error(tmp_path: Path, damage: str):
    run, _ = make_run(tmp_path / "run")
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {"truncated": data[: len(data) - 7], "garbage": b"\xff" * 200, "empty": b"",
         "header": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + data[24:]}[damage]
    )  # fmt: skip
    with pytest.raises(WeightsError, match="is corrupted or truncated"):
        load_model_dir(run)


def test_weights_that_do_not_fit_list_keys_and_shapes(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    other, _ = make_run(tmp_path / "other", args={**TINY, "hidden_sizes": [8, 4]})
    (run / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(WeightsError) as info:
        load_model_dir(run)
    message = str(info.value)
    assert "unexpected: features.3.bias; features.3.weight" in message
    assert "head.weight: weights (3, 4) vs model (3, 8)" in message


def test_num_classes_that_disagree_with_the_weights(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    model = zoo.create(str(run), num_classes=10)  # fine-tuning: a fresh head for 10 classes
    assert model.zoo_cfg["pretrained"]["reinitialised"] == ["head.bias", "head.weight"]
    config = json.loads((run / "config.json").read_text())
    config["model_args"]["num_classes"] = 7  # a config that lies about the weights
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"head.weight: weights \(3, 8\) vs model \(7, 8\)"):
        zoo.create(str(run))


@pytest.mark.parametrize(
    ("architecture", "match"),
    [
        ("fancynet", r"needs architecture 'fancynet'.*pip install zoo-fancynet"),
        ("hf-hub:evil/model", "is not a model name"),
        ("../../etc", "is not a model name"),
        ("a/b/c", "is not a model name"),
        ("mlp_relu.some_tag", r"needs architecture 'mlp_relu.some_tag'"),
    ],
)
def test_config_architecture_must_be_an_installed_model(tmp_path: Path, architecture, match):
    run, _ = make_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config.update(architecture=architecture, distribution="zoo-fancynet")
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=match):
        zoo.create(str(run))


@pytest.mark.parametrize(
    ("text", "match"),
    [("{", "is not valid JSON"), ("[]", "must hold a JSON object"), ("{}", "lacks architecture")],
)
def test_bad_config_json(tmp_path: Path, text: str, match: str):
    run, _ = make_run(tmp_path / "run")
    (run / "config.json").write_text(text)
    with pytest.raises(WeightsError, match=match):
        read_config(run)


@pytest.mark.slow  # imports timm and builds a timm model (seconds)
def test_timm_config_follows_timms_hub_format(tmp_path: Path):
    pytest.importorskip("zoo_timm", reason="the zoo-timm plugin is not installed")
    timm = pytest.importorskip("timm")
    args = {"num_classes": 3, "in_chans": 1, "img_size": 16}
    run, net = make_run(tmp_path / "run", "timm/test_resnet", args)
    config = read_config(run)
    assert config["architecture"] == "test_resnet"
    assert config["zoo_architecture"] == "timm/test_resnet"
    assert config["pretrained_cfg"]["input_size"] == [1, 16, 16]
    assert config["pretrained_cfg"]["num_classes"] == 3
    assert "img_size" not in config["model_args"]  # ResNet's constructor takes none
    x = sample_input(args=args)
    via_timm = timm.create_model(f"local-dir:{run}", pretrained=True).eval()
    assert torch.equal(via_timm(x), net(x))
    assert torch.equal(zoo.create(str(run)).eval()(x), net(x))

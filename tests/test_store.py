"""zoo.weights.store: tagged weights in the local store (``model.tag``), timm style."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from publish_helpers import TINY, make_run, sample_input

import zoo
from zoo.cli import cli
from zoo.errors import HubError, WeightsError
from zoo.weights import store


def test_publish_then_create_by_tag(tmp_path: Path, _zoo_home: Path):
    run, net = make_run(tmp_path / "run")
    result = CliRunner().invoke(cli, ["publish", str(run), "--tag", "t"])
    assert result.exit_code == 0, result.output
    stored = _zoo_home / "weights" / "mlp_relu" / "t"
    assert (stored / "model.safetensors").is_file() and (stored / "README.md").is_file()
    x = sample_input()
    assert torch.equal(zoo.create("mlp_relu.t", pretrained=True).eval()(x), net(x))
    assert torch.equal(zoo.create("mlp_relu.t").eval()(x), net(x))
    assert torch.equal(zoo.create("mlp_relu", pretrained=True).eval()(x), net(x))  # only tag
    assert zoo.list_models("mlp_*", pretrained=True) == ["mlp_relu.t"]
    listed = CliRunner().invoke(cli, ["models", "--pretrained"])
    assert listed.exit_code == 0 and listed.stdout.split()[0] == "mlp_relu.t"


def test_default_tag_and_several_tags(tmp_path: Path):
    first, _ = make_run(tmp_path / "a", seed=1)
    second, net = make_run(tmp_path / "b", seed=2)
    store.publish(first, None, "v1")
    store.publish(second, "mlp_relu", "v2")
    with pytest.raises(
        WeightsError, match=r"has 2 weight tags \(v1, v2\).*zoo.create\('mlp_relu.v1'\)"
    ):
        zoo.create("mlp_relu", pretrained=True)
    store.publish(second, None, "default")
    x = sample_input()
    assert torch.equal(zoo.create("mlp_relu", pretrained=True).eval()(x), net(x))


def test_unknown_tag_suggests_close_ones(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    store.publish(run, None, "cifar10_best")
    with pytest.raises(
        WeightsError, match=r"no weights tagged 'cifar10_bst'.*Did you mean: cifar10_best"
    ):
        store.resolve_tag("mlp_relu", "cifar10_bst")


def test_existing_tag_is_refused_unless_forced(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    store.publish(run, None, "t")
    with pytest.raises(WeightsError, match=r"mlp_relu.t is already published .* --force"):
        store.publish(run, None, "t")
    store.publish(run, None, "t", force=True)
    assert store.tags_for("mlp_relu") == ["t"]


@pytest.mark.parametrize(
    "tag", ["../escape", "a/b", "a.b", "", ".hidden", "x" * 65, "a b", "..", "a\\b"]
)
def test_tags_that_would_become_unsafe_paths_are_refused(tmp_path: Path, tag: str, _zoo_home: Path):
    run, _ = make_run(tmp_path / "run")
    with pytest.raises(WeightsError, match="invalid weight tag"):
        store.publish(run, None, tag)
    with pytest.raises(WeightsError, match="invalid weight tag"):
        store.resolve_tag("mlp_relu", tag)
    assert not (_zoo_home / "weights").exists()


def test_publish_checks_the_model_name(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    with pytest.raises(WeightsError, match=r"holds weights for 'mlp_relu', not 'mlp_tanh'"):
        store.publish(run, "mlp_tanh", "t")
    with pytest.raises(WeightsError, match="cannot be stored"):
        store.publish(None, "../../x", "t", source="hf-hub:me/x")


def test_tag_pointer_to_the_hub(tmp_path: Path, _zoo_home: Path):
    pointer = store.publish(None, "mlp_relu", "hub", source="hf-hub:me/tiny@abc123")
    assert json.loads(pointer.read_text()) == {"source": "hf-hub:me/tiny@abc123"}
    assert store.tags_for("mlp_relu") == ["hub"]
    with pytest.raises(HubError, match="invalid Hub repo id"):
        store.publish(None, "mlp_relu", "bad", source="hf-hub:../x")
    pointer.write_text('{"source": "/etc"}')
    with pytest.raises(WeightsError, match=r"must hold \{\"source\": \"hf-hub:ORG/NAME@REV\"\}"):
        zoo.create("mlp_relu.hub")


def test_tagged_weights_for_the_wrong_architecture(tmp_path: Path, _zoo_home: Path):
    run, _ = make_run(tmp_path / "run")
    stored = store.publish(run, None, "t")
    target = _zoo_home / "weights" / "mlp_tanh" / "t"
    target.parent.mkdir(parents=True)
    stored.rename(target)  # a store edited by hand
    with pytest.raises(WeightsError, match=r"holds weights for 'mlp_relu', not 'mlp_tanh'"):
        zoo.create("mlp_tanh.t", **{k: v for k, v in TINY.items() if k != "num_classes"})


def test_models_pretrained_shows_where_each_tag_points(tmp_path: Path, _zoo_home: Path):
    run, _ = make_run(tmp_path / "run")
    store.publish(run, None, "local")
    store.publish(None, "mlp_relu", "hub", source="hf-hub:me/tiny@abc123")
    (_zoo_home / "weights" / "mlp_tanh").mkdir(parents=True)
    (_zoo_home / "weights" / "mlp_tanh" / "broken.json").write_text("{")
    listed = CliRunner().invoke(cli, ["models", "--pretrained", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row["source"] for row in json.loads(listed.stdout)}
    assert rows["mlp_relu.local"] == str(_zoo_home / "weights" / "mlp_relu" / "local")
    assert rows["mlp_relu.hub"] == "hf-hub:me/tiny@abc123"
    assert rows["mlp_tanh.broken"].startswith("(unusable: weights pointer")  # listed, not fatal
    table = CliRunner().invoke(cli, ["models", "--pretrained"]).stdout
    assert "mlp_relu.hub" in table and "-> hf-hub:me/tiny@abc123" in table

"""zoo.runs.card: the model card a run, an export and a Hub repo carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from publish_helpers import make_run

import zoo
from zoo.errors import RunError
from zoo.runs.card import MARKER, card_text, render_card, write_card


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_front_matter_follows_the_hub_metadata_format(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    meta = _front_matter(render_card(run))
    assert meta["library_name"] == "zoo"
    assert {"zoo", "image-classification", "mlp_relu"} <= set(meta["tags"])
    assert meta["datasets"] == ["fashion_mnist"]
    assert meta["metrics"] == ["accuracy", "loss"]
    result = meta["model-index"][0]["results"][0]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"type": "fashion_mnist", "name": "Fashion-MNIST", "split": "test"}
    assert {"type": "accuracy", "value": 0.625, "name": "Test accuracy"} in result["metrics"]


def test_card_body_has_results_curves_recipe_and_usage(tmp_path: Path):
    run, _ = make_run(tmp_path / "run", epochs=3)
    text = render_card(run, repo_id="me/tiny")
    assert MARKER in text
    assert "| test accuracy | 62.50 % |" in text
    assert "| 3 | 0.3333 | 50.00 % | 0.3667 | 70.00 % | 0.001 | 0.5 |" in text
    assert "```yaml\nname: tiny\n" in text
    assert 'zoo.create("hf-hub:me/tiny")' in text
    assert 'snapshot_download("me/tiny")' in text and "load_file(" in text
    assert "curves.png" not in text
    (run / "curves.png").write_bytes(b"\x89PNG")
    assert "![Loss and accuracy per epoch](curves.png)" in render_card(run)


def test_card_without_a_repo_uses_the_recipe_publish_target_or_a_placeholder(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    assert 'zoo.create("hf-hub:ORG/NAME")' in render_card(run)
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "publish:\n  hub: team/tiny-mlp\n")
    assert 'zoo.create("hf-hub:team/tiny-mlp")' in render_card(run)


def test_card_of_synthetic_data_names_no_hub_dataset(tmp_path: Path):
    run, _ = make_run(tmp_path / "run", dataset="synthetic")
    meta = _front_matter(render_card(run))
    assert "datasets" not in meta
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "synthetic"


def test_write_card_is_deterministic_and_atomic(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    path = write_card(run)
    assert path == run / "README.md"
    first = path.read_text()
    write_card(run)
    assert path.read_text() == first  # an unchanged run re-pushes without a new commit
    out = write_card(run, tmp_path / "elsewhere", repo_id="me/x")
    assert out == tmp_path / "elsewhere" / "README.md"
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_hand_written_card_is_kept(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    write_card(run)
    assert "hf-hub:me/x" in card_text(run, repo_id="me/x")  # zoo's own card is re-rendered
    (run / "README.md").write_text("# My model\n\nWritten by hand.\n")
    assert card_text(run, repo_id="me/x") == "# My model\n\nWritten by hand.\n"


def test_card_of_a_bare_model_directory(tmp_path: Path):
    run, _ = make_run(tmp_path / "run")
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json"):
        (run / name).unlink()
    text = render_card(run)
    assert _front_matter(text)["library_name"] == "zoo"
    assert "## Usage" in text and "## Results" not in text


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("metrics.jsonl", '{"epoch": 1}\n{broken\n', r"metrics.jsonl line 2 is not valid JSON"),
        ("summary.json", "[1, 2]", "must hold a JSON object"),
        ("recipe.yaml", "a: [unclosed", "malformed YAML"),
    ],
)
def test_damaged_run_files_are_a_run_error(tmp_path: Path, name: str, content: str, match: str):
    run, _ = make_run(tmp_path / "run")
    (run / name).write_text(content)
    with pytest.raises(RunError, match=match):
        write_card(run)
    assert not (run / "README.md").exists()


def test_overridden_pins_are_shown_where_the_architecture_is_named(tmp_path: Path):
    # config.json says mlp_tanh, model_args say relu: the card must not call it a tanh MLP
    args = {"num_classes": 3, "in_chans": 1, "img_size": 8, "hidden_sizes": [4]}
    run, _ = make_run(tmp_path / "run", "mlp_tanh", {**args, "activation": "relu"})
    config = json.loads((run / "config.json").read_text())
    assert config["architecture"] == "mlp_tanh" and config["model_args"]["activation"] == "relu"
    assert config["overrides"] == {"activation": {"pinned": "tanh", "used": "relu"}}
    text = render_card(run)
    shown = "`mlp_tanh` with `activation=relu` in place of the `tanh` it pins"
    assert f"{shown} trained with zoo" in text and f"rebuilds {shown}" in text
    assert zoo.create(str(run)).zoo_cfg["args"]["activation"] == "relu"  # loads as it was built
    plain, _ = make_run(tmp_path / "plain", "mlp_tanh", args)
    assert "overrides" not in json.loads((plain / "config.json").read_text())
    assert "in place of" not in render_card(plain)


def test_config_json_without_overrides_still_loads(tmp_path: Path):
    # runs exported before overrides were recorded: loading rebuilds from model_args as ever
    args = {"num_classes": 3, "in_chans": 1, "img_size": 8, "hidden_sizes": [4]}
    run, net = make_run(tmp_path / "run", "mlp_tanh", {**args, "activation": "relu"})
    config = json.loads((run / "config.json").read_text())
    del config["overrides"]
    (run / "config.json").write_text(json.dumps(config))
    loaded = zoo.create(str(run))
    assert loaded.zoo_cfg["overrides"]["activation"]["used"] == "relu"
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)

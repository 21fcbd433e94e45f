"""Fine-tuning: pretrained weights into a model of another class or channel count
(zoo.weights.adapt via zoo.create), freezing and head learning rates (zoo.training.loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import zoo
from zoo.errors import RecipeError, WeightsError
from zoo.weights import adapt, files

# Small versions of the three built-in families; in_chans 3, 10 classes.
FAMILIES: dict[str, dict[str, Any]] = {
    "resnet18": {"img_size": 8, "widths": [4, 8, 8, 8]},
    "mlpmixer_p4": {"img_size": 8, "embed_dim": 16, "num_blocks": 1},
    "mlp_relu": {"img_size": 4, "hidden_sizes": [8, 4]},
}
FIRST = {
    "resnet18": "conv1.weight",
    "mlpmixer_p4": "stem.proj.weight",
    "mlp_relu": "features.1.weight",
}
HEAD = {"resnet18": "fc", "mlpmixer_p4": "head", "mlp_relu": "head"}


def _pretrained(tmp_path: Path, name: str, in_chans: int = 3, num_classes: int = 10) -> Path:
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=num_classes, in_chans=in_chans, **FAMILIES[name])
    size = FAMILIES[name]["img_size"]
    out = tmp_path / f"{name}-{in_chans}-{num_classes}"
    mean, std = [0.1, 0.2, 0.3][:in_chans], [0.5, 0.6, 0.7][:in_chans]
    files.save_model_files(model, out, input_size=[in_chans, size, size], mean=mean, std=std)
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_another_class_count_reinitialises_only_the_head(tmp_path: Path, name: str):
    source = _pretrained(tmp_path, name)
    weights = files.load_state_dict(source / files.WEIGHTS_NAME)
    model = zoo.create(str(source), num_classes=5)
    head = HEAD[name]
    assert model.get_classifier().out_features == 5
    report = model.zoo_cfg["pretrained"]
    assert report["reinitialised"] == [f"{head}.bias", f"{head}.weight"]
    assert report["adapted"] == []
    assert report["loaded"] == len(weights) - 2
    for key, value in model.state_dict().items():
        if not key.startswith(head + "."):
            torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
    assert model.zoo_cfg["args"]["num_classes"] == 5  # exports record the new head


@pytest.mark.parametrize("name", list(FAMILIES))
def test_grey_input_sums_the_colour_channels_of_the_first_layer(tmp_path: Path, name: str):
    source = _pretrained(tmp_path, name, in_chans=3)
    colour = zoo.create(str(source))
    grey = zoo.create(str(source), in_chans=1)
    assert grey.zoo_cfg["pretrained"]["adapted"] == [FIRST[name]]
    assert grey.zoo_cfg["pretrained"]["mean"] == [pytest.approx(0.2)]  # averaged for 1 channel
    # A grey image fed to the grey model = the same image in all three colour channels.
    size = FAMILIES[name]["img_size"]
    x = torch.rand(2, 1, size, size)
    colour.eval(), grey.eval()
    with torch.no_grad():
        torch.testing.assert_close(grey(x), colour(x.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_more_channels_repeat_and_scale_the_first_layer(tmp_path: Path, name: str):
    source = _pretrained(tmp_path, name, in_chans=1)
    grey = zoo.create(str(source))
    colour = zoo.create(str(source), in_chans=3, num_classes=4)
    report = colour.zoo_cfg["pretrained"]
    assert report["adapted"] == [FIRST[name]]
    assert len(report["reinitialised"]) == 2
    # An image whose three channels are equal gives the grey model's features.
    size = FAMILIES[name]["img_size"]
    x = torch.rand(2, 1, size, size)
    grey.eval(), colour.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            colour.forward_features(x.expand(-1, 3, -1, -1)), grey.forward_features(x)
        )


def test_adapt_input_weight_matches_timm():
    timm_manipulate = pytest.importorskip("timm.models._manipulate")
    torch.manual_seed(0)
    for base, target in [(3, 1), (3, 4), (1, 3), (3, 2)]:
        conv = torch.randn(6, base, 3, 3)
        expected = timm_manipulate.adapt_input_conv(target, conv.clone(), base_chans=base)
        torch.testing.assert_close(adapt.adapt_input_weight(conv, target, base), expected)
    # A Linear over flattened (C, H, W) pixels adapts per block of H*W columns.
    linear = torch.randn(5, 3 * 4)
    as_conv = linear.reshape(5, 3, 4, 1)
    expected = timm_manipulate.adapt_input_conv(2, as_conv.clone(), base_chans=3).reshape(5, -1)
    torch.testing.assert_close(adapt.adapt_input_weight(linear, 2, 3), expected)


def test_other_mismatches_are_still_refused_with_keys_and_shapes(tmp_path: Path):
    source = _pretrained(tmp_path, "mlp_relu")
    with pytest.raises(
        WeightsError, match=r"features\.3\.weight: weights \(4, 8\) vs model \(4, 6\)"
    ):
        zoo.create(str(source), hidden_sizes=[6, 4], num_classes=5)
    with pytest.raises(
        WeightsError, match=r"do not fit"
    ):  # another image size: not a channel count
        zoo.create(str(source), img_size=8, in_chans=1)
    # Bare weights of a 1x8x8 MLP (64 inputs) into a 1x4x4 one (16): a size change, not 4
    # channels of 4x4 to sum
    grey = _pretrained(tmp_path, "mlp_relu", in_chans=1)
    bare = tmp_path / "grey.safetensors"
    bare.write_bytes((grey / files.WEIGHTS_NAME).read_bytes())
    with pytest.raises(
        WeightsError, match=r"features\.1\.weight: weights \(8, 16\) vs model \(8, 4\)"
    ):
        zoo.create("mlp_relu", pretrained=str(bare), in_chans=1, img_size=2, hidden_sizes=[8, 4])


def test_safetensors_file_source_and_architecture_check(tmp_path: Path):
    source = _pretrained(tmp_path, "mlpmixer_p4")
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes((source / files.WEIGHTS_NAME).read_bytes())
    args = FAMILIES["mlpmixer_p4"]
    model = zoo.create("mlpmixer_p4", pretrained=str(bare), num_classes=2, in_chans=1, **args)
    report = model.zoo_cfg["pretrained"]
    assert (report["reinitialised"], report["adapted"]) == (
        ["head.bias", "head.weight"],
        ["stem.proj.weight"],
    )
    assert model.zoo_cfg["weights"] == str(bare)
    with pytest.raises(WeightsError, match=r"without a config\.json"):
        zoo.create(str(bare))
    same = zoo.create(str(source / files.WEIGHTS_NAME))  # a directory's own weights file
    assert same.zoo_cfg["pretrained"]["reinitialised"] == []
    with pytest.raises(WeightsError, match="holds weights for 'mlpmixer_p4', not 'mlp_relu'"):
        zoo.create("mlp_relu", pretrained=str(source))


def test_num_classes_zero_drops_the_head(tmp_path: Path):
    source = _pretrained(tmp_path, "resnet18")
    features = zoo.create(str(source), num_classes=0)
    assert features.zoo_cfg["pretrained"]["dropped"] == ["fc.bias", "fc.weight"]
    assert features.eval()(torch.rand(1, 3, 8, 8)).shape == (1, 8)


# -- freezing and head learning rates --------------------------------------------------------


def test_freeze_body_patterns_and_refusals() -> None:
    from zoo.training.finetune import freeze

    model = zoo.create("mlpmixer_p4", **FAMILIES["mlpmixer_p4"])
    assert freeze(model, ["body"]) and {
        n for n, p in model.named_parameters() if p.requires_grad
    } == {"head.weight", "head.bias"}
    model = zoo.create("mlpmixer_p4", **FAMILIES["mlpmixer_p4"])
    assert freeze(model, ["stem.*"]) == ["stem.proj.bias", "stem.proj.weight"]
    with pytest.raises(RecipeError, match=r"pattern 'stemm\.\*' matches no parameter"):
        freeze(model, ["stemm.*"])
    with pytest.raises(RecipeError, match="freezes every parameter"):
        freeze(model, ["*"])


def test_head_lr_mult_puts_the_classifier_in_its_own_group() -> None:
    from zoo.recipe import OptimSpec
    from zoo.training.optim import build_optimizer

    model = zoo.create("resnet18", **FAMILIES["resnet18"])
    model.conv1.weight.requires_grad_(False)
    optimizer = build_optimizer(model, OptimSpec(name="momentum", lr=0.01, head_lr_mult=10.0))
    body, head = optimizer.param_groups
    assert (body["lr"], head["lr"]) == (0.01, pytest.approx(0.1))
    assert [id(p) for p in head["params"]] == [id(model.fc.weight), id(model.fc.bias)]
    assert all(p is not model.conv1.weight for p in body["params"])  # frozen: left out
    assert len(body["params"]) == sum(p.requires_grad for p in model.parameters()) - 2


# -- through the trainer ---------------------------------------------------------------------


def _recipe(**changes: Any) -> dict[str, Any]:
    from test_train import tiny

    return tiny(**{"epochs": 2, "schedule.name": "none", **changes})


@pytest.fixture
def _quiet_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.training.loop

    monkeypatch.setattr(zoo.training.loop, "after_run", lambda run_dir, recipe: None)
    torch.set_num_threads(1)


@pytest.mark.usefixtures("_quiet_trainer")
def test_recipe_fine_tunes_from_a_run_with_other_classes_and_channels(tmp_path: Path) -> None:
    import json

    from zoo.recipe import from_dict
    from zoo.training.loop import RunOptions, fit

    pre = fit(from_dict(_recipe()), RunOptions(out_dir=tmp_path / "pre", device="cpu"))
    pre_config = json.loads((pre / "config.json").read_text())
    fine = _recipe(
        **{
            "model.pretrained": str(pre),
            "model.freeze": "body",
            "optim.head_lr_mult": 5.0,
            "data.synthetic.num_classes": 3,
            "data.synthetic.in_chans": 3,
        }
    )
    run = fit(from_dict(fine), RunOptions(out_dir=tmp_path / "fine", device="cpu"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pretrained"]["source"] == str(pre)
    assert summary["pretrained"]["reinitialised"] == ["head.bias", "head.weight"]
    assert summary["pretrained"]["adapted"] == ["features.1.weight"]
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == 3 and config["input_size"][0] == 3
    assert config["mean"] == pytest.approx(pre_config["mean"] * 3)  # the pretrained statistics
    # body frozen: the trained body is the adapted pretrained body, bit for bit
    before = files.load_state_dict(pre / files.WEIGHTS_NAME)
    after = files.load_state_dict(run / files.WEIGHTS_NAME)
    for key in ("features.3.weight", "features.3.bias"):
        assert torch.equal(after[key], before[key]), key
    torch.testing.assert_close(
        after["features.1.weight"], adapt.adapt_input_weight(before["features.1.weight"], 3, 1)
    )


@pytest.mark.slow
@pytest.mark.usefixtures("_quiet_trainer")
@pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
def test_shipped_template_fine_tunes_a_run_on_a_folder_of_pngs(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner
    from torchvision.io import write_png

    from zoo.cli import cli
    from zoo.recipe import from_dict
    from zoo.training.loop import RunOptions, fit

    pre = fit(
        from_dict(_recipe(**{"model.args": {}})), RunOptions(out_dir=tmp_path / "pre", device="cpu")
    )
    generator = torch.Generator().manual_seed(0)
    for c, name in enumerate(["bag", "boot", "shirt"]):  # 3 classes, where pretraining had 4
        folder = tmp_path / "images" / "train" / name
        folder.mkdir(parents=True)
        for i in range(20):
            image = torch.randint(0, 60, (1, 8, 8), generator=generator, dtype=torch.uint8)
            image[:, c * 2 : c * 2 + 3] += 150  # a class-dependent bright band
            write_png(image, str(folder / f"{i}.png"))
    template = Path(__file__).resolve().parents[1] / "recipes" / "finetune_imagefolder.yaml"
    sets = [f"model.pretrained={pre}", f"data.root={tmp_path / 'images'}", "epochs=3"]
    args = ["train", str(template), "--out", str(tmp_path / "fine"), "--device", "cpu"]
    result = CliRunner().invoke(cli, [*args, *(x for s in sets for x in ("--set", s))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "fine"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pretrained"]["reinitialised"] == ["head.bias", "head.weight"]
    assert summary["test_weights"] == "best" and summary["monitor"] == "valid_loss"
    assert (run / "checkpoints" / "best.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["input_size"] == [1, 8, 8]  # the pretrained model's, as the template says
    assert config["label_names"] == ["bag", "boot", "shirt"]
    assert config["mean"] == json.loads((pre / "config.json").read_text())["mean"]

"""Every built-in speaks timm's model API, as timm's own models do.

Head split and reset, intermediate features and ``features_only``, gradient checkpointing,
parameter groups for timm's layer decay, the data config timm reads, stochastic depth, and
state-dict keys that do not depend on dropout. Models are shrunk with overrides (small images,
narrow widths, few blocks) so the whole file runs in seconds; the full-size models are built
on the meta device where only names and shapes matter.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
import torch
from torch import nn

import zoo
from zoo.data.catalog import CIFAR10_CLASSES
from zoo.errors import ModelArgumentError
from zoo.models import _layers
from zoo.models.features import FeatureGetter, features_only
from zoo.models.mlp import MlpClassifier

# The built-ins, shrunk where their names leave room; the paper Mixers pin their width and
# depth (hundreds of MB), so they are checked on the meta device, where shapes are free.
TINY: dict[str, dict[str, Any]] = {
    "mlp_relu": {"img_size": 8},
    "mlp_tanh": {"img_size": 8},
    "mlp_sigmoid": {"img_size": 8},
    "resnet18": {"img_size": 8, "widths": [8, 16, 16, 32]},
    "mlpmixer_p2": {"img_size": 8, "embed_dim": 16, "num_blocks": 3},
    "mlpmixer_p4": {"img_size": 8, "embed_dim": 16, "num_blocks": 3},
    "mlpmixer_p8": {"img_size": 16, "embed_dim": 16, "num_blocks": 3},
    "mlpmixer_p16": {"img_size": 32, "embed_dim": 16, "num_blocks": 3},
}
SMALL = list(TINY)
PAPER = ["mlpmixer_s16_224", "mlpmixer_b16_224", "mlpmixer_l16_224"]
BUILTINS = SMALL + PAPER
DEEP = [n for n in SMALL if not n.startswith("mlp_")]  # the models with drop_path_rate


def tiny(name: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return zoo.create(name, **{**TINY[name], **kwargs})


def inputs(model: nn.Module, batch: int = 2) -> torch.Tensor:
    c, h, w = model.pretrained_cfg["input_size"]
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(1))


def test_every_builtin_is_covered() -> None:
    assert sorted(BUILTINS) == sorted(zoo.list_models(plugin="zoo-classifiers"))


# -- head: num_classes, num_features, forward_features / forward_head, reset_classifier ------


@pytest.mark.parametrize("name", SMALL)
def test_forward_is_forward_head_of_forward_features(name: str) -> None:
    model = tiny(name).eval()
    x = inputs(model)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.equal(logits, model.forward_head(features))
    assert logits.shape == (2, model.num_classes)
    assert pooled.shape == (2, model.num_features)
    assert model.get_classifier() is model.get_submodule(model.pretrained_cfg["classifier"])
    assert model.get_classifier().in_features == model.num_features


@pytest.mark.parametrize("name", SMALL)
def test_reset_classifier_replaces_only_the_head(name: str) -> None:
    model = tiny(name).train()
    head = model.pretrained_cfg["classifier"]
    before = model.state_dict()
    model.reset_classifier(5)
    after = model.state_dict()
    assert model.num_classes == 5 and model.get_classifier().training
    assert after.keys() == before.keys()
    for key, value in after.items():
        if key.startswith(f"{head}."):
            assert value.shape[0] == 5
        else:
            assert torch.equal(value, before[key]), key
    x = inputs(model)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 5)
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
        assert torch.equal(model(x), model.forward_head(model.forward_features(x), True))
    assert not any(k.startswith(f"{head}.") for k in model.state_dict())
    with pytest.raises(ModelArgumentError, match="global_pool='max'"):
        model.reset_classifier(5, global_pool="max")


def test_num_classes_0_builds_a_model_without_head() -> None:
    model = tiny("mlpmixer_p4", num_classes=0).eval()
    assert isinstance(model.get_classifier(), nn.Identity)
    assert model(inputs(model)).shape == (2, model.num_features)
    assert model.pretrained_cfg["num_classes"] == 0
    with pytest.raises(ModelArgumentError, match="num_classes must be an int >= 0"):
        zoo.create("resnet18", num_classes=-1)


def test_global_pool_off_as_timm() -> None:
    mixer = tiny("mlpmixer_p4").eval()
    mixer.reset_classifier(3, global_pool="")  # timm's Mixer: per-token logits
    with torch.no_grad():
        assert mixer(inputs(mixer)).shape == (2, 4, 3)
    resnet = tiny("resnet18").eval()
    with pytest.raises(ModelArgumentError, match="use global_pool='avg' or num_classes=0"):
        resnet.reset_classifier(3, global_pool="")
    resnet.reset_classifier(0, global_pool="")
    with torch.no_grad():
        assert resnet(inputs(resnet)).shape == (2, 32, 1, 1)  # the unpooled 8x8 / 8 map


@pytest.mark.parametrize("name", PAPER)
def test_paper_mixers_on_meta(name: str) -> None:
    from timm.layers import DropPath

    with torch.device("meta"):
        model = zoo.create(name, num_classes=10, drop_path_rate=0.1)
        x = torch.empty(2, 3, 224, 224)
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(x)
        _, maps = model.forward_intermediates(x, indices=[0, -1])
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        backbone = features_only(model, out_indices=(-1,))
        (last,) = backbone(x)
    width, blocks = model.num_features, len(model.feature_info)
    assert features.shape == (2, 196, width) and pooled.shape == (2, width)
    assert logits.shape == (2, 10) and model.get_classifier() is not None
    assert [m.shape for m in maps] == [(2, width, 14, 14)] * 2
    assert last.shape == (2, width, 14, 14) and backbone.feature_info.reduction() == [16]
    assert len(backbone.model.blocks) == blocks  # nothing to prune before the last block
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.1 * i / (blocks - 1) for i in range(1, blocks)])


# -- intermediate features and features_only ----------------------------------------------


def expected_shape(model: nn.Module, info: dict[str, Any], batch: int = 2) -> tuple[int, ...]:
    """An MLP's feature maps are (B, C) vectors; the others (B, C, H / r, W / r)."""
    if isinstance(model, MlpClassifier):
        return (batch, info["num_chs"])
    size = model.pretrained_cfg["input_size"][-1] // info["reduction"]
    return (batch, info["num_chs"], size, size)


@pytest.mark.parametrize("name", SMALL)
def test_forward_intermediates(name: str) -> None:
    model = tiny(name).eval()
    x = inputs(model)
    n = len(model.feature_info)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [tuple(t.shape) for t in maps] == [
            expected_shape(model, info) for info in model.feature_info
        ]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        first = model.forward_intermediates(x, indices=[0], stop_early=True)[1]
    assert all(torch.equal(a, b) for a, b in zip(last_two, maps[-2:], strict=True))
    assert torch.equal(picked[0], maps[0]) and torch.equal(picked[1], maps[n - 1])
    assert len(first) == 1 and torch.equal(first[0], maps[0])
    with pytest.raises(ModelArgumentError, match=f"feature index {n} is out of range"):
        model.forward_intermediates(x, indices=[n])


def test_mixer_intermediates_are_token_maps_on_the_patch_grid() -> None:
    model = tiny("mlpmixer_p4").eval()
    x = inputs(model)
    with torch.no_grad():
        tokens = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        maps = model.forward_intermediates(x, intermediates_only=True)
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    assert tokens[0].shape == (2, 4, 16) and maps[0].shape == (2, 16, 2, 2)
    assert torch.equal(maps[0], tokens[0].reshape(2, 2, 2, 16).permute(0, 3, 1, 2))
    assert torch.equal(normed[0], model.norm(tokens[-1]).reshape(2, 2, 2, 16).permute(0, 3, 1, 2))


@pytest.mark.parametrize("name", SMALL)
def test_features_only(name: str) -> None:
    model = tiny(name).eval()
    x = inputs(model)
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
    params = sum(p.numel() for p in model.parameters())
    backbone = features_only(model, out_indices=(0, 1))
    info = model.feature_info
    assert backbone.out_indices == (0, 1)
    assert backbone.feature_info.channels() == [info[0]["num_chs"], info[1]["num_chs"]]
    assert backbone.feature_info.reduction() == [info[0]["reduction"], info[1]["reduction"]]
    with torch.no_grad():
        out = backbone(x)
    assert len(out) == 2 and all(torch.equal(a, b) for a, b in zip(out, maps[:2], strict=True))
    # Pruned in place, as timm: the layers after the last map and the head are gone.
    assert sum(p.numel() for p in backbone.parameters()) < params
    assert isinstance(model.get_classifier(), nn.Identity)
    assert backbone.pretrained_cfg is model.pretrained_cfg


def test_features_only_of_the_real_resnet18_on_meta() -> None:
    with torch.device("meta"):
        backbone = features_only(zoo.create("resnet18"))
        maps = backbone(torch.empty(2, 3, 32, 32))
    assert backbone.feature_info.channels() == [64, 64, 128, 256, 512]
    assert backbone.feature_info.reduction() == [1, 1, 2, 4, 8]
    assert backbone.feature_info.module_name() == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert [t.shape[-1] for t in maps] == [32, 32, 16, 8, 4]


def test_features_only_last_n_and_unpruned() -> None:
    model = tiny("mlp_relu")
    backbone = features_only(model, out_indices=2, prune=False)
    assert backbone.out_indices == (2, 3) and backbone.feature_info.channels() == [64, 64]
    assert isinstance(model.head, nn.Linear)  # prune=False leaves the model whole
    with pytest.raises(ModelArgumentError, match="cannot take the last 5 of 4 features"):
        features_only(model, out_indices=5)


@pytest.mark.parametrize("name", ["mlp_relu", "resnet18", "mlpmixer_p4"])
def test_timms_feature_getter_takes_zoo_models(name: str) -> None:
    from timm.models._features import FeatureGetterNet

    ours, theirs = tiny(name).eval(), tiny(name).eval()
    x = inputs(ours)
    with torch.no_grad():
        expected = features_only(ours, out_indices=(0, -1))(x)
        got = FeatureGetterNet(theirs, out_indices=(0, -1))(x)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_features_only_needs_the_feature_api() -> None:
    with pytest.raises(
        ModelArgumentError, match="Sequential cannot return feature maps: it has no forward_int"
    ):
        features_only(nn.Sequential(nn.Linear(2, 2)))

    class NoInfo(nn.Module):
        def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x]

    with pytest.raises(ModelArgumentError, match="NoInfo has no usable feature_info"):
        FeatureGetter(NoInfo())


# -- gradient checkpointing ---------------------------------------------------------------


def train_step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(3)  # the same dropout and drop-path masks in both runs
    out = model(x)
    out.square().sum().backward()
    return out, [p.grad for p in model.parameters()]


@pytest.mark.parametrize("name", SMALL)
def test_grad_checkpointing_recomputes_and_changes_nothing(name: str) -> None:
    dropouts = {"drop_rate": 0.2} | ({"drop_path_rate": 0.3} if name in DEEP else {})
    plain = tiny(name, **dropouts).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    x = inputs(plain, batch=4)
    calls: list[nn.Module] = []
    layers = [m for m in ckpt.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    for layer in layers:
        layer.register_forward_hook(lambda m, args, out: calls.append(m))
    out, grads = train_step(plain, x)
    out_ckpt, grads_ckpt = train_step(ckpt, x)
    assert len(calls) > len(layers)  # some ran again in the backward pass
    assert torch.equal(out, out_ckpt)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ckpt, strict=True))
    # BatchNorm running statistics are updated once per step, not again when recomputing.
    for (key, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


# -- parameter groups for timm's optimizer factory ----------------------------------------

# stem + blocks + head (the Mixer's final norm joins its last block)
LAYER_GROUPS = {"mlp_": 5, "resnet18": 10, "mlpmixer_p": 6, "s16": 10, "b16": 14, "l16": 26}


@pytest.mark.parametrize("name", BUILTINS)
def test_timm_layer_decay_forms_one_group_per_block(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from timm.optim import create_optimizer_v2

    with torch.device("meta"):  # the full-size model: only parameter names matter
        model = zoo.create(name)
    with caplog.at_level(logging.WARNING):
        optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.75)
    assert not [r for r in caplog.records if "decay" in r.getMessage()]
    scales = sorted({g["lr_scale"] for g in optimizer.param_groups})
    expected = next(n for key, n in LAYER_GROUPS.items() if key in name)
    assert len(scales) == expected and scales[-1] == 1.0
    head = {id(p) for p in model.get_classifier().parameters()}
    first = next(iter(model.parameters()))  # the stem gets the smallest scale
    for group in optimizer.param_groups:
        if any(id(p) in head for p in group["params"]):
            assert group["lr_scale"] == 1.0
        if any(p is first for p in group["params"]):
            assert group["lr_scale"] == scales[0]
    assert model.no_weight_decay() == set()
    assert isinstance(model.group_matcher(coarse=True), dict)


# -- the data config (timm's pretrained_cfg) ----------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_timm_resolves_the_models_data_config(name: str) -> None:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config

    with torch.device("meta"):
        model = zoo.create(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    paper = name.endswith("_224")
    assert cfg["input_size"] == ((3, 224, 224) if paper else (3, 32, 32))
    assert cfg["mean"] == (IMAGENET_DEFAULT_MEAN if paper else _layers.CIFAR10_MEAN)
    assert cfg["std"] == (IMAGENET_DEFAULT_STD if paper else _layers.CIFAR10_STD)
    assert cfg["crop_pct"] == (0.875 if paper else 1.0)
    assert cfg["label_names"] == (None if paper else CIFAR10_CLASSES)
    assert cfg["num_classes"] == model.num_classes
    resolved = resolve_data_config({}, model=model)
    assert resolved == {k: cfg[k] for k in resolved}
    assert resolved["interpolation"] == "bilinear" and resolved["crop_mode"] == "center"


@pytest.mark.parametrize("name", ["mlp_tanh", "resnet18", "mlpmixer_p2", "mlpmixer_s16_224"])
def test_data_config_follows_the_model_args(name: str) -> None:
    with torch.device("meta"):
        grey = zoo.create(name, in_chans=1, img_size=16)
        other = zoo.create(name, num_classes=5)
    mean, std = grey.pretrained_cfg["mean"], grey.pretrained_cfg["std"]
    assert grey.pretrained_cfg["input_size"] == (1, 16, 16)
    assert len(mean) == len(std) == 1  # the average of the RGB values
    rgb = other.pretrained_cfg
    assert mean[0] == pytest.approx(sum(rgb["mean"]) / 3, abs=1e-4)
    assert std[0] == pytest.approx(sum(rgb["std"]) / 3, abs=1e-4)
    assert grey.pretrained_cfg["label_names"] is None  # 1 channel: not the design dataset
    assert rgb["label_names"] is None and rgb["num_classes"] == 5


def test_dataset_constants_match_their_sources() -> None:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert _layers.CIFAR10_CLASSES == CIFAR10_CLASSES
    assert _layers.IMAGENET_DEFAULT_MEAN == IMAGENET_DEFAULT_MEAN
    assert _layers.IMAGENET_DEFAULT_STD == IMAGENET_DEFAULT_STD
    assert _layers.per_channel((0.1, 0.2, 0.3), 2) == (0.2, 0.2)


# -- stochastic depth ---------------------------------------------------------------------


@pytest.mark.parametrize("name", DEEP)
def test_drop_path_rate(name: str) -> None:
    from timm.layers import DropPath

    default, zero, deep = tiny(name), tiny(name, drop_path_rate=0.0), tiny(name, drop_path_rate=0.3)
    x = inputs(default)
    # 0 (the default) is the model as it was: same weights, keys and modules.
    assert not any(isinstance(m, DropPath) for m in zero.modules())
    for model in (zero, deep):
        state = model.state_dict()
        assert state.keys() == default.state_dict().keys()
        assert all(torch.equal(v, state[k]) for k, v in default.state_dict().items())
    rates = [m.drop_prob for m in deep.modules() if isinstance(m, DropPath)]
    blocks = len(rates) + 1  # the first block's rate is 0: no DropPath
    assert rates == pytest.approx([0.3 * i / (blocks - 1) for i in range(1, blocks)])
    with torch.no_grad():
        assert torch.equal(deep.eval()(x), default.eval()(x))
        torch.manual_seed(0)
        plain = zero.train()(x)
        torch.manual_seed(0)
        assert not torch.equal(deep.train()(x), plain)
        torch.manual_seed(0)
        assert torch.equal(default.train()(x), plain)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
@pytest.mark.parametrize("name", ["resnet18", "mlpmixer_p4"])
def test_drop_path_rate_is_validated(name: str, value: float) -> None:
    with pytest.raises(ModelArgumentError, match=r"drop_path_rate must be in \[0, 1\), got"):
        zoo.create(name, drop_path_rate=value)
    with pytest.raises(ModelArgumentError, match="drop_path_rate"):
        zoo.create(name, drop_path_rate="0.1")


# -- MLP state-dict keys ------------------------------------------------------------------

# The keys exported MLP weights have always had: they must keep loading.
MLP_KEYS = [f"features.{i}.{p}" for i in (1, 3, 5, 7) for p in ("weight", "bias")] + [
    "head.weight",
    "head.bias",
]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("mlp_relu", {}), ("mlp_relu", {"drop_rate": 0.5}), ("mlp_tanh", {"drop_rate": 0.1})],
)
def test_mlp_keys_do_not_depend_on_dropout_or_activation(name: str, kwargs: dict[str, Any]) -> None:
    trained = tiny("mlp_relu")
    model = tiny(name, **kwargs)
    assert list(model.state_dict()) == MLP_KEYS
    model.load_state_dict(trained.state_dict())  # strict
    x = inputs(model)
    with torch.no_grad():
        same = torch.equal(model.eval()(x), trained.eval()(x))
    assert same == (name == "mlp_relu")  # dropout is off in eval


def test_mlp_weights_in_the_old_dropout_layout_are_renumbered() -> None:
    from zoo.models.mlp import checkpoint_filter_fn

    trained = tiny("mlp_relu", drop_rate=0.1).state_dict()
    old = {  # Linear, activation, Dropout per hidden layer: Linears at 1, 4, 7, 10
        k.replace(f"features.{i}.", f"features.{1 + 3 * (i // 2)}."): v
        for k, v in trained.items()
        for i in [int(k.split(".")[1]) if k.startswith("features.") else 0]
    }
    assert sorted({k.split(".")[1] for k in old if k.startswith("features.")}) == [
        "1",
        "10",
        "4",
        "7",
    ]
    model = tiny("mlp_relu", drop_rate=0.1)
    model.load_state_dict(checkpoint_filter_fn(old, model))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.items())
    assert checkpoint_filter_fn(trained).keys() == trained.keys()  # today's layout: unchanged

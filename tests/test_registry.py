"""Registry behaviour a user relies on: listing, lookup errors, collisions, zoo_cfg."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import zoo
from zoo.errors import (
    AmbiguousModelError,
    DuplicateModelError,
    ModelArgumentError,
    UnknownModelError,
    ZooError,
)
from zoo.models import plugins, registry

BUILTINS = [
    "mlp_relu",
    "mlp_sigmoid",
    "mlp_tanh",
    "mlpmixer_b16_224",
    "mlpmixer_l16_224",
    "mlpmixer_p2",
    "mlpmixer_p4",
    "mlpmixer_p8",
    "mlpmixer_p16",
    "mlpmixer_s16_224",
    "resnet18",
]


@pytest.fixture(autouse=True)
def _discover_first() -> None:
    """Load plugins before isolated_registry snapshots the registry: a snapshot taken before
    discovery is empty, and restoring it would drop the built-ins for later tests (their
    modules are already imported, so a rescan cannot register them again)."""
    plugins.load_plugins()


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__()
        self.head = nn.Linear(in_chans * img_size * img_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def register_tiny(name: str, distribution: str, version: str = "1.0") -> None:
    """Register a builder called ``name`` as if distribution ``distribution`` provided it."""

    def builder(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return registry.build_model(Tiny, name, pretrained, {}, kwargs)

    builder.__name__ = name
    with registry.registering_as(distribution, version):
        registry.register_model(builder)


def test_builtins_are_listed_sorted() -> None:  # numbers in natural order, as timm lists them
    assert zoo.list_models(plugin="zoo-classifiers") == BUILTINS


def test_wildcards_select_families() -> None:
    assert zoo.list_models("mlp_*") == ["mlp_relu", "mlp_sigmoid", "mlp_tanh"]
    assert zoo.list_models("mlpmixer_p?") == ["mlpmixer_p2", "mlpmixer_p4", "mlpmixer_p8"]
    assert zoo.list_models("*_224") == ["mlpmixer_b16_224", "mlpmixer_l16_224", "mlpmixer_s16_224"]
    assert zoo.list_models("nothing*") == []


def test_several_patterns_are_a_union() -> None:
    assert zoo.list_models(["resnet*", "mlp_relu"]) == ["mlp_relu", "resnet18"]


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match=r"'mlpmixer_p3'.*Did you mean: .*mlpmixer_p"):
        zoo.create("mlpmixer_p3")
    with pytest.raises(UnknownModelError, match="resnet18"):
        zoo.model_info("resnet81")


def test_bad_kwarg_names_the_accepted_ones() -> None:
    with pytest.raises(ModelArgumentError) as info:
        zoo.create("mlp_relu", hiden_sizes=[8])
    message = str(info.value)
    assert "hiden_sizes" in message and "hidden_sizes" in message and "drop_rate" in message


def test_bad_kwarg_of_a_plain_third_party_builder_is_a_zoo_error(isolated_registry: None) -> None:
    def plain_builder(pretrained: bool = False, num_classes: int = 10) -> nn.Module:
        return nn.Linear(4, num_classes)

    registry.register_model(plain_builder)
    with pytest.raises(ModelArgumentError, match=r"plain_builder.*width"):
        zoo.create("plain_builder", width=3)


def test_bad_kwarg_value_is_a_zoo_error() -> None:
    with pytest.raises(ModelArgumentError, match="img_size 30 is not divisible by patch_size 4"):
        zoo.create("mlpmixer_p4", img_size=30)


def test_collision_across_distributions_is_ambiguous(isolated_registry: None) -> None:
    register_tiny("tiny_clash", "dist-a")
    register_tiny("tiny_clash", "dist-b", "2.0")
    with pytest.raises(AmbiguousModelError) as info:
        zoo.create("tiny_clash")
    message = str(info.value)
    assert "dist-a" in message and "dist-b" in message and "plugin=" in message
    model = zoo.create("tiny_clash", plugin="dist-b", num_classes=3)
    assert model.zoo_cfg["distribution"] == "dist-b" and model.zoo_cfg["version"] == "2.0"
    assert zoo.list_models("tiny_*", plugin="dist-a") == ["tiny_clash"]
    with pytest.raises(UnknownModelError, match=r"dist-c.*dist-a, dist-b"):
        zoo.create("tiny_clash", plugin="dist-c")


def test_same_distribution_registering_twice_is_an_error(isolated_registry: None) -> None:
    register_tiny("tiny_twice", "dist-a")
    with pytest.raises(DuplicateModelError, match=r"tiny_twice.*dist-a"):
        register_tiny("tiny_twice", "dist-a")
    assert len(registry._REGISTRY["tiny_twice"]) == 1  # never silently overwritten


def test_tag_without_published_weights_is_a_clear_error() -> None:
    with pytest.raises(ZooError, match="nosuchtag"):
        zoo.create("mlp_relu.nosuchtag")


def test_pretrained_without_weights_says_how_to_get_them() -> None:
    with pytest.raises(ZooError, match=r"no built-in pretrained weights.*zoo train"):
        zoo.create("mlp_relu", pretrained=True)


def test_zoo_cfg_records_how_the_model_was_built() -> None:
    model = zoo.create("mlp_tanh", num_classes=5, in_chans=1, img_size=28, drop_rate=0.1)
    assert model.zoo_cfg == {
        "architecture": "mlp_tanh",
        "args": {
            "num_classes": 5,
            "in_chans": 1,
            "img_size": 28,
            "hidden_sizes": [1024, 512, 64, 64],
            "activation": "tanh",
            "drop_rate": 0.1,
        },
        "distribution": "zoo-classifiers",
        "version": zoo.__version__,
    }
    rebuilt = zoo.create(model.zoo_cfg["architecture"], **model.zoo_cfg["args"])
    assert rebuilt.zoo_cfg == model.zoo_cfg


def test_model_info_counts_params_without_allocating() -> None:
    info = zoo.model_info("mlpmixer_s16_224", params=True)
    assert info["distribution"] == "zoo-classifiers" and info["family"] == "zoo.models.mixer"
    assert info["default_args"]["embed_dim"] == 512
    assert info["params"] == sum(p.numel() for p in zoo.create("mlpmixer_s16_224").parameters())


def test_namespace_is_listed_only_when_asked(isolated_registry: None) -> None:
    calls = []

    def list_names() -> list[str]:
        calls.append(1)
        return ["alpha", "beta"]

    def builder_for(name: str) -> Any:
        if name not in ("alpha", "beta"):
            return None
        return lambda pretrained=False, **kwargs: registry.build_model(
            Tiny, "fake/" + name, pretrained, {}, kwargs
        )

    registry.register_namespace("fake/", list_names, builder_for)
    assert not any(n.startswith("fake/") for n in zoo.list_models())
    assert calls == []  # listing zoo's own models never touches the namespace
    assert zoo.list_models("fake/*") == ["fake/alpha", "fake/beta"]
    assert zoo.create("fake/beta", num_classes=2)(torch.zeros(1, 3, 8, 8)).shape == (1, 2)
    with pytest.raises(UnknownModelError, match="fake/alpha"):
        zoo.create("fake/alph")


def test_overriding_a_pinned_argument_is_recorded_not_hidden() -> None:
    # recipes may override what a variant pins (an activation sweep over mlp_tanh's args)
    model = zoo.create("mlp_tanh", activation="relu", hidden_sizes=[8])
    assert model.zoo_cfg["architecture"] == "mlp_tanh"
    assert model.zoo_cfg["args"]["activation"] == "relu"
    assert model.zoo_cfg["overrides"] == {"activation": {"pinned": "tanh", "used": "relu"}}
    rebuilt = zoo.create(model.zoo_cfg["architecture"], **model.zoo_cfg["args"])
    assert rebuilt.zoo_cfg == model.zoo_cfg
    # giving the pinned value, or an argument that is not pinned, overrides nothing
    assert "overrides" not in zoo.create("mlp_tanh", activation="tanh", hidden_sizes=[8]).zoo_cfg
    assert "overrides" not in zoo.create("mlpmixer_p4", embed_dim=16, num_blocks=1).zoo_cfg
    assert zoo.create("mlpmixer_p4", patch_size=8, embed_dim=16).zoo_cfg["overrides"] == {
        "patch_size": {"pinned": 4, "used": 8}
    }

"""The conformance kit catches broken models, and passes a correct one."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

from zoo.models import plugins, registry
from zoo.testing import CHECKS, OPTIONAL_CHECKS, CheckReport, assert_conforms, check_model


@pytest.fixture(autouse=True)
def _discover_first() -> None:
    # Snapshots taken by isolated_registry must include the built-ins (see test_plugins.py).
    plugins.load_plugins()


class HeadAPI(nn.Module):
    """The required part of timm's model API, over ``self.head`` and ``self.pool``."""

    num_classes: int
    num_features: int
    head: nn.Module

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Good(HeadAPI):
    """A tiny conforming classifier: the required API, none of the optional API."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__()
        self.num_classes, self.num_features = num_classes, 4
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class RandomInit(Good):
    """Draws its init from a generator seeded by the OS: torch.manual_seed cannot fix it."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__(num_classes, in_chans, img_size)
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen))


class NaNGrad(Good):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        return super().forward(x) + 0 * (w - w).sqrt().sum()  # d sqrt(0) = inf -> NaN


class UnusedParam(Good):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__(num_classes, in_chans, img_size)
        self.unused = nn.Linear(2, 2)


class IgnoresNumClasses(Good):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__(10, in_chans, img_size)


class FixedInChans(Good):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__(num_classes, 3, img_size)


def register(name: str, cls: type[nn.Module]) -> None:
    def builder(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return registry.build_model(cls, name, pretrained, {}, kwargs)

    builder.__name__ = name
    registry.register_model(builder)


def failed(report: CheckReport) -> dict[str, str]:
    return {r.check: r.message for r in report.failures}


def test_a_correct_model_passes_every_check(isolated_registry: None) -> None:
    register("kit_good", Good)
    report = assert_conforms("kit_good")
    assert [r.check for r in report.results] == list(CHECKS)
    assert report.ok and report.params == sum(p.numel() for p in Good().parameters())
    assert report.to_dict()["ok"] is True
    assert report.format().splitlines()[0].startswith("PASS kit_good builds:")
    # Optional API it does not have is reported, with how to add it, but does not fail it.
    assert {r.check for r in report.skipped} == OPTIONAL_CHECKS
    assert all(r.passed and "optional, not provided: add" in r.message for r in report.skipped)
    assert "SKIP kit_good group_matcher: optional, not provided" in report.format()


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (RandomInit, "init_deterministic", "differ in head.weight"),
        (NaNGrad, "backward", "non-finite gradient for conv.weight"),
        (UnusedParam, "backward", "no gradient for unused.weight, unused.bias"),
        (IgnoresNumClasses, "forward_num_classes", "expected (2, 7)"),
        (FixedInChans, "forward_in_chans", "RuntimeError"),
    ],
)
def test_the_kit_detects_a_broken_model(
    isolated_registry: None, cls: type[nn.Module], check: str, message: str
) -> None:
    register("kit_broken", cls)
    failures = failed(check_model("kit_broken"))
    assert list(failures) == [check]
    assert message in failures[check]
    with pytest.raises(AssertionError, match=f"(?s)kit_broken fails 1 conformance check.*{check}"):
        assert_conforms("kit_broken")


def test_a_model_that_does_not_build_fails_every_check(isolated_registry: None) -> None:
    def kit_unbuildable(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        raise ValueError("missing weights table")

    registry.register_model(kit_unbuildable)
    report = check_model("kit_unbuildable")
    assert not report.ok and len(report.failures) == len(CHECKS)
    assert "ValueError: missing weights table" in failed(report)["builds"]
    assert failed(report)["backward"] == "not run: the model did not build"


def test_a_cfg_that_does_not_rebuild_the_model_fails(isolated_registry: None) -> None:
    builds: list[int] = []

    class Counted(Good):
        def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
            super().__init__(num_classes, in_chans, img_size)
            builds.append(1)

    register("kit_counted", Counted)
    check_model("kit_counted")
    # The kit's last build is config_rebuild's meta rebuild: make that one wider.
    widths = iter([4] * (len(builds) - 1) + [8])

    class Drifting(Good):
        def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
            super().__init__(num_classes, in_chans, img_size)
            self.extra = nn.Linear(next(widths), 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 0 * self.extra(torch.ones(self.extra.in_features)).sum()

    register("kit_drifting", Drifting)
    failures = failed(check_model("kit_drifting"))
    assert list(failures) == ["config_rebuild"]
    assert "extra.weight: (1, 4) vs rebuilt (1, 8)" in failures["config_rebuild"]


def test_the_callers_random_state_is_left_alone(isolated_registry: None) -> None:
    register("kit_good", Good)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_model("kit_good")
    assert torch.equal(torch.rand(3), expected)


def test_overridden_values_are_used(isolated_registry: None) -> None:
    register("kit_good", Good)
    report = check_model("kit_good", num_classes=3, in_chans=2, img_size=6)
    messages = {r.check: r.message for r in report.results}
    assert "(2, 3, 8, 8) -> (2, 3)" in messages["forward_num_classes"]
    assert "(2, 2, 8, 8) -> (2, 10)" in messages["forward_in_chans"]
    assert "(2, 3, 6, 6) -> (2, 10)" in messages["forward_img_size"]


class Patchy(HeadAPI):
    """A patch model: img_size must be a multiple of patch_size."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, img_size: int = 16, patch_size: int = 4
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of {patch_size}")
        self.num_classes, self.num_features = num_classes, 4 * (img_size // patch_size) ** 2
        self.stem = nn.Conv2d(in_chans, 4, patch_size, stride=patch_size)
        self.head = nn.Linear(self.num_features, num_classes)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


def test_img_size_override_respects_the_patch_size(isolated_registry: None) -> None:
    register("kit_patchy", Patchy)
    report = assert_conforms("kit_patchy")
    assert "'img_size': 8" in report.results[0].message  # two patches per side
    assert "(2, 3, 8, 8) -> (2, 10)" in report.results[5].message


# -- timm's model API ------------------------------------------------------------------------


class Bare(nn.Module):
    """A classifier with none of timm's model API."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_a_model_without_the_required_api_is_told_what_to_add(isolated_registry: None) -> None:
    register("kit_bare", Bare)
    failures = failed(check_model("kit_bare"))
    assert list(failures) == ["model_api", "reset_classifier"]
    message = failures["model_api"]
    for missing in ("num_classes", "num_features", "get_classifier", "forward_head"):
        assert missing in message
    assert "self.num_classes = num_classes" in message and "MlpMixer" in message


class Full(Good):
    """Good plus every optional part of timm's model API."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__(num_classes, in_chans, img_size)
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(4, 4, k, padding=k // 2), nn.GELU()) for k in (3, 1)]
        )
        self.feature_info = [
            {"module": f"blocks.{i}", "num_chs": 4, "reduction": 1} for i in range(2)
        ]
        self.grad_checkpointing = False
        self.pretrained_cfg = {
            "input_size": (in_chans, img_size, img_size),
            "mean": (0.5,) * in_chans,
            "std": (0.25,) * in_chans,
            "num_classes": num_classes,
        }

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^conv\.", "blocks": r"^blocks\.(\d+)\."}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return set()

    def forward_intermediates(
        self, x: torch.Tensor, indices: Any = None, intermediates_only: bool = False, **_: Any
    ) -> Any:
        take = range(2) if indices is None else [i % 2 for i in indices]
        x = self.conv(x)
        maps = []
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i in take:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[0]


class NoPreLogits(Good):
    def forward_head(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(self.pool(x))


class HeadKeptAtZero(Good):
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(max(num_classes, 1))


class NoopCheckpointing(Full):
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass


class OneGroup(Full):
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"blocks": r"^no_such_layer"}


class WrongChannels(Full):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__(num_classes, in_chans, img_size)
        self.feature_info[1]["num_chs"] = 8


class RgbOnlyCfg(Full):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__(num_classes, in_chans, img_size)
        self.pretrained_cfg["mean"] = (0.5, 0.5)


def test_a_model_with_all_of_timms_api_passes_every_check(isolated_registry: None) -> None:
    register("kit_full", Full)
    report = assert_conforms("kit_full")
    assert not report.skipped
    messages = {r.check: r.message for r in report.results}
    assert "2 feature maps, channels [4, 4]" in messages["forward_intermediates"]
    assert "4 layer groups" in messages["group_matcher"]  # stem, 2 blocks, the unmatched head
    assert "layers recomputed in backward" in messages["grad_checkpointing"]


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (NoPreLogits, "model_api", "forward_head does not take pre_logits"),
        (HeadKeptAtZero, "reset_classifier", "use nn.Identity() as the head for 0 classes"),
        (NoopCheckpointing, "grad_checkpointing", "set_grad_checkpointing(True) changed nothing"),
        (OneGroup, "group_matcher", "puts every parameter in one group"),
        (WrongChannels, "forward_intermediates", "map 1 is (2, 4, 8, 8), num_chs says 8"),
        (RgbOnlyCfg, "pretrained_cfg", "mean is (0.5, 0.5), needs one value per channel (3)"),
    ],
)
def test_the_kit_detects_a_broken_model_api(
    isolated_registry: None, cls: type[nn.Module], check: str, message: str
) -> None:
    register("kit_broken_api", cls)
    failures = failed(check_model("kit_broken_api"))
    assert list(failures) == [check]
    assert message in failures[check]

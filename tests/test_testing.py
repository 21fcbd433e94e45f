"""The conformance kit catches broken models, and passes a correct one."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

from zoo import plugins, registry
from zoo.testing import CHECKS, CheckReport, assert_conforms, check_model


@pytest.fixture(autouse=True)
def _discover_first() -> None:
    # Snapshots taken by isolated_registry must include the built-ins (see test_plugins.py).
    plugins.load_plugins()


class Good(nn.Module):
    """A tiny conforming classifier."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


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
    # the meta rebuild (8th build: load_model_dir builds twice, on meta then for real) is wider
    widths = iter([4, 4, 4, 4, 4, 4, 4, 8])

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


class Patchy(nn.Module):
    """A patch model: img_size must be a multiple of patch_size."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, img_size: int = 16, patch_size: int = 4
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of {patch_size}")
        self.stem = nn.Conv2d(in_chans, 4, patch_size, stride=patch_size)
        self.head = nn.Linear(4 * (img_size // patch_size) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).flatten(1))


def test_img_size_override_respects_the_patch_size(isolated_registry: None) -> None:
    register("kit_patchy", Patchy)
    report = assert_conforms("kit_patchy")
    assert "'img_size': 8" in report.results[0].message  # two patches per side
    assert "(2, 3, 8, 8) -> (2, 10)" in report.results[5].message

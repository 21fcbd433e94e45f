"""Plugin discovery through REAL entry points: each test writes a throwaway distribution
(a ``*.dist-info`` directory with METADATA and entry_points.txt, plus its module) onto
sys.path and makes zoo scan entry points again."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import zoo
from zoo.cli import cli
from zoo.errors import AmbiguousModelError
from zoo.models import plugins

_counter = itertools.count()

GOOD_MODULE = """
from torch import nn

import zoo
from zoo.models.registry import build_model


class Tiny(nn.Module):
    def __init__(self, num_classes=10, in_chans=3, img_size=8):
        super().__init__()
        self.head = nn.Linear(in_chans * img_size * img_size, num_classes)

    def forward(self, x):
        return self.head(x.flatten(1))


@zoo.register_model
def {model}(pretrained=False, **kwargs):
    return build_model(Tiny, "{model}", pretrained, {{}}, kwargs)
"""


@pytest.fixture(autouse=True)
def _discover_first() -> None:
    """Load plugins before isolated_registry snapshots the registry: a snapshot taken before
    discovery is empty, and restoring it would drop the built-ins for later tests (their
    modules are already imported, so a rescan cannot register them again)."""
    plugins.load_plugins()


class FakeSite:
    """A directory on sys.path holding throwaway distributions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def add(self, dist: str, version: str, model: str = "", source: str = "") -> str:
        """Write distribution ``dist`` whose entry point imports a new module; return the
        module's (unique) name."""
        module = f"zoo_fake_{dist.replace('-', '_')}_{next(_counter)}"
        code = source or GOOD_MODULE.format(model=model)
        (self.root / f"{module}.py").write_text(textwrap.dedent(code), encoding="utf-8")
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        metadata = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        (info / "METADATA").write_text(metadata, encoding="utf-8")
        entry_points = f"[zoo.models]\n{dist} = {module}\n"
        (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")
        self.modules.append(module)
        return module


@pytest.fixture
def site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_registry: None
) -> Iterator[FakeSite]:
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    fake = FakeSite(root)
    yield fake
    for module in fake.modules:
        sys.modules.pop(module, None)


def rescan() -> list[plugins.PluginInfo]:
    importlib.invalidate_caches()
    plugins._reset()
    return plugins.load_plugins()


def by_distribution(infos: list[plugins.PluginInfo], dist: str) -> plugins.PluginInfo:
    return next(p for p in infos if p.distribution == dist)


def test_installed_plugin_models_appear_everywhere(site: FakeSite) -> None:
    site.add("zoo-fake-good", "0.3", model="fakegood_tiny")
    info = by_distribution(rescan(), "zoo-fake-good")
    assert info.error is None and info.version == "0.3" and info.models == ["fakegood_tiny"]
    assert "fakegood_tiny" in zoo.list_models()
    assert zoo.list_models(plugin="zoo-fake-good") == ["fakegood_tiny"]
    model = zoo.create("fakegood_tiny", num_classes=4)
    assert model.zoo_cfg["distribution"] == "zoo-fake-good"
    assert model.zoo_cfg["version"] == "0.3"
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "zoo-fake-good 0.3" in result.output and "fakegood_tiny" in result.output


def test_plugin_failing_on_import_is_recorded_and_skipped(site: FakeSite) -> None:
    site.add("zoo-fake-broken", "1.0", source="raise RuntimeError('plugin is broken')\n")
    site.add("zoo-fake-fine", "1.0", model="fakefine_tiny")
    infos = rescan()
    broken = by_distribution(infos, "zoo-fake-broken")
    assert broken.error is not None
    assert broken.error.startswith("RuntimeError: plugin is broken")
    assert broken.models == []
    assert by_distribution(infos, "zoo-fake-fine").error is None
    assert "fakefine_tiny" in zoo.list_models() and "resnet18" in zoo.list_models()
    assert zoo.create("mlp_relu").zoo_cfg["architecture"] == "mlp_relu"
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "ERROR" in result.output and "plugin is broken" in result.output


def test_two_distributions_registering_one_name(site: FakeSite) -> None:
    site.add("zoo-fake-a", "1.0", model="clash_tiny")
    site.add("zoo-fake-b", "2.0", model="clash_tiny")
    infos = rescan()
    assert by_distribution(infos, "zoo-fake-a").models == ["clash_tiny"]
    assert by_distribution(infos, "zoo-fake-b").models == ["clash_tiny"]
    with pytest.raises(AmbiguousModelError, match=r"zoo-fake-a.*zoo-fake-b|zoo-fake-b.*zoo-fake-a"):
        zoo.create("clash_tiny")
    assert zoo.create("clash_tiny", plugin="zoo-fake-b").zoo_cfg["version"] == "2.0"
    result = CliRunner().invoke(cli, ["info", "clash_tiny"])
    assert result.exit_code == 2 and "plugin=" in result.output


def test_disabling_autoload_never_imports_third_party_code(
    site: FakeSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = site.add("zoo-fake-off", "1.0", model="fakeoff_tiny")
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")
    infos = rescan()
    assert module not in sys.modules
    assert all(p.builtin for p in infos)
    assert "fakeoff_tiny" not in zoo.list_models()
    assert zoo.list_models(plugin="zoo-classifiers")  # built-ins still load
    result = CliRunner().invoke(cli, ["plugins"])
    assert "third-party plugins are disabled" in result.output


def test_discovery_happens_once(site: FakeSite) -> None:
    first = rescan()
    site.add("zoo-fake-late", "1.0", model="fakelate_tiny")
    importlib.invalidate_caches()
    assert plugins.load_plugins() is first  # no rescan without _reset()
    assert "fakelate_tiny" not in zoo.list_models()

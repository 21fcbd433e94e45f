"""hubconf.py: torch.hub entry points for the built-ins, local and GitHub forms."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from publish_helpers import make_run
from torch import nn

import zoo
from zoo.errors import ModelArgumentError
from zoo.models import registry

REPO = str(Path(__file__).resolve().parents[1])
ARGS = {"img_size": 8, "in_chans": 1, "num_classes": 3, "embed_dim": 16, "num_blocks": 1}


@pytest.fixture
def github_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """torch.hub's cache holding this checkout as OWNER/zoo@main, as if downloaded, so the
    GitHub form runs offline. Returns the name to pass to torch.hub."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub_dir = Path(torch.hub.get_dir())
    hub_dir.mkdir(parents=True)
    (hub_dir / "owner_zoo_main").symlink_to(REPO, target_is_directory=True)
    return "owner/zoo:main"


def test_list_names_every_builtin_and_nothing_else(github_cache: str) -> None:
    names = torch.hub.list(github_cache, trust_repo=True, verbose=False)
    assert names == sorted(zoo.list_models(plugin="zoo-classifiers"))  # dir() order
    assert {"resnet18", "mlp_relu", "mlpmixer_p4", "mlpmixer_s16_224"} <= set(names)


def test_load_local_builds_the_same_model_as_zoo_create() -> None:
    args = {"in_chans": 1, "img_size": 16, "num_classes": 5, "widths": [4, 8, 8, 8]}
    torch.manual_seed(0)
    model = torch.hub.load(REPO, "resnet18", source="local", **args)
    torch.manual_seed(0)
    expected = zoo.create("resnet18", **args)
    assert model.zoo_cfg == expected.zoo_cfg
    assert model.zoo_cfg["distribution"] == "zoo-classifiers"
    torch.testing.assert_close(model.state_dict(), expected.state_dict(), rtol=0, atol=0)
    assert model.eval()(torch.randn(2, 1, 16, 16)).shape == (2, 5)


def test_load_github_form(github_cache: str) -> None:
    model = torch.hub.load(github_cache, "mlpmixer_p4", trust_repo=True, verbose=False, **ARGS)
    assert model.zoo_cfg["architecture"] == "mlpmixer_p4"
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 3)


def test_pretrained_may_be_a_weights_source(tmp_path: Path) -> None:
    run, net = make_run(tmp_path / "run", "mlpmixer_p4", ARGS)
    model = torch.hub.load(REPO, "mlpmixer_p4", source="local", pretrained=str(run))
    torch.testing.assert_close(model.state_dict(), net.state_dict(), rtol=0, atol=0)


def test_unknown_arguments_are_refused_like_zoo_create() -> None:
    with pytest.raises(ModelArgumentError, match="mlp_relu does not accept hidden_size; it"):
        torch.hub.load(REPO, "mlp_relu", source="local", hidden_size=3)


def test_help_describes_the_entry(github_cache: str) -> None:
    doc = torch.hub.help(github_cache, "mlpmixer_p4", trust_repo=True)
    assert doc.startswith("zoo.create('mlpmixer_p4', **kwargs): MLP-Mixer")
    assert "pretrained" in doc and "num_classes" in doc


class _Other(nn.Linear):
    pass


def test_entries_build_zoos_model_when_a_plugin_reuses_the_name(isolated_registry: None) -> None:
    def resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _Other(2, 2)

    with registry.registering_as("other-dist", "1.0"):
        registry.register_model(resnet18)
    model = torch.hub.load(REPO, "resnet18", source="local", img_size=8)
    assert model.zoo_cfg["distribution"] == "zoo-classifiers" and not isinstance(model, _Other)
    other = torch.hub.load(REPO, "resnet18", source="local", plugin="other-dist")
    assert isinstance(other, _Other)


@pytest.mark.slow
@pytest.mark.integration
def test_a_checkout_without_zoo_installed(tmp_path: Path) -> None:
    checkout = tmp_path / "zoo-checkout"
    checkout.mkdir()
    shutil.copy(Path(REPO) / "hubconf.py", checkout)
    shutil.copytree(
        Path(REPO) / "zoo", checkout / "zoo", ignore=shutil.ignore_patterns("__pycache__")
    )
    # -S: no site-packages .pth files, so not zoo's editable install; torch & co. come from
    # PYTHONPATH. zoo can then only come from the checkout that torch.hub puts on sys.path.
    site_packages = Path(torch.__file__).parents[1]
    code = (
        "import importlib.util, sys, torch\n"
        "assert importlib.util.find_spec('zoo') is None, 'zoo is importable before torch.hub'\n"
        f"m = torch.hub.load({str(checkout)!r}, 'mlpmixer_p4', source='local', img_size=8)\n"
        "import zoo\n"
        "print(zoo.__file__, m.zoo_cfg['architecture'], tuple(m(torch.randn(1, 3, 8, 8)).shape))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site_packages)}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(checkout / "zoo" / "__init__.py"),
        "mlpmixer_p4",
        "(1,",
        "10)",
    ]

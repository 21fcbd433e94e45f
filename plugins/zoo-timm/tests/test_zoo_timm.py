"""zoo-timm: timm architectures as ``timm/<name>``, lazily, with clear weight errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import zoo
from zoo.errors import ModelArgumentError, UnknownModelError, WeightsError
from zoo.testing import assert_conforms


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.mark.integration
def test_listing_zoo_models_and_importing_the_plugin_do_not_import_timm() -> None:
    done = run_python(
        """
        import sys
        import zoo, zoo_timm
        from zoo.models import plugins
        assert 'timm' not in sys.modules, 'importing zoo_timm imported timm'
        names = zoo.list_models()
        assert 'mlp_relu' in names and not any(n.startswith('timm/') for n in names)
        info = [p for p in plugins.load_plugins() if p.distribution == 'zoo-timm']
        assert info and info[0].error is None and info[0].models == ['timm/*'], info
        assert 'timm' not in sys.modules, 'listing zoo models imported timm'
        """
    )
    assert done.returncode == 0, done.stderr


def test_timm_names_are_listed_when_asked() -> None:
    names = zoo.list_models("timm/resnet1*")
    assert "timm/resnet18" in names and all(n.startswith("timm/resnet1") for n in names)
    assert zoo.list_models("timm/*", plugin="zoo-timm")[:1] == zoo.list_models("timm/*")[:1]


def test_create_builds_with_timm_and_records_zoo_cfg() -> None:
    model = zoo.create("timm/resnet18", num_classes=10)
    assert type(model).__module__.startswith("timm.")
    assert model.zoo_cfg == {
        "architecture": "timm/resnet18",
        "args": {"num_classes": 10, "in_chans": 3, "img_size": 224},
        "distribution": "zoo-timm",
        "version": zoo.models.registry.get_entry("timm/resnet18").version,
    }
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_img_size_and_in_chans_map_to_timm_kwargs() -> None:
    model = zoo.create("timm/test_vit", num_classes=5, in_chans=1, img_size=32)
    assert tuple(model.patch_embed.img_size) == (32, 32)
    assert model.patch_embed.proj.in_channels == 1
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    # CNNs with global pooling take no img_size: it only records the input size.
    assert zoo.create("timm/test_resnet", img_size=64).zoo_cfg["args"]["img_size"] == 64


def test_export_rebuilds_the_same_timm_model(tmp_path: Path) -> None:
    from zoo.weights.files import load_model_dir, save_model_files

    model = zoo.create("timm/test_vit", num_classes=3, img_size=32).eval()
    save_model_files(model, tmp_path, input_size=(3, 32, 32), mean=[0.5] * 3, std=[0.5] * 3)
    loaded = load_model_dir(tmp_path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_unknown_timm_name_and_bad_kwarg_are_zoo_errors() -> None:
    with pytest.raises(UnknownModelError, match="timm/resnet18"):
        zoo.create("timm/resnet19")
    with pytest.raises(ModelArgumentError, match=r"timm/resnet18.*widht"):
        zoo.create("timm/resnet18", widht=3)


def test_pretrained_offline_says_how_to_provide_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args: Any, **kwargs: Any) -> str:
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError) as info:
        zoo.create("timm/resnet18", pretrained=True)
    message = str(info.value)
    assert "could not download" in message and "timm/resnet18" in message
    assert "pretrained_cfg_overlay" in message and "HF_HOME" in message


def test_pretrained_from_a_local_file_as_the_error_suggests(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = zoo.create("timm/test_resnet")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = zoo.create(
        "timm/test_resnet", pretrained=True, pretrained_cfg_overlay={"file": str(path)}
    )
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert "pretrained_cfg_overlay" not in model.zoo_cfg["args"]  # weights, not architecture


@pytest.mark.slow
def test_pretrained_with_hf_hub_offline(tmp_path: Path) -> None:
    done = run_python(
        """
        import zoo
        from zoo.errors import WeightsError
        try:
            zoo.create('timm/resnet18', pretrained=True)
        except WeightsError as e:
            print(e)
        else:
            raise SystemExit('no WeightsError')
        """,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        ZOO_HOME=str(tmp_path / "zoo"),
    )
    assert done.returncode == 0, done.stderr
    assert "could not download timm's pretrained weights for timm/resnet18" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm/test_vit", "timm/test_resnet", "timm/resnet18"])
def test_timm_models_conform(name: str) -> None:
    assert_conforms(name)

"""zoo.analysis.viz: first-layer tiles for ResNet and Mixer, grids, plugins, the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fabricate_runs import make_run
from torch import nn

import zoo
from zoo.analysis import viz
from zoo.analysis.viz import FirstLayer, VizError, first_layer, plot_first_layer, tile_grid
from zoo.cli import cli


def test_resnet18_gives_64_grey_standardised_kernels() -> None:
    model = zoo.create("resnet18")
    layer = first_layer(model)
    assert layer.tiles.shape == (64, 3, 3)
    weight = model.conv1.weight.detach()
    kernel = (weight[5] - weight[5].mean()) / weight[5].std()
    assert torch.allclose(layer.tiles[5], kernel.mean(dim=0), atol=1e-6)
    assert tile_grid(layer.tiles).shape == (8 * 4 - 1, 8 * 4 - 1)  # 8x8 tiles, 1 px gaps


def test_mixer_p4_embed512_gives_256_units_of_8x8() -> None:
    model = zoo.create("mlpmixer_p4", embed_dim=512, num_blocks=1)
    layer = first_layer(model)
    assert layer.tiles.shape == (256, 8, 8)
    unit = model.blocks[0].mlp_tokens.fc1.weight.detach()[7]
    expected = ((unit - unit.mean()) / unit.std()).reshape(8, 8)
    assert torch.allclose(layer.tiles[7], expected, atol=1e-5)
    assert tile_grid(layer.tiles).shape == (16 * 9 - 1, 16 * 9 - 1)


def test_tile_grid_scales_each_tile_and_pads() -> None:
    tiles = torch.stack([torch.arange(4.0).reshape(2, 2), torch.full((2, 2), 3.0)])
    grid = tile_grid(tiles)
    assert grid.shape == (2, 5)  # 2 tiles -> 1 row of 2 columns
    assert grid[:, :2].min() == 0 and grid[:, :2].max() == 1
    assert (grid[:, 3:] == 0).all()  # a constant tile is drawn flat
    assert torch.isnan(torch.from_numpy(grid[:, 2])).all()


def test_plot_first_layer_is_one_image_of_the_grid() -> None:
    fig = plot_first_layer(zoo.create("resnet18"), title="r")
    (ax,) = fig.get_axes()
    (image,) = ax.get_images()
    assert image.get_array().shape == (31, 31)
    assert "64 kernels 3x3" in ax.get_title()


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(
        VizError, match=r"mlp_relu \(MlpClassifier\) has no first-layer.*register_first_layer"
    ):
        first_layer(zoo.create("mlp_relu"))


class _Plugin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 5)


@pytest.fixture
def plugin_provider() -> Iterator[None]:
    @viz.register_first_layer(_Plugin)
    def _provider(model: nn.Module) -> FirstLayer:
        return FirstLayer(model.stem.weight.detach().reshape(5, 4, 4), "plugin stem")

    yield
    del viz._PROVIDERS[_Plugin]


@pytest.mark.usefixtures("plugin_provider")
def test_plugins_register_their_own() -> None:
    class Sub(_Plugin):
        pass

    layer = first_layer(Sub())
    assert layer.tiles.shape == (5, 4, 4) and layer.title == "plugin stem"


def test_cli_viz_run_and_model(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run" / "t", "resnet18", model_args={"widths": [6, 8, 8, 8]})
    result = CliRunner().invoke(cli, ["viz", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "first_layer.png").is_file()
    out = tmp_path / "m.png"
    result = CliRunner().invoke(cli, ["viz", "mlpmixer_p8", "--out", str(out)])
    assert result.exit_code == 0 and out.is_file()
    result = CliRunner().invoke(cli, ["viz", "mlp_tanh"])
    assert result.exit_code == 2 and "no first-layer visualisation" in result.output

"""First-layer visualisations: what the first layer of a trained model looks at.

- ResNet: the first convolution's kernels, each standardised (zero mean, unit std over its
  weights) and averaged over the input channels (RGB) to one grey ``k x k`` tile
  (64 tiles of 3x3 for ``resnet18``).
- MLP-Mixer: the first token-mixing layer (``blocks.0.mlp_tokens.fc1``); each hidden unit's
  weights over the patches, reshaped to the patch grid and standardised (256 tiles of 8x8
  for ``mlpmixer_p4`` with ``embed_dim=512`` on 32x32 images).

A model says what its first layer is with a ``first_layer_weights()`` method returning
``(units, channels, rows, cols)`` weights and a title (zoo's ResNet and Mixer do); each unit
is standardised and averaged over its channels to one grey tile. A plugin whose model class
it cannot change registers a provider for the class instead::

    import zoo.analysis.viz

    @zoo.analysis.viz.register_first_layer(MyNet)
    def _my_first_layer(model: MyNet) -> zoo.analysis.viz.FirstLayer:
        w = model.stem.weight.detach().cpu()          # (units, ...)
        return zoo.analysis.viz.FirstLayer(tiles=w.reshape(len(w), 4, 4), title="MyNet stem")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from zoo.errors import ZooError

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn

__all__ = [
    "FirstLayer",
    "VizError",
    "first_layer",
    "plot_first_layer",
    "register_first_layer",
    "save_first_layer",
    "tile_grid",
]


class VizError(ZooError):
    """The model has no first-layer visualisation."""


@dataclass(frozen=True)
class FirstLayer:
    """One tile per unit: ``tiles`` is ``(units, rows, cols)``; ``title`` describes it."""

    tiles: torch.Tensor
    title: str


Provider = Callable[["nn.Module"], FirstLayer]
P = TypeVar("P", bound=Provider)
_PROVIDERS: dict[type, Provider] = {}


def register_first_layer(cls: type) -> Callable[[P], P]:
    """Decorator: ``fn(model) -> FirstLayer`` visualises models of class ``cls``."""

    def decorate(fn: P) -> P:
        _PROVIDERS[cls] = fn
        return fn

    return decorate


def _standardise(tiles: torch.Tensor) -> torch.Tensor:
    # Per tile, so every kernel uses the full grey range whatever its scale.
    flat = tiles.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True).clamp_min(1e-8)
    return ((flat - mean) / std).reshape(tiles.shape)


def _from_model(model: nn.Module) -> FirstLayer | None:
    """What the model says its first layer is: ``first_layer_weights()`` returns
    ``(units, channels, rows, cols)`` weights and a title."""
    method = getattr(model, "first_layer_weights", None)
    if not callable(method):
        return None
    weights, title = method()
    chans = weights.shape[1]
    grey = _standardise(weights.detach().float().cpu()).mean(dim=1)
    averaged = f", averaged over {chans} input channels" if chans > 1 else ""
    return FirstLayer(grey, f"{title}, standardised{averaged}")


def first_layer(model: nn.Module) -> FirstLayer:
    """The first-layer tiles of ``model``; :class:`VizError` when no provider knows its class."""
    for cls in type(model).__mro__:
        if cls in _PROVIDERS:
            return _PROVIDERS[cls](model)
    found = _from_model(model)
    if found is not None:
        return found
    name = getattr(model, "zoo_cfg", {}).get("architecture", type(model).__name__)
    raise VizError(
        f"{name} ({type(model).__name__}) has no first-layer visualisation: give the model a "
        "first_layer_weights() method returning (units, channels, rows, cols) weights and a "
        "title, or register one with @zoo.analysis.viz.register_first_layer(ModelClass)"
    )


def tile_grid(tiles: torch.Tensor | np.ndarray, pad: int = 1) -> np.ndarray:
    """Lay ``(n, h, w)`` tiles out in a near-square grid, each min-max scaled to [0, 1],
    separated by ``pad`` pixels of NaN (drawn as background). Returns ``(H, W)``."""
    arr = np.asarray(tiles, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"tiles must be (n, h, w), got shape {arr.shape}")
    n, h, w = arr.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), np.nan, dtype=np.float32)
    for i, tile in enumerate(arr):
        lo, hi = float(tile.min()), float(tile.max())
        scaled = (tile - lo) / (hi - lo) if hi > lo else np.zeros_like(tile)
        r, c = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = scaled
    return grid


def plot_first_layer(model: nn.Module, title: str | None = None) -> Figure:
    """A figure of the model's first-layer tiles in a grid (one image, grey colormap)."""
    from zoo.runs.plots import new_figure

    layer = first_layer(model)
    grid = tile_grid(layer.tiles)
    fig = new_figure(figsize=(7, 7 * grid.shape[0] / grid.shape[1] + 0.6))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"{title}\n{layer.title}" if title else layer.title, fontsize=10)
    return fig


def save_first_layer(
    source: str | Path,
    out: str | Path | None = None,
    *,
    img_size: int | None = None,
    in_chans: int | None = None,
) -> Path:
    """Draw the first layer of a run/export directory (its trained weights) or of a freshly
    initialised model name, and write it as a PNG. Default ``out``: ``first_layer.png`` in
    the directory, or ``<name>_first_layer.png`` in the working directory for a name."""
    from zoo.runs.plots import save_figure
    from zoo.weights.factory import create
    from zoo.weights.files import load_model_dir

    path = Path(source)
    if path.is_dir():
        model = load_model_dir(path)
        default = path / "first_layer.png"
    else:
        model = create(str(source), img_size=img_size, in_chans=in_chans)
        default = Path(f"{str(source).replace('/', '_')}_first_layer.png")
    return save_figure(plot_first_layer(model, title=str(source)), out or default)

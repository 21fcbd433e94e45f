"""Batched tensor augmentation: flip, random resized crop and padded random crop.

Each transform is sampled per image exactly as torchvision's (``RandomHorizontalFlip``,
``RandomResizedCrop``, ``RandomCrop(padding=...)``) but applied to a whole (N, C, H, W) batch
at once, on the batch's device. Every random number is drawn on the CPU from the caller's
generator, in a fixed order, so a seed gives the same augmentations on every device and a
resumed run continues the same stream. :func:`zoo.data.datasets.batches` calls
:func:`apply_augment`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "apply_augment", "sample_resized_crop_params"]


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = False
    crop_scale: tuple[float, float] | None = None  # random resized crop (None = off)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_padding: int = 0  # random crop with zero padding (0 = off)
    auto: str | None = None  # per-image policy (zoo.data.autoaugment), after crop and flip


def apply_augment(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Augment a batch (N, C, H, W) of pixels in [0, 255] with the distribution of
    torchvision's usual order: random resized crop (to the same size), padded random crop,
    horizontal flip. Returns the input's dtype unless a resized crop makes it float32 (values
    are not re-quantised to uint8).

    The flip is applied first, where it is cheapest: folded into the resized crop's sampling
    grid (read the columns right to left), else on the uint8 pixels. That changes nothing in
    distribution: a mirrored window at offset j of the padded image is the window at offset
    2 * padding - j of the mirrored one, and offsets are uniform on [0, 2 * padding].
    """
    flip = None
    if config.hflip:
        flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    if config.crop_scale is not None:
        images = _resized_crop(images, config.crop_scale, config.crop_ratio, generator, flip)
    elif flip is not None:
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
    if config.crop_padding > 0:
        images = _padded_crop(images, config.crop_padding, generator)
    if config.auto is not None:  # uint8 out: the policies work on pixels
        from zoo.data.autoaugment import apply_auto

        images = apply_auto(images, config.auto, generator)
    return images


def sample_resized_crop_params(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop boxes (top, left, h, w) for ``n`` images, each int64 (n,), drawn exactly as
    torchvision's ``RandomResizedCrop.get_params``: up to 10 attempts at an area fraction in
    ``scale`` and a log-uniform aspect ratio in ``ratio``; the first that fits wins; if none
    fits, the largest centred crop whose aspect ratio is within ``ratio``."""
    attempts = 10
    area = height * width
    target = area * (
        scale[0] + (scale[1] - scale[0]) * torch.rand(n, attempts, generator=generator)
    )
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, attempts, generator=generator))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # index of the first fitting attempt
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    any_fit = fits.any(dim=1)
    fallback_h, fallback_w = _centre_crop_size(height, width, ratio)
    h = torch.where(any_fit, h, fallback_h)
    w = torch.where(any_fit, w, fallback_w)
    u = torch.rand(n, 2, generator=generator)  # floor(u * count) is randint(0, count - 1)
    top = (u[:, 0] * (height - h + 1)).long()
    left = (u[:, 1] * (width - w + 1)).long()
    top = torch.where(any_fit, top, (height - h) // 2)
    left = torch.where(any_fit, left, (width - w) // 2)
    return top, left, h, w


def _centre_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return round(width / min(ratio)), width
    if in_ratio > max(ratio):
        return height, round(height * max(ratio))
    return height, width


def _resized_crop(
    images: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop each image to its own box and resize it back to (H, W) with bilinear
    interpolation at half-pixel centres, clamped to the box (as PIL's crop-then-resize);
    images where ``flip`` is True come out mirrored."""
    n, _, height, width = images.shape
    boxes = sample_resized_crop_params(n, height, width, scale, ratio, generator)
    top, left, h, w = (t.to(images.device, torch.float32).view(-1, 1) for t in boxes)
    rows = torch.arange(height, device=images.device, dtype=torch.float32).view(1, -1)
    cols = torch.arange(width, device=images.device, dtype=torch.float32).view(1, -1)
    y = torch.minimum(torch.clamp(top + (rows + 0.5) * h / height - 0.5, min=top), top + h - 1)
    x = torch.minimum(torch.clamp(left + (cols + 0.5) * w / width - 0.5, min=left), left + w - 1)
    if flip is not None:
        x = torch.where(flip.view(-1, 1), x.flip(1), x)
    # grid_sample's align_corners=False maps pixel coordinate p to (2p + 1) / size - 1.
    gy = ((2 * y + 1) / height - 1).view(n, height, 1).expand(n, height, width)
    gx = ((2 * x + 1) / width - 1).view(n, 1, width).expand(n, height, width)
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def _padded_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator | None
) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding): zero-pad every side, then cut a window of the
    original size at a uniformly random offset in [0, 2 * padding] per image."""
    n, c, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(images.device)
    rows = (offsets[:, 0:1] + torch.arange(height, device=images.device)).view(n, 1, height, 1)
    cols = (offsets[:, 1:2] + torch.arange(width, device=images.device)).view(n, 1, 1, width)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]

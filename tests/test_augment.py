"""Batch augmentation: flips, random resized crops and padded crops, checked against torchvision."""

from __future__ import annotations

import pytest
import torch

from zoo.data.augment import AugmentConfig, apply_augment, sample_resized_crop_params


def _random_images(n: int = 64, c: int = 3, size: int = 12) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(0)
    ).byte()


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(hflip=True),
        # A resized crop of the whole image is the identity; the flip then rides on its grid.
        AugmentConfig(hflip=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)),
    ],
)
def test_flip_is_an_exact_mirror(config: AugmentConfig) -> None:
    images = _random_images()
    out = apply_augment(images, config, torch.Generator().manual_seed(1))
    mirrored = (out - images.flip(3).to(out.dtype)).abs().flatten(1).amax(1) < 1e-3
    same = (out - images.to(out.dtype)).abs().flatten(1).amax(1) < 1e-3
    assert bool((mirrored | same).all())
    assert 10 < int(mirrored.sum()) < 54  # about half of 64 images are flipped


def test_resized_crop_params_match_torchvision() -> None:
    from torchvision.transforms import RandomResizedCrop

    height, width, scale, ratio = 32, 24, (0.2, 1.0), (3 / 4, 4 / 3)
    top, left, h, w = sample_resized_crop_params(
        4000, height, width, scale, ratio, torch.Generator().manual_seed(0)
    )
    assert bool((top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all())
    assert bool((top + h <= height).all() and (left + w <= width).all())  # crops stay in bounds
    # Rounding w and h to whole pixels can move the area and ratio a little out of range.
    area = (h * w).double() / (height * width)
    assert bool((area >= scale[0] - 0.05).all() and (area <= scale[1] + 0.05).all())
    aspect = w.double() / h
    assert bool((aspect >= ratio[0] - 0.1).all() and (aspect <= ratio[1] + 0.1).all())
    torch.manual_seed(0)
    ref = torch.tensor(
        [
            RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio))
            for _ in range(4000)
        ]
    )
    for ours, theirs in ((top, ref[:, 0]), (left, ref[:, 1]), (h, ref[:, 2]), (w, ref[:, 3])):
        assert ours.double().mean().item() == pytest.approx(theirs.double().mean().item(), abs=0.4)
        assert ours.double().std().item() == pytest.approx(theirs.double().std().item(), rel=0.1)


def test_resized_crop_falls_back_to_centre_crop() -> None:
    # No attempt can fit an area above 100 %, so every box is torchvision's centred fallback.
    top, left, h, w = sample_resized_crop_params(5, 10, 20, (2.0, 3.0), (0.5, 1.0))
    assert (h.tolist(), w.tolist(), top.tolist(), left.tolist()) == (
        [10] * 5,
        [10] * 5,
        [0] * 5,
        [5] * 5,
    )


def test_resized_crop_of_the_whole_image_is_identity() -> None:
    images = _random_images()
    config = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out = apply_augment(images, config, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.allclose(out, images.float(), atol=1e-3)


def test_resized_crop_stays_inside_its_box() -> None:
    # Image = its column index; a resized crop's columns must stay within [left, left + w - 1].
    cols = torch.arange(16, dtype=torch.float32).expand(200, 1, 16, 16)
    config = AugmentConfig(crop_scale=(0.1, 0.5), crop_ratio=(0.5, 2.0))
    out = apply_augment(cols, config, torch.Generator().manual_seed(3))
    _, left, _, w = sample_resized_crop_params(
        200, 16, 16, (0.1, 0.5), (0.5, 2.0), torch.Generator().manual_seed(3)
    )
    assert bool((out.amin(dim=(1, 2, 3)) >= left - 1e-4).all())
    assert bool((out.amax(dim=(1, 2, 3)) <= left + w - 1 + 1e-4).all())
    assert torch.allclose(out[:, 0, 0, 0], left.float(), atol=1e-4)  # the corner pixel is kept
    assert torch.allclose(out[:, 0, 0, -1], (left + w - 1).float(), atol=1e-4)


def test_padded_crop_is_a_window_of_the_zero_padded_image() -> None:
    images, pad = _random_images(n=16, size=8), 2
    out = apply_augment(images, AugmentConfig(crop_padding=pad), torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (pad,) * 4)
    offsets = set()
    for k in range(16):
        windows = [
            (i, j)
            for i in range(2 * pad + 1)
            for j in range(2 * pad + 1)
            if torch.equal(padded[k, :, i : i + 8, j : j + 8], out[k])
        ]
        assert windows, f"image {k} is not a window of its padded image"
        offsets.add(windows[0])
    assert len(offsets) > 3  # offsets vary per image

"""Automatic augmentation policies on uint8 batches: RandAugment, TrivialAugmentWide and
AutoAugment from ``torchvision.transforms.v2``, one policy draw per image.

torchvision's v2 policies draw one set of operations per call, so a batch passed whole
would get the same operations on every image. Per-image randomness needs one call per
image: this module loops over the batch (the only place zoo runs per-image Python; the
README gives its measured cost). The loop draws from torch's CPU generator, seeded from the
caller's generator inside :func:`torch.random.fork_rng`, so a seed gives the same
augmentations on every run and a resumed run continues the same stream, while the global
generator (which dropout draws from) is left as it was.

Policy names follow timm's strings: ``rand-m9-mstd0.5`` is RandAugment with magnitude 9 of
10 (timm's scale), 2 operations per image (``-n3`` for 3), and a per-image magnitude drawn
from a normal distribution with standard deviation 0.5 (``-mstd``); ``trivial`` is
TrivialAugmentWide; ``autoaugment`` is AutoAugment's ImageNet policy.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["AUTO_POLICIES", "AutoPolicy", "apply_auto", "parse_policy"]

AUTO_POLICIES = ("rand-m9-mstd0.5", "trivial", "autoaugment")  # examples; rand-* is open
_RAND_RE = re.compile(r"^rand-m(?P<m>\d+)(-n(?P<n>\d+))?(-mstd(?P<std>\d+(\.\d+)?))?$")
# torchvision's RandAugment magnitude is a bin index; 31 bins put timm's m/10 at bin 3m
_BINS = 31
_TIMM_MAX_MAGNITUDE = 10


@dataclass(frozen=True)
class AutoPolicy:
    """A parsed policy name: ``kind`` is rand, trivial or autoaugment."""

    kind: str
    magnitude: float = 9.0  # rand: timm's scale, 0-10
    num_ops: int = 2  # rand
    magnitude_std: float = 0.0  # rand: per-image spread of the magnitude


def parse_policy(name: str) -> AutoPolicy:
    """The policy ``name`` stands for; ValueError for names it cannot be."""
    if name in ("trivial", "autoaugment"):
        return AutoPolicy(name)
    match = _RAND_RE.match(name)
    if match is None or int(match["m"]) > _TIMM_MAX_MAGNITUDE:
        raise ValueError(f"unknown augmentation policy {name!r}")
    return AutoPolicy(
        "rand",
        magnitude=float(match["m"]),
        num_ops=int(match["n"] or 2),
        magnitude_std=float(match["std"] or 0.0),
    )


@functools.lru_cache(maxsize=8)
def _transform(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    policy = parse_policy(name)
    if policy.kind == "trivial":
        return v2.TrivialAugmentWide(num_magnitude_bins=_BINS)
    if policy.kind == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    return v2.RandAugment(
        num_ops=policy.num_ops, magnitude=_bin(policy.magnitude), num_magnitude_bins=_BINS
    )


def _bin(magnitude: float) -> int:
    return round(min(max(magnitude, 0.0), _TIMM_MAX_MAGNITUDE) * (_BINS - 1) / 10)


def apply_auto(images: torch.Tensor, name: str, generator: torch.Generator | None) -> torch.Tensor:
    """Each image of the uint8 batch (N, C, H, W) through its own draw of policy ``name``;
    float pixels in [0, 255] (after a resized crop) are rounded to uint8 first. Returns
    uint8 on the input's device. Draws one number from ``generator``."""
    if images.dtype != torch.uint8:
        images = images.round().clamp_(0, 255).to(torch.uint8)
    policy = parse_policy(name)
    transform = _transform(name)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    out = torch.empty_like(images)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for i in range(images.shape[0]):
            if policy.kind == "rand" and policy.magnitude_std > 0:
                drawn = policy.magnitude + policy.magnitude_std * float(torch.randn(()))
                transform.magnitude = _bin(drawn)  # type: ignore[attr-defined]
            out[i] = transform(images[i])
    return out

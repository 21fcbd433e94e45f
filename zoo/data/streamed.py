"""Splits streamed from disk: each batch decoded in DataLoader workers.

An image folder too large for the memory budget (:mod:`zoo.data.imagefolder`) becomes
:class:`StreamedSplit` objects. :func:`zoo.data.datasets.batches` asks a split for the uint8
images of each batch of indices (:meth:`~zoo.data.datasets.Split.fetch`); a streamed split
answers with a DataLoader whose workers decode whole batches, so the augmentation,
normalisation and order downstream are exactly those of an in-memory split. One
:class:`PixelSums` pass over the files (cached by the caller) finds the unreadable ones and
gives :class:`Scan` the per-image pixel sums that make the training split's mean/std exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from zoo.data.datasets import Split
from zoo.data.images import UnreadableImage, quiet_decoder, read_image
from zoo.errors import DataError

__all__ = ["FileBatches", "PixelSums", "Scan", "StreamedSplit"]

_Pair = tuple[torch.Tensor, torch.Tensor]


class FileBatches(Dataset[torch.Tensor]):
    """Item = a list of indices -> their decoded images as one uint8 batch (DataLoader
    workers decode whole batches; ``batch_size=None`` turns off collation)."""

    def __init__(self, paths: Sequence[str], in_chans: int, img_size: int) -> None:
        self.paths, self.in_chans, self.img_size = list(paths), in_chans, img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        with quiet_decoder():
            out = torch.empty(
                (len(indices), self.in_chans, self.img_size, self.img_size), dtype=torch.uint8
            )
            for row, i in enumerate(indices):
                try:
                    out[row] = read_image(Path(self.paths[i]), self.in_chans, self.img_size)[0]
                except UnreadableImage as e:
                    raise DataError(
                        f"cannot read {self.paths[i]} ({e}); it changed since it was scanned: "
                        "train again to rescan the folder."
                    ) from None
        return out


class PixelSums(FileBatches):
    """Item = a list of indices -> (readable, per-channel pixel sums, sums of squares,
    resized) of each image, for the one scan of a streamed folder."""

    def __getitem__(self, indices: list[int]) -> Any:
        n, c = len(indices), self.in_chans
        ok, resized = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        sums, squares = torch.zeros(n, c, dtype=torch.int64), torch.zeros(n, c, dtype=torch.int64)
        reasons = {}
        with quiet_decoder():
            for row, i in enumerate(indices):
                try:
                    image, resized[row] = read_image(Path(self.paths[i]), c, self.img_size)
                except UnreadableImage as e:
                    reasons[i] = str(e)
                    continue
                pixels = image.reshape(c, -1).to(torch.int64)
                ok[row], sums[row], squares[row] = True, pixels.sum(1), (pixels * pixels).sum(1)
        return ok, sums, squares, resized, reasons


@dataclass(frozen=True, eq=False)
class StreamedSplit(Split):
    """A split decoded batch by batch from its files in DataLoader workers. ``images`` is an
    empty (0, C, H, W) tensor that only carries the device."""

    paths: tuple[str, ...] = ()
    in_chans: int = 3
    img_size: int = 32
    workers: int = 2

    def fetch(self, index_batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        from torch.utils.data import DataLoader

        batches = [idx.tolist() for idx in index_batches]
        loader = DataLoader(
            FileBatches(self.paths, self.in_chans, self.img_size),
            batch_size=None,
            sampler=batches,
            num_workers=min(self.workers, len(batches)),
        )
        device = self.images.device
        for images in loader:
            yield images.to(device, non_blocking=True)

    def part(self, start: int, stop: int) -> Split:
        return StreamedSplit(
            self.images,
            self.labels[start:stop],
            paths=self.paths[start:stop],
            in_chans=self.in_chans,
            img_size=self.img_size,
            workers=self.workers,
        )


@dataclass(frozen=True)
class Scan:
    """What one pass over a streamed folder found: its files, pixel sums per image."""

    root: Path
    paths: list[str]  # every readable image, listing order
    sums: torch.Tensor  # int64 (N, C), per image
    squares: torch.Tensor  # int64 (N, C)
    in_chans: int
    img_size: int

    def stats(self, indices: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The exact per-channel mean and std of the images ``indices``, in [0, 1] units."""
        pixels = len(indices) * self.img_size**2 * 255.0
        mean = self.sums[indices].sum(0).double() / pixels
        var = self.squares[indices].sum(0).double() / (pixels * 255.0) - mean**2
        std = var.clamp(min=0).sqrt().clamp(min=1e-6)
        return tuple(mean.tolist()), tuple(std.tolist())

    def split(self, pair: _Pair, device: str | torch.device, workers: int) -> Split:
        indices, labels = pair
        return StreamedSplit(
            torch.empty(
                (0, self.in_chans, self.img_size, self.img_size), dtype=torch.uint8, device=device
            ),
            labels.to(device),
            paths=tuple(self.paths[i] for i in indices.tolist()),
            in_chans=self.in_chans,
            img_size=self.img_size,
            workers=workers,
        )

"""Progress reporters for :func:`zoo.training.loop.fit`: callables that receive event dicts.

Events: ``{"event": "start", run_dir, name, device, epochs, first_epoch, steps}``,
``{"event": "step", epoch, step, steps, loss, acc, images_per_s}`` (running means of the
epoch), ``{"event": "epoch", epochs, **metrics row}``, ``{"event": "end", run_dir, summary}``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LogProgress", "Progress", "TensorBoardProgress", "TqdmProgress", "combine"]

log = logging.getLogger("zoo.training.loop")

Progress = Callable[[dict[str, Any]], None]


def combine(progress: Progress | Sequence[Progress] | None) -> Progress:
    if progress is None:
        return LogProgress()
    if callable(progress):
        return progress
    callbacks = list(progress)

    def fan_out(event: dict[str, Any]) -> None:
        for callback in callbacks:
            callback(event)

    return fan_out


def _epoch_line(e: Mapping[str, Any]) -> str:
    return (
        f"epoch {e['epoch']}/{e['epochs']}: train loss {e['train_loss']:.4f} "
        f"acc {e['train_acc']:.4f} | valid loss {e['valid_loss']:.4f} acc {e['valid_acc']:.4f}"
        f" | lr {e['lr']:.3g} | {e['images_per_s']:.0f} img/s | {e['seconds']:.1f} s"
    )


class LogProgress:
    """Plain log lines (CI, files): one every ``interval_s`` seconds within an epoch, one
    per epoch, one at the end."""

    def __init__(self, interval_s: float = 30.0, logger: logging.Logger = log) -> None:
        self.interval_s, self.logger, self._last = interval_s, logger, time.monotonic()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.logger.info(
                "training %s on %s into %s (epochs %d-%d, %d steps each)",
                event["name"],
                event["device"],
                event["run_dir"],
                event["first_epoch"],
                event["epochs"],
                event["steps"],
            )
        elif kind == "step" and time.monotonic() - self._last >= self.interval_s:
            self._last = time.monotonic()
            self.logger.info(
                "epoch %d step %d/%d: loss %.4f acc %.4f, %.0f img/s",
                event["epoch"],
                event["step"],
                event["steps"],
                event["loss"],
                event["acc"],
                event["images_per_s"],
            )
        elif kind == "epoch":
            self._last = time.monotonic()
            self.logger.info(_epoch_line(event))
        elif kind == "end":
            s = event["summary"]
            self.logger.info(
                "test accuracy %.4f, loss %.4f (%s)",
                s["test_acc"],
                s["test_loss"],
                event["run_dir"],
            )


class TqdmProgress:
    """A tqdm bar per epoch with live loss, accuracy and images/s (for a terminal)."""

    def __init__(self, file: Any = None) -> None:
        self.file = file if file is not None else sys.stderr
        self.bar: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        kind = event["event"]
        if kind == "step":
            if self.bar is None:
                self.bar = tqdm(
                    total=event["steps"],
                    desc=f"epoch {event['epoch']}",
                    file=self.file,
                    leave=False,
                    dynamic_ncols=True,
                )
            self.bar.update(1)
            if event["step"] % 10 == 0 or event["step"] == event["steps"]:
                self.bar.set_postfix(
                    loss=f"{event['loss']:.3f}",
                    acc=f"{event['acc']:.3f}",
                    img_s=f"{event['images_per_s']:.0f}",
                    refresh=False,
                )
        elif kind in ("epoch", "end") and self.bar is not None:
            self.bar.close()
            self.bar = None
        if kind == "epoch":
            tqdm.write(_epoch_line(event), file=self.file)


class TensorBoardProgress:
    """Per-epoch metrics as TensorBoard scalars in ``<run>/tensorboard``. Raises ImportError
    when TensorBoard is not installed."""

    def __init__(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer_cls = SummaryWriter
        self.writer: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event["event"] == "start":
            self.writer = self._writer_cls(str(Path(event["run_dir"]) / "tensorboard"))
        elif event["event"] == "epoch" and self.writer is not None:
            for key, value in event.items():
                if key not in ("event", "epoch", "epochs") and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, event["epoch"])
            self.writer.flush()
        elif event["event"] == "end" and self.writer is not None:
            self.writer.close()

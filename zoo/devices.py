"""Devices and precision, for training and for measurement alike.

:func:`select_device` turns ``auto`` (or a name) into the device to use; :func:`autocast`
gives the autocast context of a precision (``fp32``, ``bf16``, ``fp16``) on a device type.
torch is imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from zoo.errors import RecipeError

if TYPE_CHECKING:
    import torch

__all__ = [
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "gib",
    "memory_budget",
    "select_device",
]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def select_device(
    requested: str | None = "auto", *, cuda: bool | None = None, mps: bool | None = None
) -> str:
    """``auto`` picks cuda, then mps, then cpu; anything else is checked and returned.
    ``cuda``/``mps`` say what is available (default: ask torch)."""
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if mps is None:
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    requested = (requested or "auto").lower()
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    kind = requested.split(":")[0]
    available = {"cpu": True, "cuda": cuda, "mps": mps}
    if kind not in available or (kind != "cuda" and ":" in requested):
        raise RecipeError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    if not available[kind]:
        raise RecipeError(
            f"device {requested!r} is not available on this machine; use --device auto or cpu"
        )
    return requested


def autocast_dtype(
    precision: str, device_type: str, *, training: bool = True
) -> torch.dtype | None:
    """The dtype to autocast to for ``precision`` on ``device_type`` (None: plain fp32).
    Training in fp16 needs a gradient scaler, which zoo supports on CUDA only."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if training and device_type != "cuda":
            raise RecipeError(
                f"precision fp16 needs a CUDA device (it trains with a gradient scaler), but the "
                f"device is {device_type}; use precision: bf16 or fp32"
            )
        return torch.float16
    raise RecipeError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")


def autocast(
    device_type: str, precision: str, *, training: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for ``precision`` on ``device_type`` (a no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision, device_type, training=training)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def memory_budget(device: str = "cpu") -> int | None:
    """Bytes a new allocation on ``device`` can take: free CUDA memory, or this machine's
    available RAM (``MemAvailable``, else physical memory); None when unknown (mps).
    Used to refuse absurd models and batches with an estimate instead of an OOM crash."""
    kind = device.split(":")[0]
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def gib(nbytes: float) -> str:
    """``"12.3 GiB"``: sizes in refusals."""
    return f"{nbytes / (1 << 30):.1f} GiB"

"""The environment a measurement or a run was made in, recorded next to its numbers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["describe", "environment", "git_sha", "load_average"]


def git_sha(directory: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``directory`` (default: zoo's source), with a
    ``-dirty`` suffix when it has uncommitted changes; None outside a checkout."""
    where = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):  # no git binary, or it hangs
        return None
    suffix = "-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else ""
    return sha.stdout.strip() + suffix


def device_name(device: str) -> str:
    """A human name for a torch device string: the GPU model, or the CPU's."""
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.device(device)))
    if kind == "mps":
        return "Apple MPS"
    return _cpu_name()


def _cpu_name() -> str:
    """``Intel(R) Xeon(R) ... (2 logical CPUs)`` where Linux says; else what platform knows."""
    cpus = f" ({os.cpu_count()} logical CPUs)" if os.cpu_count() else ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + cpus
    except OSError:
        pass
    return (platform.processor() or platform.machine() or "cpu") + cpus


def environment(device: str = "cpu") -> dict[str, Any]:
    """torch and python versions, device, threads, zoo version, git sha and platform."""
    import torch

    from zoo._version import __version__

    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "zoo_version": __version__,
        "git_sha": git_sha(),
        "platform": platform.platform(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (Linux), to record how busy a shared machine was
    while a benchmark ran; None where /proc/loadavg does not exist."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def describe(env: Mapping[str, Any], load: Mapping[str, Any] | None = None) -> str:
    """One sentence for a results file: ``<device>, torch X, N threads, zoo V (sha)``, plus
    the load averages before and after when ``load`` (``{"before": .., "after": ..}``) is given."""
    text = (
        f"{env['device_name']}, torch {env['torch']}, {env['threads']} threads, "
        f"zoo {env['zoo_version']} ({env['git_sha']})"
    )
    if load is not None:
        text += f"; load average before/after {load['before']} / {load['after']}"
    return text + "."

"""Data-parallel training: the few facts the trainer needs about its process group.

``torchrun --nproc-per-node N -m zoo train RECIPE`` starts N copies of ``zoo train``; each
learns its place from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). Without those variables (or with WORLD_SIZE=1) nothing here
does anything and the trainer runs its single-process loop unchanged.

How the work is split, so that N processes train like one process with an N-times batch:

- every rank draws the same seeded permutation of the training split each epoch and takes
  every N-th index of it (padded by wrapping around, as torch's DistributedSampler does,
  so all ranks take the same number of steps); augmentation and dropout draw from seeds
  derived from (seed, epoch, rank), so they differ between ranks and a resumed run
  recomputes them;
- DistributedDataParallel averages the gradients, so the weights stay identical on every
  rank; the per-rank batch is ``data.batch_size`` (``data.batch_size_mode: per_rank``, the
  global batch is N times that) or ``data.batch_size / N`` (``global``);
- evaluation gives each rank a contiguous slice of the split and sums (loss, correct, count)
  over ranks, so the accuracy equals a single-process evaluation of the same weights;
- only rank 0 writes the run directory, checkpoints and pushes.

A peer that dies makes the others fail: torchrun stops the remaining workers of a node, and
every collective has a timeout (``ZOO_DIST_TIMEOUT`` seconds, default 600) so a rank on
another node cannot wait forever.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from zoo.errors import RecipeError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "SINGLE",
    "Dist",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "check_nproc",
    "cleanup",
    "eval_slice",
    "from_env",
    "rank_batch_size",
    "rank_seed",
    "setup",
    "shard_order",
    "timeout_s",
    "torchrun_command",
    "wrap",
]

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank ``rank`` of ``world_size``, device
    ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env(environ: Mapping[str, str] | None = None) -> Dist:
    """The place torchrun gave this process (``SINGLE`` when it was not started by torchrun)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return SINGLE
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        shown = {k: env.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        raise RecipeError(
            f"torchrun environment {shown} is not integers; start zoo with torchrun or unset them"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise RecipeError(
            f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} is not a valid place in a "
            "job; start zoo with torchrun or unset these variables"
        )
    return Dist(rank, world, local)


def timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """Seconds any collective may wait for a peer before the job fails (ZOO_DIST_TIMEOUT)."""
    env = os.environ if environ is None else environ
    text = env.get("ZOO_DIST_TIMEOUT", "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or not math.isfinite(value):
        raise RecipeError(f"ZOO_DIST_TIMEOUT={text!r}: give a positive number of seconds")
    return value


def setup(device: str) -> tuple[Dist, str]:
    """Join the process group torchrun describes (once per process) and return this
    process's place and the device it trains on: ``cuda:LOCAL_RANK`` with NCCL on GPUs,
    the CPU with gloo. Outside torchrun: ``(SINGLE, device)``."""
    place = from_env()
    if not place.enabled:
        return place, device
    import torch
    import torch.distributed as dist

    kind = device.split(":")[0]
    if kind == "mps":
        raise RecipeError(
            "distributed training supports cuda (NCCL) and cpu (gloo), not mps; "
            "use --device cpu or train in one process"
        )
    if kind == "cuda":
        count = torch.cuda.device_count()
        if place.local_rank >= count:
            raise RecipeError(
                f"LOCAL_RANK {place.local_rank} has no GPU (this node has {count}); start "
                f"torchrun with --nproc-per-node {count} or fewer"
            )
        device = f"cuda:{place.local_rank}"  # one GPU per process, whatever the recipe named
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if kind == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_s()),
            device_id=torch.device(device) if kind == "cuda" else None,  # NCCL: bind now
        )
    if dist.get_world_size() != place.world_size or dist.get_rank() != place.rank:
        raise RecipeError(  # someone else initialised a different group in this process
            f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not "
            f"match torchrun's environment (rank {place.rank} of {place.world_size})"
        )
    return place, device


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


# -- pure arithmetic ---------------------------------------------------------------------


def rank_batch_size(batch_size: int, mode: str, world_size: int) -> int:
    """Images per rank and step: ``batch_size`` itself (``per_rank``; the global batch is
    ``batch_size * world_size``) or its share of a fixed global batch (``global``)."""
    if mode == "per_rank" or world_size == 1:
        return batch_size
    if mode != "global":
        raise RecipeError(f"data.batch_size_mode {mode!r}: use per_rank or global")
    if batch_size % world_size:
        closest = batch_size - batch_size % world_size or world_size
        raise RecipeError(
            f"data.batch_size {batch_size} (batch_size_mode: global) does not split evenly "
            f"over {world_size} processes; use a multiple of {world_size} such as {closest}, "
            "or batch_size_mode: per_rank"
        )
    return batch_size // world_size


def shard_order(n: int, place: Dist, generator: torch.Generator) -> torch.Tensor:
    """This rank's indices for one epoch: every ``world_size``-th entry of the seeded
    permutation of ``range(n)``, padded by wrapping so every rank gets ``ceil(n / world)``.
    The ranks' slices are disjoint except for the (fewer than ``world_size``) padding."""
    import torch

    perm = torch.randperm(n, generator=generator)
    total = math.ceil(n / place.world_size) * place.world_size
    if total > n:
        perm = perm.repeat(math.ceil(total / n))[:total]
    return perm[place.rank : total : place.world_size]


def eval_slice(n: int, place: Dist) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` of an ``n``-image split this rank evaluates."""
    return place.rank * n // place.world_size, (place.rank + 1) * n // place.world_size


def rank_seed(seed: int, epoch: int, rank: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` ("augment", "dropout") on ``rank`` in ``epoch``:
    distinct per rank, the same every time it is recomputed (so resuming needs no state)."""
    digest = hashlib.sha256(f"zoo/{purpose}/{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_nproc(nproc: int, device: str) -> None:
    """Refuse ``--nproc N`` beyond what this machine trains ``device`` (a selected device,
    see :func:`zoo.devices.select_device`) on: one process per GPU on cuda (NCCL), one per
    CPU on the CPU (gloo), and one process on mps, which has no distributed backend."""
    kind = device.split(":")[0]
    if kind == "cuda":
        import torch

        limit = torch.cuda.device_count()
        what = f"this machine has {limit} GPU(s) and each process needs its own"
    elif kind == "mps":
        limit, what = 1, "distributed training supports cuda and cpu, not mps"
    else:
        limit = os.cpu_count() or 1
        what = f"this machine has {limit} CPU(s)"
    if nproc > limit:
        raise RecipeError(
            f"--nproc {nproc} is more than device {device} can run: {what}; use --nproc "
            f"{limit} or fewer"
        )


def torchrun_command(argv: Sequence[str], nproc: int, python: str | None = None) -> list[str]:
    """The one-node torchrun command line that runs ``zoo ARGV`` in ``nproc`` processes:
    ``argv`` is the command line after ``zoo``, with its ``--nproc`` option removed here."""
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return [
        python or sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free local rendezvous port: several jobs may share a machine
        f"--nproc-per-node={nproc}",
        "-m",
        "zoo",
        *rest,
    ]


# -- collectives (only called when the group exists) ---------------------------------------


def wrap(model: nn.Module, device: str) -> nn.Module:
    """``model`` in DistributedDataParallel (it broadcasts rank 0's weights now and
    averages gradients in every backward)."""
    from torch.nn.parallel import DistributedDataParallel

    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)


def all_reduce_sum(values: Sequence[float | torch.Tensor], device: str) -> list[float]:
    """Sums of ``values`` over all ranks, in one float64 collective."""
    import torch
    import torch.distributed as dist

    # float64: counts stay exact up to 2**53 images
    tensor = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64).to(device).reshape(()) for v in values]
    )
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(x) for x in tensor.cpu().tolist()]


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics, updated by each
    rank's own batches), the ones rank 0 saves."""
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself outside a process group)."""
    if not _initialized():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()

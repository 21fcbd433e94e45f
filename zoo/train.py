"""The trainer: one loop from a :class:`~zoo.recipe.Recipe` to a run directory.

Read it top to bottom: small pure decisions (device, precision), the builders (data,
model), the :class:`Run` and one training epoch, checkpoint state, and :func:`fit`, which
strings them together and writes the run directory::

    recipe.yaml  metrics.jsonl  summary.json  checkpoints/  model.safetensors  config.json

Around the loop: :mod:`zoo.optim` builds the optimizer and its per-iteration schedule,
:mod:`zoo.evaluation` measures a split, :mod:`zoo.rundir` claims, resumes and finishes run
directories, and :mod:`zoo.launch` trains a whole sweep or plans a dry run.

Determinism: the seed fixes model initialisation; each epoch's data order and augmentation
come from a fresh generator seeded with ``(seed, epoch)``; dropout draws from torch's global
generator, whose state is checkpointed. So on a CPU, a run resumed from its checkpoint ends
with exactly the weights of an uninterrupted run.

Under torchrun the same loop runs in every process, with DistributedDataParallel, a shard
of each epoch's permutation per rank, evaluation summed over ranks and rank 0 alone
writing; :mod:`zoo.distributed` says how. With one process none of that code runs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo import distributed
from zoo._io import atomic_write_json, atomic_write_text
from zoo.checkpoint import CHECKPOINT_DIR, get_rng_state, load_checkpoint, set_rng_state
from zoo.checkpoint import save_checkpoint as _save_checkpoint
from zoo.distributed import SINGLE, Dist
from zoo.errors import RecipeError, RunError, TrainingError
from zoo.evaluation import evaluate_run
from zoo.optim import build_optimizer, build_scheduler
from zoo.progress import Progress, combine
from zoo.rundir import (
    after_run,
    check_run_dir,
    claim_run_dir,
    default_run_dir,
    read_metrics,
    resume_recipe,
    write_errors,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.data import DataBundle
    from zoo.recipe import Recipe

__all__ = [
    "Run",
    "TrainingInterrupted",
    "autocast_dtype",
    "build_data",
    "build_model",
    "fit",
    "select_device",
    "setup_run",
    "steps_per_epoch",
    "train_epoch",
]

log = logging.getLogger(__name__)


class TrainingInterrupted(TrainingError):
    """The user stopped training (Ctrl-C); the last complete epoch is checkpointed."""

    exit_code = 130


# -- small pure decisions ------------------------------------------------------------------


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
    if kind not in available:
        raise RecipeError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    if not available[kind]:
        raise RecipeError(
            f"device {requested!r} is not available on this machine; use --device auto or cpu"
        )
    return requested


def autocast_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """The dtype to autocast to for ``precision`` on ``device_type`` (None: plain fp32).
    fp16 needs a gradient scaler, which zoo supports on CUDA only."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device_type != "cuda":
            raise RecipeError(
                f"precision fp16 needs a CUDA device (it trains with a gradient scaler), but the "
                f"device is {device_type}; use precision: bf16 or fp32"
            )
        return torch.float16
    raise RecipeError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the generator that orders and augments the data of ``epoch`` (1-based)."""
    return seed * 100_003 + epoch


def steps_per_epoch(recipe: Recipe, train_size: int, world_size: int = 1) -> int:
    """Optimizer steps per epoch; with ``world_size`` processes each takes a
    ``ceil(train_size / world_size)`` shard in batches of its per-rank batch size."""
    from zoo.data import num_batches

    d = recipe.data
    batch = distributed.rank_batch_size(d.batch_size, d.batch_size_mode, world_size)
    steps = num_batches(math.ceil(train_size / world_size), batch, drop_last=False)
    if recipe.limit_train_batches is not None:
        steps = min(steps, recipe.limit_train_batches)
    return steps


# -- builders ------------------------------------------------------------------------------


def build_data(recipe: Recipe, device: str) -> DataBundle:
    from zoo import data

    d = recipe.data
    return data.build(
        d.dataset,
        d.root,
        valid_size=d.valid_size,
        split_seed=d.split_seed,
        train_subset=d.train_subset,
        test_subset=d.test_subset,
        device=device,
        synthetic=dict(d.synthetic) if d.synthetic else None,
    )


def build_model(recipe: Recipe, data: DataBundle) -> nn.Module:
    """The recipe's model, shaped for the dataset unless the recipe's args say otherwise."""
    from zoo import registry

    args = {
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        "img_size": data.img_size,
        **recipe.model.args,
    }
    return registry.create(recipe.model.name, plugin=recipe.model.plugin, **args)


def _augment(recipe: Recipe) -> Any:
    from zoo.augment import AugmentConfig

    a = recipe.data.augment
    config = AugmentConfig(
        hflip=a.hflip,
        crop_scale=a.crop_scale,
        crop_ratio=a.crop_ratio,
        crop_padding=a.crop_padding,
    )
    return config if config != AugmentConfig() else None


# -- the loop ------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one training run updates, in one place."""

    recipe: Recipe
    data: DataBundle
    model: nn.Module  # the module whose state is saved
    # model, or its DistributedDataParallel and/or torch.compile wrapper
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    device: str
    amp_dtype: torch.dtype | None
    steps: int  # optimizer steps per epoch
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_acc: float = -1.0
    wall_time_s: float = 0.0
    stop_requested: bool = False
    dist: Dist = SINGLE  # this process's place under torchrun

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def batch_size(self) -> int:
        """Training images per step in this process."""
        d = self.recipe.data
        return distributed.rank_batch_size(d.batch_size, d.batch_size_mode, self.dist.world_size)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)


def train_epoch(run: Run, epoch: int, progress: Progress) -> dict[str, float]:
    """One pass over (at most ``steps`` batches of) the training split."""
    import torch
    import torch.nn.functional as F

    from zoo.data import batches

    r, model, place = run.recipe, run.model, run.dist
    model.train()
    generator = torch.Generator()  # zoo.data draws all randomness on the CPU
    generator.manual_seed(epoch_seed(r.seed, epoch))
    order = None
    if place.enabled:
        # Every rank draws the same permutation and takes its own slice; augmentation and
        # dropout then draw from rank-distinct seeds that a resumed run recomputes.
        order = distributed.shard_order(len(run.data.train), place, generator)
        generator.manual_seed(distributed.rank_seed(r.seed, epoch, place.rank, "augment"))
        torch.manual_seed(distributed.rank_seed(r.seed, epoch, place.rank, "dropout"))
    stream = batches(
        run.data.train,
        run.batch_size,
        shuffle=True,
        generator=generator,
        augment=_augment(r),
        mean=run.data.mean,
        std=run.data.std,
        channels_last=r.channels_last,
        order=order,
    )
    loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
    start = time.perf_counter()
    for step, (x, y) in enumerate(itertools.islice(stream, run.steps), start=1):
        with run.autocast():
            logits = run.forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=r.label_smoothing)
        value = loss.item()
        run.optimizer.zero_grad(set_to_none=True)
        if place.enabled and not math.isfinite(_sum_over_ranks(run, loss)):
            value = math.nan  # all ranks skip or stop together: DDP's backward is a collective
        if not math.isfinite(value):
            _on_bad_loss(run, value, epoch, step)
            skipped += 1
        else:
            _backward_and_step(run, loss)
            loss_sum += value * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        run.scheduler.step()  # per iteration, also for skipped steps: the schedule is time
        progress(
            {
                "event": "step",
                "epoch": epoch,
                "step": step,
                "steps": run.steps,
                "loss": loss_sum / max(seen, 1),
                "acc": correct / max(seen, 1),
                "images_per_s": (seen + skipped * run.batch_size) / (time.perf_counter() - start),
            }
        )
    seconds = time.perf_counter() - start
    if place.enabled:  # metrics of the whole global batch; images/s of all ranks together
        loss_sum, sums_correct, sums_seen = distributed.all_reduce_sum(
            [loss_sum, correct, seen], run.device
        )
        correct, seen = int(sums_correct), int(sums_seen)
    out = {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}
    out["train_seconds"] = seconds
    out["images_per_s"] = seen / seconds if seconds > 0 else 0.0
    if r.on_nan == "skip":
        out["skipped_steps"] = skipped
    return out


def _sum_over_ranks(run: Run, loss: torch.Tensor) -> float:
    """The loss summed over ranks: NaN when any rank's is."""
    return distributed.all_reduce_sum([loss.detach().float()], run.device)[0]


def _backward_and_step(run: Run, loss: torch.Tensor) -> None:
    import torch

    grad_clip = run.recipe.grad_clip
    if run.scaler is None:
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
        run.optimizer.step()
        return
    run.scaler.scale(loss).backward()
    if grad_clip:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()


def _on_bad_loss(run: Run, value: float, epoch: int, step: int) -> None:
    r = run.recipe
    if r.on_nan == "skip":
        log.warning(
            "loss is %s at epoch %d, step %d: step skipped (on_nan: skip)", value, epoch, step
        )
        return
    last = epoch - 1
    kept = (
        f"the last good checkpoint (epoch {last}) is kept in {run.run_dir / CHECKPOINT_DIR}"
        if last >= 1
        else "no epoch had finished, so there is no checkpoint"
    )
    precision = (
        f" or low precision (precision is {r.precision}: try --set precision=fp32)"
        if r.precision != "fp32"
        else ""
    )
    raise TrainingError(
        f"loss is {value} at epoch {epoch}, step {step} of {run.steps}; {kept}. Usual causes: "
        f"a learning rate too high (optim.lr is {r.optim.lr}: try "
        f"--set optim.lr={r.optim.lr / 10:g}){precision}; "
        "--set on_nan=skip skips such steps instead"
    )


# -- checkpoint state and Ctrl-C -----------------------------------------------------------


def _checkpoint_state(run: Run) -> dict[str, Any]:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng": get_rng_state(),
        "best_epoch": run.best_epoch,
        "best_valid_acc": run.best_valid_acc,
        "wall_time_s": run.wall_time_s,
        "recipe_hash": run.recipe.hash(),
        **({"world_size": run.dist.world_size} if run.dist.enabled else {}),
    }


def _restore(run: Run) -> int:
    """Load the run's checkpoint into ``run``; return the epoch it completed."""
    from zoo.export import load_weights

    state, epoch = load_checkpoint(run.run_dir / CHECKPOINT_DIR)
    saved = state.get("world_size", 1)
    if saved != run.dist.world_size:  # the data order, batch and schedule depend on it
        how = f"torchrun --nproc-per-node {saved} -m zoo" if saved > 1 else "zoo (one process)"
        raise RunError(
            f"cannot resume {run.run_dir} in {run.dist.world_size} process(es): its checkpoint "
            f"was written by a {saved}-process run; resume it with `{how} train --resume "
            f"{run.run_dir}`"
        )
    load_weights(run.model, state["model"], str(run.run_dir / CHECKPOINT_DIR))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state["scaler"] is not None:
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    run.best_epoch, run.best_valid_acc = state["best_epoch"], state["best_valid_acc"]
    run.wall_time_s = state["wall_time_s"]
    run.history = [row for row in read_metrics(run.run_dir) if row["epoch"] <= epoch]
    return epoch


@contextlib.contextmanager
def _stop_on_sigint(run: Run) -> Iterator[None]:
    """First Ctrl-C: finish this epoch, checkpoint it, stop. Second: stop at once (the
    previous epoch's checkpoint stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if run.stop_requested:
            raise KeyboardInterrupt
        run.stop_requested = True
        log.warning(
            "Ctrl-C: stopping after this epoch is checkpointed; press Ctrl-C again to stop now"
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- fit -----------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def setup_run(
    recipe: Recipe, data: DataBundle, device: str, run_dir: Path, dist: Dist = SINGLE
) -> Run:
    """Model, optimizer, schedule and precision for ``recipe``: a :class:`Run` ready for
    :func:`train_epoch` (seed torch first for a reproducible initialisation). Under
    torchrun (``dist``), the model trains wrapped in DistributedDataParallel."""
    import torch

    model = build_model(recipe, data).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: Any = distributed.wrap(model, device) if dist.enabled else model
    forward = torch.compile(forward) if recipe.compile else forward
    optimizer = build_optimizer(model, recipe.optim)
    steps = steps_per_epoch(recipe, len(data.train), dist.world_size)
    if steps < 1:
        raise RecipeError(
            f"{recipe.name}: an epoch would have no training batches (train split of "
            f"{len(data.train)} images, limit_train_batches={recipe.limit_train_batches})"
        )
    device_type = device.split(":")[0]
    return Run(
        recipe=recipe,
        data=data,
        model=model,
        forward=forward,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, recipe, steps),
        scaler=torch.amp.GradScaler("cuda") if recipe.precision == "fp16" else None,
        device=device,
        amp_dtype=autocast_dtype(recipe.precision, device_type),
        steps=steps,
        run_dir=run_dir,
        dist=dist,
    )


def fit(
    recipe: Recipe | None,
    out_dir: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    device: str | None = None,
    force: bool = False,
    progress: Progress | Sequence[Progress] | None = None,
    data: DataBundle | None = None,
    sweep_values: Mapping[str, Any] | None = None,
) -> Path:
    """Train ``recipe`` into a run directory and return its path.

    ``out_dir`` defaults to ``runs/<name>/<timestamp>``; an existing non-empty directory is
    refused unless ``force``. ``resume`` continues the run in that directory from its last
    checkpoint (``recipe`` None: the run's own recipe). ``device`` overrides the recipe's.
    ``progress`` receives event dicts ("start", "step", "epoch", "end"); default: log lines.
    ``data`` is a prebuilt :class:`~zoo.data.DataBundle` to reuse (sweeps, benchmarks).

    Started by torchrun, every process calls this; they train one model together (see
    :mod:`zoo.distributed`) and rank 0 alone writes the run directory and reports progress.
    """
    started = time.perf_counter()
    place = distributed.from_env()
    if resume is not None:
        run_dir = Path(resume)
        recipe = resume_recipe(run_dir, recipe)
    elif recipe is None:
        raise ValueError("fit() needs a recipe or resume=RUN_DIR")
    else:
        run_dir = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
        if place.is_main:
            check_run_dir(run_dir, force)  # refuse now; create it only once setup has worked
    report = combine(progress) if place.is_main else _silent
    dev = select_device(device or recipe.device)
    autocast_dtype(recipe.precision, dev.split(":")[0])  # fail before loading data
    place, dev = distributed.setup(dev)
    if resume is None and out_dir is None:
        run_dir = distributed.broadcast_object(run_dir)  # rank 0's timestamp
    _seed_everything(recipe.seed)
    data = data if data is not None else build_data(recipe, dev)
    run = setup_run(recipe, data, dev, run_dir, place)
    first = 1
    if resume is not None:
        first = _restore(run) + 1
        if place.is_main:
            log.info("resuming %s after epoch %d of %d", run_dir, first - 1, recipe.epochs)
    elif place.is_main:
        claim_run_dir(run_dir, force)
        atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
    prior = run.wall_time_s
    report(
        {
            "event": "start",
            "run_dir": str(run_dir),
            "name": recipe.name,
            "device": dev,
            "epochs": recipe.epochs,
            "first_epoch": first,
            "steps": run.steps,
        }
    )
    with _stop_on_sigint(run):
        _train(run, first, report, lambda: prior + time.perf_counter() - started)
    with write_errors(run.run_dir, "the final weights", recipe.epochs):
        summary = _finish(run, sweep_values, prior + time.perf_counter() - started)
    distributed.barrier()  # on every rank, fit returns once summary.json is written
    report({"event": "end", "run_dir": str(run_dir), "summary": summary})
    if place.is_main:
        after_run(run_dir, recipe)
    return run_dir


def _silent(event: Mapping[str, Any]) -> None:
    """The progress of ranks other than 0: rank 0 reports for the job."""


def _train(run: Run, first: int, report: Progress, elapsed: Callable[[], float]) -> None:
    r = run.recipe
    done = first - 1  # last checkpointed epoch
    try:
        for epoch in range(first, r.epochs + 1):
            start = time.perf_counter()
            lr = float(run.optimizer.param_groups[0]["lr"])  # the lr of the epoch's first step
            row = train_epoch(run, epoch, report)
            valid_loss, valid_acc = evaluate_run(run, run.data.valid)
            metrics = {
                "epoch": epoch,
                "train_loss": row.pop("train_loss"),
                "train_acc": row.pop("train_acc"),
                "valid_loss": valid_loss,
                "valid_acc": valid_acc,
                "lr": lr,
                "seconds": time.perf_counter() - start,
                **row,
            }
            if valid_acc > run.best_valid_acc:  # NaN (empty valid split) never wins
                run.best_epoch, run.best_valid_acc = epoch, valid_acc
            run.history.append(metrics)
            # metrics first, checkpoint second: a crash in between only repeats this epoch
            lines = "".join(json.dumps(m) + "\n" for m in run.history)
            run.wall_time_s = elapsed()
            if run.dist.is_main:
                with write_errors(run.run_dir, f"the checkpoint of epoch {epoch}", done):
                    atomic_write_text(run.run_dir / "metrics.jsonl", lines)
                    _save_checkpoint(run.run_dir / CHECKPOINT_DIR, _checkpoint_state(run), epoch)
            done = epoch
            report({"event": "epoch", "epochs": r.epochs, **metrics})
            if run.stop_requested and epoch < r.epochs:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        where = f"epoch {done} is checkpointed" if done else "no epoch had finished"
        raise TrainingInterrupted(
            f"training stopped by the user; {where}. Continue with "
            f"`zoo train --resume {run.run_dir}`"
        ) from None


def _finish(run: Run, sweep_values: Mapping[str, Any] | None, wall_time_s: float) -> dict[str, Any]:
    """Test the final weights, export them, write summary.json."""
    from zoo import export
    from zoo.env import environment

    r, data = run.recipe, run.data
    test_loss, test_acc = evaluate_run(run, data.test)
    if not run.dist.is_main:
        return {}
    export.save_model_files(
        run.model,
        run.run_dir,
        input_size=[data.in_chans, data.img_size, data.img_size],
        mean=data.mean,
        std=data.std,
        label_names=data.classes,
        recipe_hash=r.hash(),
    )
    summary = {
        "name": r.name,
        "model": r.model.name,
        "dataset": data.name,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "test_weights": "final",
        "best_epoch": run.best_epoch,
        "best_valid_acc": run.best_valid_acc,
        "epochs": r.epochs,
        "params": sum(p.numel() for p in run.model.parameters()),
        "wall_time_s": wall_time_s,
        "recipe_hash": r.hash(),
        "sweep_values": dict(sweep_values) if sweep_values is not None else None,
        "env": environment(run.device),
    }
    if run.dist.enabled:
        summary["distributed"] = {
            "world_size": run.dist.world_size,
            "batch_size_per_rank": run.batch_size,
            "global_batch_size": run.batch_size * run.dist.world_size,
        }
    atomic_write_json(run.run_dir / "summary.json", summary)  # last: marks the run done
    log.info(
        "%s: test accuracy %.4f (final weights; best valid epoch %d)",
        r.name,
        test_acc,
        run.best_epoch,
    )
    return summary

"""The trainer: one loop from a :class:`~zoo.recipe.Recipe` to a run directory.

Read it top to bottom: the builders (data, model), the :class:`TrainState` and one training
epoch, checkpoint state, and :func:`fit`, which strings them together and writes the run
directory (:mod:`zoo.runs.files`)::

    recipe.yaml  metrics.jsonl  summary.json  checkpoints/  model.safetensors  config.json

Around the loop: :mod:`zoo.devices` picks the device, :mod:`zoo.training.precision` the
precision (``auto``: the fastest, measured once per machine and recorded in the run),
:mod:`zoo.training.optim` builds the optimizer and its per-iteration schedule,
:mod:`zoo.training.evaluation` measures a split, :mod:`zoo.training.rundir` resumes and
finishes run directories, and :mod:`zoo.training.launch` trains a whole sweep or plans a dry
run.

Determinism: the seed fixes model initialisation; each epoch's data order and augmentation
come from a fresh generator seeded with ``(seed, epoch)``; dropout draws from torch's global
generator, whose state is checkpointed; mixup and random erasing draw from a second
per-epoch generator (:mod:`zoo.training.regularise`), and the weight EMA is checkpointed. So
on a CPU, a run resumed from its checkpoint ends with exactly the weights of an
uninterrupted run.

Under torchrun the same loop runs in every process, with DistributedDataParallel, a shard
of each epoch's permutation per rank, evaluation summed over ranks and rank 0 alone
writing; :mod:`zoo.training.distributed` says how. With one process none of that code runs.
"""

from __future__ import annotations

import contextlib
import itertools
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

from zoo._fs import remove_entry
from zoo.devices import PrecisionChoice, autocast_dtype, check_precision, select_device
from zoo.errors import RecipeError, RunError, TrainingError, ZooError
from zoo.runs import files
from zoo.runs.files import (
    check_run_dir,
    claim_run_dir,
    never_started,
    read_metrics,
    write_errors,
)
from zoo.training import distributed, precision
from zoo.training.best import BestTracker
from zoo.training.checkpoint import (
    CHECKPOINT_DIR,
    JSON_NAME,
    get_rng_state,
    load_checkpoint,
    set_rng_state,
)
from zoo.training.checkpoint import save_checkpoint as _save_checkpoint
from zoo.training.distributed import SINGLE, Dist
from zoo.training.evaluation import evaluate, evaluate_distributed
from zoo.training.optim import build_optimizer, build_scheduler
from zoo.training.progress import Progress, combine
from zoo.training.regularise import (
    Regularisers,
    accumulation_group,
    build_regularisers,
    optimizer_steps,
)
from zoo.training.rundir import after_run, default_run_dir, resume_recipe

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.data.datasets import DataBundle, Split
    from zoo.recipe import Recipe

__all__ = [
    "ModelFailed",
    "RunOptions",
    "Terminated",
    "TrainState",
    "TrainingInterrupted",
    "build_data",
    "fit",
    "model_for",
    "resume_command",
    "setup_run",
    "steps_per_epoch",
    "stopped",
    "train_epoch",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How to run a recipe, as ``zoo train``'s flags say; :func:`fit`,
    :func:`~zoo.training.launch.run_recipe` and :func:`~zoo.training.sweep.run_sweep` take
    it whole instead of threading each setting through each other.

    ``out_dir`` defaults to ``runs/<name>/<timestamp>``; an existing non-empty directory is
    refused unless ``force``. ``resume`` continues the run (or sweep) in that directory
    (recipe None: its own recipe). ``device`` overrides the recipe's. ``progress`` receives
    event dicts ("start", "step", "epoch", "end"); default: log lines. ``shard=(i, n)`` runs
    slice i of n of a sweep's points. ``continue_with`` is the command a stopped run names to
    continue it (default ``zoo train --resume RUN``; a sweep point names the sweep's).
    """

    out_dir: str | Path | None = None
    resume: str | Path | None = None
    device: str | None = None
    force: bool = False
    progress: Progress | Sequence[Progress] | None = None
    shard: tuple[int, int] | None = None
    continue_with: str | None = None  # the command a stop names (a sweep point: the sweep's)


class TrainingInterrupted(TrainingError):
    """The user stopped training (Ctrl-C, exit 130) or a scheduler did (SIGTERM, exit 143);
    the last complete epoch is checkpointed and the message names the command that
    continues."""

    exit_code = 130


class ModelFailed(TrainingError):
    """The model itself raised during training (its forward or backward pass): one line
    naming the model and the exception, which is kept as ``__cause__`` (``--debug`` shows
    its traceback)."""


@contextlib.contextmanager
def _model_errors(run: TrainState, phase: str) -> Iterator[None]:
    """An exception the model raises in ``phase`` becomes a :class:`ModelFailed`; zoo's own
    errors and Ctrl-C / SIGTERM (not an ``Exception``) pass through unchanged."""
    try:
        yield
    except ZooError:
        raise
    except (Exception, SystemExit, GeneratorExit) as e:  # a model cannot end zoo, or fake success
        what = " ".join(str(e).split()) or "no message"
        raise ModelFailed(
            f"training {run.recipe.model.name} failed in its {phase} ({type(e).__name__}: {what})"
        ) from e


class Terminated(KeyboardInterrupt):
    """SIGTERM stopping work at once: raised where Ctrl-C raises KeyboardInterrupt, so every
    ``except KeyboardInterrupt`` that keeps a run resumable handles it too."""


def resume_command(run_dir: str | Path, device: str | None = None, world_size: int = 1) -> str:
    """The exact command that continues ``run_dir`` (the run records its own recipe)."""
    import shlex

    zoo = f"torchrun --nproc-per-node {world_size} -m zoo" if world_size > 1 else "zoo"
    tail = f" --device {shlex.quote(device)}" if device else ""
    return f"{zoo} train --resume {shlex.quote(str(run_dir))}{tail}"


def stopped(stop: BaseException | None, kept: str, command: str) -> TrainingInterrupted:
    """The error a stopped run ends with: what stopped it (``stop``: a :class:`Terminated`
    means SIGTERM), what is ``kept``, and the ``command`` that continues."""
    by_sigterm = isinstance(stop, Terminated)
    error = TrainingInterrupted(
        f"training stopped by {'SIGTERM' if by_sigterm else 'the user'}; {kept}. "
        f"Continue with `{command}`"
    )
    if by_sigterm:
        error.exit_code = 128 + signal.SIGTERM  # 143, what schedulers expect of a terminated job
    return error


# -- small pure decisions ------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the generator that orders and augments the data of ``epoch`` (1-based)."""
    return seed * 100_003 + epoch


def steps_per_epoch(recipe: Recipe, train_size: int, world_size: int = 1) -> int:
    """Training batches per epoch (optimizer steps x ``optim.grad_accum_steps``); with
    ``world_size`` processes each takes a ``ceil(train_size / world_size)`` shard in batches
    of its per-rank batch size."""
    from zoo.data.datasets import num_batches

    d = recipe.data
    batch = distributed.rank_batch_size(d.batch_size, d.batch_size_mode, world_size)
    steps = num_batches(math.ceil(train_size / world_size), batch, drop_last=False)
    if recipe.limit_train_batches is not None:
        steps = min(steps, recipe.limit_train_batches)
    return steps


# -- builders ------------------------------------------------------------------------------


def build_data(recipe: Recipe, device: str) -> DataBundle:
    from zoo.data import datasets as data

    d = recipe.data
    if d.dataset == "imagefolder":
        from zoo.data import imagefolder

        in_chans, img_size = _image_geometry(recipe)
        return imagefolder.build(
            d.root or "",
            in_chans=in_chans,
            img_size=img_size,
            valid_size=d.valid_size,
            split_seed=d.split_seed,
            train_subset=d.train_subset,
            test_subset=d.test_subset,
            device=device,
        )
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


def _image_geometry(recipe: Recipe) -> tuple[int, int]:
    """(in_chans, img_size) to decode an image folder to: model.args, then data.img_size,
    then the model builder's defaults (its arguments, built on the meta device)."""
    import torch

    from zoo.models import registry

    args = recipe.model.args
    in_chans, img_size = args.get("in_chans"), recipe.data.img_size or args.get("img_size")
    if (in_chans is None or img_size is None) and recipe.model.pretrained:
        from zoo.weights.factory import source_config  # fine-tuning: the weights' input size

        trained: Any = (source_config(recipe.model.pretrained) or {}).get("input_size") or ()
        if len(trained) == 3:
            in_chans, img_size = in_chans or trained[0], img_size or trained[-1]
    if in_chans is None or img_size is None:
        with torch.device("meta"):
            model = registry.build(recipe.model.name, plugin=recipe.model.plugin, **args)
        built = getattr(model, "zoo_cfg", {}).get("args", {})
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
        in_chans = in_chans or built.get("in_chans") or size[0]
        img_size = img_size or built.get("img_size") or size[-1]
    return int(in_chans), int(img_size)


def model_for(recipe: Recipe, data: DataBundle) -> nn.Module:
    """The recipe's model, shaped for the dataset unless the recipe's args say otherwise;
    with ``model.pretrained``, its weights start from there (a new class count
    re-initialises the classifier, a new ``in_chans`` adapts the first layer)."""
    from zoo.weights import factory

    args = {
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        "img_size": data.img_size,
        **recipe.model.args,
    }
    spec = recipe.model
    model = factory.create(
        spec.name, pretrained=spec.pretrained or False, plugin=spec.plugin, **args
    )
    report = getattr(model, "zoo_cfg", {}).get("pretrained")
    if spec.pretrained and report:  # the trainer's log shows what was loaded and adapted
        from zoo.weights.adapt import LoadReport

        log.info("%s", LoadReport.from_dict(report).line())
    if recipe.imports:  # exported configs say which files register the architecture
        vars(model)["zoo_cfg"] = {**getattr(model, "zoo_cfg", {}), "imports": list(recipe.imports)}
    return model


def _pretrained_stats(data: DataBundle, model: nn.Module) -> DataBundle:
    """``data`` normalised with the mean/std the pretrained weights were trained with."""
    import dataclasses

    pretrained = getattr(model, "zoo_cfg", {}).get("pretrained") or {}
    mean, std = pretrained.get("mean"), pretrained.get("std")
    if mean is None or std is None or len(mean) != data.in_chans:
        return data
    log.info("normalising with the pretrained weights' mean %s and std %s", mean, std)
    return dataclasses.replace(data, mean=tuple(mean), std=tuple(std))


def _test_weights(recipe: Recipe, data: DataBundle) -> str:
    """``best``, ``final`` or ``ema``: the recipe's choice, else best when there is a
    validation split."""
    has_valid = len(data.valid) > 0
    if recipe.test_weights == "best" and not has_valid:
        raise RecipeError(
            f"{recipe.name}: test_weights: best needs a validation split, but data.valid_size "
            "is 0; hold out some images (data.valid_size) or use test_weights: final"
        )
    return recipe.test_weights or ("best" if has_valid else "final")


def _augment(recipe: Recipe) -> Any:
    from zoo.data.augment import AugmentConfig

    a = recipe.data.augment
    config = AugmentConfig(
        hflip=a.hflip,
        crop_scale=a.crop_scale,
        crop_ratio=a.crop_ratio,
        crop_padding=a.crop_padding,
        auto=a.auto,
    )
    return config if config != AugmentConfig() else None


# -- the loop ------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything one training run updates, in one place."""

    recipe: Recipe
    data: DataBundle
    model: nn.Module  # the module whose state is saved
    # model, or its DistributedDataParallel and/or torch.compile wrapper
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    device: str
    amp_dtype: torch.dtype | None
    precision: PrecisionChoice  # what the recipe asked for, what the run computes in, why
    steps: int  # training batches per epoch (optimizer steps x optim.grad_accum_steps)
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_acc: float = -1.0
    wall_time_s: float = 0.0
    stop_signal: str | None = None  # "SIGINT" or "SIGTERM" once one asked training to stop
    best: BestTracker = field(default_factory=BestTracker)  # checkpoint.monitor, early stopping
    test_weights: str = "final"  # which weights _finish tests and exports
    stop_reason: str | None = None  # why training ended before recipe.epochs
    dist: Dist = SINGLE  # this process's place under torchrun
    regularise: Regularisers = field(default_factory=Regularisers)  # mixup, erasing, EMA

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


def train_epoch(run: TrainState, epoch: int, progress: Progress) -> dict[str, float]:
    """One pass over (at most ``steps`` batches of) the training split."""
    import torch

    from zoo.data.datasets import batches

    r, model, place = run.recipe, run.model, run.dist
    model.train()
    generator = torch.Generator()  # zoo.data.datasets draws all randomness on the CPU
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
    # mixup and erasing draw from their own generator: turning them on changes no other draw
    reg, accum, mixing = run.regularise, r.optim.grad_accum_steps, torch.Generator()
    mixing.manual_seed(distributed.rank_seed(r.seed, epoch, place.rank, "regularise"))
    updates = (epoch - 1) * optimizer_steps(run.steps, accum)  # optimizer steps before
    loss_sum, correct, seen, skipped, has_grad = 0.0, 0, 0, 0, False
    start = time.perf_counter()
    for step, (x, y) in enumerate(itertools.islice(stream, run.steps), start=1):
        if run.stop_signal == "SIGTERM":  # no more training work: see _stop_on_signals
            raise Terminated
        first, last, group = accumulation_group(step, run.steps, accum)
        if first:
            run.optimizer.zero_grad(set_to_none=True)
            has_grad = False
        x, target = reg.batch(x, y, mixing)
        with _sync_gradients(run, last):  # DDP: all-reduce only in a group's last backward
            with run.autocast(), _model_errors(run, "forward pass"):
                logits = run.forward(x)
                loss = reg.loss(logits.float(), target, r.label_smoothing)
            value = loss.item()
            if place.enabled and not math.isfinite(_sum_over_ranks(run, loss)):
                value = math.nan  # all ranks skip or stop together: DDP's backward is a collective
            if not math.isfinite(value):
                _on_bad_loss(run, value, epoch, step)
                skipped += 1
            else:
                with _model_errors(run, "backward pass"):
                    _backward(run, loss / group if group > 1 else loss)
                has_grad = True
                loss_sum += value * len(y)
                correct += int((logits.argmax(1) == y).sum())  # against the unmixed labels
                seen += len(y)
        if last:
            if has_grad:
                if place.enabled and not math.isfinite(value):
                    _average_gradients(run)  # the group's synchronising backward was skipped
                _step(run)
                updates += 1
                reg.update_ema(run.model, updates)
            run.scheduler.step()  # per optimizer step, also for skipped ones: it is time
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


def _sum_over_ranks(run: TrainState, loss: torch.Tensor) -> float:
    """The loss summed over ranks: NaN when any rank's is."""
    return distributed.all_reduce_sum([loss.detach().float()], run.device)[0]


def _sync_gradients(run: TrainState, last: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's no_sync for the micro-batches of an accumulation group but its last."""
    ddp = getattr(run.forward, "_orig_mod", run.forward)  # under torch.compile
    if last or not run.dist.enabled or not hasattr(ddp, "no_sync"):
        return contextlib.nullcontext()
    return ddp.no_sync()


def _average_gradients(run: TrainState) -> None:
    import torch.distributed

    for p in run.model.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= run.dist.world_size


def _backward(run: TrainState, loss: torch.Tensor) -> None:
    if run.scaler is None:
        loss.backward()
    else:
        run.scaler.scale(loss).backward()


def _step(run: TrainState) -> None:
    """Clip and take the optimizer step on the accumulated gradients."""
    import torch

    grad_clip = run.recipe.grad_clip
    if run.scaler is None:
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
        run.optimizer.step()
        return
    if grad_clip:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()


def _on_bad_loss(run: TrainState, value: float, epoch: int, step: int) -> None:
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
    chosen = run.precision.chosen
    advice = (
        f" or low precision (precision is {chosen}: try --set precision=fp32)"
        if chosen != "fp32"
        else ""
    )
    raise TrainingError(
        f"loss is {value} at epoch {epoch}, step {step} of {run.steps}; {kept}. Usual causes: "
        f"a learning rate too high (optim.lr is {r.optim.lr}: try "
        f"--set optim.lr={r.optim.lr / 10:g}){advice}; "
        "--set on_nan=skip skips such steps instead"
    )


# -- checkpoint state and Ctrl-C -----------------------------------------------------------


def _evaluate(
    run: TrainState, split: Split, module: nn.Module | None = None
) -> tuple[float, float]:
    """Loss and accuracy of the run's model (or ``module``, e.g. the EMA's) on ``split``
    (summed over ranks under torchrun)."""
    model = run.model if module is None else module
    model.eval()
    r = run.recipe
    settings: dict[str, Any] = {
        "mean": run.data.mean,
        "std": run.data.std,
        "batch_size": r.data.eval_batch_size or r.data.batch_size,
        "limit": r.limit_eval_batches,
        "channels_last": r.channels_last,
        "autocast": run.autocast,
    }
    if run.dist.enabled:
        return evaluate_distributed(model, split, run.dist, run.device, **settings)
    return evaluate(run.forward if module is None else module, split, **settings)


def _checkpoint_state(run: TrainState) -> dict[str, Any]:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng": get_rng_state(),
        "best_epoch": run.best_epoch,
        "best_valid_acc": run.best_valid_acc,
        "best": run.best.state(),
        "ema": run.regularise.state(),
        "wall_time_s": run.wall_time_s,
        "history": files.finite(run.history),  # restores a damaged metrics.jsonl
        "recipe_hash": run.recipe.hash(),
        "precision": run.precision.to_dict(),  # a resumed run computes as this one did
        **({"world_size": run.dist.world_size} if run.dist.enabled else {}),
    }


def _restore(run: TrainState) -> int:
    """Load the run's checkpoint into ``run``; return the epoch it completed."""
    from zoo.weights.files import load_weights

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
    run.regularise.load(state.get("ema"))
    run.best_epoch, run.best_valid_acc = state["best_epoch"], state["best_valid_acc"]
    if "best" in state:
        run.best.load(state["best"])
        _restore_best_weights(run, state, epoch)
    run.wall_time_s = state["wall_time_s"]
    run.history = _restore_history(run, state.get("history"), epoch)
    return epoch


def _restore_history(run: TrainState, saved: Any, epoch: int) -> list[dict[str, Any]]:
    """The metrics of epochs 1 to ``epoch``: metrics.jsonl's when it holds exactly those,
    else the copy the checkpoint carries (``saved``), written back to metrics.jsonl with a
    warning. A checkpoint without that copy (written by an older zoo) refuses a metrics.jsonl
    that does not match it, naming what is wrong; a damaged line is refused by
    :func:`read_metrics`, naming it."""
    path = run.run_dir / files.METRICS_NAME
    rows = read_metrics(run.run_dir, missing_ok=True)
    if saved is None:
        problem = files.history_problem(rows, epoch)
        if problem is not None:
            raise RunError(
                f"cannot resume {run.run_dir}: {path} does not match its checkpoint (epoch "
                f"{epoch}): {problem}, and the checkpoint (written by an older zoo) carries no "
                f"copy of the metrics; restore {path} or start the run again"
            )
        return rows[:epoch]
    ckpt = run.run_dir / CHECKPOINT_DIR / JSON_NAME
    if not isinstance(saved, list) or not all(isinstance(row, dict) for row in saved):
        raise RunError(f"checkpoint {ckpt} is malformed (its history); start the run again")
    history = [dict(row) for row in saved]
    if [row.get("epoch") for row in history] != list(range(1, epoch + 1)):
        raise RunError(
            f"checkpoint {ckpt} says epoch {epoch}, but the metrics history it carries does not "
            "run from epoch 1 to it: last.json was edited or damaged; start the run again"
        )
    problem = files.history_problem(rows, epoch, history)
    if problem is None:
        return history
    if run.dist.is_main:
        log.warning(
            "%s does not match the checkpoint of epoch %d (%s); restored it from the metrics "
            "history the checkpoint carries",
            path,
            epoch,
            problem,
        )
        with write_errors(run.run_dir, "the restored metrics", epoch):
            files.write_metrics(run.run_dir, history)
    return history


def _restore_best_weights(run: TrainState, state: Mapping[str, Any], epoch: int) -> None:
    """The best epoch's weights from best.safetensors; when a crash came between the
    checkpoint and them, the best epoch is the checkpoint's own."""
    from zoo.training.checkpoint import load_best

    best = run.best.best_epoch
    if not run.best.keep_weights or best == 0:
        return
    weights = load_best(run.run_dir / CHECKPOINT_DIR, best)
    rewrite = weights is None and best == epoch
    if rewrite:
        weights = dict(state["model"])
    if weights is None:
        raise RunError(
            f"cannot resume {run.run_dir}: the weights of its best epoch ({best}) are missing "
            f"from {run.run_dir / CHECKPOINT_DIR}; start the run again"
        )
    run.best.weights = {k: v.to("cpu", copy=True) for k, v in weights.items()}
    if rewrite and run.dist.is_main:
        # Write them now: a later kill must find them even if no later epoch improves.
        _save_best(run, best)


def _save_best(run: TrainState, epoch: int) -> None:
    from zoo.training.checkpoint import save_best

    assert run.best.weights is not None
    record = {"epoch": epoch, "monitor": run.best.monitor, "value": run.best.best_value}
    save_best(run.run_dir / CHECKPOINT_DIR, run.best.weights, record)


@contextlib.contextmanager
def _stop_on_signals(run: TrainState) -> Iterator[None]:
    """How the epochs stop. First Ctrl-C: finish this epoch, checkpoint it, stop. First
    SIGTERM: start no more training batches; an epoch whose batches are all done is still
    validated and checkpointed (seconds), then stop. A second signal of either kind: stop at
    once; the last complete checkpoint stays.

    Why SIGTERM does not finish the epoch like Ctrl-C: it is how SLURM (at the time limit or
    on scancel) and Kubernetes (on eviction) stop a job, and they follow it with SIGKILL after
    a grace period (30 s by default in both), usually shorter than an epoch. Checkpoints hold
    whole epochs, so waiting cannot save the part of an epoch already trained; an epoch cut
    by the SIGKILL would lose the same work and also the exit status, the released run lock
    and the line saying how to continue. So, like Lightning (which stops at the next batch on
    SIGTERM), stop promptly at a batch boundary, exit 143 and name ``zoo train --resume RUN``,
    which a requeued job runs to end with the weights of an uninterrupted run.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if run.stop_signal is not None:
            raise Terminated if name == "SIGTERM" else KeyboardInterrupt
        run.stop_signal = name
        if name == "SIGTERM":
            log.warning(
                "SIGTERM: stopping at the next batch; the last complete epoch stays "
                "checkpointed; a second signal stops at once"
            )
        else:
            log.warning(
                "Ctrl-C: stopping after this epoch is checkpointed; press Ctrl-C again to stop now"
            )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


# -- fit -----------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def setup_run(
    recipe: Recipe,
    data: DataBundle,
    device: str,
    run_dir: Path,
    dist: Dist = SINGLE,
    chosen: PrecisionChoice | None = None,
) -> TrainState:
    """Model, optimizer, schedule and precision for ``recipe``: a :class:`TrainState` ready for
    :func:`train_epoch` (seed torch first for a reproducible initialisation). Under
    torchrun (``dist``), the model trains wrapped in DistributedDataParallel. ``chosen``: the
    precision to train in (a resumed run's); None chooses (``auto`` measures the model)."""
    import torch

    from zoo.training.finetune import freeze

    model = model_for(recipe, data).to(device)
    data = _pretrained_stats(data, model)
    if recipe.model.freeze:
        frozen = freeze(model, recipe.model.freeze)
        log.info("frozen: %d parameter tensors (%s)", len(frozen), ", ".join(recipe.model.freeze))
    test_weights = _test_weights(recipe, data)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_size = distributed.rank_batch_size(
        recipe.data.batch_size, recipe.data.batch_size_mode, dist.world_size
    )
    chosen = chosen or precision.choose(recipe, model, data, device, batch_size, dist)
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
    return TrainState(
        recipe=recipe,
        data=data,
        model=model,
        forward=forward,
        optimizer=optimizer,
        scheduler=build_scheduler(
            optimizer, recipe, optimizer_steps(steps, recipe.optim.grad_accum_steps)
        ),
        scaler=torch.amp.GradScaler("cuda") if chosen.chosen == "fp16" else None,
        device=device,
        amp_dtype=autocast_dtype(chosen.chosen, device_type),
        precision=chosen,
        steps=steps,
        run_dir=run_dir,
        dist=dist,
        best=BestTracker.for_recipe(
            recipe, keep_weights=recipe.checkpoint.keep_best or test_weights == "best"
        ),
        test_weights=test_weights,
        regularise=build_regularisers(recipe, model, data.num_classes, device),
    )


def fit(
    recipe: Recipe | None,
    options: RunOptions = RunOptions(),
    *,
    data: DataBundle | None = None,
    sweep_values: Mapping[str, Any] | None = None,
) -> Path:
    """Train ``recipe`` into a run directory (see :class:`RunOptions`) and return its path.

    ``data`` is a prebuilt :class:`~zoo.data.datasets.DataBundle` to reuse (benchmarks);
    ``sweep_values`` are recorded in the summary of a sweep point.

    Started by torchrun, every process calls this; they train one model together (see
    :mod:`zoo.training.distributed`) and rank 0 alone writes the run directory and reports
    progress.
    """
    out_dir, resume, device, force = options.out_dir, options.resume, options.device, options.force
    started = time.perf_counter()
    place = distributed.from_env()
    fresh = False  # whether this call created the run (see _failed)
    if resume is not None:
        run_dir = Path(resume)
        recipe = resume_recipe(run_dir, recipe)
    elif recipe is None:
        raise ValueError("fit() needs a recipe or resume=RUN_DIR")
    else:
        run_dir = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
        if place.is_main:
            check_run_dir(run_dir, force)  # refuse now; create it only once setup has worked
    report = combine(options.progress) if place.is_main else _silent
    dev = select_device(device or recipe.device)
    check_precision(recipe.precision, dev.split(":")[0])  # fail before loading data
    place, dev = distributed.setup(dev)
    if resume is None and out_dir is None:
        run_dir = distributed.broadcast_object(run_dir)  # rank 0's timestamp
    _seed_everything(recipe.seed)
    chosen = precision.resumed(run_dir, recipe) if resume is not None else None
    data = data if data is not None else build_data(recipe, dev)
    run = setup_run(recipe, data, dev, run_dir, place, chosen)
    first = 1
    if resume is not None:
        first = _restore(run) + 1
        if place.is_main:
            log.info("resuming %s after epoch %d of %d", run_dir, first - 1, recipe.epochs)
            log.info("%s", run.precision.line())
    elif place.is_main:
        # a directory this run starts in (nothing of a run in it) is left as it was found
        # should the run fail before its first checkpoint: see _failed
        fresh = not run_dir.exists() or (run_dir.is_dir() and never_started(run_dir))
        claim_run_dir(run_dir, force)
        files.write_recipe(run_dir, recipe.to_yaml())
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
    command = options.continue_with or resume_command(run_dir, options.device, place.world_size)
    try:
        with _stop_on_signals(run):
            _train(run, first, report, lambda: prior + time.perf_counter() - started, command)
    except ModelFailed as e:
        raise ModelFailed(
            f"{e}; {_failed(run, fresh, command)} (--debug shows the traceback)"
        ) from e.__cause__
    except TrainingInterrupted:
        raise  # stopped by a signal: what was kept and the resume line are said already
    except Exception:
        _failed(run, fresh, command)
        raise
    with write_errors(run.run_dir, "the final weights", recipe.epochs):
        summary = _finish(run, sweep_values, prior + time.perf_counter() - started)
    distributed.barrier()  # on every rank, fit returns once summary.json is written
    report({"event": "end", "run_dir": str(run_dir), "summary": summary})
    if place.is_main:
        after_run(run_dir, recipe)
    return run_dir


def _failed(run: TrainState, fresh: bool, command: str) -> str:
    """After training failed (not stopped by a signal): what the run directory keeps and how
    to go on. A run that failed before its first checkpoint, in a directory it started in
    (``fresh``), removes the files it wrote, so that the same command runs again without
    ``--force``; any other run keeps its directory, which ``command`` (``--resume``)
    continues, or starts over from its recorded recipe when it holds no checkpoint yet."""
    run_dir = run.run_dir
    if (run_dir / CHECKPOINT_DIR / JSON_NAME).is_file():
        return f"the last complete epoch stays checkpointed; fix the cause, then `{command}`"
    if not fresh:
        return (
            f"no epoch was checkpointed; fix the cause, then `{command}` starts {run_dir} over "
            "from its recorded recipe"
        )
    if run.dist.is_main:
        for name in (files.RECIPE_NAME, files.METRICS_NAME, CHECKPOINT_DIR):
            with contextlib.suppress(OSError):
                remove_entry(run_dir / name)
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # unless it holds the run's lock, whose holder removes it
    return (
        f"no epoch was checkpointed, so nothing of the run is kept in {run_dir}; fix the "
        "cause, then run the same command again"
    )


def _silent(event: Mapping[str, Any]) -> None:
    """The progress of ranks other than 0: rank 0 reports for the job."""


def _train(
    run: TrainState, first: int, report: Progress, elapsed: Callable[[], float], command: str
) -> None:
    r = run.recipe
    done = first - 1  # last checkpointed epoch
    try:
        for epoch in range(first, r.epochs + 1):
            run.stop_reason = run.best.stop_reason()
            if run.stop_reason is not None:  # early stopping (also when resumed right after)
                break
            start = time.perf_counter()
            lr = float(run.optimizer.param_groups[0]["lr"])  # the lr of the epoch's first step
            row = train_epoch(run, epoch, report)
            with _model_errors(run, "validation forward pass"):
                valid_loss, valid_acc = _evaluate(run, run.data.valid)
            metrics = {
                "epoch": epoch,
                "train_loss": row.pop("train_loss"),
                "train_acc": row.pop("train_acc"),
                "valid_loss": valid_loss,
                "valid_acc": valid_acc,
                **_validate_ema(run),
                "lr": lr,
                "seconds": time.perf_counter() - start,
                **row,
            }
            improved = run.best.update(epoch, metrics, run.model)  # NaN never improves
            if improved:
                run.best_epoch, run.best_valid_acc = epoch, valid_acc
            run.history.append(metrics)
            # metrics first, checkpoint second: a crash in between only repeats this epoch
            run.wall_time_s = elapsed()
            if run.dist.is_main:
                with write_errors(run.run_dir, f"the checkpoint of epoch {epoch}", done):
                    files.write_metrics(run.run_dir, run.history)
                    _save_checkpoint(run.run_dir / CHECKPOINT_DIR, _checkpoint_state(run), epoch)
                    if improved and run.best.keep_weights:
                        _save_best(run, epoch)  # after the checkpoint: see _restore_best_weights
            done = epoch
            report({"event": "epoch", "epochs": r.epochs, **metrics})
            if run.stop_signal == "SIGTERM" or (run.stop_signal and epoch < r.epochs):
                raise Terminated if run.stop_signal == "SIGTERM" else KeyboardInterrupt
    except KeyboardInterrupt as e:
        kept = (
            f"epoch {done} is checkpointed"
            if done
            else "no epoch had finished, so it starts over from its recorded recipe"
        )
        raise stopped(e, kept, command) from None


def _validate_ema(run: TrainState) -> dict[str, float]:
    """valid_loss_ema / valid_acc_ema when the recipe keeps an EMA of the weights."""
    if run.regularise.ema is None:
        return {}
    with _model_errors(run, "validation forward pass (of the EMA weights)"):
        loss, acc = _evaluate(run, run.data.valid, run.regularise.ema_for_eval(run.device))
    return {"valid_loss_ema": loss, "valid_acc_ema": acc}


def _finish(
    run: TrainState, sweep_values: Mapping[str, Any] | None, wall_time_s: float
) -> dict[str, Any]:
    """Test the final or best weights, export them, write summary.json."""
    from zoo.data.transforms import trained_preprocessing
    from zoo.env import environment
    from zoo.weights import files as export

    r, data = run.recipe, run.data
    tested = _choose_weights(run)
    test_loss, test_acc = _evaluate(run, data.test)
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
        data_cfg=trained_preprocessing(data.name),
    )
    summary = {
        "name": r.name,
        "model": r.model.name,
        "dataset": data.name,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "test_weights": tested,
        "best_epoch": run.best_epoch or None,  # None: no validation split to pick one
        "best_valid_acc": run.best_valid_acc if run.best_epoch else None,
        "epochs": r.epochs,
        "params": sum(p.numel() for p in run.model.parameters()),
        "wall_time_s": wall_time_s,
        "recipe_hash": r.hash(),
        "precision": run.precision.to_dict(),
        "sweep_values": dict(sweep_values) if sweep_values is not None else None,
        "env": environment(run.device),
    }
    summary.update(_finetune_summary(run))
    if data.notes:  # e.g. which split the test metrics come from
        summary["data_notes"] = list(data.notes)
        log.info("%s: %s", r.name, "; ".join(data.notes))
    if run.dist.enabled:
        summary["distributed"] = {
            "world_size": run.dist.world_size,
            "batch_size_per_rank": run.batch_size,
            "global_batch_size": run.batch_size * run.dist.world_size,
        }
    files.write_summary(run.run_dir, summary)  # last: marks the run done
    log.info(
        "%s: test accuracy %.4f (%s weights; best valid epoch %d)",
        r.name,
        test_acc,
        tested,
        run.best_epoch,
    )
    return summary


def _choose_weights(run: TrainState) -> str:
    """Load the best epoch's weights when they are to be tested; say which are."""
    from zoo.weights.files import load_weights

    if run.test_weights == "ema":  # the EMA's weights (and buffers) replace the model's
        load_weights(run.model, run.regularise.ema.module.state_dict(), "the EMA weights")
        return "ema"
    weights = run.best.weights
    if run.test_weights != "best" or weights is None:
        if run.test_weights == "best":
            log.warning(
                "no epoch validated with a finite %s: testing the final weights", run.best.monitor
            )
        return "final"
    load_weights(run.model, weights, f"the best epoch ({run.best.best_epoch})")
    return "best"


def _finetune_summary(run: TrainState) -> dict[str, Any]:
    """summary.json entries for the best epoch, early stopping and pretrained weights."""
    cfg = getattr(run.model, "zoo_cfg", {})
    out: dict[str, Any] = {
        "monitor": run.best.monitor,
        "best_value": run.best.best_value,
        "epochs_run": run.history[-1]["epoch"] if run.history else 0,
        "stopped_early": run.stop_reason is not None,
        "stop_reason": run.stop_reason,
    }
    if run.stop_reason is not None:
        log.info("%s: %s", run.recipe.name, run.stop_reason)
    if cfg.get("pretrained") and run.recipe.model.pretrained:
        out["pretrained"] = cfg["pretrained"]
    if run.recipe.imports:
        out["imports"] = list(run.recipe.imports)
    return out

"""The trainer: one loop from a :class:`~zoo.recipe.Recipe` to a run directory.

Read it top to bottom: small pure decisions (device, precision, learning-rate factor), the
builders (data, model, optimizer, schedule), one training epoch, evaluation, and
:func:`fit`, which strings them together and writes the run directory::

    recipe.yaml  metrics.jsonl  summary.json  checkpoints/  model.safetensors  config.json

Determinism: the seed fixes model initialisation; each epoch's data order and augmentation
come from a fresh generator seeded with ``(seed, epoch)``; dropout draws from torch's global
generator, whose state is checkpointed. So on a CPU, a run resumed from its checkpoint ends
with exactly the weights of an uninterrupted run.

The learning-rate schedule is stepped once per optimizer step (iteration), not per epoch;
``warmup_epochs`` and ``step_size`` are given in epochs and converted to iterations.

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
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo import distributed
from zoo._io import atomic_write_json, atomic_write_text
from zoo.checkpoint import CHECKPOINT_DIR, get_rng_state, load_checkpoint, set_rng_state
from zoo.checkpoint import save_checkpoint as _save_checkpoint
from zoo.distributed import SINGLE, Dist
from zoo.errors import RecipeError, RunError, TrainingError, ZooError
from zoo.progress import Progress, combine

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.data import DataBundle, Split
    from zoo.recipe import OptimSpec, Recipe, ScheduleSpec

__all__ = [
    "Progress",
    "Run",
    "TrainingInterrupted",
    "autocast_dtype",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "claim_run_dir",
    "default_run_dir",
    "evaluate",
    "fit",
    "lr_factor",
    "plan",
    "resume_recipe",
    "run_recipe",
    "select_device",
    "setup_run",
    "train_epoch",
]

log = logging.getLogger(__name__)

RUN_FILES = (
    "recipe.yaml",
    "metrics.jsonl",
    "summary.json",
    CHECKPOINT_DIR,
    "model.safetensors",
    "config.json",
    "README.md",
    "curves.png",
    "sweep.json",
    "tensorboard",
)
# Keys that may change when resuming: more epochs, another device, where to publish.
_RESUMABLE_CHANGES = ("epochs", "device", "publish.")


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


def lr_factor(
    step: int, spec: ScheduleSpec, *, steps_per_epoch: int, total_steps: int, base_lr: float
) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    warmup = round(spec.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup  # linear warm-up, never exactly 0
    if spec.name == "none":
        return 1.0
    if spec.name == "step":
        return float(spec.gamma ** ((step // steps_per_epoch) // spec.step_size))
    if spec.name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        floor = spec.min_lr / base_lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise RecipeError(f"unknown schedule {spec.name!r}; use none, cosine or step")


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the generator that orders and augments the data of ``epoch`` (1-based)."""
    return seed * 100_003 + epoch


def default_run_dir(recipe: Recipe, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / recipe.name / stamp


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


def build_optimizer(model: nn.Module, spec: OptimSpec) -> torch.optim.Optimizer:
    """sgd (no momentum), momentum (SGD with momentum), adam (L2 weight decay, as torch
    does), adamw (decoupled decay); any other name goes to timm's optimizer factory."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    name = spec.name.lower()
    betas = (spec.betas[0], spec.betas[1]) if spec.betas else (0.9, 0.999)
    wd = spec.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.0, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=betas, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=betas, weight_decay=wd)
    from timm.optim import create_optimizer_v2, list_optimizers

    extra: dict[str, Any] = {"betas": betas} if spec.betas else {}
    try:
        return create_optimizer_v2(
            model, opt=name, lr=spec.lr, weight_decay=wd, momentum=spec.momentum, **extra
        )
    except (ValueError, AssertionError, KeyError, TypeError) as e:
        known = ["sgd", "momentum", "adam", "adamw", *map(str, list_optimizers())]
        from zoo.errors import did_you_mean

        raise RecipeError(
            f"optimizer {spec.name!r} cannot be built ({e}).{did_you_mean(name, known)} "
            "Use sgd, momentum, adam, adamw or a timm optimizer name"
        ) from None


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration schedule over ``recipe.epochs * steps`` optimizer steps."""
    import functools

    import torch

    factor = functools.partial(
        lr_factor,
        spec=recipe.schedule,
        steps_per_epoch=steps,
        total_steps=recipe.epochs * steps,
        base_lr=recipe.optim.lr,
    )
    lr_factor(0, **factor.keywords)  # raises on an unknown schedule name before training
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _augment(recipe: Recipe) -> Any:
    from zoo.data import AugmentConfig

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


def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    split: Split,
    data: DataBundle,
    *,
    batch_size: int,
    limit: int | None = None,
    channels_last: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy on ``split``; the caller puts
    the model in eval mode."""
    loss_sum, correct, seen = _eval_sums(
        forward,
        split,
        data,
        batch_size=batch_size,
        limit=limit,
        channels_last=channels_last,
        autocast=autocast,
    )
    if seen == 0:
        return math.nan, math.nan
    return loss_sum.item() / seen, correct.item() / seen


def _eval_sums(
    forward: Callable[[torch.Tensor], torch.Tensor],
    split: Split,
    data: DataBundle,
    *,
    batch_size: int,
    limit: int | None,
    channels_last: bool,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed cross-entropy, number correct and number of images of :func:`evaluate`."""
    import torch
    import torch.nn.functional as F

    from zoo.data import batches

    loss_sum = torch.zeros((), dtype=torch.float64, device=split.images.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.images.device)
    seen = 0
    stream = batches(
        split,
        batch_size,
        shuffle=False,
        generator=None,
        augment=None,
        mean=data.mean,
        std=data.std,
        channels_last=channels_last,
    )
    with torch.no_grad():
        for x, y in itertools.islice(stream, limit):
            with autocast():
                logits = forward(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
    return loss_sum, correct, seen


def _evaluate_run(run: Run, split: Split) -> tuple[float, float]:
    run.model.eval()
    r = run.recipe
    batch_size = r.data.eval_batch_size or r.data.batch_size
    if not run.dist.enabled:
        return evaluate(
            run.forward,
            split,
            run.data,
            batch_size=batch_size,
            limit=r.limit_eval_batches,
            channels_last=r.channels_last,
            autocast=run.autocast,
        )
    return _evaluate_distributed(run, split, batch_size)


def _evaluate_distributed(run: Run, split: Split, batch_size: int) -> tuple[float, float]:
    """Each rank evaluates a slice of the images a single process would and the sums are
    added up, so the accuracy is the single-process accuracy of these weights."""
    from zoo.data import Split

    r, place = run.recipe, run.dist
    distributed.broadcast_buffers(run.model)  # rank 0's BatchNorm statistics: the saved ones
    n = len(split)
    if r.limit_eval_batches is not None:
        n = min(n, r.limit_eval_batches * batch_size)
    lo, hi = distributed.eval_slice(n, place)
    mine = Split(split.images[lo:hi], split.labels[lo:hi])
    sums = _eval_sums(
        run.model,  # not the DDP wrapper: no gradient hooks, no buffer broadcasts per batch
        mine,
        run.data,
        batch_size=batch_size,
        limit=None,
        channels_last=r.channels_last,
        autocast=run.autocast,
    )
    loss_sum, correct, seen = distributed.all_reduce_sum(sums, run.device)
    if seen == 0:
        return math.nan, math.nan
    return loss_sum / seen, correct / seen


# -- run directory, checkpoints, resume ----------------------------------------------------


def claim_run_dir(run_dir: Path, force: bool) -> None:
    """Create ``run_dir``; an existing non-empty one is refused unless ``force``."""
    _check_run_dir(run_dir, force)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        _clear_run_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _check_run_dir(run_dir: Path, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"output path {run_dir} exists and is not a directory; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise RunError(
            f"output directory {run_dir} already exists and is not empty; continue it with "
            f"`zoo train --resume {run_dir}`, choose another --out, or overwrite it with "
            "--force"
        )


def _clear_run_files(run_dir: Path) -> None:
    # Only the files a run writes: --force on a directory holding other things keeps them.
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_recipe(run_dir: Path, recipe: Recipe | None) -> Recipe:
    """The recipe to resume ``run_dir`` with: its own, or ``recipe`` if it matches."""
    from zoo.recipe import load_recipe

    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise RunError(f"cannot resume {run_dir}: it holds no recipe.yaml, so it is not a zoo run")
    stored = load_recipe(path)
    if recipe is None:
        return stored
    old, new = _flatten(stored.to_dict()), _flatten(recipe.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    blocking = [k for k in changed if not k.startswith(_RESUMABLE_CHANGES)]
    if blocking:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in blocking[:6])
        raise RunError(
            f"cannot resume {run_dir} with a different recipe ({shown}); resume with the run's "
            f"own recipe (`zoo train --resume {run_dir}`) or start a new run with --out"
        )
    if changed:
        log.warning("resuming %s with changed %s", run_dir, ", ".join(changed))
    return recipe


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
    run.history = [row for row in _read_metrics(run.run_dir) if row["epoch"] <= epoch]
    return epoch


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


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
            _check_run_dir(run_dir, force)  # refuse now; create it only once setup has worked
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
    with _write_errors(run, "the final weights", recipe.epochs):
        summary = _finish(run, sweep_values, prior + time.perf_counter() - started)
    distributed.barrier()  # on every rank, fit returns once summary.json is written
    report({"event": "end", "run_dir": str(run_dir), "summary": summary})
    if place.is_main:
        _after_run(run_dir, recipe)
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
            valid_loss, valid_acc = _evaluate_run(run, run.data.valid)
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
                with _write_errors(run, f"the checkpoint of epoch {epoch}", done):
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


@contextlib.contextmanager
def _write_errors(run: Run, what: str, kept: int) -> Iterator[None]:
    """A failed write (full disk, lost mount) becomes one line that says what was kept.
    The atomic writes have already removed their temporary files."""
    try:
        yield
    except OSError as e:
        if kept:
            then = (
                f"epoch {kept} is the last complete checkpoint. Free space, then continue "
                f"with `zoo train --resume {run.run_dir}`"
            )
        else:
            then = "no epoch was checkpointed. Free space, then train again with --force"
        raise RunError(
            f"cannot write {what} in {run.run_dir} ({e.strerror or e}); {then}"
        ) from None


def _finish(run: Run, sweep_values: Mapping[str, Any] | None, wall_time_s: float) -> dict[str, Any]:
    """Test the final weights, export them, write summary.json."""
    from zoo import export
    from zoo.env import environment

    r, data = run.recipe, run.data
    test_loss, test_acc = _evaluate_run(run, data.test)
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


def _after_run(run_dir: Path, recipe: Recipe) -> None:
    """Curves, model card, local tag and Hub push. The run is complete without them, so a
    failure here is logged with the command that retries it, not raised."""
    import importlib

    # curves first: the card embeds curves.png when it exists
    for module, function in (("zoo.plots", "plot_run"), ("zoo.card", "write_card")):
        try:
            target = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as e:
            log.info("skipping %s.%s (not available: %s)", module, function, e)
            continue
        try:
            target(run_dir)
        except Exception as e:  # a cosmetic step must not lose a finished run
            log.warning("%s.%s(%s) failed: %s", module, function, run_dir, e)
    tag, repo = recipe.publish.tag, recipe.publish.hub
    if tag:
        _publish_step(
            f"zoo publish {run_dir} --tag {tag}", "zoo.store", "publish", run_dir, None, tag
        )
    if repo:
        _publish_step(
            f"zoo push {run_dir} {repo}",
            "zoo.hub",
            "push",
            run_dir,
            repo,
            private=recipe.publish.private,
        )


def _publish_step(retry: str, module: str, function: str, *args: Any, **kwargs: Any) -> None:
    import importlib

    try:
        result = getattr(importlib.import_module(module), function)(*args, **kwargs)
    except (ImportError, AttributeError) as e:
        log.warning("cannot %s: %s.%s is not available (%s)", retry, module, function, e)
    except ZooError as e:
        log.error("%s failed: %s; retry with `%s`", function, e, retry)
    else:
        log.info("%s: %s", function, result)


# -- sweeps and dry runs -----------------------------------------------------------------


def run_recipe(
    recipe: Recipe | None,
    out_dir: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    device: str | None = None,
    force: bool = False,
    progress: Progress | Sequence[Progress] | None = None,
    shard: tuple[int, int] | None = None,
) -> Path:
    """Train a recipe, or every point of its sweep (``shard=(i, n)``: slice i of n, 0-based);
    return the run or sweep directory. ``recipe`` may be None when resuming."""
    is_sweep = (recipe is not None and bool(recipe.sweep)) or (
        resume is not None and (Path(resume) / "sweep.json").is_file()
    )
    if is_sweep:
        from zoo.sweep import run_sweep

        return run_sweep(
            recipe,
            out_dir,
            resume=resume,
            device=device,
            force=force,
            progress=progress,
            shard=shard,
        )
    if shard is not None and shard[1] > 1:
        raise RecipeError("--shard splits a sweep, but this recipe has no `sweep:` section")
    return fit(recipe, out_dir, resume=resume, device=device, force=force, progress=progress)


def plan(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    *,
    device: str | None = None,
    shard: tuple[int, int] | None = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """What ``run_recipe`` would do, without training: resolved recipe, device, data shapes,
    each run's model and parameter count, and the run directories (``world_size``: in that
    many torchrun processes)."""
    import torch

    from zoo.recipe import expand_sweep, shard_points

    dev = select_device(device or recipe.device)
    autocast_dtype(recipe.precision, dev.split(":")[0])
    root = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
    points = expand_sweep(recipe) if recipe.sweep else []
    if shard is not None and points:
        points = shard_points(points, *shard)
    runs = [(p.recipe, root / p.name) for p in points] or [(recipe, root)]
    bundles: dict[str, DataBundle] = {}
    planned = []
    for run_recipe_, run_dir in runs:
        key = json.dumps(run_recipe_.to_dict()["data"], sort_keys=True, default=str)
        if key not in bundles:
            bundles[key] = build_data(run_recipe_, "cpu")
        data = bundles[key]
        with torch.device("meta"):  # shapes and counts only: allocates nothing
            model = build_model(run_recipe_, data)
        build_optimizer(model, run_recipe_.optim)
        planned.append(
            {
                "run_dir": str(run_dir),
                "model": run_recipe_.model.name,
                "params": sum(p.numel() for p in model.parameters()),
                "dataset": data.name,
                "input": [data.in_chans, data.img_size, data.img_size],
                "splits": {s: len(getattr(data, s)) for s in ("train", "valid", "test")},
                "steps_per_epoch": steps_per_epoch(run_recipe_, len(data.train), world_size),
                "epochs": run_recipe_.epochs,
                "batch_size_per_process": distributed.rank_batch_size(
                    run_recipe_.data.batch_size, run_recipe_.data.batch_size_mode, world_size
                ),
            }
        )
    return {
        "recipe": recipe.to_yaml(),
        "device": dev,
        "sweep_dir": str(root) if points else None,
        "world_size": world_size,
        "runs": planned,
    }

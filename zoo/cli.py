"""The ``zoo`` command line.

Each command is a few lines that call library functions. Heavy modules (torch and
everything that imports it) are imported inside the commands, so ``zoo --help`` is instant.
A :class:`~zoo.errors.ZooError` becomes one line on stderr and a non-zero exit; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import click

from zoo._version import __version__
from zoo.errors import ZooError, printable


class _ZooGroup(click.Group):
    """A click group that turns ZooError into one clear line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZooError as e:
            if ctx.meta.get("zoo.debug"):
                raise
            click.echo(f"error: {printable(str(e))}", err=True)  # one line, whatever it quotes
            ctx.exit(e.exit_code)
        except (SystemExit, GeneratorExit) as e:
            # zoo ends commands with ctx.exit (click's Exit), never SystemExit: this one was
            # raised by code zoo ran (a model's forward, a plugin), which must not end zoo,
            # let alone with a success code for work it never did.
            if ctx.meta.get("zoo.debug"):
                raise
            click.echo(
                f"error: code run by this command raised {type(e).__name__}"
                f"({printable(repr(e.args[0]) if e.args else '')}) and would have ended zoo "
                "without finishing; a model or plugin calls sys.exit? (--debug shows where)",
                err=True,
            )
            ctx.exit(1)
        except KeyboardInterrupt:
            # Ctrl-C outside the epochs' own handler (while torch imports, a dataset loads, a
            # model is benchmarked): one line and the shell's 128 + SIGINT, not click's
            # "Aborted!" and exit 1, which a script cannot tell from a failure.
            if ctx.meta.get("zoo.debug"):
                raise
            click.echo("error: interrupted (Ctrl-C)", err=True)
            ctx.exit(130)
        except OSError as e:
            # A path the user gave that cannot be written or read (its parent is a file, it
            # is under /proc, read-only, too long): one line, like a ZooError.
            if ctx.meta.get("zoo.debug") or e.filename is None:
                raise
            click.echo(
                f"error: {printable(str(e.filename))}: {e.strerror or e}; check the path and "
                "its permissions",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=_ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zoo")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug logs).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """zoo: a plugin-based model zoo for PyTorch image classifiers.

    \b
    zoo models                       list registered architectures
    zoo train recipes/quickstart.yaml  train, evaluate and publish a recipe
    zoo check 'mlpmixer_*'           run the conformance kit on models
    """
    ctx.meta["zoo.debug"] = debug
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )


def main() -> None:
    cli(prog_name="zoo")


def _precision_option(default: str, help: str) -> Any:
    """``--precision`` of the commands that time models (bench, report)."""
    return click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
        default=default,
        show_default=True,
        help=f"{help} auto: what `precision: auto` trains each model in here (bf16 autocast "
        "where a training step runs >= 1.2x as fast as fp32, else fp32).",
    )


def _import_option(command: Any) -> Any:
    """``--import FILE_OR_MODULE`` (repeatable) on a command: import files or modules whose
    ``@zoo.register_model`` builders the command needs (a model registered in a script)
    before it runs. What was imported is in ``ctx.meta["zoo.imports"]``."""

    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
        if values:
            from zoo.models.scripts import import_all

            ctx.meta["zoo.imports"] = import_all(values)

    return click.option(
        "--import",
        "imports",
        multiple=True,
        metavar="FILE_OR_MODULE",
        expose_value=False,
        is_eager=True,
        callback=callback,
        help="Import this .py file or module first, for models it registers (repeatable); "
        "a run records it.",
    )(command)


class _OptionError(ZooError):
    """An option value zoo refuses (a path that is not UTF-8, a count out of range)."""


def _label(param: click.Parameter) -> str:
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.name or "argument").upper()


def _utf8_path(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Callback of path options and run-directory arguments: refuse a name that is not valid
    UTF-8 (bytes Python carries as surrogate escapes) up front. zoo records paths in run files,
    logs, figures and suggested commands, none of which can hold such a name."""
    for path in value if isinstance(value, tuple) else (value,):
        if isinstance(path, str) and any(0xDC80 <= ord(c) <= 0xDCFF for c in path):
            shown = repr(os.fsencode(path))[1:]  # b'o\xffut' -> 'o\xffut'
            raise _OptionError(
                f"{_label(param)} {shown}: the path is not valid UTF-8; zoo writes paths into "
                "run files, logs and commands, so rename it or choose a UTF-8 name"
            )
    return value


def _count(low: int, high: Any = None, what: str = "") -> Any:
    """Callback bounding an integer option to ``low..high`` (``high`` may be a function, read
    when the option is used); a value outside is refused in one line that gives the bounds.
    None (the option left out) passes."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        top = high() if callable(high) else high
        for number in value if isinstance(value, tuple) else (value,):
            if number is None or (low <= number and (top is None or number <= top)):
                continue
            bounds = f"from {low} to {top}" if top is not None else f"at least {low}"
            raise _OptionError(f"{_label(param)} {number}: give {bounds}{what}")
        return value

    return callback


def _cpus() -> int:
    return os.cpu_count() or 1


MAX_BATCH = 1 << 16  # images in one batch: beyond any memory, and a mistyped value
_BATCH = _count(1, MAX_BATCH)
_THREADS = _count(1, lambda: 4 * _cpus(), " (4 x this machine's CPUs)")
_WORKERS = _count(0, lambda: max(4, 2 * _cpus()), " (2 x this machine's CPUs, at least 4)")


# -- registry ------------------------------------------------------------------------------


@cli.command("models")
@click.argument("pattern", default="*")
@click.option("--pretrained", is_flag=True, help="List published weights as NAME.TAG instead.")
@click.option("--plugin", default=None, help="Only models provided by this distribution.")
@click.option("--params", is_flag=True, help="Count parameters (builds each model on 'meta').")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_import_option
def models_cmd(
    pattern: str, pretrained: bool, plugin: str | None, params: bool, as_json: bool
) -> None:
    """List registered models matching PATTERN (fnmatch wildcards, e.g. 'mlpmixer_*').

    timm architectures from the zoo-timm plugin appear as 'timm/<name>'; they are listed only
    when the pattern asks for them (e.g. 'timm/*' or 'timm/resnet*').
    """
    from zoo.weights.factory import list_models, model_info

    names = list_models(pattern, pretrained=pretrained, plugin=plugin)
    rows: list[dict[str, Any]] = []
    for name in names:
        base, _, tag = name.rpartition(".") if pretrained else (name, "", "")
        row: dict[str, Any] = {"name": name}
        if params:
            row["params"] = model_info(base, params=True)["params"]
        if pretrained:
            row["source"] = _tag_source(base, tag)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no models match {pattern!r}", err=True)
        return
    for row in rows:
        cells = [row["name"].ljust(40) if len(row) > 1 else row["name"]]
        cells += [f"{row['params']:>13,}"] if params else []
        cells += [f"-> {row['source']}"] if pretrained else []
        click.echo("  ".join(cells))


def _tag_source(model: str, tag: str) -> str:
    from zoo.weights import store

    try:
        return store.tag_source(model, tag)
    except ZooError as e:  # one broken tag must not hide the others
        return f"(unusable: {e})"


@cli.command("info")
@click.argument("name")
@click.option("--plugin", default=None, help="Distribution to take NAME from when ambiguous.")
@_import_option
def info_cmd(name: str, plugin: str | None) -> None:
    """Show a model's metadata, default arguments and parameter count."""
    from zoo.weights.factory import model_info

    info = model_info(name, plugin=plugin, params=True)
    click.echo(json.dumps(info, indent=2, default=str))


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_cmd(as_json: bool) -> None:
    """List every plugin (zoo.models entry point): distribution, version, code location,
    models, and the error if it failed to load."""
    from dataclasses import asdict

    from zoo.models.plugins import autoload_disabled, load_plugins

    plugins = load_plugins()
    if as_json:
        click.echo(json.dumps([asdict(p) for p in plugins], indent=2))
        return
    for p in plugins:
        status = "ERROR" if p.error else "ok"
        kind = " (built-in)" if p.builtin else ""
        click.echo(f"{p.distribution} {p.version}{kind}  [{p.name} -> {p.module}]  {status}")
        click.echo(f"    location: {p.location or '-'}")
        if p.error:
            click.echo(f"    error: {p.error}")
        else:
            shown = ", ".join(p.models[:8]) + (" ..." if len(p.models) > 8 else "")
            click.echo(f"    models ({len(p.models)}): {shown or '-'}")
    if autoload_disabled():
        click.echo("third-party plugins are disabled (ZOO_DISABLE_PLUGIN_AUTOLOAD is set)")


@cli.command("check")
@click.argument("pattern")
@click.option("--plugin", default=None, help="Only models provided by this distribution.")
@click.option("--device", default="cpu", show_default=True, help="Device to run checks on.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report per model.")
@_import_option
@click.pass_context
def check_cmd(
    ctx: click.Context, pattern: str, plugin: str | None, device: str, as_json: bool
) -> None:
    """Run the conformance kit on every model matching PATTERN (a name or fnmatch pattern,
    e.g. 'mlpmixer_*'); exit 1 when any check fails."""
    from zoo.errors import UnknownModelError, did_you_mean
    from zoo.models.registry import get_entry, list_models
    from zoo.testing import check_model

    names = list_models(pattern, plugin=plugin)
    if not names and not any(c in pattern for c in "*?["):
        names = [get_entry(pattern, plugin).name]  # raises with close matches
    if not names:
        raise UnknownModelError(
            f"no models match {pattern!r}.{did_you_mean(pattern, list_models())} "
            "List models with `zoo models`."
        )
    failed = 0
    for name in names:
        report = check_model(name, plugin=plugin, device=device)
        failed += not report.ok
        click.echo(json.dumps(report.to_dict()) if as_json else report.format())
    if not as_json:
        click.echo(f"{len(names) - failed} of {len(names)} model(s) pass", err=True)
    ctx.exit(1 if failed else 0)


# -- training ------------------------------------------------------------------------------


@cli.command("train")
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key with a YAML value (repeatable), e.g. --set optim.lr=0.01.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    callback=_utf8_path,
    help="Run directory (default: runs/<name>/<timestamp>).",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False, exists=True),
    callback=_utf8_path,
    help="Continue the run or sweep in this directory from its last checkpoint.",
)
@click.option(
    "--device",
    default=None,
    help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps; default: the recipe's.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate, build the model and data, show the "
    "resolved recipe and planned run directories; train nothing.",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Run slice I of N of a sweep "
    "(0-based; every point runs in exactly one slice). Needs --out.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option(
    "--recipes-root",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Folder every `extends:` file must lie in (default: the first of the recipe's "
    "folder and its parents named recipes/ or holding .git, else the recipe's folder).",
)
@click.option(
    "--limit-train-batches",
    type=int,
    default=None,
    metavar="N",
    help="At most N training batches per epoch (quick checks).",
)
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Also log metrics to TensorBoard (<run>/tensorboard; needs `pip install tensorboard`).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Train in N processes on this machine (DistributedDataParallel; one per GPU, or "
    "gloo on CPU) by re-running this command under `torchrun --standalone`.",
)
@_import_option
def train_cmd(
    recipe: str | None,
    overrides: tuple[str, ...],
    out: str | None,
    resume: str | None,
    device: str | None,
    dry_run: bool,
    shard: str | None,
    force: bool,
    recipes_root: str | None,
    limit_train_batches: int | None,
    tensorboard: bool,
    nproc: int | None,
) -> None:
    """Train RECIPE (a YAML file): train, validate each epoch, test, export the weights.

    \b
    zoo train recipes/quickstart.yaml
    zoo train recipes/resnet18_best.yaml --set data.dataset=fashion_mnist --set epochs=2
    zoo train --resume runs/quickstart/20260101-120000
    zoo train recipes/resnet18_best.yaml --nproc 4   # 4 processes (torchrun), e.g. 4 GPUs

    Precision: the recipe's `precision: auto` (the default) trains in bf16 autocast where
    that measures at least 1.2x as fast as fp32 (CPUs with avx512_bf16/AMX; CUDA GPUs with
    bf16), else in fp32; the log and summary.json say which and why. Pin it with
    --set precision=fp32 (or bf16, fp16 on CUDA), or for every auto run with $ZOO_PRECISION.
    """
    import dataclasses
    import sys
    from pathlib import Path

    from zoo.models import scripts
    from zoo.recipe import load_recipe, parse_shard
    from zoo.training import distributed, launch, progress
    from zoo.training.loop import RunOptions

    if recipe is None and resume is None:
        raise click.UsageError("give a RECIPE file, or --resume RUN_DIR to continue a run")
    launch.check_options(RunOptions(out_dir=out, resume=resume, force=force))
    place = distributed.from_env()
    sets = [
        *overrides,
        *(
            [f"limit_train_batches={limit_train_batches}"]
            if limit_train_batches is not None
            else []
        ),
    ]
    # --resume without RECIPE uses the run's own recipe; --set then changes it (e.g. epochs).
    source = recipe
    if source is None and resume is not None and (sets or dry_run):
        source = str(Path(resume) / "recipe.yaml")
    with contextlib.ExitStack() as stack:
        # a dry run reads a recipe without running its imports (they are code): it lists them
        not_run = stack.enter_context(scripts.deferred()) if dry_run else []
        loaded = load_recipe(source, sets, root=recipes_root) if source else None
        imported = click.get_current_context().meta.get("zoo.imports", [])
        if loaded is not None and imported:  # --import: recorded with the recipe's imports
            both = tuple(dict.fromkeys([*loaded.imports, *imported]))
            loaded = dataclasses.replace(loaded, imports=both)
        slice_ = parse_shard(shard) if shard else None
        if nproc is not None and nproc > 1:
            _check_nproc(nproc, device, loaded, resume)
            if not dry_run:
                _launch_torchrun(nproc, place)
        if dry_run:
            assert loaded is not None
            world = nproc or place.world_size
            planned = launch.plan(
                loaded, out, device=device, shard=slice_, world_size=world, resume=resume,
                force=force,
            )  # fmt: skip
            _echo_plan(planned)
            if not_run:
                listed = ", ".join(dict.fromkeys(not_run))  # each point read them again
                click.echo(f"# imports (code, not run by --dry-run): {listed}")
            return
    options = RunOptions(out_dir=out, resume=resume, device=device, force=force, shard=slice_)
    if not place.is_main:  # rank 0 reports for the whole job
        launch.run_recipe(loaded, dataclasses.replace(options, progress=[]))
        distributed.cleanup()
        return
    trainer_log = logging.getLogger("zoo.training")  # progress lines are INFO records
    if trainer_log.getEffectiveLevel() > logging.INFO:
        trainer_log.setLevel(logging.INFO)
    reporters: list[Any] = [
        progress.TqdmProgress() if sys.stderr.isatty() else progress.LogProgress()
    ]
    if tensorboard:
        try:
            reporters.append(progress.TensorBoardProgress())
        except ImportError:
            click.echo(
                "warning: TensorBoard is not installed (pip install tensorboard); "
                "metrics go to metrics.jsonl only",
                err=True,
            )
    path = launch.run_recipe(loaded, dataclasses.replace(options, progress=reporters))
    distributed.cleanup()
    _echo_outcome(path)


def _check_nproc(nproc: int, device: str | None, recipe: Any, resume: str | None) -> None:
    """Refuse more processes than the device the run trains on can take (--device, else the
    recipe's, else the resumed run's recorded one)."""
    from pathlib import Path

    from zoo.devices import select_device
    from zoo.runs import files
    from zoo.training.distributed import check_nproc

    if device is None and recipe is not None:
        device = recipe.device
    if device is None and resume is not None:
        device = (files.read_recipe_data(Path(resume)) or {}).get("device")
    check_nproc(nproc, select_device(device if isinstance(device, str) else None))


def _launch_torchrun(nproc: int, place: Any) -> None:
    """Replace this process by `torchrun --standalone --nproc-per-node N -m zoo ...` with
    the same arguments minus --nproc; its exit status becomes this command's."""
    import os
    import sys

    from zoo.training.distributed import torchrun_command

    if place.enabled:
        raise click.UsageError(
            "--nproc starts torchrun, but this process already runs under torchrun; leave "
            "--nproc out"
        )
    command = torchrun_command(sys.argv[1:], nproc)
    click.echo(f"launching: {' '.join(command)}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def _params(count: int | None) -> str:
    return (
        "parameters not counted: its imports were not run"
        if count is None
        else (f"{count:,} parameters")
    )


def _echo_plan(plan: dict[str, Any]) -> None:
    click.echo(plan["recipe"].rstrip())
    click.echo(f"# device: {plan['device']}")
    if plan["world_size"] > 1:
        click.echo(f"# {plan['world_size']} processes (DistributedDataParallel)")
    if plan["sweep_dir"]:
        click.echo(f"# sweep directory: {plan['sweep_dir']} ({len(plan['runs'])} runs)")
    for run in plan["runs"]:
        splits = ", ".join(f"{k} {v}" for k, v in run["splits"].items())
        click.echo(
            f"# {run['run_dir']}: {run['model']} ({_params(run['params'])}) on "
            f"{run['dataset']} {'x'.join(map(str, run['input']))} ({splits}); "
            f"{run['epochs']} epochs of {run['steps_per_epoch']} steps"
            + (
                f" of {run['batch_size_per_process']} images per process"
                if plan["world_size"] > 1
                else ""
            )
        )
    click.echo("# dry run: nothing was trained")


def _echo_outcome(path: Any) -> None:
    from zoo.runs import files

    index = path / files.SWEEP_INDEX_NAME
    if index.is_file():
        points = (files.read_json(index) or {})["points"]
        click.echo(f"sweep directory: {path} (index: {index})")
        for p in points:
            acc = f"  test acc {p['summary']['test_acc']:.4f}" if p["summary"] else ""
            click.echo(f"  {p['name']}: {p['status']}{acc}")
        return
    summary = files.read_json(path / files.SUMMARY_NAME)
    weights = summary.get("test_weights") or "final"
    click.echo(f"test accuracy: {summary['test_acc']:.4f} ({weights} weights)")
    click.echo(f"run directory: {path}")
    click.echo(f"weights:       {path / 'model.safetensors'} (+ config.json)")
    curves = path / "curves.png"
    click.echo(
        f"curves:        {curves}"
        if curves.is_file()
        else f"metrics:       {path / 'metrics.jsonl'}"
    )


@cli.group("sweep")
def sweep_group() -> None:
    """Inspect sweeps (e.g. one trained by array jobs with `zoo train SWEEP --shard I/N`)."""


@sweep_group.command("status")
@click.argument("directory", type=click.Path(exists=True, file_okay=False), callback=_utf8_path)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def sweep_status_cmd(directory: str, as_json: bool) -> None:
    """Show which points of the sweep in DIRECTORY are done, running, failed or missing.

    running: the point has files but no summary.json yet (a shard is training it, or was
    killed: see how long ago it last wrote). Restart killed or missing points with
    `zoo train --resume DIRECTORY [--shard I/N]`. Directories that are not points of the
    sweep's recipe (copied in, or from another grid) are named last.
    """
    from zoo.training.sweep import STATUSES, outside_points, sweep_status

    rows = sweep_status(directory)
    outside = outside_points(directory)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    if as_json:
        report = {"directory": directory, "counts": counts, "points": rows, "outside": outside}
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{directory}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    click.echo(f"{'#':>4}  {'status':<8} {'epoch':>9}  {'test acc':>8}  {'updated':>9}  point")
    for r in rows:
        epoch = f"{r['epoch']}/{r['epochs']}" if r["epoch"] is not None else "-"
        acc = f"{r['test_acc']:.4f}" if isinstance(r["test_acc"], float) else "-"
        age = _age(r["updated_s_ago"]) if r["status"] != "missing" else "-"
        click.echo(f"{r['index']:>4}  {r['status']:<8} {epoch:>9}  {acc:>8}  {age:>9}  {r['name']}")
        if r["error"]:
            click.echo(f"      error: {r['error']}")
    if outside:
        names = ", ".join(printable(name) for name in outside)
        click.echo(f"not points of this sweep's recipe (no shard trains them): {names}")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


# -- benchmarks, figures, report -----------------------------------------------------------


@cli.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "-b",
    "--batch-size",
    "batch_sizes",
    type=int,
    multiple=True,
    help="Repeatable. [128] (bounded by a size estimate against the device's memory)",
)
@click.option(
    "--mode", type=click.Choice(["inference", "train", "both"]), default="both", show_default=True
)
@click.option("--img-size", type=int, default=None, help="Input size (default: the model's).")
@click.option("--in-chans", type=int, default=None, help="Input channels (default: the model's).")
@_precision_option("fp32", "Precision of the timed steps; the auto choice and why are printed.")
@click.option("--channels-last", is_flag=True, help="Model and input in channels_last layout.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model first.")
@click.option("--compile-mode", default=None, help="torch.compile mode (implies --compile).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N, mps, auto.")
@click.option(
    "--threads",
    type=int,
    default=None,
    callback=_THREADS,
    help="torch intra-op threads while timing (at most 4 x the CPUs).",
)
@click.option(
    "--min-time", type=float, default=1.0, show_default=True, help="Seconds of timed steps."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "md"]),
    default="table",
    show_default=True,
    help="json = JSON lines, one record per line, each with its env.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_utf8_path,
    help="Write to FILE.",
)
@_import_option
def bench_cmd(
    models: tuple[str, ...],
    batch_sizes: tuple[int, ...],
    mode: str,
    img_size: int | None,
    in_chans: int | None,
    precision: str,
    channels_last: bool,
    compile_: bool,
    compile_mode: str | None,
    device: str,
    threads: int | None,
    min_time: float,
    fmt: str,
    out: str | None,
) -> None:
    """Measure params, FLOPs, throughput, latency, peak memory and MFU (achieved FLOP/s over
    the device's matmul peak) of MODELS (names, fnmatch patterns such as 'mlpmixer_p*', or
    run directories)."""
    from zoo._io import atomic_write_text
    from zoo.analysis.bench import MODES, format_records, run_bench

    records = run_bench(
        models,
        batch_sizes or (128,),
        MODES if mode == "both" else (mode,),
        img_size=img_size,
        in_chans=in_chans,
        precision=precision,
        channels_last=channels_last,
        compile=compile_mode or compile_,
        device=device,
        threads=threads,
        min_time=min_time,
    )
    text = format_records(records, fmt)
    if out:
        atomic_write_text(out, text)
        click.echo(f"wrote {len(records)} records to {out}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command("plot")
@click.argument(
    "sources", nargs=-1, required=True, type=click.Path(exists=True), callback=_utf8_path
)
@click.option(
    "--out", type=click.Path(file_okay=False), default=None, callback=_utf8_path, help="Write here."
)
def plot_cmd(sources: tuple[str, ...], out: str | None) -> None:
    """Draw curves of runs (curves.png) and overlays + tables of sweeps (sweep.png,
    sweep.md), next to each source unless --out DIR is given."""
    from zoo.analysis.report import write_plots

    for path in write_plots(sources, out):
        click.echo(str(path))


@cli.command("viz")
@click.argument("source", callback=_utf8_path)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_utf8_path,
    help="PNG to write.",
)
@click.option("--img-size", type=int, default=None, help="For a model name: input size.")
@click.option("--in-chans", type=int, default=None, help="For a model name: input channels.")
def viz_cmd(source: str, out: str | None, img_size: int | None, in_chans: int | None) -> None:
    """Draw the first layer of a run's trained model, or of a freshly initialised model
    name: ResNet first-conv kernels or Mixer first token-mixing units, in a grid."""
    from zoo.analysis.viz import save_first_layer

    click.echo(str(save_first_layer(source, out, img_size=img_size, in_chans=in_chans)))


@cli.command("report")
@click.argument(
    "sources", nargs=-1, required=True, type=click.Path(exists=True), callback=_utf8_path
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="report",
    show_default=True,
    callback=_utf8_path,
)
@click.option(
    "--bench-time",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds of timed steps per measurement (small = fast, noisier).",
)
@click.option("--no-bench", is_flag=True, help="Skip all timing (no Mixer time table).")
@click.option("--device", default="cpu", show_default=True, help="Device for the timings.")
@_precision_option("auto", "Precision of the timings.")
@click.option(
    "--note",
    default=None,
    help="A paragraph (markdown) under the title: how the runs were made, their budget.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into an --out that holds more than an earlier report.",
)
def report_cmd(
    sources: tuple[str, ...],
    out: str,
    bench_time: float,
    no_bench: bool,
    device: str,
    precision: str,
    note: str | None,
    force: bool,
) -> None:
    """Write OUT/report.md with figures from runs and sweeps: sweep overlays and tables
    (with the model each point trained), run curves, first layers, Mixer patch-size time
    table and a leaderboard."""
    from zoo.analysis.report import build_report

    path = build_report(
        sources,
        out,
        bench=not no_bench,
        bench_time=bench_time,
        device=device,
        precision=precision,
        note=note,
        force=force,
    )
    click.echo(str(path))


# -- using a trained model -------------------------------------------------------------------


@cli.command("eval")
@click.argument("source", callback=_utf8_path)
@click.option(
    "--dataset",
    default=None,
    help="cifar10, fashion_mnist, synthetic or imagefolder (default: the weights' own).",
)
@click.option(
    "--root", default=None, help="Dataset root or image folder (default: the run's, $ZOO_DATA)."
)
@click.option(
    "--split",
    type=click.Choice(["test", "valid", "train"]),
    default="test",
    show_default=True,
    help="valid and train are the trainer's seeded split of the official training set.",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    callback=_BATCH,
    help="Default: the run's evaluation batch size.",
)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, mps, auto.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json adds the confusion matrix and the calibration bins.",
)
@click.option(
    "--out",
    metavar="DIR",
    default=None,
    callback=_utf8_path,
    help="Also write metrics.json, confusion_matrix.png and reliability.png into DIR.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into an --out that holds more than an earlier evaluation's files.",
)
@_import_option
def eval_cmd(
    source: str,
    dataset: str | None,
    root: str | None,
    split: str,
    batch_size: int | None,
    device: str,
    fmt: str,
    out: str | None,
    force: bool,
) -> None:
    """Score SOURCE (a run or export directory, NAME.TAG or hf-hub:ORG/NAME) on a dataset
    split: top-1, top-5, loss, per-class accuracy and calibration (ECE), as timm's
    validate.py. A run scores exactly as the trainer's test evaluation did."""
    from zoo.analysis.evaluate import EvalOptions, check_out_dir, evaluate_source, write_outputs

    if out is not None:  # before the evaluation, which may take minutes
        check_out_dir(out, force=force)
    options = EvalOptions(
        dataset=dataset, root=root, split=split, batch_size=batch_size, device=device
    )
    result = evaluate_source(source, options)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    written = write_outputs(result, out, force=force) if out is not None else []
    click.echo(json.dumps(result.to_dict(), indent=2) if fmt == "json" else result.table())
    for path in written:
        click.echo(f"wrote {path}", err=True)


# -- using a trained model: predict ------------------------------------------------------


@cli.command("predict")
@click.argument("source", callback=_utf8_path)
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--topk",
    type=click.IntRange(min=1),
    default=None,
    help="Classes to show per image [5, or all when the model has fewer].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help='json: [{"path", "top": [{"label", "index", "prob"}]}]; csv: one row per class.',
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_utf8_path,
    help="Write to FILE (atomically).",
)
@click.option(
    "--batch-size", type=int, default=64, show_default=True, callback=_BATCH, help="Images/batch."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N, mps.")
@click.option(
    "--num-workers",
    type=int,
    default=None,
    callback=_WORKERS,
    help="DataLoader processes decoding images [up to 4, leaving a CPU to the model; 0: "
    "decode in this process; at most 2 x the CPUs]. On CPU the model gets the CPUs the "
    "workers leave.",
)
@_import_option
@click.pass_context
def predict_cmd(
    ctx: click.Context,
    source: str,
    paths: tuple[str, ...],
    topk: int | None,
    fmt: str,
    out: str | None,
    batch_size: int,
    device: str,
    num_workers: int | None,
) -> None:
    """Classify images with the model at SOURCE (a run or export directory, NAME.TAG or
    hf-hub:ORG/NAME) and print the top classes of each. PATHS are image files, folders
    (searched recursively) or glob patterns. Files that cannot be read are named, skipped
    and listed at the end; the exit status is then 1.

    \b
    zoo predict runs/quickstart/20260101-120000 shoe.png photos/ --topk 3
    zoo predict mlpmixer_p4.cifar10_best 'photos/*.jpg' --format json --out preds.json
    """
    import sys

    from zoo._io import atomic_write_text
    from zoo.analysis.predict import PredictOptions, format_result, predict

    options = PredictOptions(
        topk=topk,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=sys.stderr.isatty(),
    )
    result = predict(
        source,
        paths,
        options,
        on_skip=lambda s: click.echo(f"skipped {s.path}: {s.reason}", err=True),
    )
    text = format_result(result, fmt)
    if out:
        atomic_write_text(out, text)
        click.echo(f"wrote {len(result.predictions)} predictions to {out}", err=True)
    else:
        click.echo(text, nl=False)
    if result.skipped:
        names = ", ".join(s.path for s in result.skipped)
        click.echo(f"{len(result.skipped)} file(s) skipped: {names}", err=True)
        ctx.exit(1)


# -- publishing: export, Hub, local weights store -------------------------------------------


@cli.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False), callback=_utf8_path)
@click.option(
    "--format",
    "fmt",
    # zoo.weights.deploy.FORMATS, spelled out so that `zoo --help` does not import it
    type=click.Choice(["safetensors", "onnx", "torchscript", "exported-program"]),
    default="safetensors",
    show_default=True,
    help="safetensors: the publishable files. onnx (needs pip install 'zoo-classifiers[onnx]'), "
    "torchscript, exported-program: config.json and model.onnx / model.torchscript.pt / "
    "model.pt2, checked against PyTorch.",
)
@click.option(
    "--dynamic-batch",
    is_flag=True,
    help="onnx, torchscript, exported-program: accept any batch size (default: batch 1).",
)
@click.option(
    "--out",
    default=None,
    callback=_utf8_path,
    help="Export directory (default: RUN/export, or RUN/export-FORMAT).",
)
@click.option("--force", is_flag=True, help="Replace an existing export directory.")
def export_cmd(run: str, fmt: str, dynamic_batch: bool, out: str | None, force: bool) -> None:
    """Write the publishable files of RUN (a run or export directory): model.safetensors,
    config.json, model card README.md, recipe.yaml, metrics.jsonl, summary.json and
    curves.png. With --format onnx, torchscript or exported-program, write config.json and
    the model for deployment instead, after checking it against the PyTorch model."""
    if fmt == "safetensors":
        if dynamic_batch:
            raise click.UsageError(
                "--dynamic-batch needs --format onnx, torchscript or exported-program"
            )
        from zoo.weights.files import export_run

        click.echo(str(export_run(run, out, force=force)))
        return
    from zoo.weights.deploy import export_deployment

    result = export_deployment(run, fmt, out, dynamic_batch=dynamic_batch, force=force)
    click.echo(str(result.path))
    click.echo(result.summary(), err=True)


@cli.command("push")
@click.argument(
    "path",
    metavar="RUN_OR_EXPORT",
    type=click.Path(exists=True, file_okay=False),
    callback=_utf8_path,
)
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private (if it is new).")
@click.option("--revision", default=None, help="Branch to commit to (default: main).")
@click.option("--commit-message", default=None, help="Commit message.")
def push_cmd(
    path: str, repo_id: str, private: bool, revision: str | None, commit_message: str | None
) -> None:
    """Upload a run or export to Hub repo REPO_ID (ORG/NAME) in one commit.

    The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT selects another Hub.
    """
    from zoo.weights.hub import push

    click.echo(
        push(path, repo_id, private=private, revision=revision, commit_message=commit_message)
    )


@cli.command("pull")
@click.argument("repo_id")
@click.option("--revision", default=None, help="Branch, tag or commit sha (default: main).")
def pull_cmd(repo_id: str, revision: str | None) -> None:
    """Download Hub repo REPO_ID into the Hugging Face cache, verify it, print its path."""
    from zoo.weights.hub import pull

    click.echo(str(pull(repo_id, revision)))


@cli.command("publish")
@click.argument("run", type=click.Path(exists=True, file_okay=False), callback=_utf8_path)
@click.option("--tag", required=True, help="Weight tag: use the model as zoo.create('NAME.TAG').")
@click.option("--hub", "hub_repo", default=None, help="Push to this Hub repo; tag points to it.")
@click.option("--private", is_flag=True, help="With --hub: create the repo as private.")
@click.option("--force", is_flag=True, help="Replace an existing tag.")
def publish_cmd(run: str, tag: str, hub_repo: str | None, private: bool, force: bool) -> None:
    """Store RUN's weights as NAME.TAG in the local weights store ($ZOO_HOME); with --hub,
    push RUN to the Hub and make the tag point at the pushed commit."""
    from zoo.weights import store
    from zoo.weights.files import architecture_of, read_config

    path = store.publish(run, None, tag, hub_repo=hub_repo, private=private, force=force)
    click.echo(f"{architecture_of(read_config(run))}.{tag} -> {path}")


if __name__ == "__main__":  # pragma: no cover
    main()

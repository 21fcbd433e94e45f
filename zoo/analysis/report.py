"""The report: one ``report.md`` (+ PNGs) from runs and sweeps.

``build_report(["runs/mixer_patch/2026...", "runs/mixer_best/2026..."], "report")`` writes::

    report/report.md
    report/figures/*.png

with, in order: each sweep's overlay of the four curve panels and its summary table (and the
first layer of its best point); each single run's curves, test accuracy and first layer; the
parameters / inference / training time table per MLP-Mixer patch size; a leaderboard of every
run (test accuracy against inference images/s and parameters, with the Pareto fronts) as a
table and a scatter plot; and the environment the timings were measured in.

Times come from :func:`zoo.analysis.bench.measure` on freshly initialised models with each run's
architecture, arguments and batch size (timing does not depend on the weights), by default in
the precision ``precision: auto`` trains each model in on this machine, so the estimated
epoch times match what ``zoo train`` does here.
A source is a run directory (holds ``metrics.jsonl``), a sweep directory (holds
``sweep.json``) or any directory above them, which is searched.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo._fs import check_dir, check_output_dir
from zoo._io import atomic_write_text
from zoo.errors import RunError, ZooError, printable
from zoo.runs import files, plots

__all__ = [
    "LoadedRun",
    "Sweep",
    "build_report",
    "discover",
    "load_run",
    "load_sweep",
    "md_text",
    "model_label",
    "write_plots",
]

log = logging.getLogger(__name__)

REPORT_ENTRIES = ("report.md", "figures")  # what build_report writes into its directory
VALID_IMAGES = 5_000  # the seed's validation split
EPOCH_IMAGES = 45_000  # one CIFAR-10 training epoch in the seed's split


@dataclass
class LoadedRun:
    """A run directory's contents; ``summary``/``config``/``recipe`` are {} when missing."""

    path: Path
    label: str
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    config: dict[str, Any]
    recipe: dict[str, Any]


@dataclass
class Sweep:
    """A sweep directory: ``sweep.json`` and the runs of its points (None: no run dir yet)."""

    path: Path
    data: dict[str, Any]
    runs: list[tuple[dict[str, Any], LoadedRun | None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return md_text(str(self.data.get("name") or self.path.parent.name))


def md_text(text: str) -> str:
    """``text`` from a run's files made safe inside a markdown heading, table cell or image
    alt text: control characters escaped (one line), ``|`` escaped, ``<`` and ``>`` as
    entities (no HTML from a file reaches the report)."""
    return printable(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _read_json(path: Path) -> dict[str, Any]:
    return files.read_json(path, missing_ok=True) or {}


def load_run(path: str | Path, label: str | None = None) -> LoadedRun:
    """Read a run directory (``metrics.jsonl`` required; the rest optional)."""
    path = Path(path)
    summary = _read_json(path / files.SUMMARY_NAME)
    return LoadedRun(
        path=path,
        label=md_text(label or str(summary.get("name") or path.parent.name or path.name)),
        metrics=files.read_metrics(path),
        summary=summary,
        config=_read_json(path / files.CONFIG_NAME),
        recipe=files.read_recipe_data(path) or {},
    )


def load_sweep(path: str | Path) -> Sweep:
    """Read ``sweep.json`` and every point's run directory that has metrics."""
    path = Path(path)
    data = _read_json(path / files.SWEEP_INDEX_NAME)
    if not data:
        raise RunError(
            f"{path / files.SWEEP_INDEX_NAME} is missing or empty; is {path} a zoo sweep?"
        )
    sweep = Sweep(path, data)
    index = path / files.SWEEP_INDEX_NAME
    points = data.get("points", [])
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise RunError(f"{index}: 'points' is not a list of points; the sweep index is damaged")
    for point in points:
        name = point.get("run_dir") or point.get("name")
        if not isinstance(name, str) or name in (".", "..") or "/" in name or "\0" in name:
            raise RunError(
                f"{index}: point {printable(repr(name))} does not name a directory of the "
                "sweep; the sweep index is damaged"
            )
        run_dir = path / name
        # a point that is a link out of the sweep is refused, not reported
        check_dir(run_dir, inside=path, error=RunError, verb="report")
        run = None
        if (run_dir / files.METRICS_NAME).is_file():
            run = load_run(run_dir, label=f"{sweep.name}/{point.get('name')}")
        sweep.runs.append((point, run))
    return sweep


def discover(sources: Sequence[str | Path]) -> tuple[list[Sweep], list[LoadedRun]]:
    """Sweeps and single runs under ``sources`` (sweep points are not repeated as runs)."""
    sweeps: list[Sweep] = []
    runs: list[LoadedRun] = []
    for source in map(Path, sources):
        if not source.is_dir():
            raise RunError(f"{source} is not a directory; give run or sweep directories")
        if (source / files.SWEEP_INDEX_NAME).is_file():
            sweeps.append(load_sweep(source))
        elif (source / files.METRICS_NAME).is_file():
            runs.append(load_run(source))
        else:
            found_sweeps = sorted(p.parent for p in source.rglob(files.SWEEP_INDEX_NAME))
            sweeps += [load_sweep(p) for p in found_sweeps]
            for metrics in sorted(source.rglob(files.METRICS_NAME)):
                if not any(s in metrics.parents for s in found_sweeps):
                    runs.append(load_run(metrics.parent))
    if not sweeps and not runs:
        raise RunError(
            f"no runs or sweeps under {', '.join(map(str, sources))}: a run holds "
            "metrics.jsonl, a sweep holds sweep.json; train one with `zoo train RECIPE`"
        )
    return sweeps, runs


# -- measuring the runs' models ------------------------------------------------------------


class _Timer:
    """Build each distinct (architecture, args) once and bench each (model, batch size,
    mode) once: sweep points that differ only in training settings share measurements."""

    def __init__(self, min_time: float, device: str, precision: str = "auto") -> None:
        self.min_time = min_time
        self.device = device
        self.precision = precision
        self.models: dict[str, Any] = {}
        self.cache: dict[str, Any] = {}
        self.env: dict[str, Any] | None = None

    def model(self, run: LoadedRun) -> Any:
        """A freshly initialised model of the run's architecture; None when unknown here."""
        from zoo.weights.factory import create

        arch = run.config.get("architecture")
        if not arch:
            return None
        args = dict(run.config.get("model_args", {}))
        key = json.dumps([arch, args], sort_keys=True, default=str)
        if key not in self.models:
            try:
                self.models[key] = create(arch, **args)
            except ZooError as e:  # e.g. a plugin architecture that is not installed here
                log.warning("cannot build %s for timing: %s", arch, e)
                self.models[key] = None
        return self.models[key]

    def measure(self, run: LoadedRun, mode: str) -> Any:
        from zoo.analysis.bench import measure

        model = self.model(run)
        if model is None:
            return None
        data = run.recipe.get("data", {}) if isinstance(run.recipe.get("data"), dict) else {}
        batch = int(data.get("batch_size") or 128)
        if mode == "inference":
            batch = int(data.get("eval_batch_size") or batch)
        key = f"{id(model)}/{batch}/{mode}"
        if key not in self.cache:
            size = run.config.get("input_size") or [None, None, None]
            self.cache[key] = measure(
                model,
                batch,
                mode=mode,
                in_chans=size[0],
                img_size=size[-1],
                device=self.device,
                precision=self.precision,
                min_time=self.min_time,
                min_reps=3,
                warmup=2,
            )
            self.env = self.cache[key].env
        return self.cache[key]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", name).strip("-") or "figure"


class _Figures:
    """Unique, relative figure paths under ``out/figures``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.used: set[str] = set()

    def save(self, fig: Any, name: str) -> str:
        slug = _slug(name)
        candidate, n = slug, 1
        while candidate in self.used:
            n += 1
            candidate = f"{slug}-{n}"
        self.used.add(candidate)
        rel = f"figures/{candidate}.png"
        plots.save_figure(fig, self.out / rel)
        return rel


def _pct(value: Any) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, int | float) else "-"


def model_label(run: LoadedRun | None) -> str:
    """What a run actually trained: its builder's name and every argument that changes what
    the name says (``mlpmixer_p4 (patch_size=14)``), so a sweep over ``model.args`` does not
    show one name for every point. A patch model always shows its patch size."""
    if run is None:
        return "-"
    name = run.config.get("architecture") or run.summary.get("model") or "?"
    args = run.config.get("model_args")
    args = args if isinstance(args, dict) else {}
    shown: dict[str, Any] = {}
    if "patch_size" in args:
        shown["patch_size"] = args["patch_size"]
    overrides = run.config.get("overrides")
    for key, change in (overrides if isinstance(overrides, dict) else {}).items():
        shown[key] = change.get("used") if isinstance(change, dict) else change
    for key in run.summary.get("sweep_values") or {}:
        arg = str(key).removeprefix("model.args.")
        if arg != key and arg in args:  # a swept model argument
            shown[arg] = args[arg]
    if not shown:
        return str(name)
    return f"{name} ({', '.join(f'{k}={v}' for k, v in shown.items())})"


def _first_layer_md(run: LoadedRun, figs: _Figures) -> list[str]:
    from zoo.analysis.viz import VizError, plot_first_layer
    from zoo.weights.files import load_model_dir

    if not (run.path / "model.safetensors").is_file():
        return []
    try:
        fig = plot_first_layer(load_model_dir(run.path), title=run.label)
    except VizError as e:
        log.info("no first-layer figure for %s: %s", run.label, e)
        return []
    except ZooError as e:
        return [f"First layer of {run.label}: not drawn ({e}).", ""]
    rel = figs.save(fig, f"{run.label}-first-layer")
    return [f"![first layer of {run.label}]({rel})", ""]


def _sweep_md(sweep: Sweep, figs: _Figures) -> list[str]:
    keys = ", ".join(sweep.data.get("keys", []))
    lines = [f"### Sweep {sweep.name} ({keys})", "", f"Source: `{sweep.path}`", ""]
    done = [(p, r) for p, r in sweep.runs if r is not None and r.metrics]
    if done:
        fig = plots.plot_sweep(
            [(str(p.get("name")), r.metrics) for p, r in done], title=f"sweep {sweep.name}"
        )
        rel = figs.save(fig, f"sweep-{sweep.name}")
        lines += [f"![sweep {sweep.name}: loss and accuracy per epoch]({rel})", ""]
    lines += [plots.sweep_table(sweep.data, models=[model_label(r) for _, r in sweep.runs]), ""]
    scored = [
        (float(r.summary["test_acc"]), r)
        for _, r in done
        if isinstance(r.summary.get("test_acc"), int | float)
    ]
    if scored:
        acc, best = max(scored, key=lambda item: item[0])
        lines += [f"Best point: **{best.label}**, test accuracy {_pct(acc)}.", ""]
        lines += _first_layer_md(best, figs)
    return lines


def _run_md(run: LoadedRun, figs: _Figures) -> list[str]:
    s = run.summary
    lines = [f"### {run.label}", "", f"Source: `{run.path}`", ""]
    lines += [
        f"Model `{model_label(run)}` on "
        f"{s.get('dataset', '?')}: test accuracy **{_pct(s.get('test_acc'))}**, best valid "
        f"accuracy {_pct(s.get('best_valid_acc'))} (epoch {s.get('best_epoch', '-')}), "
        f"{s.get('epochs', len(run.metrics))} epochs.",
        "",
    ]
    if run.metrics:
        rel = figs.save(plots.plot_curves(run.metrics, title=run.label), f"{run.label}-curves")
        lines += [f"![{run.label}: loss and accuracy per epoch]({rel})", ""]
    return lines + _first_layer_md(run, figs)


def _mixer_md(runs: Sequence[LoadedRun], timer: _Timer) -> list[str]:
    by_patch: dict[int, LoadedRun] = {}
    for run in runs:
        # Models that cut images into patches (the Mixer family) say so in their arguments.
        patch = getattr(timer.model(run), "zoo_cfg", {}).get("args", {}).get("patch_size")
        if isinstance(patch, int):
            by_patch.setdefault(patch, run)
    if not by_patch:
        return []
    lines = [
        "## MLP-Mixer: parameters and running time per patch size",
        "",
        f"Times are **estimated**: {VALID_IMAGES:,} (inference) or {EPOCH_IMAGES:,} (training) "
        "images divided by the throughput `zoo bench` measured (median step after warm-up, "
        f"at least {timer.min_time:g} s of steps) on {timer.device} {_in_precision(timer)}; "
        "a training step is forward + backward + Adam at the recipe's batch size, inference "
        "is forward at the eval batch size. Data loading and evaluation passes are not "
        "included.",
        "",
        "| patch | model | params | GFLOPs/img (fwd) | inference img/s (batch, precision) "
        f"| inference, {VALID_IMAGES:,} images | training img/s (batch, precision) "
        f"| training epoch, {EPOCH_IMAGES:,} images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for patch, run in sorted(by_patch.items()):
        inf, train = timer.measure(run, "inference"), timer.measure(run, "train")
        lines.append(
            f"| {patch} | {model_label(run)} | {inf.params:,} "
            f"| {inf.flops_per_image / 1e9:.3f} "
            f"| {inf.images_per_s:,.0f} ({inf.batch_size}, {inf.precision}) "
            f"| {VALID_IMAGES / inf.images_per_s:.1f} s "
            f"| {train.images_per_s:,.0f} ({train.batch_size}, {train.precision}) "
            f"| {EPOCH_IMAGES / train.images_per_s:.1f} s |"
        )
    return [*lines, ""]


def _in_precision(timer: _Timer) -> str:
    if timer.precision == "auto":
        return (
            "in the precision `precision: auto` trains each model in on this machine (bf16 "
            "autocast where a training step runs >= 1.2x as fast as fp32, else fp32)"
        )
    return f"in {timer.precision}"


def _leaderboard_md(runs: Sequence[LoadedRun], timer: _Timer | None, figs: _Figures) -> list[str]:
    entries: list[dict[str, Any]] = []
    for run in runs:
        acc = run.summary.get("test_acc")
        if not isinstance(acc, int | float):
            continue
        rec = timer.measure(run, "inference") if timer else None
        entries.append(
            {
                "label": run.label,
                "model": model_label(run),
                "dataset": md_text(str(run.summary.get("dataset", "?"))),
                "test_acc": acc,
                "params": _count(run.summary.get("params")) or (rec.params if rec else None),
                "images_per_s": rec.images_per_s if rec else None,
                "precision": rec.precision if rec else None,
            }
        )
    if not entries:
        return []
    entries.sort(key=lambda e: -e["test_acc"])
    lines = ["## Leaderboard", ""]
    timed = [e for e in entries if e["images_per_s"] and e["params"]]
    speed_front: list[bool] = []
    size_front: list[bool] = []
    if timed:
        speed_front = plots.pareto_front([(e["images_per_s"], e["test_acc"]) for e in timed])
        size_front = plots.pareto_front([(-e["params"], e["test_acc"]) for e in timed])
        # Points carry their rank in the table below: run names would print over each other.
        timed_ids = {id(e) for e in timed}
        numbered = [
            {**e, "label": str(rank)} for rank, e in enumerate(entries, 1) if id(e) in timed_ids
        ]
        rel = figs.save(plots.plot_pareto(numbered), "leaderboard")
        lines += [f"![test accuracy vs inference speed and parameters]({rel})", ""]
    fronts = {id(e): (s, p) for e, s, p in zip(timed, speed_front, size_front, strict=True)}
    lines += [
        ("Points in the figure are numbered by their rank (#) in the table. " if timed else "")
        + "Pareto: on the front of test accuracy vs inference images/s (speed) or vs parameters "
        "(size). Images/s measured by `zoo bench` at each run's eval batch size"
        + (f", {_in_precision(timer)}." if timer else "."),
        "",
        "| # | run | model | dataset | test acc | params | inference img/s | Pareto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, e in enumerate(entries, 1):
        speed, size = fronts.get(id(e), (False, False))
        marks = ", ".join(m for m, on in (("speed", speed), ("size", size)) if on) or ""
        ips = (
            f"{e['images_per_s']:,.0f} ({e['precision']})" if e["images_per_s"] else "not measured"
        )
        params = f"{e['params']:,}" if e["params"] else "-"
        lines.append(
            f"| {rank} | {e['label']} | {e['model']} | {e['dataset']} | {_pct(e['test_acc'])} "
            f"| {params} | {ips} | {marks} |"
        )
    return [*lines, ""]


def _count(value: Any) -> int | None:
    """A parameter count from a file, or None when it is not a non-negative integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def build_report(
    sources: Sequence[str | Path],
    out_dir: str | Path = "report",
    *,
    bench: bool = True,
    bench_time: float = 1.0,
    device: str = "cpu",
    precision: str = "auto",
    note: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``out_dir/report.md`` and its figures from ``sources``; return the report path.

    ``bench=False`` skips every timing (no Mixer table, no images/s in the leaderboard);
    ``bench_time`` is the minimum seconds of timed steps per measurement; ``precision`` is
    that of the timings (``auto``: what ``precision: auto`` picks here); ``note`` (markdown)
    goes under the title, e.g. what the runs' budget was. An ``out_dir`` that holds more than
    an earlier report (``report.md``, ``figures/``) is refused unless ``force``.
    """
    out = Path(out_dir)
    check_output_dir(out, REPORT_ENTRIES, force=force, what="the report", error=RunError)
    sweeps, runs = discover(sources)
    figs = _Figures(out)
    timer = _Timer(bench_time, device, precision) if bench else None
    all_runs = [r for s in sweeps for _, r in s.runs if r is not None] + runs
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# zoo report",
        "",
        f"Generated {now} from {len(sweeps)} sweep(s) and {len(runs)} run(s) by `zoo report`. "
        "Curves: four panels (train/valid loss, train/valid accuracy) per epoch.",
        "",
    ]
    if note:
        lines += [note.strip(), ""]
    if sweeps:
        lines += ["## Sweeps", ""]
        for sweep in sweeps:
            lines += _sweep_md(sweep, figs)
    if runs:
        lines += ["## Runs", ""]
        for run in runs:
            lines += _run_md(run, figs)
    if timer:
        lines += _mixer_md(all_runs, timer)
    lines += _leaderboard_md(all_runs, timer, figs)
    if timer and timer.env:
        lines += [
            "## Environment of the timings",
            "",
            "```",
            json.dumps(timer.env, indent=2),
            "```",
        ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_plots(sources: Sequence[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """``zoo plot``: each run's ``curves.png`` and each sweep's overlay (``sweep.png``) and
    table (``sweep.md``), written next to their sources or into ``out_dir``."""
    sweeps, runs = discover(sources)
    out = Path(out_dir) if out_dir is not None else None
    written = []
    for run in runs:
        if out is None:
            written.append(plots.plot_run(run.path))
        else:
            fig = plots.plot_curves(run.metrics, title=run.label)
            written.append(plots.save_figure(fig, out / f"{_slug(run.label)}-curves.png"))
    for sweep in sweeps:
        where, prefix = (sweep.path, "") if out is None else (out, f"{_slug(sweep.name)}-")
        done = [(str(p.get("name")), r.metrics) for p, r in sweep.runs if r is not None]
        fig = plots.plot_sweep(done, title=f"sweep {sweep.name}")
        written.append(plots.save_figure(fig, where / f"{prefix}sweep.png"))
        atomic_write_text(where / f"{prefix}sweep.md", plots.sweep_table(sweep.data))
        written.append(where / f"{prefix}sweep.md")
    return written

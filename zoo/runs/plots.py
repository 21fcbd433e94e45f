"""Figures and tables from runs: training curves, sweep overlays, the sweep table, and the
accuracy-vs-cost leaderboard scatter.

Every ``plot_*`` function takes plain data (lists of per-epoch metric dicts, as in
``metrics.jsonl``) and optionally the axes to draw into, and returns the matplotlib Figure.
Figures are built with ``matplotlib.figure.Figure`` directly (Agg canvas), so nothing here
touches pyplot's global state or opens a window; :func:`save_figure` writes a PNG atomically.

The curve layout is four panels in a 2x2 grid: train loss, valid loss (top, log scale),
train accuracy, valid accuracy (bottom, percent), one line per run. A sweep overlay is the
same four panels with one line per sweep point, labelled by the point's values.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from zoo._io import atomic_write_bytes
from zoo.runs import files

__all__ = [
    "PANELS",
    "curve_axes",
    "new_figure",
    "pareto_front",
    "plot_curves",
    "plot_pareto",
    "plot_run",
    "plot_sweep",
    "save_figure",
    "sweep_table",
]

# (metrics key, panel title) in the order of the 2x2 grid, row by row.
PANELS: tuple[tuple[str, str], ...] = (
    ("train_loss", "train loss"),
    ("valid_loss", "valid loss"),
    ("train_acc", "train accuracy (%)"),
    ("valid_acc", "valid accuracy (%)"),
)


def new_figure(**kwargs: Any) -> Figure:
    """A Figure on an Agg canvas, outside pyplot: no window, no global figure list to leak."""
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically and return the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # the constrained layout already fits the labels
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def curve_axes(title: str | None = None) -> list[Axes]:
    """A new figure with the four curve panels; returns its axes in :data:`PANELS` order."""
    fig = new_figure(figsize=(10, 7))
    axes = list(fig.subplots(2, 2, sharex=True).flat)
    for ax, (_, panel_title) in zip(axes, PANELS, strict=True):
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_yscale("log")  # a diverging sweep point must not flatten the others
    for ax in axes[2:]:
        ax.set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    return axes


def _figure_of(ax: Axes) -> Figure:
    figure: Any = ax.figure
    while not isinstance(figure, Figure):  # a SubFigure: walk up to the figure
        figure = figure.figure
    return figure


def _series(metrics: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    epochs, values = [], []
    for i, record in enumerate(metrics, 1):
        value = record.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            epochs.append(int(record.get("epoch", i)))
            values.append(100 * value if key.endswith("_acc") else float(value))
    return epochs, values


def plot_curves(
    metrics: Sequence[Mapping[str, Any]],
    axes: Sequence[Axes] | None = None,
    *,
    label: str | None = None,
    title: str | None = None,
) -> Figure:
    """Draw one run's train/valid loss and accuracy per epoch: one line in each of the four
    panels (see :data:`PANELS`). ``axes`` are four axes from :func:`curve_axes` to draw into
    (to overlay several runs); a new figure when None. Missing or non-finite values are
    left out."""
    if axes is None:
        axes = curve_axes(title)
    if len(axes) != len(PANELS):
        raise ValueError(f"plot_curves needs {len(PANELS)} axes, got {len(axes)}")
    for ax, (key, _) in zip(axes, PANELS, strict=True):
        epochs, values = _series(metrics, key)
        ax.plot(epochs, values, marker="o" if len(epochs) < 3 else None, label=label)
    if label is not None:
        axes[-1].legend(fontsize="small")
    return _figure_of(axes[0])


def plot_run(run_dir: str | Path) -> Path:
    """Write ``curves.png`` (the four curve panels) into ``run_dir`` and return its path."""
    run_dir = Path(run_dir)
    fig = plot_curves(files.read_metrics(run_dir), title=run_dir.name)
    return save_figure(fig, run_dir / "curves.png")


def plot_sweep(
    points: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    axes: Sequence[Axes] | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Overlay sweep points on the four curve panels: ``points`` is ``(label, metrics)`` per
    point, one line per point in every panel, labelled e.g. ``optim.lr=0.01``."""
    if axes is None:
        axes = curve_axes(title)
    for label, metrics in points:
        plot_curves(metrics, axes, label=label)
    return _figure_of(axes[0])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def sweep_table(sweep: Mapping[str, Any], models: Sequence[str] | None = None) -> str:
    """The markdown summary table of a ``sweep.json`` mapping: one row per point with its
    values, the model it trained (``models``, one per point, when given), status, best valid
    accuracy (epoch), test accuracy and loss, params and wall time. The best test accuracy is
    in bold."""
    keys = list(sweep.get("keys", []))
    points = list(sweep.get("points", []))
    accs = [(p.get("summary") or {}).get("test_acc") for p in points]
    best = max((a for a in accs if isinstance(a, int | float)), default=None)
    if models is not None and len(models) != len(points):
        raise ValueError(f"{len(models)} model names for {len(points)} sweep points")
    header = [*keys, *(["model"] if models is not None else [])]
    header += ["status", "best valid acc (epoch)", "test acc", "test loss", "params", "time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (point, acc) in enumerate(zip(points, accs, strict=True)):
        s = point.get("summary") or {}
        valid = s.get("best_valid_acc")
        valid_cell = f"{100 * valid:.2f} % ({s.get('best_epoch')})" if valid is not None else "-"
        acc_cell = f"{100 * acc:.2f} %" if isinstance(acc, int | float) else "-"
        if acc is not None and acc == best:
            acc_cell = f"**{acc_cell}**"
        wall = s.get("wall_time_s")
        row = [_cell(point.get("values", {}).get(k)) for k in keys]
        row += [f"`{models[i]}`"] if models is not None else []
        row += [
            str(point.get("status", "-")),
            valid_cell,
            acc_cell,
            _cell(s.get("test_loss")),
            f"{s['params']:,}" if isinstance(s.get("params"), int) else "-",
            f"{wall:.0f} s" if isinstance(wall, int | float) else "-",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For ``(x, y)`` points where larger is better in both, whether each is on the Pareto
    front (no other point is at least as good in both and better in one)."""

    def dominated(i: int) -> bool:
        xi, yi = points[i]
        return any(
            (xj >= xi and yj >= yi) and (xj > xi or yj > yi)
            for j, (xj, yj) in enumerate(points)
            if j != i
        )

    return [not dominated(i) for i in range(len(points))]


def _scatter(
    ax: Axes, xs: list[float], ys: list[float], labels: list[str], front: list[bool]
) -> None:
    ax.scatter(xs, ys, c=["tab:red" if f else "tab:blue" for f in front], zorder=3)
    line = sorted((x, y) for x, y, f in zip(xs, ys, front, strict=True) if f)
    if line:
        ax.plot(*zip(*line, strict=True), color="tab:red", linestyle="--", label="Pareto front")
        ax.legend(fontsize="small")
    ax.set_xscale("log")
    _annotate(ax, xs, ys, labels)
    ax.grid(alpha=0.3)
    ax.set_ylabel("test accuracy (%)")


# Where a point's label may go, in points from the point: right-above first, then around it
# and further out, so that labels of nearby points do not print over each other.
_LABEL_OFFSETS = [(3, 3), (3, -10), (-4, 3), (-4, -10), (3, 12), (3, -19), (-4, 12), (-4, -19)]
_LABEL_OFFSETS += [(dx + 12 * k, dy) for k in (1, 2, 3) for dx, dy in _LABEL_OFFSETS[:4]]


def _annotate(ax: Axes, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Label each point at the first offset whose text box (estimated: 7-pt text) overlaps
    no label placed before it; the most accurate points are placed first."""
    ax.autoscale_view()
    to_points = 72 / ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = []
    for x, y, text in sorted(zip(xs, ys, labels, strict=True), key=lambda p: -p[1]):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        width, height = 4.2 * len(text) + 1, 8.0
        for dx, dy in _LABEL_OFFSETS:
            left = px + dx - (width if dx < 0 else 0)  # a label left of its point ends there
            box = (left, py + dy, left + width, py + dy + height)
            if not any(_overlaps(box, other) for other in placed):
                break
        placed.append(box)
        align = "right" if dx < 0 else "left"
        ax.annotate(text, (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points", ha=align)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plot_pareto(entries: Sequence[Mapping[str, Any]], axes: Sequence[Axes] | None = None) -> Figure:
    """Leaderboard scatter: test accuracy against inference images/s (left) and against
    parameters (right). ``entries`` need ``label``, ``test_acc`` (fraction), ``images_per_s``
    and ``params``. The Pareto front (faster or smaller *and* more accurate: red, dashed) is
    marked in each panel; for parameters fewer is better."""
    if axes is None:
        fig = new_figure(figsize=(12, 5))
        axes = list(fig.subplots(1, 2))
    labels = [str(e["label"]) for e in entries]
    accs = [100 * float(e["test_acc"]) for e in entries]
    speed = [float(e["images_per_s"]) for e in entries]
    params = [float(e["params"]) for e in entries]
    _scatter(axes[0], speed, accs, labels, pareto_front(list(zip(speed, accs, strict=True))))
    axes[0].set_xlabel("inference images/s (log)")
    front = pareto_front([(-p, a) for p, a in zip(params, accs, strict=True)])
    _scatter(axes[1], params, accs, labels, front)
    axes[1].set_xlabel("parameters (log)")
    return _figure_of(axes[0])

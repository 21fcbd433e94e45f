"""zoo.runs.plots: every figure's panels and lines, PNGs written, tables and Pareto fronts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fabricate_runs import make_metrics

from zoo.errors import RunError
from zoo.runs.files import read_metrics
from zoo.runs.plots import (
    PANELS,
    curve_axes,
    pareto_front,
    plot_curves,
    plot_pareto,
    plot_run,
    plot_sweep,
    save_figure,
    sweep_table,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_curves_has_four_panels_with_one_line_each() -> None:
    fig = plot_curves(make_metrics(4), title="run")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == [title for _, title in PANELS]
    assert all(len(ax.get_lines()) == 1 for ax in axes)
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "linear", "linear"]
    train_acc = axes[2].get_lines()[0]
    assert list(train_acc.get_xdata()) == [1, 2, 3, 4]
    assert train_acc.get_ydata()[0] == pytest.approx(50.0)  # fractions drawn as percent


def test_missing_values_are_left_out() -> None:
    metrics = make_metrics(3)
    metrics[1]["valid_loss"] = None
    metrics[2]["valid_loss"] = float("nan")
    fig = plot_curves(metrics)
    assert list(fig.get_axes()[1].get_lines()[0].get_xdata()) == [1]


def test_plot_sweep_overlays_one_labelled_line_per_point() -> None:
    points = [(f"optim.lr={lr}", make_metrics(3, scale=lr)) for lr in (0.1, 0.01, 0.001)]
    fig = plot_sweep(points, title="lr")
    axes = fig.get_axes()
    assert len(axes) == 4
    for ax in axes:
        assert [line.get_label() for line in ax.get_lines()] == [p[0] for p in points]
    legend = axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [p[0] for p in points]


def test_plot_curves_draws_into_given_axes() -> None:
    axes = curve_axes()
    fig = plot_curves(make_metrics(2), axes, label="a")
    assert fig is axes[0].figure and len(fig.get_axes()) == 4
    with pytest.raises(ValueError, match="needs 4 axes"):
        plot_curves(make_metrics(2), axes[:2])


def test_plot_run_writes_curves_png(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in make_metrics(2)) + "\n"
    )
    path = plot_run(tmp_path)
    assert path == tmp_path / "curves.png"
    assert path.read_bytes().startswith(PNG)


def test_read_metrics_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"metrics\.jsonl is missing"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{broken\n')
    with pytest.raises(RunError, match="line 2 is not valid JSON"):
        read_metrics(tmp_path)


def test_sweep_table_has_a_row_per_point_and_bolds_the_best() -> None:
    def point(lr: float, acc: float | None, status: str = "done") -> dict:
        summary = None if acc is None else {"test_acc": acc, "best_valid_acc": acc, "params": 10}
        return {
            "name": f"lr={lr}",
            "values": {"optim.lr": lr},
            "status": status,
            "summary": summary,
        }

    sweep = {
        "keys": ["optim.lr"],
        "points": [point(0.1, 0.2), point(0.01, 0.9), point(1, None, "failed")],
    }
    lines = sweep_table(sweep).splitlines()
    assert lines[0].startswith("| optim.lr | status |") and len(lines) == 5
    assert "**90.00 %**" in lines[3] and "20.00 %" in lines[2] and "**" not in lines[2]
    assert "failed" in lines[4]


def test_pareto_front() -> None:
    # (speed, accuracy): (1, 0.9) and (10, 0.5) trade off; (5, 0.4) is dominated by (10, 0.5)
    assert pareto_front([(1, 0.9), (10, 0.5), (5, 0.4), (10, 0.5)]) == [True, True, False, True]


def test_plot_pareto_marks_the_front(tmp_path: Path) -> None:
    entries = [
        {"label": "a", "test_acc": 0.9, "images_per_s": 100.0, "params": 1000},
        {"label": "b", "test_acc": 0.8, "images_per_s": 1000.0, "params": 10},
        {"label": "c", "test_acc": 0.7, "images_per_s": 50.0, "params": 5000},
    ]
    fig = plot_pareto(entries)
    speed, size = fig.get_axes()
    for ax in (speed, size):
        colors = ax.collections[0].get_facecolors()
        assert len(colors) == 3
        front = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
        assert len(front) == 1 and len(front[0].get_xdata()) == 2  # a and b, not c
    assert save_figure(fig, tmp_path / "p.png").read_bytes().startswith(PNG)


def test_labels_of_nearby_points_do_not_overlap(tmp_path: Path) -> None:
    # five points on one spot and two close by, as a sweep's runs at similar accuracy sit
    entries = [
        {"label": str(i), "test_acc": 0.9, "images_per_s": 1000.0, "params": 100} for i in range(5)
    ]
    entries += [
        {"label": "5", "test_acc": 0.901, "images_per_s": 1010.0, "params": 101},
        {"label": "6", "test_acc": 0.1, "images_per_s": 10.0, "params": 10_000},
    ]
    fig = plot_pareto(entries)
    save_figure(fig, tmp_path / "p.png")  # draws: the text extents below are the real ones
    renderer = fig.canvas.get_renderer()
    for ax in fig.get_axes():
        boxes = [text.get_window_extent(renderer) for text in ax.texts]
        assert sorted(text.get_text() for text in ax.texts) == [str(i) for i in range(7)]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), (a, b)

"""Fabricated run and sweep directories in the trainer's layout (see notes/INTERFACES.md),
so plots and report tests do not need to train anything."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

import zoo
from zoo.weights.files import save_model_files


def make_metrics(epochs: int, scale: float = 1.0) -> list[dict[str, Any]]:
    return [
        {
            "epoch": e,
            "train_loss": scale * 2.0 / e,
            "train_acc": 1 - 0.5 / e,
            "valid_loss": scale * 2.2 / e,
            "valid_acc": 1 - 0.6 / e,
            "lr": 1e-3,
            "seconds": 1.0,
            "images_per_s": 100.0,
        }
        for e in range(1, epochs + 1)
    ]


def make_run(
    run_dir: Path,
    model: str,
    *,
    epochs: int = 3,
    test_acc: float = 0.5,
    model_args: dict[str, Any] | None = None,
    sweep_values: dict[str, Any] | None = None,
    batch_size: int = 8,
) -> Path:
    """A complete finished run: recipe, metrics, summary, weights (tiny image size)."""
    args = {"num_classes": 10, "in_chans": 1, "img_size": 8, **(model_args or {})}
    net = zoo.create(model, **args)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = make_metrics(epochs, scale=1 + test_acc)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    recipe = {
        "name": run_dir.parent.name,
        "model": {"name": model, "args": model_args or {}},
        "data": {"dataset": "synthetic", "batch_size": batch_size},
        "epochs": epochs,
    }
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    summary = {
        "name": run_dir.parent.name if sweep_values is None else run_dir.name,
        "model": model,
        "dataset": "synthetic",
        "test_loss": -math.log(test_acc),
        "test_acc": test_acc,
        "best_epoch": epochs,
        "best_valid_acc": metrics[-1]["valid_acc"],
        "epochs": epochs,
        "params": sum(p.numel() for p in net.parameters()),
        "wall_time_s": 3.0,
        "recipe_hash": "0" * 16,
        "sweep_values": sweep_values,
        "env": {"torch": "x", "python": "3", "device": "cpu", "threads": 1},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    save_model_files(net, run_dir, input_size=(1, 8, 8), mean=(0.5,), std=(0.25,))
    return run_dir


def make_sweep(
    sweep_dir: Path, key: str, values: list[Any], model_for: Any, *, epochs: int = 3
) -> Path:
    """A finished sweep over ``key``; ``model_for(value) -> (model name, model_args)``."""
    points = []
    for i, value in enumerate(values):
        name = f"{key}={value}"
        model, args = model_for(value)
        summary_dir = make_run(
            sweep_dir / name,
            model,
            epochs=epochs,
            test_acc=0.3 + 0.1 * i,
            model_args=args,
            sweep_values={key: value},
        )
        summary = json.loads((summary_dir / "summary.json").read_text())
        points.append(
            {
                "index": i,
                "name": name,
                "values": {key: value},
                "run_dir": name,
                "status": "done",
                "summary": summary,
            }
        )
    sweep = {"name": sweep_dir.parent.name, "keys": [key], "points": points}
    (sweep_dir / "sweep.json").write_text(json.dumps(sweep))
    return sweep_dir

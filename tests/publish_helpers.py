"""Helpers for the export, card, store and Hub tests: tiny fabricated runs and a Hub client
pointed at the in-process test server (tests/hub_server.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import zoo
from zoo.weights.files import save_model_files

TINY = {"hidden_sizes": [8], "img_size": 4, "in_chans": 1, "num_classes": 3}
TOKEN = "hf_zooTestSecretToken0123456789"


def make_run(
    run_dir: Path,
    model: str = "mlp_relu",
    args: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    epochs: int = 2,
    dataset: str = "fashion_mnist",
) -> tuple[Path, torch.nn.Module]:
    """A finished run in the trainer's layout (recipe, metrics, summary, final weights)."""
    args = dict(TINY if args is None else args)
    torch.manual_seed(seed)
    net = zoo.create(model, **args).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    in_chans, size = args.get("in_chans", 3), args.get("img_size", 32)
    save_model_files(
        net,
        run_dir,
        input_size=[in_chans, size, size],
        mean=[0.5] * in_chans,
        std=[0.25] * in_chans,
        recipe_hash="0123456789abcdef",
    )
    recipe = {
        "name": "tiny",
        "model": {"name": model, "args": args},
        "data": {"dataset": dataset, "batch_size": 8},
        "epochs": epochs,
    }
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    metrics = [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "valid_loss": 1.1 / e,
         "valid_acc": 0.4 + 0.1 * e, "lr": 1e-3, "seconds": 0.5, "images_per_s": 100.0}
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    summary = {
        "name": "tiny", "model": model, "dataset": dataset, "test_loss": 0.9, "test_acc": 0.625,
        "best_epoch": epochs, "best_valid_acc": 0.6, "epochs": epochs,
        "params": sum(p.numel() for p in net.parameters()), "wall_time_s": 1.5,
        "recipe_hash": "0123456789abcdef", "sweep_values": None,
        "env": {"torch": torch.__version__, "device": "cpu", "zoo_version": zoo.__version__},
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir, net


def sample_input(args: dict[str, Any] | None = None) -> torch.Tensor:
    """A fixed batch of two inputs for a model built with ``args`` (default: TINY)."""
    args = TINY if args is None else args
    generator = torch.Generator().manual_seed(1)
    size = args.get("img_size", 32)
    return torch.randn(2, args.get("in_chans", 3), size, size, generator=generator)


def point_client_at(monkeypatch: pytest.MonkeyPatch, url: str, hf_home: Path) -> None:
    """Point huggingface_hub (already imported, so its constants are fixed) at ``url`` with
    an empty cache under ``hf_home`` and the test token in HF_TOKEN."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)


def hf_env(url: str, hf_home: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess that talks to the test Hub through HF_ENDPOINT."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=url,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_TOKEN=TOKEN,
        **extra,
    )
    return env

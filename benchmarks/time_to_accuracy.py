"""Time to accuracy: zoo's quickstart vs a seed-style script on real Fashion-MNIST.

Both train the same MLP (mlp_relu, 28x28x1) with the quickstart's hyperparameters (batch 256,
Adam 1e-3, cosine schedule over 5 epochs per iteration, 55k/5k split, validation each
epoch) and stop once the test accuracy reaches the threshold (default 85 %). The clock
starts before the dataset is read and stops at the end of the epoch that reaches it; the
test evaluation used to detect that is not counted for either side.

- zoo: ``zoo.training.loop.fit(recipes/quickstart.yaml)`` (uint8 tensors in memory, batched
  normalisation, checkpoints and metrics written as usual).
- seed-style: torchvision's ``FashionMNIST`` dataset read from the same IDX files,
  per-sample ``ToTensor`` + ``Normalize`` transforms, a ``DataLoader`` and a plain loop.

    python benchmarks/time_to_accuracy.py [--workers 2] [--threshold 0.85] [--out FILE]

ratio = seed-style seconds / zoo seconds (target: >= 2, i.e. zoo needs at most half the time)
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import zoo
from zoo import data as zdata
from zoo._io import atomic_write_json, atomic_write_text
from zoo.env import describe, environment, load_average
from zoo.recipe import load_recipe
from zoo.training.checkpoint import load_checkpoint
from zoo.training.evaluation import evaluate
from zoo.training.loop import RunOptions, TrainingInterrupted, fit
from zoo.training.progress import LogProgress

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def run_zoo(threshold: float, workdir: Path) -> dict[str, Any]:
    recipe = load_recipe(RECIPE)
    test_data = zdata.build("fashion_mnist")  # for the untimed test checks only
    model = zoo.create(recipe.model.name, num_classes=10, in_chans=1, img_size=28)
    run_dir = workdir / "zoo_run"
    state: dict[str, Any] = {"paused": 0.0, "epochs": []}

    def check(event: dict[str, Any]) -> None:
        if event["event"] != "epoch":
            return
        pause = time.perf_counter()
        model.load_state_dict(load_checkpoint(run_dir / "checkpoints")[0]["model"])
        model.eval()
        _, acc = evaluate(
            model, test_data.test, mean=test_data.mean, std=test_data.std, batch_size=1024
        )
        state["epochs"].append(
            {
                "epoch": event["epoch"],
                "test_acc": acc,
                "at_s": pause - state["start"] - state["paused"],
            }
        )
        state["paused"] += time.perf_counter() - pause
        if acc >= threshold:
            raise KeyboardInterrupt  # fit stops cleanly after this epoch

    state["start"] = time.perf_counter()
    with contextlib.suppress(TrainingInterrupted):  # raised once the threshold is reached
        fit(recipe, RunOptions(out_dir=run_dir, device="cpu", progress=[LogProgress(), check]))
    return _outcome("zoo quickstart", state["epochs"], threshold)


def run_seed_style(threshold: float, workdir: Path, workers: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    root = workdir / "tv"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in IDX_DIR.glob("*.gz"):  # torchvision reads the uncompressed IDX files
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)

    start = time.perf_counter()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    full = datasets.FashionMNIST(str(root), train=True, transform=tf, download=False)
    test = datasets.FashionMNIST(str(root), train=False, transform=tf, download=False)
    train_set, valid_set = random_split(full, [55000, 5000], torch.Generator().manual_seed(0))
    loader = DataLoader(train_set, batch_size=256, shuffle=True, num_workers=workers)
    valid_loader = DataLoader(valid_set, batch_size=256, num_workers=workers)
    test_loader = DataLoader(test, batch_size=1024, num_workers=workers)
    torch.manual_seed(42)
    model = zoo.create("mlp_relu", num_classes=10, in_chans=1, img_size=28)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5 * len(loader))
    epochs, paused = [], 0.0
    for epoch in range(1, 6):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        valid_acc = _accuracy(model, valid_loader)  # the seed validates every epoch too
        pause = time.perf_counter()
        test_acc = _accuracy(model, test_loader)
        epochs.append(
            {
                "epoch": epoch,
                "test_acc": test_acc,
                "valid_acc": valid_acc,
                "at_s": pause - start - paused,
            }
        )
        paused += time.perf_counter() - pause
        print(f"seed-style epoch {epoch}: valid {valid_acc:.4f} test {test_acc:.4f}")
        if test_acc >= threshold:
            break
    return _outcome(f"seed-style (DataLoader, {workers} workers)", epochs, threshold)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, loader: Any) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def _outcome(name: str, epochs: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    hit = next((e for e in epochs if e["test_acc"] >= threshold), None)
    return {
        "name": name,
        "epochs": epochs,
        "reached": hit is not None,
        "seconds": hit["at_s"] if hit else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--workers", type=int, default=2, help="seed-style DataLoader workers")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "time_to_accuracy.json"
    )
    parser.add_argument("--note", default="", help="Recorded with the results (e.g. load).")
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        zoo_result = run_zoo(args.threshold, Path(tmp))
        seed_result = run_seed_style(args.threshold, Path(tmp), args.workers)
    ratio = (
        seed_result["seconds"] / zoo_result["seconds"]
        if zoo_result["seconds"] and seed_result["seconds"]
        else None
    )
    for r in (zoo_result, seed_result):
        shown = f"{r['seconds']:.1f} s" if r["reached"] else "not reached"
        print(f"{r['name']:<40} {shown} to {args.threshold:.0%} test accuracy")
    print(f"ratio (seed-style / zoo): {ratio:.2f} (target >= 2)" if ratio else "ratio: n/a")
    result = {
        "benchmark": "time_to_accuracy",
        "threshold": args.threshold,
        "target": "seed-style / zoo >= 2",
        "zoo": zoo_result,
        "seed_style": seed_result,
        "ratio": ratio,
        "env": environment("cpu"),
        "note": args.note,
        "load_average": {"before": load_before, "after": load_average()},
    }
    atomic_write_json(args.out, result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result, args))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    env, load = result["env"], result["load_average"]
    threshold = f"{result['threshold']:.0%}"
    lines = [
        f"# Time to {threshold} test accuracy on Fashion-MNIST: quickstart vs a seed-style script",
        "",
        f"{describe(env, load)} Wall time from the start of each run "
        "(data loading included) to the end of the first epoch whose test accuracy reaches "
        "the threshold.",
        "",
        "| run | epochs (test accuracy at seconds) | time to threshold |",
        "|---|---|---:|",
    ]
    for r in (result["zoo"], result["seed_style"]):
        epochs = ", ".join(f"{e['test_acc']:.4f} at {e['at_s']:.1f} s" for e in r["epochs"])
        reached = f"{r['seconds']:.1f} s" if r["reached"] else "not reached"
        lines.append(f"| {r['name']} | {epochs} | {reached} |")
    ratio = f"{result['ratio']:.2f}x" if result["ratio"] else "n/a"
    lines += [
        "",
        f"Ratio seed-style / zoo: **{ratio}** (target >= 2).",
        "",
        f"Command: `python benchmarks/time_to_accuracy.py --threshold {args.threshold} "
        f"--workers {args.workers}`. {result['note']}".rstrip(),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

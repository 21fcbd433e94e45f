"""Transfer learning: fine-tuning from a pretrained run vs training from scratch.

1. Pretrain ``mlp_relu`` on Fashion-MNIST classes 0-4 (T-shirt, trouser, pullover, dress,
   coat): every training image of those classes, the trainer's usual 5k-image validation split
   removed first.
2. Write classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) as an ImageFolder of PNGs:
   ``train/`` 100 images per class, ``val/`` 50 per class (other training images), ``test/``
   the whole official test split of those classes (1,000 per class).
3. Train on that folder (``data.dataset: imagefolder``) with one recipe, three ways:
   from scratch; ``model.pretrained: <the pretrained run>`` (a new 5-class head, every other
   layer loaded); and the same with ``model.freeze: body`` (only the head trains). Each for
   ``--seeds`` seeds; the best-validation epoch's weights are tested (``test_weights: best``).

Reported: test accuracy (mean and range over seeds) and wall time of each fine-tuning run,
and the pretraining's own time and accuracy. Data at /usr/share/datasets/fashion-mnist
(`make data` fetches it when missing).

    python benchmarks/transfer.py [--seeds 3] [--epochs 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.io import write_png

from zoo._io import atomic_write_json, atomic_write_text
from zoo.data import datasets as zdata
from zoo.data.datasets import DataBundle, Split
from zoo.env import describe, environment, load_average
from zoo.recipe import from_dict
from zoo.runs.files import read_json, read_metrics
from zoo.training.loop import RunOptions, fit

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
TRAIN_PER_CLASS, VAL_PER_CLASS = 100, 50
MODEL = {"name": "mlp_relu", "args": {"in_chans": 1, "img_size": 28}}


def _only(split: Split, classes: tuple[int, ...]) -> Split:
    keep = torch.isin(split.labels, torch.tensor(classes))
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    return Split(split.images[keep].contiguous(), relabel[split.labels[keep]])


def pretrain_bundle(full: DataBundle) -> DataBundle:
    """Fashion-MNIST restricted to classes 0-4 (labels 0-4), mean/std of that training set."""
    train = _only(full.train, PRETRAIN_CLASSES)
    mean = float(train.images.float().mean() / 255)
    std = float((train.images.float() / 255).std())
    return dataclasses.replace(
        full,
        name="fashion_mnist[0-4]",
        train=train,
        valid=_only(full.valid, PRETRAIN_CLASSES),
        test=_only(full.test, PRETRAIN_CLASSES),
        num_classes=len(PRETRAIN_CLASSES),
        mean=(mean,),
        std=(std,),
        classes=tuple(full.classes[c] for c in PRETRAIN_CLASSES),
    )


def write_image_folder(full: DataBundle, root: Path, seed: int = 0) -> dict[str, int]:
    """Classes 5-9 as PNGs: train/ and val/ drawn (seeded) from the training images, test/ all
    test images of those classes. Returns the number of images per split."""
    generator = torch.Generator().manual_seed(seed)
    counts = {"train": 0, "val": 0, "test": 0}
    for c in TARGET_CLASSES:
        name = full.classes[c].replace("/", "-").replace(" ", "_")
        pool = full.train.images[full.train.labels == c]
        order = torch.randperm(len(pool), generator=generator)
        picks = {
            "train": pool[order[:TRAIN_PER_CLASS]],
            "val": pool[order[TRAIN_PER_CLASS : TRAIN_PER_CLASS + VAL_PER_CLASS]],
            "test": full.test.images[full.test.labels == c],
        }
        for split, images in picks.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                write_png(image.cpu(), str(folder / f"{i:05d}.png"))
            counts[split] += len(images)
    return counts


def pretrain(full: DataBundle, work: Path, epochs: int) -> tuple[Path, dict[str, Any]]:
    recipe = from_dict(
        {
            "name": "transfer_pretrain",
            "model": MODEL,
            "data": {"dataset": "fashion_mnist", "batch_size": 256},
            "optim": {"name": "adam", "lr": 1e-3},
            "schedule": {"name": "cosine"},
            "epochs": epochs,
            "device": "cpu",
        }
    )
    run = fit(
        recipe, RunOptions(out_dir=work / "pretrain", device="cpu"), data=pretrain_bundle(full)
    )
    summary = read_json(run / "summary.json")
    return run, summary


def finetune(
    folder: Path, work: Path, start: str, pretrained: Path, seed: int, epochs: int
) -> dict[str, Any]:
    model: dict[str, Any] = dict(MODEL)
    if start != "scratch":
        model["pretrained"] = str(pretrained)
    optim: dict[str, Any] = {"name": "adam", "lr": 1e-3}
    if start == "pretrained, body frozen":
        model["freeze"] = "body"
        optim["head_lr_mult"] = 10.0  # a linear probe learns faster with a higher rate
    recipe = from_dict(
        {
            "name": "transfer_finetune",
            "model": model,
            "data": {"dataset": "imagefolder", "root": str(folder), "batch_size": 50},
            "optim": optim,
            "schedule": {"name": "cosine"},
            "epochs": epochs,
            "seed": seed,
            "device": "cpu",
        }
    )
    out = work / f"finetune-{start.replace(' ', '_').replace(',', '')}-{seed}"
    started = time.perf_counter()
    run = fit(recipe, RunOptions(out_dir=out, device="cpu", progress=[]))
    seconds = time.perf_counter() - started
    summary = read_json(run / "summary.json")
    return {
        "start": start,
        "seed": seed,
        "test_acc": summary["test_acc"],
        "valid_acc_epoch_1": read_metrics(run)[0]["valid_acc"],
        "best_epoch": summary["best_epoch"],
        "seconds": seconds,
        "pretrained": summary.get("pretrained"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per start")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "transfer.json"
    )
    parser.add_argument("--note", default="", help="Recorded with the results (e.g. load).")
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    load_before = load_average()
    full = zdata.build("fashion_mnist")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        pretrained, pre_summary = pretrain(full, work, args.pretrain_epochs)
        pre_seconds = time.perf_counter() - started
        print(
            f"pretrained on classes 0-4: test acc {pre_summary['test_acc']:.4f}, "
            f"{pre_seconds:.1f} s"
        )
        started = time.perf_counter()
        counts = write_image_folder(full, work / "folder")
        write_seconds = time.perf_counter() - started
        for seed in range(args.seeds):
            for start in ("scratch", "pretrained", "pretrained, body frozen"):
                row = finetune(work / "folder", work, start, pretrained, seed, args.epochs)
                rows.append(row)
                print(
                    f"{start:<26} seed {seed}: test acc {row['test_acc']:.4f} "
                    f"in {row['seconds']:.1f} s"
                )
    result = {
        "benchmark": "transfer",
        "model": MODEL,
        "pretrain": {
            "classes": list(PRETRAIN_CLASSES),
            "epochs": args.pretrain_epochs,
            "test_acc": pre_summary["test_acc"],
            "seconds": pre_seconds,
            "train_images": len(pretrain_bundle(full).train),
        },
        "finetune": {
            "classes": list(TARGET_CLASSES),
            "images": counts,
            "epochs": args.epochs,
            "write_png_seconds": write_seconds,
            "runs": rows,
            "summary": _summarise(rows),
        },
        "env": environment("cpu"),
        "note": args.note,
        "load_average": {"before": load_before, "after": load_average()},
    }
    atomic_write_json(args.out, result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result, args))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for start in dict.fromkeys(r["start"] for r in rows):
        accs = [r["test_acc"] for r in rows if r["start"] == start]
        secs = [r["seconds"] for r in rows if r["start"] == start]
        first = [r["valid_acc_epoch_1"] for r in rows if r["start"] == start]
        out.append(
            {
                "start": start,
                "test_acc_mean": statistics.fmean(accs),
                "test_acc_min": min(accs),
                "test_acc_max": max(accs),
                "valid_acc_epoch_1_mean": statistics.fmean(first),
                "seconds_mean": statistics.fmean(secs),
                "seeds": len(accs),
            }
        )
    return out


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    pre, fine = result["pretrain"], result["finetune"]
    images = fine["images"]
    lines = [
        "# Transfer: fine-tuning a pretrained run vs training from scratch (Fashion-MNIST)",
        "",
        f"{describe(result['env'], result['load_average'])}",
        "",
        f"Pretraining: `mlp_relu` (28x28x1) on Fashion-MNIST classes 0-4, "
        f"{pre['train_images']:,} training images, {pre['epochs']} epochs: test accuracy "
        f"{pre['test_acc']:.4f} in {pre['seconds']:.1f} s.",
        "",
        f"Fine-tuning on classes 5-9 as an ImageFolder of PNGs: {images['train']} training "
        f"images (100 per class), {images['val']} validation, {images['test']} test; "
        f"{fine['epochs']} epochs, Adam 1e-3 (body frozen: head at 1e-2, `optim.head_lr_mult: "
        "10`), cosine, batch 50, best-validation weights tested. Mean (min-max) over seeds; "
        "time = the whole `fit` (data from the warm ImageFolder cache, training, testing, "
        "export).",
        "",
        "| start | test accuracy | validation accuracy after epoch 1 | seconds per run | seeds |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in fine["summary"]:
        lines.append(
            f"| {s['start']} | {s['test_acc_mean']:.4f} ({s['test_acc_min']:.4f}-"
            f"{s['test_acc_max']:.4f}) | {s['valid_acc_epoch_1_mean']:.4f} | "
            f"{s['seconds_mean']:.1f} | {s['seeds']} |"
        )
    lines += [
        "",
        f"Command: `python benchmarks/transfer.py --seeds {args.seeds} --epochs {args.epochs} "
        f"--pretrain-epochs {args.pretrain_epochs}`. {result['note']}".rstrip(),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""fp32 vs bf16 autocast on this machine, side by side in one process, and what
``precision: auto`` (the recipe default) chooses here.

Three measurements, each in fp32 and in bf16 autocast:

1. the matmul probe (:func:`zoo.analysis.peak.peak_flops`, measured afresh: the zoo cache is
   pointed at a temporary directory for the whole script);
2. training-step images/s (forward + backward, the step ``auto`` times) of ``mlpmixer_p4``
   and ``mlp_relu`` at 28x28x1, batch 128, and what ``auto`` chooses for each;
3. test accuracy (the whole test set) after the same short training, on a Fashion-MNIST
   subset, of the quickstart recipe (an MLP) and of a small Mixer (patch 7, embed 64, 2
   blocks), as tests/test_precision.py trains them: bf16 autocast should end within 0.5
   points of fp32.

On a CPU without native bf16 (avx2 only) bf16 is 10-100x slower, which is why ``auto``
chooses fp32 there and why the training here is short; on one with avx512_bf16 or AMX,
bf16 trains 1.7-1.9x faster (issue 14). Results: ``benchmarks/results/precision.{json,md}``
with the environment and load average.

    python benchmarks/precision.py --quick      # a smoke run, ~2 minutes on 2 busy cores
    python benchmarks/precision.py              # ~10 minutes on 2 cores without native bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from zoo._io import atomic_write_json, atomic_write_text
from zoo.env import describe, environment, load_average

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")
BENCH_MODELS = ("mlpmixer_p4", "mlp_relu")
MIXER = [  # as tests/test_precision.py
    "model.name=mlpmixer_p4",
    "model.args={patch_size: 7, embed_dim: 64, num_blocks: 2}",
    "data.batch_size=64",
    "optim.lr=2e-3",
]


def matmul_probe() -> dict[str, Any]:
    from zoo.analysis.peak import peak_flops

    out = {}
    for precision in PRECISIONS:
        probe = peak_flops("cpu", precision)
        out[precision] = {"gflops": probe["peak_flops_per_s"] / 1e9, "size": probe["size"]}
    out["bf16_over_fp32"] = out["bf16"]["gflops"] / out["fp32"]["gflops"]
    return out


def train_steps(batch: int, budget: float) -> dict[str, Any]:
    """Images/s of one training step (forward, loss, backward: what ``auto`` times; ``zoo
    bench --mode train`` adds the Adam step) after one warm-up step, timed for ``budget``
    seconds or at least once, interleaving fp32 and bf16; and what ``auto`` chooses."""
    import zoo
    from zoo.devices import choose_precision, training_step
    from zoo.weights.store import home

    out: dict[str, Any] = {}
    for model in BENCH_MODELS:
        net = zoo.create(model, num_classes=10, in_chans=1, img_size=28)
        shape = (batch, 1, 28, 28)
        step = training_step(net, shape, 10, "cpu")
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for precision in PRECISIONS:
            step(precision)  # warm-up
        while min(sum(t) for t in times.values()) < budget or not all(times.values()):
            for precision, seen in times.items():
                if seen and sum(seen) >= budget:
                    continue
                start = time.perf_counter()
                step(precision)
                seen.append(time.perf_counter() - start)
        row: dict[str, Any] = {
            p: {"images_per_s": batch / statistics.median(t), "reps": len(t)}
            for p, t in times.items()
        }
        row["bf16_over_fp32"] = row["bf16"]["images_per_s"] / row["fp32"]["images_per_s"]
        row["auto"] = choose_precision(
            "auto",
            "cpu",
            cache_dir=home() / "precision",
            step=step,
            workload={"model": model, "input": list(shape), "channels_last": False},
        ).to_dict()
        for p in PRECISIONS:
            print(f"  {model} {p}: {row[p]['images_per_s']:,.1f} img/s", flush=True)
        print(f"  {model} auto: {row['auto']['chosen']} ({row['auto']['reason']})", flush=True)
        out[model] = row
    return out


def accuracy(sets: list[str], tmp: Path) -> dict[str, Any]:
    from zoo.recipe import load_recipe
    from zoo.training.loop import RunOptions, fit

    out: dict[str, Any] = {}
    for precision in PRECISIONS:
        recipe = load_recipe(
            ROOT / "recipes" / "quickstart.yaml", [*sets, f"precision={precision}"]
        )
        start = time.perf_counter()
        run = fit(recipe, RunOptions(out_dir=tmp / precision, device="cpu", progress=[]))
        summary = json.loads((run / "summary.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        out[precision] = {
            "test_acc": summary["test_acc"],
            "seconds": time.perf_counter() - start,
            "train_images_per_s": rows[-1]["images_per_s"],
        }
        print(f"  {precision}: test acc {summary['test_acc']:.4f}", flush=True)
    out["difference_points"] = 100 * (out["bf16"]["test_acc"] - out["fp32"]["test_acc"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small and short")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--train-subset", type=int, default=None, help="[6000; quick 2000]")
    parser.add_argument("--test-subset", type=int, default=None, help="[all 10000; quick 2000]")
    parser.add_argument("--epochs", type=int, default=None, help="[2; quick 1]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.pop("ZOO_PRECISION", None)  # auto measures here
    import zoo.training.loop

    zoo.training.loop.after_run = lambda run_dir, recipe: None  # no curves/card: not timed
    train_subset = args.train_subset or (2000 if args.quick else 6000)
    test_subset = args.test_subset or (2000 if args.quick else None)
    epochs = args.epochs or (1 if args.quick else 2)
    sets = [f"data.train_subset={train_subset}", "data.valid_size=0", f"epochs={epochs}"]
    sets.append("data.batch_size=128")  # the Mixer's settings come after and override it
    if test_subset:
        sets.append(f"data.test_subset={test_subset}")
    load_before = load_average()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["ZOO_HOME"] = str(tmp / "zoo-home")  # fresh probes, the user's cache kept
        print("matmul probe", flush=True)
        matmul = matmul_probe()
        print("training steps, batch 128 at 28x28x1", flush=True)
        steps = train_steps(32 if args.quick else 128, 0.5 if args.quick else 3.0)
        print("quickstart (mlp_relu)", flush=True)
        quickstart = accuracy(sets, tmp / "quickstart")
        print("mixer (patch 7, embed 64, 2 blocks)", flush=True)
        mixer = accuracy([*sets, *MIXER], tmp / "mixer")
    env = environment("cpu")
    load = {"before": load_before, "after": load_average()}
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/precision.py", *sys.argv[1:]]),
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
        "threads": args.threads,
        "cpu_flags_bf16": _bf16_flags(),
        "matmul": matmul,
        "train_step_batch": 32 if args.quick else 128,
        "train_steps": steps,
        "accuracy_settings": sets,
        "quickstart": quickstart,
        "mixer": {"settings": MIXER, **mixer},
        "load_average": load,
        "env": env,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "precision.json", record)
    text = _markdown(record, env, load)
    atomic_write_text(args.out / "precision.md", text)
    print(text)


def _bf16_flags() -> list[str]:
    """The CPU's native bf16 features (Linux): avx512_bf16, amx_bf16; empty when none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted({f for f in line.split() if "bf16" in f})
    except OSError:
        pass
    return []


def _markdown(r: dict[str, Any], env: dict[str, Any], load: dict[str, Any]) -> str:
    m, steps = r["matmul"], r["train_steps"]
    lines = [
        "# fp32 vs bf16 autocast, and what `precision: auto` chooses",
        "",
        f"{r['date']}{' (--quick: a smoke run, not a result)' if r['quick'] else ''}; "
        f"`{r['command']}`; {r['seconds']:.0f} s. {describe(env, load)} "
        f"Native bf16 CPU flags: {', '.join(r['cpu_flags_bf16']) or 'none'}.",
        "",
        "| measurement | fp32 | bf16 autocast | bf16 / fp32 | auto chooses |",
        "|---|---:|---:|---:|---|",
        f"| matmul probe, GFLOP/s | {m['fp32']['gflops']:,.1f} | {m['bf16']['gflops']:,.1f} | "
        f"{m['bf16_over_fp32']:.2f}x | |",
    ]
    for model, row in steps.items():
        lines.append(
            f"| {model} fwd+bwd step, img/s (batch {r['train_step_batch']}) | "
            f"{row['fp32']['images_per_s']:,.1f} | {row['bf16']['images_per_s']:,.1f} | "
            f"{row['bf16_over_fp32']:.2f}x | {row['auto']['chosen']}: {row['auto']['reason']} |"
        )
    for name in ("quickstart", "mixer"):
        a = r[name]
        lines.append(
            f"| {name} test accuracy | {a['fp32']['test_acc']:.4f} | {a['bf16']['test_acc']:.4f} "
            f"| {a['difference_points']:+.2f} points | |"
        )
    lines += [
        "",
        f"Accuracy runs: recipes/quickstart.yaml with {', '.join(r['accuracy_settings'])}; "
        f"the Mixer also with {', '.join(r['mixer']['settings'])}. Training seconds "
        f"fp32 / bf16: quickstart {r['quickstart']['fp32']['seconds']:.0f} / "
        f"{r['quickstart']['bf16']['seconds']:.0f}, Mixer {r['mixer']['fp32']['seconds']:.0f} / "
        f"{r['mixer']['bf16']['seconds']:.0f}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

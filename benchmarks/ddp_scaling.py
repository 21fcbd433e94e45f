"""Data-parallel scaling: images/s of zoo's trainer in 1 and N processes on the same total
work, and the share of each step spent waiting for the gradient all-reduce.

For every N in --nproc the script starts itself under ``torchrun --standalone
--nproc-per-node N`` (N = 1 runs the plain single-process trainer: WORLD_SIZE=1 takes no
distributed path). Each job, per model:

1. trains with zoo's own ``train_epoch`` on synthetic data with a fixed *global* batch
   (``data.batch_size_mode: global``), so every N does the same work per step, and reports
   images/s over all processes after a warm-up epoch;
2. times the same DDP training step with and without the gradient all-reduce
   (``DistributedDataParallel.no_sync``), alternating, and reports

       communication share = (t_step - t_step_without_allreduce) / t_step

   i.e. the all-reduce time that backward does *not* hide.

Results, with each job's environment (zoo.env), go to benchmarks/results/ddp_scaling.json
and .md. On a 2-core CPU, 2 processes split the same 2 cores, so this measures DDP's
overhead, not a speed-up; on a machine with N GPUs it measures the speed-up (one GPU per
process, NCCL):

    python benchmarks/ddp_scaling.py                      # --nproc 1 2, CPU or all GPUs
    python benchmarks/ddp_scaling.py --nproc 1 2 4 8 --models resnet18 mlpmixer_p4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mlp_relu", "mlpmixer_p8")


# -- worker: runs once per process under torchrun --------------------------------------------


def _recipe(model: str, global_batch: int, steps: int, device: str) -> Any:
    from zoo.recipe import from_dict

    return from_dict(
        {
            "name": f"ddp_{model}",
            "model": {"name": model},
            "data": {
                "dataset": "synthetic",
                "batch_size": global_batch,
                "batch_size_mode": "global",
                "synthetic": {
                    "num_classes": 10,
                    "in_chans": 3,
                    "img_size": 32,
                    "train_size": global_batch * steps,
                    "valid_size": 0,
                    "test_size": 10,
                },
            },
            "optim": {"name": "adam", "lr": 1e-3},
            "epochs": 1000,
            "limit_train_batches": steps,
            "device": device,
        }
    )


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _trainer_images_per_s(run: Any, repeats: int) -> float:
    """Median images/s over all processes of zoo's train_epoch (after one warm-up epoch)."""
    from zoo.training import distributed
    from zoo.training.loop import train_epoch

    images = run.steps * run.batch_size * run.dist.world_size
    rates = []
    for epoch in range(repeats + 1):
        distributed.barrier()
        _sync(run.device)
        start = time.perf_counter()
        train_epoch(run, epoch + 1, lambda event: None)
        _sync(run.device)
        if epoch:  # the first epoch warms up allocators and kernels
            rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def _step_times(run: Any, repeats: int, steps: int) -> tuple[float, float]:
    """Median seconds per DDP training step with and without the gradient all-reduce."""
    import torch
    import torch.nn.functional as F

    from zoo.training import distributed

    x = torch.randn(run.batch_size, *run.data.train.images.shape[1:], device=run.device)
    y = torch.randint(0, run.data.num_classes, (run.batch_size,), device=run.device)
    ddp = run.forward

    def timed(sync: bool) -> float:
        distributed.barrier()
        _sync(run.device)
        start = time.perf_counter()
        for _ in range(steps):
            with contextlib.nullcontext() if sync else ddp.no_sync():
                loss = F.cross_entropy(ddp(x), y)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            run.optimizer.step()
        _sync(run.device)
        return (time.perf_counter() - start) / steps

    timed(True), timed(False)  # warm-up
    with_ar, without = [], []
    for _ in range(repeats):
        with_ar.append(timed(True))
        without.append(timed(False))
    return statistics.median(with_ar), statistics.median(without)


def worker(args: argparse.Namespace) -> None:
    import torch

    from zoo.devices import select_device
    from zoo.env import environment
    from zoo.training import distributed
    from zoo.training.loop import build_data, setup_run

    place, device = distributed.setup(select_device(args.device))
    if device == "cpu":
        torch.set_num_threads(max(1, args.cores // place.world_size))
    records = []
    for model in args.models:
        recipe = _recipe(model, args.global_batch, args.steps, device)
        torch.manual_seed(recipe.seed)  # the same initial weights for every process count
        data = build_data(recipe, device)
        run = setup_run(recipe, data, device, Path(tempfile.gettempdir()), place)
        params = sum(p.numel() for p in run.model.parameters())
        rate = _trainer_images_per_s(run, args.repeats)
        record: dict[str, Any] = {
            "model": model,
            "params": params,
            "processes": place.world_size,
            "global_batch": args.global_batch,
            "batch_per_process": run.batch_size,
            "images_per_s": rate,
            "images_per_s_per_process": rate / place.world_size,
            "gradient_mb": 4 * params / 1e6,
            "allreduce_mb_sent_per_process": 2
            * (place.world_size - 1)
            / place.world_size
            * 4
            * params
            / 1e6,
        }
        record["step_ms"] = 1e3 * args.global_batch / rate  # trainer, all processes in step
        record.update(allreduce_exposed_ms=0.0, communication_share=0.0)
        if place.enabled:
            t_step, t_local = _step_times(run, args.repeats, args.steps)
            record.update(
                ddp_step_ms=1e3 * t_step,
                ddp_step_without_allreduce_ms=1e3 * t_local,
                allreduce_exposed_ms=1e3 * max(0.0, t_step - t_local),
                communication_share=max(0.0, (t_step - t_local) / t_step),
            )
        records.append(record)
        del run, data
    if place.is_main:
        env = environment(device)
        env["processes"] = place.world_size
        env["backend"] = "nccl" if device.startswith("cuda") else "gloo"
        Path(args.worker_out).write_text(json.dumps({"env": env, "records": records}))
    distributed.cleanup()


# -- orchestrator ----------------------------------------------------------------------------


def _launch(nproc: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        __file__,
        "--worker-out",
        str(out),
        "--device",
        args.device,
        "--cores",
        str(args.cores),
        "--global-batch",
        str(args.global_batch),
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--models",
        *args.models,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.cores // nproc))}
    subprocess.run(command, check=True, env=env, timeout=args.timeout)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _usable(nprocs: list[int], device: str) -> list[int]:
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        skipped = [n for n in nprocs if n > gpus]
        if skipped:
            print(f"skipping --nproc {skipped}: this machine has {gpus} GPU(s)", file=sys.stderr)
        return [n for n in nprocs if n <= gpus]
    return nprocs


def _markdown(jobs: list[dict[str, Any]]) -> str:
    env = jobs[0]["env"]
    lines = [
        "# DDP scaling",
        "",
        f"{env['device_name']} ({env['device']}, backend {env['backend']}), torch {env['torch']}, "
        f"zoo {env['zoo_version']} ({env['git_sha']}). Same global batch for every process "
        "count; images/s are over all processes and step ms is one global step of zoo's trainer. "
        "Exposed all-reduce: DDP step time minus the same step under no_sync(); "
        "communication share: that over the DDP step time.",
        "",
        "| model | params | processes | threads/process | batch/process | images/s | "
        "speed-up | step ms | exposed all-reduce ms | comm share | all-reduce MB sent/process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["model"]: r["images_per_s"] for r in jobs[0]["records"]}
    for job in jobs:
        for r in job["records"]:
            lines.append(
                f"| {r['model']} | {r['params']:,} | {r['processes']} | {job['env']['threads']} | "
                f"{r['batch_per_process']} | {r['images_per_s']:,.0f} | "
                f"{r['images_per_s'] / base[r['model']]:.2f}x | {r['step_ms']:.1f} | "
                f"{r['allreduce_exposed_ms']:.1f} | {100 * r['communication_share']:.0f} % | "
                f"{r['allreduce_mb_sent_per_process']:.1f} |"
            )
    lines += ["", "Reproduce: `" + " ".join(["python", *sys.argv]) + "`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--device", default="auto", help="auto (cuda if any), cpu or cuda")
    parser.add_argument(
        "--cores", type=int, default=2, help="CPU cores shared by the processes (CPU only)"
    )
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=RESULTS / "ddp_scaling.json")
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        worker(args)
        return
    jobs = []
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in _usable(args.nproc, args.device):
            jobs.append(_launch(nproc, args, Path(tmp) / f"{nproc}.json"))
            for r in jobs[-1]["records"]:
                print(
                    f"{r['model']:<14} {nproc} process(es): {r['images_per_s']:8.0f} images/s, "
                    f"comm share {100 * r['communication_share']:.0f} %",
                    file=sys.stderr,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"jobs": jobs, "argv": sys.argv}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(jobs))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

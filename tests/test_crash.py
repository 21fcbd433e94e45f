"""Kill-and-resume: a real ``zoo train`` process killed with SIGKILL at seeded-random points
(between epochs, in the middle of writing a checkpoint file, between writing it and renaming
it into place) resumes with ``--resume`` and ends with exactly the weights of a run that was
never interrupted. SIGINT stops after a checkpoint and says how to resume.

Kills inside a checkpoint write are placed exactly by a small launcher (``killer.py``,
written below) that wraps the file-system calls of zoo's atomic writes and SIGKILLs its own
process at the N-th call; it then runs the unmodified ``zoo`` CLI. No test hook lives in zoo.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EPOCHS = 5
RECIPE = {
    "name": "crash",
    "model": {"name": "mlp_relu", "args": {"hidden_sizes": [32], "drop_rate": 0.1}},
    "data": {
        "dataset": "synthetic",
        "batch_size": 16,
        "synthetic": {
            "num_classes": 4,
            "in_chans": 1,
            "img_size": 8,
            "train_size": 256,
            "valid_size": 32,
            "test_size": 32,
            "seed": 3,
        },
        "augment": {"hflip": True},
    },
    "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "epochs": EPOCHS,
    "seed": 7,
}

KILLER = '''
"""Run the zoo CLI, SIGKILLing this process at the N-th call of one file-system step."""
import json, os, signal, sys

kind, nth = sys.argv[1], int(sys.argv[2])
calls = 0


def maybe_die():
    global calls
    calls += 1
    if calls == nth:
        os.kill(os.getpid(), signal.SIGKILL)


import zoo._io
import zoo.training.checkpoint

if kind == "before-rename":  # a temp file is complete and fsynced, not yet renamed
    real_replace = os.replace

    def replace(src, dst):
        maybe_die()
        return real_replace(src, dst)

    os.replace = replace
elif kind == "mid-tensors":  # half of the checkpoint's tensor file is written
    real_write = zoo.training.checkpoint.atomic_write_bytes

    def write(path, data):
        global calls
        calls += 1
        if calls == nth:
            with zoo._io.atomic_open(path) as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_write(path, data)

    zoo.training.checkpoint.atomic_write_bytes = write
elif kind == "mid-json":  # half of last.json is written
    real_dump = json.dump

    def dump(obj, f, **kw):
        if "tensors_file" in obj:
            text = json.dumps(obj, **kw)
            f.write(text[: len(text) // 2])
            f.flush()
            maybe_die()
        return real_dump(obj, f, **kw)

    zoo.training.checkpoint.json.dump = dump
elif kind == "before-cleanup":  # last.json committed, old tensors file not yet deleted
    from pathlib import Path

    real_path_unlink = Path.unlink

    def path_unlink(self, missing_ok=False):
        if self.name.startswith("epoch-"):
            maybe_die()
        return real_path_unlink(self, missing_ok=missing_ok)

    Path.unlink = path_unlink

from zoo.cli import main

sys.argv = ["zoo", *sys.argv[3:]]
main()
'''


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _zoo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zoo", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _killed(kind: str, nth: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(cwd / "killer.py"), kind, str(nth), *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    (root / "killer.py").write_text(textwrap.dedent(KILLER))
    return root


@pytest.fixture(scope="module")
def reference(workdir: Path) -> bytes:
    """The final weights of an uninterrupted run."""
    done = _zoo("train", "recipe.yaml", "--out", "reference", cwd=workdir)
    assert done.returncode == 0, done.stderr
    return (workdir / "reference" / "model.safetensors").read_bytes()


def _finish(run: str, cwd: Path) -> bytes:
    """Resume until done; a run killed before its first checkpoint starts over with --force."""
    done = _zoo("train", "--resume", run, cwd=cwd)
    # killed before the first checkpoint (or even before recipe.yaml): start over
    if done.returncode != 0 and (
        "no complete checkpoint" in done.stderr or "no recipe" in done.stderr
    ):
        done = _zoo("train", "recipe.yaml", "--out", run, "--force", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return (cwd / run / "model.safetensors").read_bytes()


KINDS = ["before-rename", "mid-tensors", "mid-json", "before-cleanup"]


@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_points_resumes_bit_identically(
    workdir: Path, reference: bytes, seed: int
) -> None:
    rng = random.Random(seed)
    run = f"run{seed}"
    # two kills in a row (the second while resuming), then a clean resume
    first_kind, second_kind = rng.choice(KINDS), rng.choice(KINDS)
    args = ["train", "recipe.yaml", "--out", run]
    first = _killed(first_kind, rng.randint(1, EPOCHS - 1), args, workdir)
    assert first.returncode == -signal.SIGKILL, (first_kind, first.stderr)
    second = _killed(second_kind, rng.randint(1, 3), ["train", "--resume", run], workdir)
    assert second.returncode in (-signal.SIGKILL, 0, 2), second.stderr
    assert _finish(run, workdir) == reference, (first_kind, second_kind)
    leftovers = [p.name for p in (workdir / run / "checkpoints").iterdir()]
    expected = ["best.json", "best.safetensors", f"epoch-{EPOCHS:04d}.safetensors", "last.json"]
    assert sorted(leftovers) == expected, leftovers


@pytest.mark.parametrize("seed", range(2))
def test_sigkill_after_a_random_delay_resumes_bit_identically(
    workdir: Path, reference: bytes, seed: int
) -> None:
    rng = random.Random(100 + seed)
    run = f"timed{seed}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoo", "train", "recipe.yaml", "--out", run],
        cwd=workdir,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(workdir / run / "metrics.jsonl", proc)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert _finish(run, workdir) == reference


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "training ended before its first epoch"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sigint_stops_after_a_checkpoint_and_says_how_to_resume(
    workdir: Path, reference: bytes
) -> None:
    run = "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoo", "train", "recipe.yaml", "--out", run],
        cwd=workdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(workdir / run / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    last = stderr.strip().splitlines()[-1]
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert last.startswith("error: training stopped by the user; epoch ")
    assert f"zoo train --resume {run}" in last
    assert (workdir / run / "checkpoints" / "last.json").is_file()
    assert not (workdir / run / "model.safetensors").exists()
    assert _finish(run, workdir) == reference

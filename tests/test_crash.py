"""Kill-and-resume: a real ``zoo train`` process killed with SIGKILL at seeded-random points
(between epochs, in the middle of writing a checkpoint file, between writing it and renaming
it into place) and at the fixed points before the first complete checkpoint resumes with
``--resume`` alone and ends with the weights of a run that was never interrupted. SIGTERM and
SIGINT at every phase (training, validation, test, export, card, a sweep point) exit 143 /
130 with one line whose command continues the run to those same weights.

Kills and signals are placed exactly by a small launcher (``killer.py``, written below) that
wraps one of zoo's functions and SIGKILLs, or signals, its own process at the N-th call; it
then runs the unmodified ``zoo`` CLI. No test hook lives in zoo.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

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
import json, os, signal, sys, time

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

elif kind == "after-metrics":  # metrics.jsonl has the epoch, its checkpoint is not begun
    import zoo.runs.files

    real_metrics = zoo.runs.files.write_metrics

    def write_metrics(*args, **kwargs):
        real_metrics(*args, **kwargs)
        maybe_die()

    zoo.runs.files.write_metrics = write_metrics
elif ":" in kind:  # SIGNAL[xCOUNT]:PHASE, e.g. SIGTERM:valid or SIGINTx2:train
    import zoo.runs.card
    import zoo.training.loop
    import zoo.weights.files

    name, phase = kind.split(":")
    name, _, count = name.partition("x")
    sig = getattr(signal, name)
    owner, function = {
        "train": (zoo.training.loop, "_backward"),  # N-th training step, counted over epochs
        "valid": (zoo.training.loop, "_evaluate"),  # N-th evaluation: epoch N's validation
        "test": (zoo.training.loop, "_choose_weights"),  # the test evaluation begins
        "export": (zoo.weights.files, "save_model_files"),
        "card": (zoo.runs.card, "write_card"),  # after summary.json: the finishing steps
    }[phase]
    real = getattr(owner, function)

    def signalled(*args, **kwargs):
        global calls
        calls += 1
        if calls == nth:
            for _ in range(int(count or 1)):  # COUNT signals, each handled before the next
                os.kill(os.getpid(), sig)
                time.sleep(0.05)
        return real(*args, **kwargs)

    setattr(owner, function, signalled)

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
    """Resume until done: ``--resume`` alone, never ``--force``."""
    done = _zoo("train", "--resume", run, cwd=cwd)
    if done.returncode != 0 and "nothing was trained" in done.stderr:
        # killed between creating the directory and recording the recipe: start it (no --force)
        done = _zoo("train", "recipe.yaml", "--out", run, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return (cwd / run / "model.safetensors").read_bytes()


def _assert_same_weights(run: Path, reference: Path) -> None:
    """The weights of an uninterrupted run (compared with a tolerance: another process)."""
    got, want = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7)


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


# -- before the first complete checkpoint --------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["after-metrics", "mid-tensors", "mid-json"],
    ids=["after-first-metrics-line", "mid-first-tensors", "mid-first-last-json"],
)
def test_sigkill_before_the_first_checkpoint_starts_over_on_resume(
    workdir: Path, reference: bytes, kind: str
) -> None:
    run = f"first-{kind}"
    killed = _killed(kind, 1, ["train", "recipe.yaml", "--out", run], workdir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (workdir / run / "checkpoints" / "last.json").exists()
    resumed = _zoo("train", "--resume", run, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    starts = [line for line in resumed.stderr.splitlines() if "starting it over" in line]
    assert len(starts) == 1, resumed.stderr
    assert "--force" not in resumed.stderr
    _assert_same_weights(workdir / run, workdir / "reference")


# -- SIGTERM and SIGINT at every phase -----------------------------------------------------

STEPS = 16  # training steps per epoch: 256 images in batches of 16
# phase -> (N-th call to signal at, what the checkpoint holds afterwards for SIGTERM, SIGINT)
PHASES = {
    "train": (STEPS + 5, 1, 2),  # epoch 2, step 5: SIGTERM stops now, Ctrl-C ends the epoch
    "valid": (2, 2, 2),  # epoch 2's validation: both checkpoint epoch 2
    "test": (1, EPOCHS, EPOCHS),
    "export": (1, EPOCHS, EPOCHS),
    "card": (1, EPOCHS, EPOCHS),
}


def _stopped_line(result: subprocess.CompletedProcess[str], signum: int) -> str:
    """The one error line of a stopped run; exit 143 for SIGTERM, 130 for SIGINT."""
    assert result.returncode == 128 + signum, result.stderr
    assert "Traceback" not in result.stderr and "Aborted" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _continue(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the command the error line names, as the user would paste it."""
    command = line.split("`")[-2].split()
    assert command[:3] == ["zoo", "train", "--resume"], line
    return _zoo(*command[1:], cwd=cwd)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_signal_at_any_phase_says_how_to_continue_to_the_same_weights(
    workdir: Path, reference: bytes, phase: str, signame: str
) -> None:
    signum = getattr(signal, signame)
    nth, after_term, after_int = PHASES[phase]
    run = f"{signame}-{phase}"
    result = _killed(f"{signame}:{phase}", nth, ["train", "recipe.yaml", "--out", run], workdir)
    line = _stopped_line(result, signum)
    assert ("SIGTERM" in line) == (signame == "SIGTERM"), line
    assert f"zoo train --resume {run}`" in line
    record = json.loads((workdir / run / "checkpoints" / "last.json").read_text())
    assert record["epoch"] == (after_term if signame == "SIGTERM" else after_int)
    assert not (workdir / run / ".zoo-lock").exists()  # released
    assert not (workdir / run / "README.md").exists()  # the finishing was interrupted
    done = _continue(line, workdir)
    assert done.returncode == 0, done.stderr
    assert (workdir / run / "README.md").is_file()
    _assert_same_weights(workdir / run, workdir / "reference")


def test_two_ctrl_c_before_the_first_epoch_resume_starts_over(
    workdir: Path, reference: bytes
) -> None:
    run = "two-ctrl-c"
    result = _killed("SIGINTx2:train", 3, ["train", "recipe.yaml", "--out", run], workdir)
    line = _stopped_line(result, signal.SIGINT)
    assert "no epoch had finished" in line and "--force" not in line
    done = _continue(line, workdir)
    assert done.returncode == 0, done.stderr
    assert "starting it over from its recorded recipe" in done.stderr
    _assert_same_weights(workdir / run, workdir / "reference")


def test_second_sigterm_stops_at_once(workdir: Path, reference: bytes) -> None:
    run = "two-sigterms"
    # both during epoch 2's validation: the first would let it checkpoint, the second stops now
    result = _killed("SIGTERMx2:valid", 2, ["train", "recipe.yaml", "--out", run], workdir)
    line = _stopped_line(result, signal.SIGTERM)
    assert "epoch 1 is checkpointed" in line, line
    assert _continue(line, workdir).returncode == 0
    _assert_same_weights(workdir / run, workdir / "reference")


def test_sigterm_during_a_sweep_point_continues_the_sweep(workdir: Path, reference: bytes) -> None:
    sweep = {**RECIPE, "name": "crash_sweep", "sweep": {"optim.lr": [0.01, 0.02]}}
    (workdir / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    args = ["train", "sweep.yaml", "--out", "sw"]
    result = _killed("SIGTERM:train", STEPS + 5, args, workdir)
    line = _stopped_line(result, signal.SIGTERM)
    assert "zoo train --resume sw`" in line
    done = _continue(line, workdir)
    assert done.returncode == 0, done.stderr
    points = json.loads((workdir / "sw" / "sweep.json").read_text())["points"]
    assert [p["status"] for p in points] == ["done", "done"]
    _assert_same_weights(workdir / "sw" / "optim.lr=0.01", workdir / "reference")


def test_sigterm_from_outside_stops_at_the_next_batch(workdir: Path, reference: bytes) -> None:
    run = "terminated"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoo", "train", "recipe.yaml", "--out", run],
        cwd=workdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(workdir / run / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    ended = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    line = _stopped_line(ended, signal.SIGTERM)
    assert f"zoo train --resume {run}`" in line
    assert _continue(line, workdir).returncode == 0
    _assert_same_weights(workdir / run, workdir / "reference")

"""Data-parallel training under torchrun: the shard arithmetic (fast), and real 2-process
gloo jobs on the CPU (slow + integration): identical weights on every rank, validation
accuracy equal to a single-process evaluation, one run directory, a killed rank ending the
job, and a resumed job equal to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from zoo.cli import cli
from zoo.errors import RecipeError, RunError
from zoo.recipe import from_dict
from zoo.training import distributed
from zoo.training.checkpoint import CHECKPOINT_DIR, JSON_NAME
from zoo.training.distributed import Dist
from zoo.training.evaluation import evaluate
from zoo.training.loop import RunOptions, build_data, fit, steps_per_epoch

TIMING_KEYS = {"seconds", "train_seconds", "images_per_s"}
JOB_TIMEOUT_S = 120  # a 2-process job here takes ~10 s; this only bounds a hang


@pytest.fixture(autouse=True)
def _restore_threads(request: pytest.FixtureRequest) -> None:
    """Tests here pin torch to one thread, as torchrun's workers run; later modules get their
    thread count back (test_hub compares its outputs with a subprocess that reads
    OMP_NUM_THREADS)."""
    threads = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(threads))


def tiny(**changes: Any) -> dict[str, Any]:
    """4 classes of 8x8 grey images, a small MLP with dropout, flip augmentation."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "model": {"name": "mlp_relu", "args": {"hidden_sizes": [32, 16], "drop_rate": 0.1}},
        "data": {
            "dataset": "synthetic",
            "batch_size": 32,
            "augment": {"hflip": True},
            "synthetic": {
                "num_classes": 4,
                "in_chans": 1,
                "img_size": 8,
                "train_size": 192,
                "valid_size": 72,  # not a multiple of 2 x the eval batch: uneven last batch
                "test_size": 64,
            },
        },
        "optim": {"name": "adam", "lr": 0.01},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "epochs": 3,
        "device": "cpu",
    }
    for key, value in changes.items():  # dotted keys, like --set
        *parents, last = key.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return recipe


# -- arithmetic (no process group) -------------------------------------------------------------


def test_the_torchrun_environment_gives_the_place() -> None:
    assert distributed.from_env({}) == distributed.SINGLE
    place = distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert place == Dist(3, 4, 1) and place.enabled and not place.is_main
    assert not distributed.from_env({"RANK": "0", "WORLD_SIZE": "1"}).enabled
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(RecipeError, match="torchrun"):
            distributed.from_env(bad)


def test_the_collective_timeout_comes_from_the_environment() -> None:
    assert distributed.timeout_s({}) == distributed.DEFAULT_TIMEOUT_S
    assert distributed.timeout_s({"ZOO_DIST_TIMEOUT": "30"}) == 30.0
    for bad in ("0", "-5", "soon", "nan"):
        with pytest.raises(RecipeError, match="ZOO_DIST_TIMEOUT"):
            distributed.timeout_s({"ZOO_DIST_TIMEOUT": bad})


def test_per_rank_and_global_batch_sizes() -> None:
    assert distributed.rank_batch_size(128, "per_rank", 4) == 128  # global batch 512
    assert distributed.rank_batch_size(128, "global", 4) == 32  # global batch 128
    assert distributed.rank_batch_size(100, "global", 1) == 100
    with pytest.raises(RecipeError, match=r"does not split evenly over 3 processes.*such as 126"):
        distributed.rank_batch_size(128, "global", 3)


def test_the_recipe_validates_the_batch_size_mode() -> None:
    assert from_dict(tiny()).data.batch_size_mode == "per_rank"
    assert from_dict(tiny(**{"data.batch_size_mode": "global"})).data.batch_size_mode == "global"
    with pytest.raises(RecipeError, match=r"data\.batch_size_mode: got 'globl'.*global"):
        from_dict(tiny(**{"data.batch_size_mode": "globl"}))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 5, 12, 13])
def test_ranks_take_disjoint_shards_of_one_permutation(world: int, n: int) -> None:
    def perm_shard(rank: int) -> list[int]:
        generator = torch.Generator().manual_seed(7)
        return distributed.shard_order(n, Dist(rank, world), generator).tolist()

    shards = [perm_shard(rank) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
    assert set().union(*map(set, shards)) == set(range(n))  # every image is seen
    assert sum(map(len, shards)) - n < world  # padding only to even the shards out
    if world == 1:  # exactly the single-process order
        assert shards[0] == torch.randperm(n, generator=torch.Generator().manual_seed(7)).tolist()


def test_evaluation_slices_cover_the_split_once() -> None:
    for n in (0, 1, 7, 64, 72):
        for world in (1, 2, 3, 5):
            slices = [distributed.eval_slice(n, Dist(r, world)) for r in range(world)]
            covered = [i for lo, hi in slices for i in range(lo, hi)]
            assert covered == list(range(n))


def test_rank_seeds_differ_by_rank_epoch_and_purpose_and_are_stable() -> None:
    seeds = {
        distributed.rank_seed(42, epoch, rank, purpose)
        for epoch in (1, 2)
        for rank in (0, 1, 2)
        for purpose in ("augment", "dropout")
    }
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert distributed.rank_seed(42, 1, 0, "augment") == distributed.rank_seed(42, 1, 0, "augment")


def test_steps_per_epoch_follow_the_shard_and_the_batch_mode() -> None:
    recipe = from_dict(tiny())  # 192 images, batch 32
    assert steps_per_epoch(recipe, 192) == 6
    assert steps_per_epoch(recipe, 192, world_size=2) == 3  # 96 per rank, 32 per step
    assert steps_per_epoch(recipe, 193, world_size=2) == 4  # 97 per rank (one padded)
    glob = from_dict(tiny(**{"data.batch_size_mode": "global"}))
    assert steps_per_epoch(glob, 192, world_size=2) == 6  # 16 per rank: as one process


def test_torchrun_command_drops_nproc_and_keeps_the_rest() -> None:
    argv = ["-v", "train", "r.yaml", "--nproc", "4", "--set", "epochs=2", "--nproc=4"]
    command = distributed.torchrun_command(argv, 4, python="py")
    assert command == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
        "zoo",
        "-v",
        "train",
        "r.yaml",
        "--set",
        "epochs=2",
    ]


def test_train_nproc_re_executes_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({**tiny(), "device": "cpu"}))  # --nproc is bounded by CPUs
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # ... which a test machine may lack
    calls: list[list[str]] = []

    def execv(path: str, args: list[str]) -> None:
        calls.append(args)
        raise click.exceptions.Exit(0)  # execv never returns

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(sys, "argv", ["zoo", "train", str(recipe), "--nproc", "2"])
    result = CliRunner().invoke(cli, ["train", str(recipe), "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert calls == [distributed.torchrun_command(["train", str(recipe)], 2)]
    # under torchrun already: refused instead of starting torchrun inside torchrun
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(cli, ["train", str(recipe), "--nproc", "2"])
    assert result.exit_code == 2 and "already runs under torchrun" in result.output


def test_dry_run_with_nproc_shows_the_per_process_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({**tiny(), "device": "cpu"}))  # --nproc is bounded by CPUs
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    result = CliRunner().invoke(cli, ["train", str(recipe), "--dry-run", "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert "# 2 processes" in result.output
    assert "3 epochs of 3 steps of 32 images per process" in result.output


def test_resume_refuses_another_number_of_processes(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = fit(
        from_dict(tiny(epochs=1)), RunOptions(out_dir=tmp_path / "run", device="cpu", progress=[])
    )
    path = run / CHECKPOINT_DIR / JSON_NAME
    record = json.loads(path.read_text())
    record["state"]["world_size"] = 2  # as a 2-process run writes it
    path.write_text(json.dumps(record))
    with pytest.raises(RunError, match=r"written by a 2-process run.*--nproc-per-node 2"):
        fit(None, RunOptions(resume=run, device="cpu", progress=[]))


# -- real 2-process jobs (gloo on the CPU) ---------------------------------------------------

# `python -m zoo` with two test hooks, so that tests can look inside the ranks:
# ZOO_TEST_WEIGHTS=DIR saves each rank's final weights as DIR/rank<R>.safetensors;
# ZOO_TEST_STOP_AT=E stops every rank as Ctrl-C would, when epoch E begins.
LAUNCHER = """
import os
from safetensors.torch import save_file
import zoo.training.loop as train

finish, train_epoch = train._finish, train.train_epoch

def _finish(run, *args):
    out = os.environ.get("ZOO_TEST_WEIGHTS")
    if out:
        state = {k: v.contiguous() for k, v in run.model.state_dict().items()}
        save_file(state, os.path.join(out, f"rank{run.dist.rank}.safetensors"))
    return finish(run, *args)

def _train_epoch(run, epoch, progress):
    if str(epoch) == os.environ.get("ZOO_TEST_STOP_AT"):
        raise KeyboardInterrupt
    return train_epoch(run, epoch, progress)

train._finish, train.train_epoch = _finish, _train_epoch
train.after_run = lambda run_dir, recipe: None  # curves and card: not under test here
from zoo.cli import main
main()
"""


def _torchrun(
    tmp: Path, args: list[str], env: dict[str, str] | None = None, *, popen: bool = False
) -> Any:
    launcher = tmp / "launch_zoo.py"
    launcher.write_text(LAUNCHER)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(launcher),
        *args,
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "ZOO_DIST_TIMEOUT": "60", **(env or {})}
    if popen:
        return subprocess.Popen(
            command, cwd=tmp, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    return subprocess.run(
        command,
        cwd=tmp,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
    )


def _recipe_file(tmp: Path, **changes: Any) -> Path:
    path = tmp / "tiny.yaml"
    path.write_text(json.dumps(tiny(**changes)))  # JSON is YAML
    return path


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# 16 per rank: the steps of one process; the final weights are the ones each rank holds
GLOBAL_BATCH = {"data.batch_size_mode": "global", "test_weights": "final"}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-process job of the tiny recipe, into the default run directory."""
    tmp = tmp_path_factory.mktemp("ddp")
    recipe = _recipe_file(tmp, **GLOBAL_BATCH)
    (tmp / "weights").mkdir()
    done = _torchrun(tmp, ["train", str(recipe)], {"ZOO_TEST_WEIGHTS": str(tmp / "weights")})
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_end_with_identical_weights_in_one_run_directory(
    two_process_run: Path,
) -> None:
    tmp = two_process_run
    runs = list((tmp / "runs" / "tiny").iterdir())
    assert len(runs) == 1  # rank 1 wrote nothing, and used rank 0's timestamp
    assert sorted(p.name for p in tmp.iterdir()) == [
        "launch_zoo.py",
        "runs",
        "tiny.yaml",
        "weights",
    ]
    rank0 = load_file(str(tmp / "weights" / "rank0.safetensors"))
    rank1 = load_file(str(tmp / "weights" / "rank1.safetensors"))
    _assert_same(rank0, rank1)
    _assert_same(rank0, load_file(str(runs[0] / "model.safetensors")))
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["distributed"] == {
        "world_size": 2,
        "batch_size_per_rank": 16,
        "global_batch_size": 32,
    }


class _CountNearTies:
    """A forward for evaluate() that counts images whose top two logits are within 1e-4,
    far above float32 rounding: the only ones whose argmax another process may flip."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.near_ties = model, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        top2 = logits.float().topk(2, dim=1).values
        self.near_ties += int((top2[:, 0] - top2[:, 1] < 1e-4).sum())
        return logits


@pytest.mark.slow
@pytest.mark.integration
def test_distributed_accuracy_equals_a_single_process_evaluation(two_process_run: Path) -> None:
    (run,) = (two_process_run / "runs" / "tiny").iterdir()
    torch.set_num_threads(1)
    recipe = from_dict(tiny(**GLOBAL_BATCH))
    data = build_data(recipe, "cpu")
    import zoo

    model = zoo.create(str(run)).eval()
    valid_net, test_net = _CountNearTies(model), _CountNearTies(model)
    valid_loss, valid_acc = evaluate(
        valid_net, data.valid, mean=data.mean, std=data.std, batch_size=32
    )
    test_loss, test_acc = evaluate(test_net, data.test, mean=data.mean, std=data.std, batch_size=32)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    # The job evaluated in other processes, a slice per rank, so its logits may differ from
    # these in the last bits (another CPU, other batch shapes). Accuracy counts argmaxes:
    # only an image whose top two logits are within rounding can flip, so the accuracies
    # must agree up to those images (normally none: then exactly).
    n_valid, n_test = len(data.valid), len(data.test)
    assert round(abs(last["valid_acc"] - valid_acc) * n_valid) <= valid_net.near_ties
    assert round(abs(summary["test_acc"] - test_acc) * n_test) <= test_net.near_ties
    # The mean loss adds float32 batch sums grouped differently (32+4 per rank vs 32+32+8),
    # ~1e-6 relative; an image dropped or counted twice moves it by ~1e-2.
    assert last["valid_loss"] == pytest.approx(valid_loss, rel=1e-5)
    assert summary["test_loss"] == pytest.approx(test_loss, rel=1e-5)
    # and it learned as one process does with the same global batch
    single = fit(recipe, RunOptions(out_dir=two_process_run / "single", device="cpu", progress=[]))
    single_acc = json.loads((single / "summary.json").read_text())["test_acc"]
    assert test_acc > 0.5 and abs(test_acc - single_acc) <= 0.1


@pytest.mark.slow
@pytest.mark.integration
def test_a_resumed_two_process_run_ends_like_an_uninterrupted_one(
    two_process_run: Path, tmp_path: Path
) -> None:
    (reference,) = (two_process_run / "runs" / "tiny").iterdir()
    recipe = _recipe_file(tmp_path, **GLOBAL_BATCH)
    stopped = _torchrun(tmp_path, ["train", str(recipe), "--out", "run"], {"ZOO_TEST_STOP_AT": "2"})
    assert stopped.returncode != 0
    assert (
        "training stopped by the user; epoch 1 is checkpointed" in stopped.stdout + stopped.stderr
    )
    assert not (tmp_path / "run" / "summary.json").exists()
    resumed = _torchrun(tmp_path, ["train", "--resume", "run"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = tmp_path / "run"
    _assert_same(
        load_file(str(reference / "model.safetensors")), load_file(str(run / "model.safetensors"))
    )
    assert _metrics(run) == _metrics(reference)


def _worker_with_rank(torchrun_pid: int, rank: int) -> int | None:
    """The pid of the worker process that torchrun started as ``rank``."""
    children: list[int] = []
    for task in Path(f"/proc/{torchrun_pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds ranks through /proc")
def test_killing_one_rank_ends_the_job_with_an_error(tmp_path: Path) -> None:
    recipe = _recipe_file(tmp_path, epochs=5000)  # minutes, unless something ends it
    job = _torchrun(tmp_path, ["train", str(recipe), "--out", "run"], popen=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run" / "metrics.jsonl").exists():  # training is under way
            assert job.poll() is None and time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        victim = _worker_with_rank(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        returncode = job.wait(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    output = job.stdout.read().decode(errors="replace") if job.stdout else ""
    assert returncode != 0
    assert "SIGKILL" in output or "Signal 9" in output, output[-2000:]
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_precision_auto_is_decided_once_for_every_rank(tmp_path: Path) -> None:
    """Under torchrun, rank 0 alone measures (ZOO_PRECISION unset: auto really probes) and
    its choice reaches the other rank through a real gloo broadcast; the job trains and
    records it."""
    recipe = _recipe_file(tmp_path, epochs=1, **GLOBAL_BATCH)
    home = tmp_path / "home"
    env = {"ZOO_PRECISION": "", "ZOO_HOME": str(home)}
    done = _torchrun(tmp_path, ["train", str(recipe), "--out", str(tmp_path / "run")], env)
    assert done.returncode == 0, done.stdout + done.stderr
    choice = json.loads((tmp_path / "run" / "summary.json").read_text())["precision"]
    assert choice["requested"] == "auto" and choice["chosen"] in ("fp32", "bf16")
    assert (done.stdout + done.stderr).count("precision auto -> ") == 1  # one rank decided
    assert len(list((home / "precision").iterdir())) == 1

"""Regularisers (zoo.training.regularise and zoo.data.autoaugment): mixup/cutmix, auto
augmentation, random erasing, weight EMA, stochastic depth, gradient accumulation,
layer-wise lr decay and the one-cycle schedule -- validated, deterministic, resumed bit for
bit, and (slow) trained by two processes under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zoo.data.autoaugment import apply_auto, parse_policy
from zoo.errors import RecipeError
from zoo.recipe import from_dict
from zoo.recipe.problems import KeyPathError
from zoo.training.checkpoint import load_checkpoint
from zoo.training.loop import RunOptions, TrainingInterrupted, fit
from zoo.training.optim import build_optimizer, build_scheduler
from zoo.training.regularise import (
    Regularisers,
    accumulation_group,
    build_regularisers,
    layer_decay_groups,
    optimizer_steps,
)

TIMING_KEYS = {"seconds", "train_seconds", "images_per_s"}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import zoo.training.loop

    monkeypatch.setattr(zoo.training.loop, "after_run", lambda run_dir, recipe: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _set(recipe: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():  # dotted keys, like --set
        *parents, last = key.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return recipe


def plain(**changes: Any) -> dict[str, Any]:
    """4 classes of 8x8 grey images, a small MLP without dropout or augmentation."""
    recipe: dict[str, Any] = {
        "name": "plain",
        "model": {"name": "mlp_relu", "args": {"hidden_sizes": [32, 16]}},
        "data": {
            "dataset": "synthetic",
            "batch_size": 32,
            "synthetic": {
                "num_classes": 4,
                "in_chans": 1,
                "img_size": 8,
                "train_size": 192,
                "valid_size": 64,
                "test_size": 64,
            },
        },
        "optim": {"name": "sgd", "lr": 0.05},
        "epochs": 2,
        "device": "cpu",
    }
    return _set(recipe, changes)


def regularised(**changes: Any) -> dict[str, Any]:
    """Every regulariser on at once, on a 2-block Mixer with dropout and stochastic depth;
    190 training images in batches of 30: an odd last batch and a short accumulation group."""
    recipe = plain(
        **{
            "name": "regularised",
            "model": {
                "name": "mlpmixer_p4",
                "args": {"embed_dim": 16, "num_blocks": 2, "drop_rate": 0.1, "drop_path_rate": 0.2},
            },
            "data.batch_size": 30,
            "data.synthetic.train_size": 190,
            "data.augment": {"hflip": True, "auto": "rand-m9-mstd0.5", "erase": {"prob": 0.5}},
            "optim": {
                "name": "adamw",
                "lr": 0.01,
                "weight_decay": 0.05,
                "grad_accum_steps": 3,
                "layer_decay": 0.8,
            },
            "schedule": {"name": "onecycle"},
            "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0},
            "ema": {"decay": 0.9, "warmup": True},
            "test_weights": "ema",
            "epochs": 3,
        }
    )
    return _set(recipe, changes)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mixup": {"prob": 1.5}}, r"mixup\.prob: got 1\.5, must be in \(0, 1\]"),
        ({"mixup": {"mixup_alpha": -1}}, r"mixup\.mixup_alpha: got -1"),
        ({"mixup": {"mixup_alpha": 0, "cutmix_alpha": 0}}, r"mixup: .*both 0"),
        ({"mixup": {}, "label_smoothing": 0.1}, r"label_smoothing: .*mixup\.label_smoothing"),
        ({"mixup": {"alpha": 1}}, r"mixup\.alpha: unknown key"),
        ({"data.augment.auto": "randaugment"}, r"data\.augment\.auto: got 'randaugment'"),
        ({"data.augment.auto": "rand-m11"}, r"data\.augment\.auto: got 'rand-m11'.*rand-m9"),
        ({"data.augment.erase": {"mode": "noise"}}, r"data\.augment\.erase\.mode: .*noise"),
        ({"data.augment.erase": {"prob": 0}}, r"data\.augment\.erase\.prob: got 0"),
        ({"ema": {"decay": 1.0}}, r"ema\.decay: got 1\.0, must be in \(0, 1\)"),
        ({"ema": {"device": "cuda"}}, r"ema\.device: got 'cuda'"),
        ({"test_weights": "ema"}, r"test_weights: .*no ema section.*ema: \{\}"),
        ({"test_weights": "emma"}, r"test_weights: got 'emma'.*ema"),
        ({"optim.grad_accum_steps": 0}, r"optim\.grad_accum_steps: got 0, must be in \[1, 1024\]"),
        ({"optim.layer_decay": 1.5}, r"optim\.layer_decay: got 1\.5"),
        ({"optim.layer_decay": 0.7, "optim.head_lr_mult": 10}, r"optim\.layer_decay: .*head_lr"),
        ({"schedule.name": "one_cycle"}, r"schedule\.name: got 'one_cycle'.*onecycle"),
        ({"schedule.pct_start": 1.0}, r"schedule\.pct_start: got 1\.0"),
        (
            {"schedule": {"name": "onecycle", "warmup_epochs": 1}},
            r"schedule\.warmup_epochs: .*pct_start",
        ),
        ({"model.args.drop_path_rate": 1.5}, r"model\.args"),
    ],
)
def test_regulariser_keys_are_validated_in_one_line(changes: dict[str, Any], message: str) -> None:
    recipe = plain(**{"model": {"name": "mlpmixer_p4", "args": {"embed_dim": 16}}, **changes})
    with pytest.raises(KeyPathError, match=message) as info:
        from_dict(recipe)
    assert "\n" not in str(info.value)


def test_a_recipe_with_every_regulariser_round_trips() -> None:
    recipe = from_dict(regularised())
    assert from_dict(recipe.to_dict()) == recipe
    assert recipe.model.args["drop_path_rate"] == 0.2


# -- pieces ------------------------------------------------------------------------------------


def test_accumulation_groups_split_an_epoch_and_the_last_one_is_short() -> None:
    groups = [accumulation_group(s, 7, 3) for s in range(1, 8)]
    assert [(first, last) for first, last, _ in groups] == [
        (True, False), (False, False), (False, True),
        (True, False), (False, False), (False, True),
        (True, True),
    ]  # fmt: skip
    assert [size for _, _, size in groups] == [3, 3, 3, 3, 3, 3, 1]
    assert optimizer_steps(7, 3) == 3
    assert accumulation_group(4, 4, 1) == (True, True, 1)


def test_auto_policies_draw_per_image_from_the_callers_generator() -> None:
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    before = torch.get_rng_state()
    a = apply_auto(images, "rand-m9-mstd0.5", torch.Generator().manual_seed(1))
    b = apply_auto(images, "rand-m9-mstd0.5", torch.Generator().manual_seed(1))
    c = apply_auto(images, "rand-m9-mstd0.5", torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), before)  # dropout's generator is untouched
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    # per image, not one draw for the batch: identical inputs come out differently
    same = images[:1].expand(16, -1, -1, -1).contiguous()
    out = apply_auto(same, "trivial", torch.Generator().manual_seed(0))
    assert len({bytes(o.numpy()) for o in out}) > 4


@pytest.mark.parametrize("name", ["trivial", "autoaugment", "rand-m9-mstd0.5", "rand-m5-n1"])
def test_auto_policies_work_on_grey_and_float_batches(name: str) -> None:
    grey = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8).float()  # after a crop
    out = apply_auto(grey, name, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == grey.shape


def test_policy_names_parse_as_timm_writes_them() -> None:
    policy = parse_policy("rand-m9-mstd0.5")
    assert (policy.kind, policy.magnitude, policy.num_ops, policy.magnitude_std) == (
        "rand", 9.0, 2, 0.5,
    )  # fmt: skip
    assert parse_policy("rand-m7-n3").num_ops == 3
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        parse_policy("rand-m12")


def _regularisers(**changes: Any) -> Regularisers:
    recipe = from_dict(regularised(**changes))
    model = torch.nn.Linear(4, 4)
    return build_regularisers(recipe, model, num_classes=4, device="cpu")


@pytest.mark.parametrize("n", [1, 7, 8])
def test_mixup_and_erasing_are_seeded_and_leave_global_generators_alone(n: int) -> None:
    reg = _regularisers()
    x, y = torch.randn(n, 1, 8, 8), torch.randint(0, 4, (n,))
    states = torch.get_rng_state(), np.random.get_state()[1].copy()
    xa, ta = reg.batch(x.clone(), y, torch.Generator().manual_seed(3))
    xb, tb = reg.batch(x.clone(), y, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(xa, xb) and torch.equal(ta, tb)
    assert ta.shape == (n, 4)  # soft targets, an odd batch included
    torch.testing.assert_close(ta.sum(1), torch.ones(n))


def test_soft_target_loss_is_timms() -> None:
    from timm.loss import SoftTargetCrossEntropy

    logits, target = torch.randn(6, 4), torch.softmax(torch.randn(6, 4), 1)
    reg = Regularisers()
    torch.testing.assert_close(
        reg.loss(logits, target, 0.0), SoftTargetCrossEntropy()(logits, target)
    )
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    expected = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert torch.equal(reg.loss(logits, y, 0.1), expected)


def test_layer_decay_scales_lr_by_depth_and_needs_a_group_matcher() -> None:
    from zoo.models import registry

    recipe = from_dict(regularised())
    model = registry.build("mlpmixer_p4", embed_dim=16, num_blocks=2, img_size=8, in_chans=1)
    groups = layer_decay_groups(model, recipe.optim)
    lrs = sorted({g["lr"] for g in groups})
    assert lrs[-1] == pytest.approx(0.01)  # the head at the full lr
    assert lrs[0] == pytest.approx(0.01 * 0.8 ** (len(lrs) - 1))  # the stem at the least
    assert all("lr_scale" not in g for g in groups)
    optimizer = build_optimizer(model, recipe.optim)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == lrs
    with pytest.raises(RecipeError, match="group_matcher"):
        layer_decay_groups(torch.nn.Linear(2, 2), recipe.optim)


def test_onecycle_rises_then_anneals_per_optimizer_step() -> None:
    recipe = from_dict(plain(**{"schedule": {"name": "onecycle", "pct_start": 0.25}}))
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=recipe.optim.lr)
    scheduler = build_scheduler(optimizer, recipe, steps=10)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.05 / 25)
    assert max(lrs) == pytest.approx(0.05) and lrs.index(max(lrs)) == 4
    assert lrs[-1] < lrs[0] / 100
    bad = from_dict(plain(**{"schedule": {"name": "onecycle", "pct_start": 0.05}}))
    with pytest.raises(RecipeError, match="pct_start"):
        build_scheduler(optimizer, bad, steps=10)


# -- training ----------------------------------------------------------------------------------


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path: Path) -> None:
    whole = fit(from_dict(plain()), RunOptions(out_dir=tmp_path / "a", device="cpu"))
    halves = plain(**{"data.batch_size": 16, "optim.grad_accum_steps": 2})
    accumulated = fit(from_dict(halves), RunOptions(out_dir=tmp_path / "b", device="cpu"))
    wa = load_file(str(whole / "model.safetensors"))
    wb = load_file(str(accumulated / "model.safetensors"))
    for key in wa:  # the same gradients, summed in another order
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)
    single = from_dict(plain(**{"data.batch_size": 16}))
    not_accumulated = fit(single, RunOptions(out_dir=tmp_path / "c", device="cpu"))
    wc = load_file(str(not_accumulated / "model.safetensors"))
    assert not all(torch.allclose(wa[k], wc[k], rtol=1e-4, atol=1e-5) for k in wa)


def test_ema_is_validated_each_epoch_and_tested_when_asked(tmp_path: Path) -> None:
    run = fit(from_dict(regularised(epochs=2)), RunOptions(out_dir=tmp_path / "r", device="cpu"))
    rows = metrics(run)
    assert all({"valid_loss_ema", "valid_acc_ema"} <= row.keys() for row in rows)
    assert rows[0]["valid_loss_ema"] != rows[0]["valid_loss"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_weights"] == "ema"
    state, _ = load_checkpoint(run / "checkpoints")
    exported = load_file(str(run / "model.safetensors"))
    assert_same(exported, {k: v for k, v in state["ema"].items()})
    assert not torch.equal(exported["head.weight"], state["model"]["head.weight"])


def _interrupt_after_epoch(epoch: int) -> Any:
    def progress(event: dict[str, Any]) -> None:
        if event["event"] == "epoch" and event["epoch"] == epoch:
            raise KeyboardInterrupt

    return progress


def test_resume_with_every_regulariser_is_bit_identical(tmp_path: Path) -> None:
    recipe = from_dict(regularised())
    whole = fit(recipe, RunOptions(out_dir=tmp_path / "whole", device="cpu"))
    part = tmp_path / "part"
    with pytest.raises(TrainingInterrupted, match="epoch 1 is checkpointed"):
        fit(recipe, RunOptions(out_dir=part, device="cpu", progress=_interrupt_after_epoch(1)))
    fit(None, RunOptions(resume=part, device="cpu"))
    assert metrics(part) == metrics(whole)
    assert_same(
        load_file(str(part / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    )
    a, _ = load_checkpoint(part / "checkpoints")
    b, _ = load_checkpoint(whole / "checkpoints")
    assert_same(a["model"], b["model"])  # the raw weights too, not only the EMA's
    assert_same(a["ema"], b["ema"])


def test_resnet_trains_with_stochastic_depth(tmp_path: Path) -> None:
    recipe = plain(
        **{
            "model": {"name": "resnet18", "args": {"drop_path_rate": 0.1}},
            "data.batch_size": 8,
            "limit_train_batches": 2,
            "limit_eval_batches": 1,
            "epochs": 1,
        }
    )
    run = fit(from_dict(recipe), RunOptions(out_dir=tmp_path / "r", device="cpu"))
    assert json.loads((run / "config.json").read_text())["model_args"]["drop_path_rate"] == 0.1


# -- two processes (gloo) ----------------------------------------------------------------------

LAUNCHER = """
import os
from safetensors.torch import save_file
import zoo.training.loop as train

finish, train_epoch = train._finish, train.train_epoch

def _finish(run, *args):
    out = os.environ["ZOO_TEST_WEIGHTS"]
    state = {k: v.contiguous() for k, v in run.model.state_dict().items()}
    save_file(state, os.path.join(out, f"rank{run.dist.rank}.safetensors"))
    ema = {k: v.contiguous() for k, v in run.regularise.ema.module.state_dict().items()}
    save_file(ema, os.path.join(out, f"ema{run.dist.rank}.safetensors"))
    return finish(run, *args)

def _train_epoch(run, epoch, progress):
    if str(epoch) == os.environ.get("ZOO_TEST_STOP_AT"):
        raise KeyboardInterrupt
    return train_epoch(run, epoch, progress)

train._finish, train.train_epoch = _finish, _train_epoch
train.after_run = lambda run_dir, recipe: None
from zoo.cli import main
main()
"""


def _torchrun(tmp: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    launcher = tmp / "launch_zoo.py"
    launcher.write_text(LAUNCHER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "ZOO_DIST_TIMEOUT": "60", **env}
    return subprocess.run(
        [*command, str(launcher), *args],
        cwd=tmp,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_train_with_mixup_ema_and_accumulation_and_resume(tmp_path: Path) -> None:
    recipe = tmp_path / "regularised.yaml"
    changes = {"data.batch_size_mode": "global", "epochs": 2, "data.augment.auto": "trivial"}
    recipe.write_text(json.dumps(regularised(**changes)))  # JSON is YAML
    (tmp_path / "w").mkdir()
    out = ["--out", str(tmp_path / "whole")]
    done = _torchrun(
        tmp_path, ["train", str(recipe), *out], {"ZOO_TEST_WEIGHTS": str(tmp_path / "w")}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    w = tmp_path / "w"
    assert_same(load_file(str(w / "rank0.safetensors")), load_file(str(w / "rank1.safetensors")))
    assert_same(load_file(str(w / "ema0.safetensors")), load_file(str(w / "ema1.safetensors")))
    assert "valid_acc_ema" in metrics(tmp_path / "whole")[0]
    # stopped when epoch 2 begins, then resumed: the same as uninterrupted
    (tmp_path / "p").mkdir()
    env = {"ZOO_TEST_WEIGHTS": str(tmp_path / "p"), "ZOO_TEST_STOP_AT": "2"}
    part = tmp_path / "part"
    stopped = _torchrun(tmp_path, ["train", str(recipe), "--out", str(part)], env)
    assert stopped.returncode != 0
    resumed = _torchrun(
        tmp_path, ["train", "--resume", str(part)], {"ZOO_TEST_WEIGHTS": str(tmp_path / "p")}
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert metrics(part) == metrics(tmp_path / "whole")
    assert_same(
        load_file(str(part / "model.safetensors")),
        load_file(str(tmp_path / "whole" / "model.safetensors")),
    )

"""benchmarks/make_report.sh: each profile's commands, checked with a stand-in `zoo` that
records its arguments instead of training (the real runs take minutes to an hour)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_report.sh"


def _run(tmp_path: Path, profile: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = tmp_path / "calls.txt"
    stub = tmp_path / "bin" / "zoo"
    stub.parent.mkdir()
    # each argument ends in \037 (unit separator), each call in \036 (record separator)
    script = f'#!/bin/sh\nprintf "%s\\037" "$@" >> "{log}"\nprintf "\\036" >> "{log}"\n'
    stub.write_text(script, encoding="utf-8")
    stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{stub.parent}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
        "PROFILE": profile,
        "OUT": str(tmp_path / "out"),
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    calls = log.read_text(encoding="utf-8").split("\036")[:-1] if log.exists() else []
    return done, calls


def _args(call: str) -> list[str]:
    return call.rstrip("\037").split("\037")


def test_an_unknown_profile_is_refused(tmp_path: Path) -> None:
    done, calls = _run(tmp_path, "fast")
    assert done.returncode == 2 and "PROFILE must be quick, cpu or full" in done.stderr
    assert calls == []


@pytest.mark.parametrize("profile", ["quick", "cpu"])
def test_a_cpu_profile_trains_five_recipes_on_fashion_mnist_then_labels_its_report(
    tmp_path: Path, profile: str
) -> None:
    done, calls = _run(tmp_path, profile)
    assert done.returncode == 0, done.stderr
    trains = [_args(c) for c in calls if c.startswith("train")]
    assert [a[1] for a in trains] == [
        f"recipes/{r}.yaml"
        for r in ("mlp_activations", "resnet18_lr", "mixer_patch", "resnet18_best", "mixer_best")
    ]
    for args in trains:
        assert "data.dataset=fashion_mnist" in args and "--force" in args
    sizes = "[2, 4, 7, 14]" if profile == "quick" else "[4, 7, 14]"
    assert f"sweep={{model.args.patch_size: {sizes}}}" in trains[2]
    report = _args(calls[-1])
    assert report[0] == "report"
    note = report[report.index("--note") + 1]
    assert f"PROFILE={profile}" in note and "Training took" in note
    if profile == "quick":
        assert "smoke test" in note and all("--limit-train-batches" in a for a in trains)
    else:  # the activation sweep and the best models train on all 55,000 images
        assert not any("--limit-train-batches" in a for a in trains)
        for args in (trains[0], trains[2], trains[3], trains[4]):
            assert not any(a.startswith("data.train_subset") for a in args)

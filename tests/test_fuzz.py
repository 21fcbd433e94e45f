"""Property-based tests: byte-mutated weights and mutated or random ``config.json`` files,
loaded the way a downloaded model is loaded, end in a model or a :class:`ZooError`, never in
another exception, a crash or a hang. (Recipe fuzzing lives in tests/test_recipe.py.)"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zoo
from zoo.errors import ZooError
from zoo.weights.files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_model_dir,
    load_state_dict,
    save_model_files,
)

TINY = {"hidden_sizes": [4], "img_size": 2, "in_chans": 1, "num_classes": 3}
FAST = settings(
    max_examples=60,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the default run is the same every time; the slow run explores
    database=None,
)
SLOW = settings(FAST, max_examples=1500, derandomize=False)


@pytest.fixture(scope="module")
def original() -> Iterator[Path]:
    """A valid model directory (tiny MLP) that every example copies and damages."""
    root = Path(tempfile.mkdtemp(prefix="zoo-fuzz-"))
    torch.manual_seed(0)
    model = zoo.create("mlp_relu", **TINY)
    save_model_files(model, root, input_size=[1, 2, 2], mean=[0.5], std=[0.25])
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: overwrite, insert, delete, or truncate."""
    buf = bytearray(data)
    for kind, pos, byte in edits:
        at = pos % (len(buf) + 1)
        if kind == "set" and buf:
            buf[at % len(buf)] = byte
        elif kind == "insert":
            buf.insert(at, byte)
        elif kind == "delete" and buf:
            del buf[at % len(buf)]
        elif kind == "truncate":
            del buf[at:]
    return bytes(buf)


EDITS = st.lists(
    st.tuples(
        st.sampled_from(["set", "set", "set", "insert", "delete", "truncate"]),
        st.integers(0, 4096),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=8,
)
# Most edits should land in the 8-byte length prefix and the JSON header, where the parser
# works; flipping tensor bytes only changes numbers.
HEADER_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["set", "insert", "delete"]), st.integers(0, 300), st.integers(0, 255)
    ),
    min_size=1,
    max_size=4,
)


def _load_dir(directory: Path) -> None:
    try:
        model = load_model_dir(directory)
    except ZooError:
        return
    # Success is allowed (e.g. a changed float): then the weights really are loaded.
    assert isinstance(model, torch.nn.Module)


def _check_weights(original: Path, tmp: Path, edits: list[tuple[str, int, int]]) -> None:
    directory = tmp / "m"
    shutil.copytree(original, directory, dirs_exist_ok=True)
    path = directory / WEIGHTS_NAME
    path.write_bytes(_mutate((original / WEIGHTS_NAME).read_bytes(), edits))
    try:
        state = load_state_dict(path)
    except ZooError:
        pass
    else:
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    _load_dir(directory)


@FAST
@given(edits=st.one_of(EDITS, HEADER_EDITS))
def test_mutated_safetensors(original: Path, tmp_path: Path, edits: Any) -> None:
    _check_weights(original, tmp_path, edits)


@pytest.mark.slow
@SLOW
@given(edits=st.one_of(EDITS, HEADER_EDITS))
def test_mutated_safetensors_long(original: Path, tmp_path: Path, edits: Any) -> None:
    _check_weights(original, tmp_path, edits)


def _check_config(original: Path, tmp: Path, text: bytes) -> None:
    directory = tmp / "m"
    shutil.copytree(original, directory, dirs_exist_ok=True)
    (directory / CONFIG_NAME).write_bytes(text)
    _load_dir(directory)


@FAST
@given(edits=EDITS)
def test_mutated_config_bytes(original: Path, tmp_path: Path, edits: Any) -> None:
    text = _mutate((original / CONFIG_NAME).read_bytes(), edits)
    _check_config(original, tmp_path, text)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
ARG_NAMES = st.sampled_from(
    ["hidden_sizes", "img_size", "in_chans", "num_classes", "activation", "drop_rate", "bogus"]
)
ARCHITECTURES = st.sampled_from(
    ["mlp_relu", "mlp_tanh", "resnet18", "mlpmixer_p4", "timm/resnet18", "nope", "../x", ""]
) | st.text(max_size=30)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """config.json-shaped objects with hostile values in the places the loader reads."""
    config: dict[str, Any] = {}
    config["architecture"] = draw(ARCHITECTURES | JSON_VALUES)
    args = dict(TINY)
    for name in draw(st.lists(ARG_NAMES, max_size=3)):
        args[name] = draw(
            JSON_VALUES | st.integers(-5, 10**12) | st.lists(st.integers(-5, 10**12), max_size=3)
        )
    config["model_args"] = draw(st.just(args) | JSON_VALUES)
    for key in draw(st.lists(st.sampled_from(["zoo_architecture", "distribution"]), max_size=2)):
        config[key] = draw(ARCHITECTURES | JSON_VALUES)
    return config


@FAST
@given(config=configs())
def test_random_config(original: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    _check_config(original, tmp_path, json.dumps(config).encode())


@pytest.mark.slow
@SLOW
@given(config=configs())
def test_random_config_long(original: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    _check_config(original, tmp_path, json.dumps(config).encode())


@pytest.mark.parametrize(
    "args",
    [
        {"img_size": 10**6},  # a 10^12-parameter first layer: must be refused, not allocated
        {"hidden_sizes": [10**9, 10**9]},
        {"num_classes": 2**40},
    ],
)
def test_hostile_config_cannot_allocate_a_huge_model(
    original: Path, tmp_path: Path, args: dict[str, Any]
) -> None:
    config = json.loads((original / CONFIG_NAME).read_text())
    config["model_args"].update(args)
    with pytest.raises(ZooError, match="do not fit"):
        _check_config_raises(original, tmp_path, config)


def _check_config_raises(original: Path, tmp: Path, config: dict[str, Any]) -> None:
    directory = tmp / "m"
    shutil.copytree(original, directory, dirs_exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config))
    load_model_dir(directory)


# -- checkpoints (a run directory copied from elsewhere is untrusted too) -------------------


@pytest.fixture(scope="module")
def checkpoint_dir() -> Iterator[Path]:
    from zoo.training.checkpoint import save_checkpoint

    root = Path(tempfile.mkdtemp(prefix="zoo-fuzz-ck-"))
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    save_checkpoint(root, {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, 1)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _check_checkpoint(original: Path, tmp: Path, name: str, edits: Any) -> None:
    from zoo.training.checkpoint import JSON_NAME, load_checkpoint

    directory = tmp / "ck"
    shutil.copytree(original, directory, dirs_exist_ok=True)
    target = directory / JSON_NAME if name == "json" else next(directory.glob("epoch-*"))
    target.write_bytes(_mutate(target.read_bytes(), edits))
    try:
        state, epoch = load_checkpoint(directory)
    except ZooError:
        return
    assert isinstance(epoch, int) and isinstance(state, dict)


@FAST
@given(name=st.sampled_from(["json", "tensors"]), edits=EDITS)
def test_mutated_checkpoint(checkpoint_dir: Path, tmp_path: Path, name: str, edits: Any) -> None:
    _check_checkpoint(checkpoint_dir, tmp_path, name, edits)


@pytest.mark.parametrize(
    "change",
    [
        {"state": {"w": {"__tensor__": "no/such/tensor"}}},
        {"state": {"w": {"__items__": [[1]]}}},
        {"epoch": "three"},
        {"epoch": None},
        {"tensors_file": "../../etc/passwd"},
        {"tensors_file": 3},
    ],
    ids=["unknown-tensor", "bad-items", "epoch-text", "epoch-null", "escape", "name-int"],
)
def test_hostile_checkpoint_record(checkpoint_dir: Path, tmp_path: Path, change: dict) -> None:
    from zoo.training.checkpoint import JSON_NAME, load_checkpoint

    directory = tmp_path / "ck"
    shutil.copytree(checkpoint_dir, directory)
    record = json.loads((directory / JSON_NAME).read_text())
    record.update(change)
    (directory / JSON_NAME).write_text(json.dumps(record))
    with pytest.raises(ZooError):
        load_checkpoint(directory)


@FAST
@given(state=JSON_VALUES, epoch=JSON_VALUES)
def test_random_checkpoint_record(
    checkpoint_dir: Path, tmp_path: Path, state: Any, epoch: Any
) -> None:
    from zoo.training.checkpoint import JSON_NAME, load_checkpoint

    directory = tmp_path / "ck"
    shutil.copytree(checkpoint_dir, directory, dirs_exist_ok=True)
    record = json.loads((directory / JSON_NAME).read_text())
    record.update(state=state, epoch=epoch)
    (directory / JSON_NAME).write_text(json.dumps(record))
    with contextlib.suppress(ZooError):
        load_checkpoint(directory)

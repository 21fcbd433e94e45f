"""The guarantees SECURITY.md makes, checked: no unpickling of outside files, no plugin code
run when autoloading is disabled, plugin code locations shown."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo.training.checkpoint import load_checkpoint, save_checkpoint
from zoo.weights.files import load_model_dir, save_model_files

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "zoo").rglob("*.py")) + sorted((ROOT / "plugins").glob("*/zoo_*/**/*.py"))

# Calls that can execute code from data. Each allowed hit is (file, pattern) with the
# reason it is safe; anything else found is a test failure.
FORBIDDEN = {
    "pickle.load": r"\bpickle\.loads?\(",
    "Unpickler": r"\bUnpickler\b",
    "torch.load": r"\btorch\.load\(",
    "weights_only=False": r"weights_only\s*=\s*False",
    "eval(": r"(?<![\w.])eval\(",
    "exec(": r"(?<![\w.])exec\(",
    "unsafe yaml": r"yaml\.(load|unsafe_load|full_load)\(|\b(Unsafe|Full)?Loader\b(?!\w)",
    "marshal": r"\bmarshal\.loads?\(",
    "shell": r"shell\s*=\s*True|os\.system\(|os\.popen\(",
    "trust_remote_code": r"trust_remote_code\s*=\s*True",
}
ALLOWED = {
    # CIFAR-10 ships as pickles; zoo reads them with an unpickler whose find_class allows
    # only numpy's array reconstruction and the bytes encoder (see zoo/data/datasets.py).
    ("zoo/data/datasets.py", "Unpickler"),
}


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines of code, without comments and docstrings (they may mention the words)."""
    import tokenize

    keep: dict[int, str] = {}
    with path.open("rb") as f:
        tokens = list(tokenize.tokenize(f.readline))
    for tok in tokens:
        if tok.type in (tokenize.COMMENT, tokenize.STRING, tokenize.ENCODING, tokenize.NL):
            continue
        keep.setdefault(tok.start[0], "")
        keep[tok.start[0]] += tok.string + " "
    # tokens are spaced; rejoin the ones that form a call like "pickle . load ("
    return [(n, re.sub(r"\s*([.(=])\s*", r"\1", s)) for n, s in sorted(keep.items())]


def test_no_code_executing_loaders_in_zoo() -> None:
    assert SOURCES, "no sources found"
    hits = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        for lineno, line in _code_lines(path):
            for label, pattern in FORBIDDEN.items():
                if re.search(pattern, line) and (rel, label) not in ALLOWED:
                    hits.append(f"{rel}:{lineno}: {label}: {line.strip()}")
    assert hits == [], "\n".join(hits)


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle, torch\nx = pickle.load(f)\ny = torch.load(p, weights_only=False)\n"
    )
    found = {
        label
        for _, line in _code_lines(bad)
        for label, pattern in FORBIDDEN.items()
        if re.search(pattern, line)
    }
    assert {"pickle.load", "torch.load", "weights_only=False"} <= found


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    from zoo.data import datasets as data
    from zoo.errors import DataError

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Boom()}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        data._unpickle_cifar(path)
    assert not (tmp_path / "pwned").exists()


def test_loading_models_and_checkpoints_never_unpickles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = zoo.create("mlp_relu", hidden_sizes=[4], img_size=2, in_chans=1, num_classes=3)
    save_model_files(model, tmp_path / "m", input_size=[1, 2, 2], mean=[0.5], std=[0.25])
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, 1, 2, 2)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "ck", {"optimizer": optimizer.state_dict()}, epoch=1)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert isinstance(load_model_dir(tmp_path / "m"), torch.nn.Module)
    state, epoch = load_checkpoint(tmp_path / "ck")
    assert epoch == 1 and state["optimizer"]["state"][0]["exp_avg"].shape == (4, 4)


def test_checkpoints_hold_no_pickle(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, {"optimizer": optimizer.state_dict()}, epoch=3)
    for path in tmp_path.iterdir():
        blob = path.read_bytes()
        assert not blob.startswith(b"\x80"), f"{path.name} looks like a pickle"
        assert b"PK\x03\x04" not in blob[:4], f"{path.name} looks like a torch.save zip"
    json.loads((tmp_path / "last.json").read_text())


# -- plugins --------------------------------------------------------------------------------

MARKER_PLUGIN = """
from pathlib import Path
Path({marker!r}).write_text("imported")
"""


def _site_with_marker_plugin(tmp_path: Path) -> tuple[Path, Path]:
    site, marker = tmp_path / "site", tmp_path / "imported.txt"
    site.mkdir()
    (site / "zoo_marker_plugin.py").write_text(MARKER_PLUGIN.format(marker=str(marker)))
    info = site / "zoo_marker-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-marker\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[zoo.models]\nmarker = zoo_marker_plugin\n")
    return site, marker


def _zoo(args: list[str], site: Path, **env: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "zoo", *args],
        env={**os.environ, "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_disabled_autoload_runs_no_plugin_code_in_a_fresh_process(tmp_path: Path) -> None:
    site, marker = _site_with_marker_plugin(tmp_path)
    for command in (["models"], ["info", "mlp_relu"], ["plugins"]):
        done = _zoo(command, site, ZOO_DISABLE_PLUGIN_AUTOLOAD="1")
        assert done.returncode == 0, done.stderr
        assert not marker.exists(), f"`zoo {' '.join(command)}` imported the plugin"
    done = _zoo(["plugins", "--json"], site)  # the control: enabled, it is imported
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "imported"
    (entry,) = [p for p in json.loads(done.stdout) if p["distribution"] == "zoo-marker"]
    assert entry["location"] == str(site / "zoo_marker_plugin.py")


def test_zoo_plugins_shows_where_the_code_lives() -> None:
    from click.testing import CliRunner

    from zoo.cli import cli

    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    locations = [
        line.split("location:", 1)[1].strip()
        for line in io.StringIO(result.output)
        if "location:" in line
    ]
    assert locations and all(Path(p).is_file() for p in locations), result.output
    assert str(Path(zoo.models.mlp.__file__)) in locations

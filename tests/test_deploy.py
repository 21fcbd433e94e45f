"""zoo.weights.deploy: ONNX, TorchScript and ExportedProgram exports of a run, and
`zoo export --format`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from publish_helpers import make_run

from zoo.cli import cli
from zoo.errors import ExportError, RunError, WeightsError
from zoo.weights import deploy
from zoo.weights.deploy import FORMATS, ONNX_INSTALL, export_deployment

# A Mixer small enough to export in a second: 1x8x8 input, patch 4, one block.
ARGS = {"img_size": 8, "in_chans": 1, "num_classes": 3, "embed_dim": 16, "num_blocks": 1}
ATOL = 1e-4


@pytest.fixture(scope="module")
def mixer_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    return make_run(tmp_path_factory.mktemp("deploy") / "run", "mlpmixer_p4", ARGS)


def _x(batch: int, seed: int = 123) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _max_abs_diff(got: torch.Tensor, net: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = net(x)
    assert got.shape == want.shape
    return (got - want).abs().max().item()


def _onnx_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _no_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_onnx_with_dynamic_batch_matches_onnxruntime(mixer_run, tmp_path: Path) -> None:
    run, net = mixer_run
    result = export_deployment(run, "onnx", tmp_path / "onnx", dynamic_batch=True)
    assert sorted(p.name for p in result.path.iterdir()) == ["config.json", "model.onnx"]
    assert (result.path / "config.json").read_bytes() == (run / "config.json").read_bytes()
    assert result.file == tmp_path / "onnx" / "model.onnx" and result.input_size == (1, 8, 8)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(result.file), providers=["CPUExecutionProvider"])
    (dims,) = [i.shape for i in session.get_inputs()]
    assert isinstance(dims[0], str) and dims[1:] == [1, 8, 8]  # a named, dynamic batch
    for batch in (1, 5):  # 5: a size the export itself was not checked at
        x = _x(batch)
        assert _max_abs_diff(_onnx_outputs(result.file, x), net, x) <= ATOL
    assert set(result.max_abs_diff) == {1, 3}
    assert all(d <= ATOL for d in result.max_abs_diff.values())


@pytest.mark.slow
def test_onnx_without_dynamic_batch_takes_batch_1_only(mixer_run, tmp_path: Path) -> None:
    run, net = mixer_run
    result = export_deployment(run, "onnx", tmp_path / "onnx")
    x = _x(1)
    assert _max_abs_diff(_onnx_outputs(result.file, x), net, x) <= ATOL
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        _onnx_outputs(result.file, _x(2))
    assert list(result.max_abs_diff) == [1]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("dynamic", [False, True])
def test_torchscript_reloads_and_matches(mixer_run, tmp_path: Path, dynamic: bool) -> None:
    run, net = mixer_run
    result = export_deployment(run, "torchscript", tmp_path / "ts", dynamic_batch=dynamic)
    assert sorted(p.name for p in result.path.iterdir()) == ["config.json", "model.torchscript.pt"]
    loaded = torch.jit.load(str(result.file))
    for batch in (1, 4) if dynamic else (1,):
        x = _x(batch)
        assert _max_abs_diff(loaded(x), net, x) <= ATOL


@pytest.mark.parametrize("dynamic", [False, True])
def test_exported_program_reloads_and_matches(mixer_run, tmp_path: Path, dynamic: bool) -> None:
    run, net = mixer_run
    result = export_deployment(run, "exported-program", tmp_path / "ep", dynamic_batch=dynamic)
    assert sorted(p.name for p in result.path.iterdir()) == ["config.json", "model.pt2"]
    loaded = torch.export.load(str(result.file)).module()
    for batch in (1, 4) if dynamic else (1,):
        x = _x(batch)
        assert _max_abs_diff(loaded(x), net, x) <= ATOL
    if not dynamic:  # the batch dimension is fixed at 1
        with pytest.raises(Exception, match=r"(?i)expected|shape|size"):
            loaded(_x(2))


@pytest.mark.slow
def test_resnet_with_batchnorm_exports_in_eval_mode(tmp_path: Path) -> None:
    args = {"img_size": 16, "in_chans": 1, "num_classes": 3, "widths": [4, 8, 8, 8]}
    run, net = make_run(tmp_path / "run", "resnet18", args)
    for module in net.modules():  # running statistics that differ from a batch's own
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    from zoo.weights.files import save_model_files

    save_model_files(net, run, input_size=[1, 16, 16], mean=[0.5], std=[0.25])
    result = export_deployment(run, "exported-program", tmp_path / "ep", dynamic_batch=True)
    x = torch.randn(3, 1, 16, 16)
    assert _max_abs_diff(torch.export.load(str(result.file)).module()(x), net.eval(), x) <= ATOL


def test_default_out_is_next_to_the_run_and_force_replaces(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path / "run", "mlpmixer_p4", ARGS)
    result = export_deployment(run, "torchscript")
    assert result.path == run / "export-torchscript"
    with pytest.raises(RunError, match="already exists; pass --force"):
        export_deployment(run, "torchscript")
    (result.path / "stale.txt").write_text("from an earlier export")
    again = export_deployment(run, "torchscript", force=True)
    assert sorted(p.name for p in again.path.iterdir()) == ["config.json", "model.torchscript.pt"]
    assert _no_leftovers(run) == []


def test_a_mismatch_is_an_error_and_writes_nothing(
    mixer_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = mixer_run
    save, load = deploy._EXPORTERS["torchscript"]

    def off_by_a_little(file: Path):
        module = load(file)
        return lambda x: module(x) + 1e-3

    monkeypatch.setitem(deploy._EXPORTERS, "torchscript", (save, off_by_a_little))
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to 1\.00e-03 at batch 1"):
        export_deployment(run, "torchscript", tmp_path / "ts")
    assert list(tmp_path.iterdir()) == []  # no directory, no temporary left behind


def test_an_exporter_failure_is_one_error_naming_the_model(
    mixer_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = mixer_run

    def unsupported(*args: object) -> None:
        raise RuntimeError("Unsupported: data-dependent control flow\nlong details")

    monkeypatch.setitem(deploy._EXPORTERS, "exported-program", (unsupported, lambda f: f))
    with pytest.raises(ExportError) as info:
        export_deployment(run, "exported-program", tmp_path / "ep", dynamic_batch=True)
    assert str(info.value) == (
        "could not export mlpmixer_p4 to exported-program: RuntimeError: Unsupported: "
        "data-dependent control flow; try without --dynamic-batch"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_run_without_weights_is_refused_and_nothing_written(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path / "run", "mlpmixer_p4", ARGS)
    (run / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"model\.safetensors is missing"):
        export_deployment(run, "torchscript", tmp_path / "out")
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path) == []


def test_a_config_without_input_size_is_refused(tmp_path: Path) -> None:
    import json

    run, _ = make_run(tmp_path / "run", "mlpmixer_p4", ARGS)
    config = json.loads((run / "config.json").read_text())
    del config["input_size"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"has input_size None, expected \[channels, height"):
        export_deployment(run, "exported-program", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["safetensors", "tflite"])
def test_library_refuses_formats_it_does_not_make(mixer_run, tmp_path: Path, fmt: str) -> None:
    with pytest.raises(ExportError, match="choose one of onnx, torchscript, exported-program"):
        export_deployment(mixer_run[0], fmt, tmp_path / "out")


# -- the command line ---------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_cli_exports_torchscript(mixer_run, tmp_path: Path) -> None:
    run, _ = mixer_run
    out = tmp_path / "ts"
    result = _cli(
        "export", str(run), "--format", "torchscript", "--dynamic-batch", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "model.torchscript.pt: dynamic batch; max abs diff vs PyTorch" in result.stderr
    assert (out / "model.torchscript.pt").is_file()


def test_cli_default_format_is_the_safetensors_export(mixer_run, tmp_path: Path) -> None:
    result = _cli("export", str(mixer_run[0]), "--out", str(tmp_path / "e"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e" / "model.safetensors").is_file()


def test_cli_refuses_an_unknown_format(mixer_run, tmp_path: Path) -> None:
    result = _cli("export", str(mixer_run[0]), "--format", "tflite", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "Invalid value for '--format': 'tflite' is not one of" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_refuses_dynamic_batch_for_safetensors(mixer_run, tmp_path: Path) -> None:
    result = _cli("export", str(mixer_run[0]), "--dynamic-batch", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "--dynamic-batch needs --format onnx, torchscript or exported-program" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_refuses_an_existing_out_without_force(mixer_run, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _cli("export", str(mixer_run[0]), "--format", "torchscript", "--out", str(out))
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: {out} already exists; pass --force to replace it, or choose another --out\n"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_cli_names_the_pip_command_when_the_onnx_extra_is_missing(
    mixer_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    out = tmp_path / "onnx"
    result = _cli("export", str(mixer_run[0]), "--format", "onnx", "--out", str(out))
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert f"--format onnx needs {module}, which is not installed" in result.stderr
    assert result.stderr.rstrip().endswith(f"; install it with {ONNX_INSTALL}")
    assert list(tmp_path.iterdir()) == []


def test_cli_format_choices_are_the_library_formats() -> None:
    (option,) = [p for p in cli.commands["export"].params if p.name == "fmt"]
    assert tuple(option.type.choices) == FORMATS  # type: ignore[attr-defined]
    assert all(p.help for p in cli.commands["export"].params if p.param_type_name == "option")


@pytest.mark.integration
def test_importing_deploy_does_not_import_torch() -> None:
    code = "import sys, zoo.weights.deploy; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

"""The ``zoo`` command line through click's CliRunner (models, info, plugins, check)."""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

import zoo
from zoo.cli import cli
from zoo.errors import UnknownModelError
from zoo.models import plugins, registry


@pytest.fixture(autouse=True)
def _discover_first() -> None:
    # Snapshots taken by isolated_registry must include the built-ins (see test_plugins.py).
    plugins.load_plugins()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_models_lists_builtins() -> None:
    result = run("models", "mlp_*")
    assert result.exit_code == 0
    assert result.output.split() == ["mlp_relu", "mlp_sigmoid", "mlp_tanh"]


def test_models_json_with_params() -> None:
    result = run("models", "mlpmixer_p4", "--json", "--params")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    expected = sum(p.numel() for p in zoo.create("mlpmixer_p4").parameters())
    assert rows == [{"name": "mlpmixer_p4", "params": expected}]


def test_models_params_table() -> None:
    result = run("models", "resnet18", "--params")
    assert result.exit_code == 0 and "resnet18" in result.output
    assert f"{sum(p.numel() for p in zoo.create('resnet18').parameters()):,}" in result.output


def test_models_without_match_says_so() -> None:
    result = run("models", "nothing_*")
    assert result.exit_code == 0 and "no models match" in result.output


def test_info_shows_metadata_and_params() -> None:
    result = run("info", "mlp_relu")
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["name"] == "mlp_relu" and info["distribution"] == "zoo-classifiers"
    assert info["default_args"]["hidden_sizes"] == [1024, 512, 64, 64]
    assert info["params"] > 0


def test_plugins_lists_builtin_distribution() -> None:
    result = run("plugins")
    assert result.exit_code == 0
    assert "zoo-classifiers" in result.output and "(built-in)" in result.output
    assert "mlp_relu" in result.output
    rows = json.loads(run("plugins", "--json").output)
    assert {"mixer", "mlp", "resnet"} <= {r["name"] for r in rows if r["builtin"]}


def test_errors_are_one_line_and_exit_2() -> None:
    result = run("info", "resnet81")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: unknown model")
    assert "resnet18" in result.output and "Traceback" not in result.output


def test_debug_shows_the_traceback() -> None:
    result = run("--debug", "info", "resnet81")
    assert isinstance(result.exception, UnknownModelError)
    assert result.exc_info is not None
    assert "Traceback" in "".join(traceback.format_exception(*result.exc_info))


def test_ctrl_c_outside_training_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while a command loads (torch importing, a dataset reading) ends like Ctrl-C in
    training: one line and 128 + SIGINT, not click's "Aborted!" and exit 1."""
    from zoo.weights import factory

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(factory, "list_models", interrupted)
    result = run("models")
    assert result.exit_code == 130, result.output
    assert result.output == "error: interrupted (Ctrl-C)\n"


def test_check_passes_a_builtin() -> None:
    result = run("check", "mlp_relu")
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 16 and all(line.startswith("PASS mlp_relu ") for line in lines)


def test_check_json() -> None:
    result = CliRunner().invoke(cli, ["check", "mlp_tanh", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout.strip())
    assert report["model"] == "mlp_tanh" and report["ok"] is True
    assert len(report["results"]) == 16  # zoo.testing.CHECKS


def test_check_unknown_name_is_an_error() -> None:
    result = run("check", "mlp_rellu")
    assert result.exit_code == 2 and "mlp_relu" in result.output
    result = run("check", "nothing_*")
    assert result.exit_code == 2 and "no models match" in result.output


class _NaNGrad(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 8) -> None:
        super().__init__()
        self.head = nn.Linear(in_chans * img_size * img_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.head.weight
        return self.head(x.flatten(1)) + 0 * (w - w).sqrt().sum()  # d sqrt(0) = inf -> NaN


def test_check_exits_1_when_a_check_fails(isolated_registry: None) -> None:
    def cli_nan_model(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return registry.build_model(_NaNGrad, "cli_nan_model", pretrained, {}, kwargs)

    registry.register_model(cli_nan_model)
    result = run("check", "cli_nan_*")
    assert result.exit_code == 1
    assert "FAIL cli_nan_model backward: non-finite gradient for head.weight" in result.output
    assert "PASS cli_nan_model builds" in result.output


@pytest.mark.integration
def test_cli_import_and_help_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import zoo.cli\n"
        "assert 'torch' not in sys.modules, 'import zoo.cli imported torch'\n"
        "try:\n"
        "    zoo.cli.cli(['--help'], prog_name='zoo')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'zoo --help imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "zoo models" in done.stdout and "check" in done.stdout

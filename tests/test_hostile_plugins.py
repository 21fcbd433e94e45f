"""Hostile catalogue, class 5 (issue 15): plugins that misbehave at import. ``SystemExit``
and any other exception (KeyboardInterrupt aside) become that plugin's recorded failure; what
a plugin prints stays out of stdout; an import slower than ``ZOO_PLUGIN_TIMEOUT`` is named on
stderr; a model's source distribution is the one that owns its module, never a plugin that
merely imported it. Plugins are real throwaway distributions on sys.path (test_plugins.py)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_helpers import assert_refused, invoke, tiny_recipe, write_recipe
from test_plugins import FakeSite, by_distribution, rescan

import zoo
from zoo.models import plugins, registry, scripts


@pytest.fixture(autouse=True)
def _discover_first() -> None:
    plugins.load_plugins()  # before isolated_registry's snapshot (see test_plugins.py)


@pytest.fixture
def site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_registry: None
) -> Iterator[FakeSite]:
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    fake = FakeSite(root)
    yield fake
    for module in fake.modules:
        sys.modules.pop(module, None)
    plugins._reset()


@pytest.mark.parametrize("code", ["import sys\nsys.exit(0)\n", "raise SystemExit(3)\n"])
def test_sys_exit_at_import_is_the_plugins_failure(site: FakeSite, code: str) -> None:
    site.add("zoo-fake-exit", "1.0", source=code)
    site.add("zoo-fake-fine", "1.0", model="fakefine_exit")
    infos = rescan()
    failed = by_distribution(infos, "zoo-fake-exit")
    assert failed.error is not None and failed.error.startswith("SystemExit")
    assert by_distribution(infos, "zoo-fake-fine").models == ["fakefine_exit"]


def test_train_still_trains_when_a_plugin_exits(
    site: FakeSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.add("zoo-fake-exit", "1.0", source="import sys\nsys.exit(0)\n")
    rescan()
    plugins._reset()
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(epochs=1))
    result = invoke("train", str(path), "--out", "run")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "summary.json").is_file()


def test_any_base_exception_is_recorded(site: FakeSite) -> None:
    site.add("zoo-fake-base", "1.0", source="class Odd(BaseException):\n    pass\nraise Odd('x')\n")
    info = by_distribution(rescan(), "zoo-fake-base")
    assert info.error is not None and info.error.startswith("Odd: x")


def test_keyboard_interrupt_at_import_still_stops_zoo(site: FakeSite) -> None:
    site.add("zoo-fake-ctrl-c", "1.0", source="raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        rescan()


def test_plugin_prints_do_not_corrupt_machine_readable_output(
    site: FakeSite, caplog: pytest.LogCaptureFixture
) -> None:
    code = "print('HELLO FROM PLUGIN')\n" + _good("fakeprint_tiny")
    site.add("zoo-fake-print", "1.0", source=code)
    plugins._reset()
    with caplog.at_level(logging.INFO, logger="zoo.models.plugins"):
        result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in json.loads(result.stdout)]
    assert "fakeprint_tiny" in names
    assert "HELLO FROM PLUGIN" in caplog.text
    plugins._reset()
    listed = invoke("plugins", "--json")
    assert listed.exit_code == 0
    json.loads(listed.stdout)


def test_slow_plugin_import_is_named_by_the_watchdog(
    site: FakeSite, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(plugins.TIMEOUT_ENV, "0.2")
    site.add("zoo-fake-slow", "1.0", source="import time\ntime.sleep(1.0)\n")
    with caplog.at_level(logging.WARNING, logger="zoo.models.plugins"):
        infos = rescan()
    assert by_distribution(infos, "zoo-fake-slow").error is None
    assert "zoo-fake-slow" in caplog.text and "still importing" in caplog.text
    assert plugins.DISABLE_ENV in caplog.text


def test_fast_plugins_do_not_trigger_the_watchdog(
    site: FakeSite, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(plugins.TIMEOUT_ENV, "5")
    site.add("zoo-fake-quick", "1.0", model="fakequick_tiny")
    with caplog.at_level(logging.WARNING, logger="zoo.models.plugins"):
        rescan()
    assert "still importing" not in caplog.text


@pytest.mark.parametrize(
    "value, expected",
    [("", 30.0), ("abc", 30.0), ("-1", 30.0), ("2", 2.0), ("86400", 86400.0)]
    # past what threading.Timer can wait (1e10 overflowed it in every plugin's watchdog)
    + [(bad, 30.0) for bad in ("nan", "inf", "1e10", "1e400")],
)
def test_plugin_timeout_setting(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: float
) -> None:
    monkeypatch.setenv(plugins.TIMEOUT_ENV, value)
    assert plugins.plugin_timeout() == expected


def test_a_plugin_importing_builtins_does_not_become_their_source(
    site: FakeSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make zoo.models.mlp import afresh inside the plugin, as when the plugin loads first.
    original = sys.modules["zoo.models.mlp"]
    for name in [n for n in registry._REGISTRY if n.startswith("mlp_")]:
        del registry._REGISTRY[name]
    monkeypatch.delitem(sys.modules, "zoo.models.mlp")
    try:
        code = "import zoo.models.mlp\n" + _good("fakehijack_tiny")
        site.add("zoo-fake-hijack", "1.0", source=code)
        info = by_distribution(rescan(), "zoo-fake-hijack")
        assert info.models == ["fakehijack_tiny"]
        entry = registry.get_entry("mlp_relu")
        assert entry.distribution == registry.BUILTIN_DISTRIBUTION
        assert zoo.create("mlp_relu").zoo_cfg["distribution"] == registry.BUILTIN_DISTRIBUTION
        assert zoo.create("fakehijack_tiny").zoo_cfg["distribution"] == "zoo-fake-hijack"
    finally:
        sys.modules["zoo.models.mlp"] = original


def _good(model: str) -> str:
    from test_plugins import GOOD_MODULE

    return GOOD_MODULE.format(model=model)


# -- --import FILE_OR_MODULE: the same isolation as an installed plugin ---------------------


@pytest.mark.parametrize(
    "code, shown",
    [
        ("import sys\nsys.exit(0)\n", "SystemExit: 0"),
        ("raise SystemExit('bye')\n", "SystemExit: bye"),
        ("class Odd(BaseException):\n    pass\nraise Odd('x')\n", "Odd: x"),
    ],
)
def test_an_import_that_exits_fails_the_command(tmp_path: Path, code: str, shown: str) -> None:
    script = tmp_path / "exits.py"
    script.write_text(code)
    result = invoke("models", "--import", str(script))
    assert_refused(result, f"--import {script}", shown)


def test_an_import_that_exits_does_not_fake_a_prediction(tmp_path: Path) -> None:
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(0)\n")
    image = tmp_path / "x.png"
    image.write_bytes(b"not read")
    result = invoke("predict", "mlp_relu", str(image), "--import", str(script))
    assert_refused(result, "SystemExit: 0")


def test_a_module_import_that_exits_fails_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "zoo_exiting_module.py").write_text("raise SystemExit(2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zoo_exiting_module", raising=False)
    result = invoke("models", "--import", "zoo_exiting_module")
    assert_refused(result, "--import zoo_exiting_module", "SystemExit: 2")


def test_ctrl_c_in_an_import_still_stops_zoo(tmp_path: Path) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        scripts.import_source(str(script))
    assert not any(name.startswith("zoo_scripts.ctrl_c") for name in sys.modules)


def test_import_prints_do_not_corrupt_machine_readable_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, isolated_registry: None
) -> None:
    script = tmp_path / "noisy.py"
    script.write_text("print('HELLO FROM SCRIPT')\n" + _good("fakenoisy_script"))
    with caplog.at_level(logging.INFO, logger="zoo.models.plugins"):
        result = invoke("models", "--json", "--import", str(script))
    assert result.exit_code == 0, result.output
    assert "fakenoisy_script" in [row["name"] for row in json.loads(result.stdout)]
    assert "HELLO FROM SCRIPT" in caplog.text and "noisy.py" in caplog.text


def test_slow_import_is_named_by_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(plugins.TIMEOUT_ENV, "0.2")
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(1.0)\n")
    with caplog.at_level(logging.WARNING, logger="zoo.models.plugins"):
        scripts.import_source(str(script))
    assert "--import" in caplog.text and "slow.py" in caplog.text
    assert "still importing" in caplog.text


def test_a_builder_that_exits_fails_the_command(tmp_path: Path, isolated_registry: None) -> None:
    """The guard covers building too: a builder calling sys.exit(0) made `zoo train`, `zoo
    bench` and `zoo info` exit 0 having done nothing."""
    script = tmp_path / "exitbuild.py"
    script.write_text(
        "import sys, zoo\n@zoo.register_model\ndef exit_model(pretrained=False, **kw):\n"
        "    sys.exit(0)\n"
    )
    for command in (["info", "exit_model"], ["bench", "exit_model", "-b", "2"]):
        result = invoke(*command, "--import", str(script))
        assert_refused(result, "exit_model", "SystemExit: 0")
    recipe = tiny_recipe(epochs=1)
    recipe["model"] = {"name": "exit_model"}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = invoke("train", str(path), "--out", str(tmp_path / "run"), "--import", str(script))
    assert_refused(result, "exit_model", "SystemExit: 0")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_dry_run_lists_a_recipes_imports_without_running_them(
    tmp_path: Path, isolated_registry: None
) -> None:
    """A recipe's imports are code; `--dry-run` ("read it before running it") must not run
    them. It resolves them (a missing file is still refused) and lists them."""
    marker = tmp_path / "PWNED"
    script = tmp_path / "recipes" / "models.py"
    script.parent.mkdir()
    script.write_text(
        f"open({str(marker)!r}, 'w').close()\nimport zoo\n@zoo.register_model\n"
        "def dry_script_mlp(pretrained=False, **kw):\n    return zoo.create('mlp_relu', **kw)\n"
    )
    recipe = tiny_recipe(epochs=1, imports=["models.py"])
    recipe["model"] = {"name": "dry_script_mlp", "args": {"hidden_sizes": [8]}}
    path = write_recipe(tmp_path / "recipes" / "r.yaml", recipe)
    result = invoke("train", str(path), "--dry-run", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert f"not run by --dry-run): {script}" in result.output
    assert "parameters not counted" in result.output
    missing = write_recipe(tmp_path / "recipes" / "m.yaml", tiny_recipe(imports=["gone.py"]))
    assert_refused(invoke("train", str(missing), "--dry-run"), "gone.py", "no such file")
    assert not (tmp_path / "run").exists()


_MISBEHAVING = """
import os, sys, torch, zoo
calls = {{"n": 0}}


class Bad(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 3)
        self.num_classes = 3

    def forward(self, x):
        calls["n"] += 1
        if calls["n"] >= 3:
            {action}
        return self.fc(x.flatten(1))


@zoo.register_model
def {name}(pretrained=False, **kw):
    return Bad()
"""


@pytest.mark.parametrize(
    "action, shown",
    [("sys.exit(0)", "SystemExit"), ("raise GeneratorExit", "GeneratorExit"),
     ("raise ValueError('boom')", "ValueError: boom")],
)  # fmt: skip
def test_a_forward_that_exits_or_raises_fails_train_and_bench_in_one_line(
    tmp_path: Path, isolated_registry: None, action: str, shown: str
) -> None:
    """A model's forward calling sys.exit(0) made train, eval, predict and bench exit 0
    having done nothing; GeneratorExit or an error gave a traceback."""
    name = "misbehaving_" + str(abs(hash(action)) % 10_000)
    script = tmp_path / "bad.py"
    script.write_text(_MISBEHAVING.format(action=action, name=name))
    recipe = tiny_recipe(epochs=1)
    recipe["model"] = {"name": name}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    run = tmp_path / "run"
    result = invoke("train", str(path), "--out", str(run), "--import", str(script))
    assert_refused(result, name, shown)
    assert not run.exists()  # nothing was checkpointed: nothing is kept
    bench = invoke("bench", name, "-b", "2", "--img-size", "4", "--in-chans", "1",
                   "--min-time", "0.01", "--import", str(script))  # fmt: skip
    assert_refused(bench, name, shown)

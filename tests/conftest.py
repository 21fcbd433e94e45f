"""Shared fixtures. Tests run on CPU with few threads so a 2-core machine stays responsive."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Never touch the user's real caches or the network from tests.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# `precision: auto` (the recipe default) would time bf16 against fp32 in every test's fresh
# ZOO_HOME, and pick bf16 on CPUs with native bf16: tests train in fp32 on every machine.
# Tests of auto itself unset it (tests/test_devices.py, tests/test_precision.py).
os.environ["ZOO_PRECISION"] = "fp32"


@pytest.fixture(autouse=True)
def _zoo_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty ZOO_HOME (local weights store)."""
    home = tmp_path_factory.mktemp("zoo_home")
    monkeypatch.setenv("ZOO_HOME", str(home))
    return home


@pytest.fixture
def isolated_registry() -> Iterator[None]:
    """Let a test register models or rescan plugins without leaking into other tests."""
    from zoo.models import plugins, registry

    plugins.load_plugins()  # snapshot after discovery, or the built-ins would be lost
    saved = {k: list(v) for k, v in registry._REGISTRY.items()}
    saved_ns = dict(registry._NAMESPACES)
    saved_plugins = plugins._plugins
    try:
        yield
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
        registry._NAMESPACES.clear()
        registry._NAMESPACES.update(saved_ns)
        plugins._plugins = saved_plugins

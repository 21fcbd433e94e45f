"""zoo.env: the environment recorded next to every measurement."""

from __future__ import annotations

from zoo.env import describe, environment


def test_environment_names_the_cpu_and_describe_reads_as_one_sentence() -> None:
    env = environment("cpu")
    assert env["device"] == "cpu" and "logical CPUs" in env["device_name"]
    text = describe(env)
    assert text.startswith(f"{env['device_name']}, torch {env['torch']}, {env['threads']} threads")
    assert text.endswith(".") and "load average" not in text
    loaded = describe(env, {"before": [0.5, 0.4, 0.3], "after": [1.0, 0.6, 0.4]})
    assert loaded.endswith("; load average before/after [0.5, 0.4, 0.3] / [1.0, 0.6, 0.4].")

"""zoo.analysis.bench: record schema, sanity of every number, output formats and the CLI."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

import zoo
from zoo.analysis import peak
from zoo.analysis.bench import BenchError, BenchRecord, format_records, measure, resolve_models
from zoo.cli import cli

FAST = {"min_time": 0.01, "min_reps": 2, "warmup": 1, "threads": 1}
ENV_KEYS = {"torch", "python", "device", "device_name", "threads", "zoo_version", "git_sha"}
ENV_KEYS |= {"peak_flops_per_s", "peak_probe"}
PEAK = 1e9  # FLOP/s of the fake matmul clock below


@pytest.fixture(autouse=True)
def _fake_peak_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peak probe (tests/test_peak.py) times nothing here: products take 2n^3 / PEAK s."""

    def fake(a, b, reps: int) -> list[float]:
        return [2 * a.shape[0] ** 3 / PEAK] * reps

    monkeypatch.setattr(peak, "_time_matmul", fake)
    monkeypatch.setattr(peak, "_MEMO", {})


def tiny_mlp() -> torch.nn.Module:  # noqa: F821 - torch is imported lazily by zoo
    return zoo.create("mlp_relu", hidden_sizes=[16], img_size=8, in_chans=1)


def test_record_schema_and_sanity() -> None:
    model = tiny_mlp()
    rec = measure(model, 4, **FAST)
    assert isinstance(rec, BenchRecord)
    assert rec.model == "mlp_relu" and rec.mode == "inference" and rec.device == "cpu"
    assert rec.input_size == (1, 8, 8)
    assert rec.params == sum(p.numel() for p in model.parameters())
    assert rec.images_per_s > 0 and rec.reps >= 2
    assert 0 < rec.latency_ms_min <= rec.latency_ms_p50 <= rec.latency_ms_p90 <= rec.latency_ms_max
    assert rec.latency_ms_iqr >= 0
    assert rec.images_per_s == pytest.approx(4 / (rec.latency_ms_p50 / 1000))
    assert rec.peak_mem_kind != "unavailable" and rec.peak_mem_bytes is not None
    assert set(rec.env) >= ENV_KEYS and rec.env["threads"] == 1


def test_flops_match_the_mlp_and_are_per_image() -> None:
    # Two Linear layers 64 -> 16 -> 10: 2 FLOPs per multiply-add.
    expected = 2 * (64 * 16 + 16 * 10)
    for batch in (1, 3, 8):
        assert measure(tiny_mlp(), batch, **FAST).flops_per_image == expected


def test_mixer_flops_proportional_to_batch_and_training_costs_more() -> None:
    model = zoo.create("mlpmixer_p4", embed_dim=16, num_blocks=1, img_size=8)
    one = measure(model, 1, **FAST)
    four = measure(model, 4, **FAST)
    assert one.flops_per_image > 0
    assert four.flops_per_image == one.flops_per_image
    train = measure(model, 4, mode="train", **FAST)
    assert train.mode == "train" and train.images_per_s > 0
    # backward costs about twice the forward
    assert 2 * four.flops_per_image < train.flops_per_image < 4 * four.flops_per_image


def test_achieved_flops_peak_and_mfu_are_consistent() -> None:
    model = zoo.create("mlpmixer_p4", embed_dim=16, num_blocks=1, img_size=8)
    inference = measure(model, 4, **FAST)
    train = measure(model, 4, mode="train", **FAST)
    for rec in (inference, train):
        assert rec.peak_flops_per_s == pytest.approx(PEAK)
        assert rec.mfu == pytest.approx(rec.achieved_flops_per_s / rec.peak_flops_per_s)
        assert rec.env["peak_flops_per_s"] == rec.peak_flops_per_s
        key = rec.env["peak_probe"]["key"]
        assert (key["dtype"], key["threads"], key["device_type"]) == ("float32", 1, "cpu")
    assert inference.achieved_flops_per_s == pytest.approx(
        inference.flops_per_image * inference.images_per_s
    )
    # a training step is worth 3x the forward FLOPs, whatever the counter saw in backward
    assert train.achieved_flops_per_s == pytest.approx(
        3 * inference.flops_per_image * train.images_per_s
    )
    # bf16 is compared with a bf16 peak
    bf16 = measure(model, 4, precision="bf16", **FAST)
    assert bf16.env["peak_probe"]["key"]["dtype"] == "bfloat16"
    assert bf16.mfu == pytest.approx(bf16.achieved_flops_per_s / bf16.peak_flops_per_s)


def test_cpu_peak_memory_counts_weights_gradients_adam_state_and_activations() -> None:
    import torch

    model = zoo.create("mlp_relu", hidden_sizes=[256], img_size=16, in_chans=1)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    batch = 64
    activation = batch * 256 * 4  # the hidden layer's output, fp32
    inference = measure(model, batch, **FAST)
    train = measure(model, batch, mode="train", **FAST)
    assert inference.peak_mem_kind == train.peak_mem_kind == "live_tensor_peak"
    assert inference.peak_mem_bytes is not None and train.peak_mem_bytes is not None
    # inference: weights + input + activations; no gradients
    assert weights + activation <= inference.peak_mem_bytes < 2 * weights
    # training: weights, their gradients and Adam's two moments (4x) plus activations
    assert train.peak_mem_bytes >= 4 * weights + activation
    bigger = measure(model, 4 * batch, **FAST)
    assert bigger.peak_mem_bytes is not None
    assert bigger.peak_mem_bytes - inference.peak_mem_bytes >= 3 * activation  # scales with batch
    assert torch.is_grad_enabled()  # the tracker leaves no mode behind


def test_options_are_recorded() -> None:
    model = zoo.create("resnet18", widths=[4, 8, 8, 8], img_size=8)
    rec = measure(model, 2, precision="bf16", channels_last=True, mode="train", **FAST)
    assert (rec.model, rec.precision, rec.channels_last, rec.compile) == (
        "resnet18",
        "bf16",
        True,
        None,
    )
    assert rec.input_size == (3, 8, 8)
    assert rec.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"mode": "eval"}, "unknown mode 'eval'"),
        ({"batch_size": 0}, "batch size must be between 1 and"),
        ({"threads": 0}, "threads must be at least 1"),
    ],
)
def test_bad_settings_raise(kwargs: dict, message: str) -> None:
    args = {"batch_size": 2, **FAST, **kwargs}
    with pytest.raises(BenchError, match=message):
        measure(tiny_mlp(), **args)


def test_patterns_expand_and_unknown_patterns_raise() -> None:
    assert resolve_models(["mlpmixer_p*"]) == [  # numbers in natural order
        "mlpmixer_p2",
        "mlpmixer_p4",
        "mlpmixer_p8",
        "mlpmixer_p16",
    ]
    assert resolve_models(["resnet18", "resnet18"]) == ["resnet18"]
    with pytest.raises(BenchError, match=r"no model matches 'nothing_\*'"):
        resolve_models(["nothing_*"])


def test_formats() -> None:
    records = [measure(tiny_mlp(), 2, mode=m, **FAST) for m in ("inference", "train")]
    lines = format_records(records, "json").splitlines()
    assert [json.loads(line)["mode"] for line in lines] == ["inference", "train"]
    assert all(set(json.loads(line)["env"]) >= ENV_KEYS for line in lines)
    for line, rec in zip(lines, records, strict=True):
        data = json.loads(line)
        assert data["mfu"] == pytest.approx(rec.mfu) and data["peak_flops_per_s"] > 0
        assert data["achieved_flops_per_s"] == pytest.approx(rec.achieved_flops_per_s)
    rows = list(csv.DictReader(io.StringIO(format_records(records, "csv"))))
    assert len(rows) == 2 and rows[0]["env_torch"] and float(rows[1]["images_per_s"]) > 0
    assert float(rows[1]["mfu"]) == pytest.approx(records[1].mfu)
    assert json.loads(rows[0]["env_peak_probe"])["key"]["dtype"] == "float32"
    md = format_records(records, "md").splitlines()
    assert md[0].startswith("| model |") and md[1].startswith("|---|") and len(md) == 6
    assert md[0].endswith("| GFLOP/s | MFU % |")
    mfu_cell = md[3].split("|")[-2].strip()
    assert mfu_cell == f"{100 * records[1].mfu:.1f}"
    table = format_records(records, "table").splitlines()
    assert "img/s" in table[0] and "torch" in table[-1] and len(table) == 4
    assert "MFU %" in table[0] and "fp32 1.0 GFLOP/s" in table[-1]
    with pytest.raises(BenchError, match="unknown format"):
        format_records(records, "xml")


def test_cli_bench_json(tmp_path) -> None:
    out = tmp_path / "bench.jsonl"
    args = ["bench", "mlp_relu", "-b", "2", "--img-size", "8", "--in-chans", "1"]
    args += ["--min-time", "0.01", "--threads", "1", "--format", "json", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["model"], r["mode"], r["batch_size"]) for r in records] == [
        ("mlp_relu", "inference", 2),
        ("mlp_relu", "train", 2),
    ]
    assert all(r["mfu"] == pytest.approx(r["achieved_flops_per_s"] / PEAK) for r in records)


def _script(name: str) -> ModuleType:
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:  # as `python benchmarks/NAME.py` has it: for _results
        sys.path.append(str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table1_and_vs_timm_carry_mfu() -> None:
    table1 = _script("table1")
    args = argparse.Namespace(
        device="cpu", min_time=0.01, threads=1, batch_size=4, eval_batch_size=4, note=""
    )
    model = zoo.create("mlpmixer_p4", embed_dim=16, num_blocks=1, img_size=8)
    row = {"model": "mlpmixer_p4", **table1._pair(model, args)}
    md = table1._markdown([row], args, 1.0)
    assert "| train GFLOP/s | MFU inf / train |" in md
    assert f"| {row['inference'].mfu:.1%} / {row['train'].mfu:.1%} |" in md
    assert "fp32 1.0 GFLOP/s" in md  # the peak it was compared with
    train = row["train"].to_dict()  # what table1.json stores
    assert train["mfu"] == pytest.approx(train["achieved_flops_per_s"] / PEAK)
    result = _script("vs_timm").throughput(tiny_mlp(), tiny_mlp(), 4, 1, 0.01, 1)
    for mode in ("inference", "train"):
        out = result[mode]
        assert out["peak_flops_per_s"] == pytest.approx(PEAK)
        for who in ("zoo", "ref"):
            assert out[f"{who}_mfu"] == pytest.approx(out[f"{who}_achieved_flops_per_s"] / PEAK)


def test_cpu_dropout_times_the_same_model_with_each_dropout(monkeypatch) -> None:
    import torch
    from torch import nn

    from zoo.models._layers import Dropout

    script = _script("cpu_dropout")
    seen = []

    def spy(model, batch_size, **kwargs):
        kinds = {type(m) for m in model.modules() if type(m) in (nn.Dropout, Dropout)}
        seen.append((kinds, next(model.parameters()).detach().clone(), kwargs))
        return measure(model, batch_size, **{**kwargs, "min_reps": 2, "threads": 1})

    monkeypatch.setattr(script, "measure", spy)
    monkeypatch.setattr(script, "BATCH", 4)
    args = {"hidden_sizes": [8], "drop_rate": 0.2}
    row = script.compare("mlp_relu", args, "fp32", repeats=2, min_time=0.01)
    assert [kinds for kinds, _, _ in seen[:3]] == [{nn.Dropout}, {Dropout}, set()]
    assert len(seen) == 6  # two alternating rounds of the three variants
    assert all(torch.equal(w, seen[0][1]) for _, w, _ in seen)  # the same weights every round
    assert {kw["mode"] for _, _, kw in seen} == {"train"}
    for kind in ("torch", "zoo", "none"):
        assert len(row[kind]["all_step_ms"]) == 2
        assert row[kind]["images_per_s"] == pytest.approx(4e3 / row[kind]["step_ms"])
    assert row["speedup"] == pytest.approx(
        row["zoo"]["images_per_s"] / row["torch"]["images_per_s"]
    )


def test_patch_size_seeds_ranks_each_seed_and_refuses_other_settings(tmp_path: Path) -> None:
    import yaml

    script = _script("patch_size_seeds")

    def point(directory: Path, seed: int, patch: int, acc: float, epochs: int = 15) -> None:
        directory.mkdir(parents=True)
        recipe = {"name": "mixer_patch", "seed": seed, "epochs": epochs, "sweep": {"k": [1]},
                  "model": {"name": "mlpmixer_p4", "args": {}}}  # fmt: skip
        (directory / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        (directory / "config.json").write_text(json.dumps({"model_args": {"patch_size": patch}}))
        summary = {"test_acc": acc, "best_valid_acc": acc, "wall_time_s": 1.0,
                   "precision": {"chosen": "bf16"}, "env": {"git_sha": "abc1234"}}  # fmt: skip
        (directory / "summary.json").write_text(json.dumps(summary))

    accs = {42: {4: 0.894, 7: 0.885, 14: 0.887}, 1: {4: 0.89, 7: 0.888, 14: 0.884}}
    for seed, row in accs.items():
        for patch, acc in row.items():
            point(tmp_path / "runs" / f"seed_{seed}" / f"p{patch}", seed, patch, acc)
    point(tmp_path / "runs" / "seed_2" / "p4", 2, 4, 0.5)  # seed 2 unfinished: left out
    points, shared = script.collect([tmp_path / "runs"])
    assert len(points) == 7 and shared["epochs"] == 15 and "seed" not in shared
    agg = script.aggregate(points, [42, 1, 2])
    assert agg["complete_seeds"] == [42, 1]
    assert agg["rankings"] == {42: [4, 14, 7], 1: [4, 7, 14]}
    assert agg["largest_least_accurate"] == {42: False, 1: True}
    assert agg["per_patch"][4]["mean"] == pytest.approx(0.892)
    assert agg["per_patch"][4]["stdev"] == pytest.approx(0.004 / 2**0.5)
    point(tmp_path / "other" / "p7", 3, 7, 0.9, epochs=5)
    with pytest.raises(SystemExit, match=r"differs from the first point's in \['epochs'\]"):
        script.collect([tmp_path / "runs", tmp_path / "other"])


def test_cli_bench_unknown_model_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["bench", "resnet81", "--min-time", "0"])
    assert result.exit_code == 2
    assert "unknown model 'resnet81'" in result.output and "resnet18" in result.output

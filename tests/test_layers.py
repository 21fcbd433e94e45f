"""zoo.models._layers.Dropout: nn.Dropout's behaviour with a cheaper mask on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.models._layers import Dropout


@pytest.mark.parametrize("p", [0.1, 0.4, 0.5, 0.9])
def test_drops_at_the_rate_and_keeps_the_mean(p: float) -> None:
    torch.manual_seed(0)
    y = Dropout(p)(torch.ones(1_000_000))
    kept = (y != 0).double().mean().item()
    assert kept == pytest.approx(1 - p, abs=0.003)  # binomial sd <= 0.0005
    assert y.double().mean().item() == pytest.approx(1.0, abs=0.01)  # unbiased, like torch's
    zero, scale = torch.unique(y).tolist()
    assert zero == 0.0 and scale == pytest.approx(65536 / (65536 - round(p * 65536)))


def test_neighbouring_elements_are_independent() -> None:
    """Four elements share one 64-bit draw; each must still be its own coin."""
    torch.manual_seed(0)
    keep = Dropout(0.5)(torch.ones(400_000)) != 0
    groups = keep.view(-1, 4).double()
    for a in range(4):
        for b in range(a + 1, 4):
            both = (groups[:, a] * groups[:, b]).mean().item()
            assert both == pytest.approx(0.25, abs=0.005)


def test_gradient_is_the_scaled_mask_and_eval_is_identity() -> None:
    torch.manual_seed(0)
    layer = Dropout(0.25)
    x = torch.randn(37, 11, requires_grad=True)  # 407 elements: not a multiple of 4
    y = layer(x)
    y.sum().backward()
    assert x.grad is not None
    mask = (y != 0).float()
    torch.testing.assert_close(x.grad, mask * (65536 / (65536 - 16384)))
    torch.testing.assert_close(y, x.detach() * x.grad)
    layer.eval()
    assert layer(x) is x or torch.equal(layer(x), x)


def test_same_seed_same_mask_and_calls_differ() -> None:
    x = torch.randn(64, 33).t()  # not contiguous
    torch.manual_seed(3)
    first, second = Dropout(0.3)(x), Dropout(0.3)(x)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.3)(x), first)
    assert not torch.equal(first, second)
    assert first.shape == x.shape


def test_dtype_is_kept_under_autocast() -> None:
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    assert Dropout(0.1)(x).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert Dropout(0.1)(torch.randn(8, 16)).dtype == torch.float32  # as torch's


@pytest.mark.parametrize("p", [0.0, 1e-6, 1.0])
def test_rates_that_round_to_0_or_1_are_torch_dropout(p: float) -> None:
    x = torch.randn(100)
    torch.manual_seed(1)
    expected = nn.Dropout(p)(x)
    torch.manual_seed(1)
    assert torch.equal(Dropout(p)(x), expected)


def test_inplace_is_torch_dropout() -> None:
    x = torch.ones(1000)
    torch.manual_seed(0)
    out = Dropout(0.5, inplace=True)(x)
    assert out.data_ptr() == x.data_ptr() and (x == 0).any()


@pytest.mark.parametrize(("name", "count"), [("mlpmixer_p4", 9), ("mlp_relu", 2), ("resnet18", 1)])
def test_builtins_use_it_and_keep_their_state_dict(name: str, count: int) -> None:
    model = zoo.create(name, drop_rate=0.1, num_classes=10, in_chans=1, img_size=28)
    assert sum(isinstance(m, Dropout) for m in model.modules()) >= count
    plain = zoo.create(name, num_classes=10, in_chans=1, img_size=28)
    assert model.state_dict().keys() == plain.state_dict().keys()

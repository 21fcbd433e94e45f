"""The conformance kit: checks every zoo model must pass, for ``zoo check`` and for plugin
authors' own pytest::

    from zoo.testing import assert_conforms

    def test_my_model_conforms():
        assert_conforms("convmixer_256_8")

:func:`check_model` runs the named checks below on one registered model and returns a
:class:`CheckReport`; :func:`assert_conforms` raises ``AssertionError`` listing the failures.

Checks (in order): ``builds``, ``init_deterministic``, ``forward_default``,
``forward_num_classes``, ``forward_in_chans``, ``forward_img_size``, ``backward``,
``safetensors_roundtrip``, ``config_rebuild``.

Cost: building dominates (mlpmixer_l16_224 has 208M parameters and takes seconds to
initialise on a CPU), so the kit builds as few models as it can, uses batches of two (one
for expensive models) and picks a *smaller* overridden ``img_size`` where it can. Models
with more than :data:`EXPENSIVE_PARAMS` parameters check the three overrides together in
one build instead of three; every check still runs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CHECKS",
    "EXPENSIVE_PARAMS",
    "CheckReport",
    "CheckResult",
    "assert_conforms",
    "check_model",
]

CHECKS = (
    "builds",
    "init_deterministic",
    "forward_default",
    "forward_num_classes",
    "forward_in_chans",
    "forward_img_size",
    "backward",
    "safetensors_roundtrip",
    "config_rebuild",
)
# Above this many parameters a build costs seconds, so the overrides share one build.
EXPENSIVE_PARAMS = 50_000_000
_SEED = 0


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one named check."""

    check: str
    passed: bool
    message: str
    seconds: float = 0.0


@dataclass
class CheckReport:
    """Every check run on one model."""

    model: str
    plugin: str | None = None
    params: int | None = None
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def format(self) -> str:
        """One line per check: ``PASS model check: message``."""
        return "\n".join(
            f"{'PASS' if r.passed else 'FAIL'} {self.model} {r.check}: {r.message}"
            for r in self.results
        )


class _CheckFailed(Exception):
    """Raised inside a check to fail it with a message."""


@dataclass
class _Context:
    """What the checks share: the model under test and the input it expects."""

    name: str
    plugin: str | None
    device: str
    num_classes: int
    in_chans: int
    img_size: int
    overrides: dict[str, int]
    model: nn.Module | None = None
    params: int = 0
    combined: str | None = None  # result of the one build that checks all overrides

    @property
    def expensive(self) -> bool:
        return self.params > EXPENSIVE_PARAMS

    @property
    def batch(self) -> int:
        return 1 if self.expensive else 2

    def create(self, **kwargs: Any) -> nn.Module:
        from zoo import registry

        return registry.create(self.name, plugin=self.plugin, **kwargs).to(self.device)

    def inputs(self, in_chans: int | None = None, img_size: int | None = None) -> torch.Tensor:
        import torch

        size = img_size or self.img_size
        gen = torch.Generator().manual_seed(_SEED)
        x = torch.randn(self.batch, in_chans or self.in_chans, size, size, generator=gen)
        return x.to(self.device)


def check_model(
    name: str,
    *,
    plugin: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    device: str = "cpu",
) -> CheckReport:
    """Run every conformance check on model ``name``.

    ``num_classes``, ``in_chans`` and ``img_size`` are the *overridden* values the kit
    builds with (defaults: values that differ from the model's own and that it can accept,
    e.g. an ``img_size`` that is a multiple of its patch size). A check never raises: an
    exception inside it is a failure with the exception as message.
    """
    import torch

    # The checks seed torch's global generator; restore the caller's state afterwards.
    with torch.random.fork_rng(devices=[]):
        return _run_checks(name, plugin, device, num_classes, in_chans, img_size)


def _run_checks(
    name: str,
    plugin: str | None,
    device: str,
    num_classes: int | None,
    in_chans: int | None,
    img_size: int | None,
) -> CheckReport:
    report = CheckReport(name, plugin)
    ctx: _Context | None = None
    start = time.perf_counter()
    try:
        ctx = _build_default(name, plugin, device, num_classes, in_chans, img_size)
        report.params = ctx.params
        report.results.append(_result("builds", True, _describe(ctx), start))
    except Exception as e:  # a check reports, it does not raise
        report.results.append(_result("builds", False, _error(e), start))
    for check, fn in _CHECK_FUNCTIONS:
        start = time.perf_counter()
        if ctx is None:
            report.results.append(_result(check, False, "not run: the model did not build", start))
            continue
        try:
            report.results.append(_result(check, True, fn(ctx), start))
        except Exception as e:
            report.results.append(_result(check, False, _error(e), start))
    return report


def assert_conforms(
    name: str,
    *,
    plugin: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    device: str = "cpu",
) -> CheckReport:
    """Run :func:`check_model`; raise ``AssertionError`` listing every failed check."""
    report = check_model(
        name,
        plugin=plugin,
        num_classes=num_classes,
        img_size=img_size,
        in_chans=in_chans,
        device=device,
    )
    if not report.ok:
        lines = [f"{r.check}: {r.message}" for r in report.failures]
        raise AssertionError(
            f"{name} fails {len(lines)} conformance check(s):\n  " + "\n  ".join(lines)
        )
    return report


# -- building the model under test ---------------------------------------------------------


def _build_default(
    name: str,
    plugin: str | None,
    device: str,
    num_classes: int | None,
    in_chans: int | None,
    img_size: int | None,
) -> _Context:
    import torch

    from zoo import registry

    torch.manual_seed(_SEED)
    model = registry.create(name, plugin=plugin).to(device)
    cfg = _zoo_cfg(model)
    if "architecture" not in cfg:
        raise _CheckFailed("zoo.create returned a model without a zoo_cfg dict")
    args = cfg.get("args", {})
    default_classes = _default_int(model, args, "num_classes", 10)
    default_chans = _default_int(model, args, "in_chans", 3)
    default_size = _default_int(model, args, "img_size", 32)
    overrides = {
        "num_classes": num_classes or (7 if default_classes != 7 else 5),
        "in_chans": in_chans or (1 if default_chans != 1 else 3),
        "img_size": img_size or _smaller_img_size(model, args, default_size),
    }
    ctx = _Context(name, plugin, device, default_classes, default_chans, default_size, overrides)
    ctx.model = model
    ctx.params = sum(p.numel() for p in model.parameters())
    return ctx


def _default_int(model: nn.Module, args: dict[str, Any], key: str, fallback: int) -> int:
    """The model's own value of ``key``: recorded args, then a model attribute (timm sets
    ``num_classes``), then timm's ``pretrained_cfg`` input size, then ``fallback``."""
    value = args.get(key, getattr(model, key, None))
    if value is None and key != "num_classes":
        input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if input_size:
            value = input_size[0] if key == "in_chans" else input_size[-1]
    if isinstance(value, tuple | list):  # (H, W) sizes: the kit feeds square images
        value = value[-1]
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else fallback


def _patch_size(model: nn.Module, args: dict[str, Any]) -> int | None:
    patch = args.get("patch_size", getattr(model, "patch_size", None))
    embed = getattr(model, "patch_embed", None)
    if patch is None and embed is not None:
        patch = getattr(embed, "patch_size", None)
    if isinstance(patch, tuple | list):
        patch = patch[-1]
    return patch if isinstance(patch, int) else None


def _smaller_img_size(model: nn.Module, args: dict[str, Any], default: int) -> int:
    """An input size other than ``default`` that the architecture accepts: two patches per
    side for patch models (cheap even for the 224 paper models), else half the size."""
    patch = _patch_size(model, args)
    if patch is None:
        return max(default // 2, 1) if default > 1 else 2
    for size in (2 * patch, default - patch, default + patch):
        if size > 0 and size != default:
            return size
    return default + patch


# -- the checks ----------------------------------------------------------------------------


def _check_deterministic(ctx: _Context) -> str:
    import torch

    torch.manual_seed(_SEED)
    again = ctx.create()
    diffs = _state_diffs(_model(ctx).state_dict(), again.state_dict())
    if diffs:
        raise _CheckFailed(
            f"two builds under torch.manual_seed({_SEED}) differ in {_listed(diffs)}; "
            "draw every random number from torch's global generator"
        )
    return f"two builds under torch.manual_seed({_SEED}) are identical"


def _check_forward_default(ctx: _Context) -> str:
    return _forward_shape(_model(ctx), ctx.inputs(), ctx.num_classes)


def _check_num_classes(ctx: _Context) -> str:
    if ctx.expensive:
        return _forward_all_overrides(ctx)
    model = ctx.create(num_classes=ctx.overrides["num_classes"])
    return _forward_shape(model, ctx.inputs(), ctx.overrides["num_classes"])


def _check_in_chans(ctx: _Context) -> str:
    if ctx.expensive:
        return _forward_all_overrides(ctx)
    model = ctx.create(in_chans=ctx.overrides["in_chans"])
    return _forward_shape(model, ctx.inputs(in_chans=ctx.overrides["in_chans"]), ctx.num_classes)


def _check_img_size(ctx: _Context) -> str:
    if ctx.expensive:
        return _forward_all_overrides(ctx)
    model = ctx.create(img_size=ctx.overrides["img_size"])
    return _forward_shape(model, ctx.inputs(img_size=ctx.overrides["img_size"]), ctx.num_classes)


def _forward_all_overrides(ctx: _Context) -> str:
    if ctx.combined is None:  # built once, reported by each of the three override checks
        model = ctx.create(**ctx.overrides)
        x = ctx.inputs(ctx.overrides["in_chans"], ctx.overrides["img_size"])
        shape = _forward_shape(model, x, ctx.overrides["num_classes"])
        ctx.combined = f"{shape} (overrides {ctx.overrides} share one build: expensive model)"
    return ctx.combined


def _check_backward(ctx: _Context) -> str:
    import torch

    model = _model(ctx).train()
    model.zero_grad(set_to_none=True)
    out = model(ctx.inputs())
    target = torch.arange(out.shape[0], device=out.device) % out.shape[-1]
    torch.nn.functional.cross_entropy(out.float(), target).backward()
    missing, bad = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            bad.append(name)
    model.zero_grad(set_to_none=True)
    if missing or bad:
        parts = [f"no gradient for {_listed(missing)}"] if missing else []
        parts += [f"non-finite gradient for {_listed(bad)}"] if bad else []
        raise _CheckFailed("; ".join(parts))
    n = sum(1 for p in model.parameters() if p.requires_grad)
    return f"finite gradients for all {n} trainable parameters"


def _check_roundtrip(ctx: _Context) -> str:
    import torch

    from zoo.export import load_model_dir, save_model_files

    model = _model(ctx).eval()
    size = (ctx.in_chans, ctx.img_size, ctx.img_size)
    with tempfile.TemporaryDirectory(prefix="zoo-check-") as tmp:
        save_model_files(
            model, tmp, input_size=size, mean=[0.5] * ctx.in_chans, std=[0.5] * ctx.in_chans
        )
        loaded = load_model_dir(tmp, plugin=_distribution(model)).to(ctx.device).eval()
    diffs = _state_diffs(model.state_dict(), loaded.state_dict())
    if diffs:
        raise _CheckFailed(f"reloaded weights differ in {_listed(diffs)}")
    with torch.no_grad():
        x = ctx.inputs()
        if not torch.equal(model(x), loaded(x)):
            raise _CheckFailed("reloaded model gives different outputs in eval mode")
    return f"{len(model.state_dict())} tensors and eval outputs bit-exact after reload"


def _check_config_rebuild(ctx: _Context) -> str:
    import torch

    from zoo import registry

    model = _model(ctx)
    cfg = _zoo_cfg(model)
    # The meta device allocates nothing, so rebuilding even the 208M-param Mixer is free.
    with torch.device("meta"):
        rebuilt = registry.create(
            cfg["architecture"], plugin=cfg.get("distribution"), **cfg.get("args", {})
        )
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    new = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    problems = [f"state-dict key {k!r} only in the {w}" for k, w in _only_in(own, new)]
    problems += [f"{k}: {own[k]} vs rebuilt {new[k]}" for k in own.keys() & new if own[k] != new[k]]
    count = sum(p.numel() for p in rebuilt.parameters())
    if count != ctx.params:
        problems.append(f"{count:,} params rebuilt vs {ctx.params:,}")
    new_args = _zoo_cfg(rebuilt).get("args")
    if new_args != cfg.get("args"):
        problems.append(f"recorded args changed: {cfg.get('args')} -> {new_args}")
    if problems:
        raise _CheckFailed(f"zoo_cfg {cfg} does not rebuild the model: {_listed(problems)}")
    return f"zoo_cfg rebuilds {len(own)} tensors, {count:,} params"


_CHECK_FUNCTIONS: tuple[tuple[str, Callable[[_Context], str]], ...] = (
    ("init_deterministic", _check_deterministic),
    ("forward_default", _check_forward_default),
    ("forward_num_classes", _check_num_classes),
    ("forward_in_chans", _check_in_chans),
    ("forward_img_size", _check_img_size),
    ("backward", _check_backward),
    ("safetensors_roundtrip", _check_roundtrip),
    ("config_rebuild", _check_config_rebuild),
)
assert tuple(c for c, _ in _CHECK_FUNCTIONS) == CHECKS[1:]


# -- helpers -------------------------------------------------------------------------------


def _model(ctx: _Context) -> nn.Module:
    assert ctx.model is not None  # set by _build_default before any check runs
    return ctx.model


def _forward_shape(model: nn.Module, x: torch.Tensor, num_classes: int) -> str:
    import torch

    with torch.no_grad():
        out = model.eval()(x)
    expected = (x.shape[0], num_classes)
    if tuple(out.shape) != expected:
        raise _CheckFailed(
            f"input {tuple(x.shape)} gave output {tuple(out.shape)}, expected {expected}"
        )
    if not torch.isfinite(out).all():
        raise _CheckFailed(f"input {tuple(x.shape)} gave non-finite outputs")
    return f"{tuple(x.shape)} -> {tuple(out.shape)}"


def _state_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    import torch

    diffs = [k for k, _ in _only_in(a, b)]
    diffs += [
        k
        for k in a.keys() & b.keys()
        if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])
    ]
    return sorted(diffs)


def _only_in(a: dict[str, Any], b: dict[str, Any]) -> Iterator[tuple[str, str]]:
    yield from ((k, "original") for k in sorted(a.keys() - b.keys()))
    yield from ((k, "rebuilt") for k in sorted(b.keys() - a.keys()))


def _zoo_cfg(model: nn.Module) -> dict[str, Any]:
    cfg = vars(model).get("zoo_cfg")  # a plain attribute, set by zoo.create
    return cfg if isinstance(cfg, dict) else {}


def _distribution(model: nn.Module) -> str | None:
    return _zoo_cfg(model).get("distribution")


def _describe(ctx: _Context) -> str:
    return (
        f"{ctx.params:,} params; input ({ctx.in_chans}, {ctx.img_size}, {ctx.img_size}), "
        f"{ctx.num_classes} classes; overrides {ctx.overrides}"
    )


def _listed(items: list[str], limit: int = 5) -> str:
    more = f" ... ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _error(e: Exception) -> str:
    return str(e) if isinstance(e, _CheckFailed) else f"{type(e).__name__}: {e}"


def _result(check: str, passed: bool, message: str, start: float) -> CheckResult:
    return CheckResult(check, passed, message, round(time.perf_counter() - start, 3))

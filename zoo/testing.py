"""The conformance kit: checks every zoo model must pass, for ``zoo check`` and for plugin
authors' own pytest::

    from zoo.testing import assert_conforms

    def test_my_model_conforms():
        assert_conforms("convmixer_256_8")

:func:`check_model` runs the named checks below on one registered model and returns a
:class:`CheckReport`; :func:`assert_conforms` raises ``AssertionError`` listing the failures.

Checks (in order): ``builds``, ``init_deterministic``, ``forward_default``,
``forward_num_classes``, ``forward_in_chans``, ``forward_img_size``, ``backward``,
``safetensors_roundtrip``, ``config_rebuild``, then timm's model API: ``model_api``,
``forward_intermediates``, ``grad_checkpointing``, ``group_matcher``, ``no_weight_decay``,
``pretrained_cfg``, ``reset_classifier``.

timm's model API -- what a plugin model must have, and what it may have:

* Required (``model_api``, ``reset_classifier``): attributes ``num_classes`` and
  ``num_features``; ``get_classifier()``; ``reset_classifier(num_classes, global_pool=None)``
  (0 classes: a head without parameters, the model then returns pooled features);
  ``forward_features(x)`` and ``forward_head(x, pre_logits=False)`` with ``forward(x) ==
  forward_head(forward_features(x))`` and ``pre_logits=True`` returning ``(B, num_features)``
  (``head_hidden_size`` where a model has one). zoo's fine-tuning, ``zoo predict`` and
  timm's tooling rely on these.
* Optional, checked when present and reported as ``SKIP`` (with how to add it) when not:
  ``forward_intermediates`` + ``feature_info`` (+ ``prune_intermediate_layers``) for
  ``features_only``; ``set_grad_checkpointing`` (must give the same outputs and gradients,
  and really recompute); ``group_matcher`` (must form more than one group for timm's layer
  decay); ``no_weight_decay`` (a set of names); ``pretrained_cfg`` (timm's data config:
  ``input_size``, ``mean``, ``std``, ...; what ``timm.data.resolve_data_config`` reads).
  A ``SKIP`` does not make the report fail.

``zoo.models.mixer.MlpMixer`` and the zoo-convmixer plugin implement all of it; copy from them.

Cost: building dominates (mlpmixer_l16_224 has 208M parameters and takes seconds to
initialise on a CPU), so the kit builds as few models as it can, uses batches of two (one
for expensive models) and picks a *smaller* overridden ``img_size`` where it can. Models
with more than :data:`EXPENSIVE_PARAMS` parameters check the three overrides together in
one build instead of three; every check still runs. The model-API checks build nothing: they
reuse the default model (``reset_classifier``, which replaces its head, runs last);
``grad_checkpointing`` runs two training steps, and ``group_matcher`` and ``pretrained_cfg``
import timm (seconds, once per process) to check with timm's own functions.
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
    "OPTIONAL_CHECKS",
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
    "model_api",
    "forward_intermediates",
    "grad_checkpointing",
    "group_matcher",
    "no_weight_decay",
    "pretrained_cfg",
    "reset_classifier",
)
# Checks of optional API: a model without it gets a SKIP (passed), not a failure.
OPTIONAL_CHECKS = frozenset(
    {
        "forward_intermediates",
        "grad_checkpointing",
        "group_matcher",
        "no_weight_decay",
        "pretrained_cfg",
    }
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
    skipped: bool = False  # optional API the model does not have (passed; message says how)

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"


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

    @property
    def skipped(self) -> list[CheckResult]:
        """Optional API the model does not provide."""
        return [r for r in self.results if r.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def format(self) -> str:
        """One line per check: ``PASS|FAIL|SKIP model check: message``."""
        return "\n".join(f"{r.status} {self.model} {r.check}: {r.message}" for r in self.results)


class _CheckFailed(Exception):
    """Raised inside a check to fail it with a message."""


class _NotProvided(Exception):
    """Raised inside an optional check: the model lacks that API (a SKIP, not a failure)."""


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
        from zoo.models import registry

        return registry.build(self.name, plugin=self.plugin, **kwargs).to(self.device)

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
        except _NotProvided as e:
            report.results.append(_result(check, True, str(e), start, skipped=True))
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

    from zoo.models import registry

    torch.manual_seed(_SEED)
    model = registry.build(name, plugin=plugin).to(device)
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

    from zoo.weights.files import load_model_dir, save_model_files

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

    from zoo.models import registry

    model = _model(ctx)
    cfg = _zoo_cfg(model)
    # The meta device allocates nothing, so rebuilding even the 208M-param Mixer is free.
    with torch.device("meta"):
        rebuilt = registry.build(
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


# -- timm's model API ----------------------------------------------------------------------

_EXAMPLE = "zoo.models.mixer.MlpMixer and the zoo-convmixer plugin show how"
_REQUIRED_ATTRS = (
    ("num_classes", "set self.num_classes = num_classes in __init__ and in reset_classifier"),
    ("num_features", "set self.num_features to the width of the pooled features the head reads"),
)
_REQUIRED_METHODS = (
    ("get_classifier", "def get_classifier(self) -> nn.Module returning the head"),
    (
        "reset_classifier",
        "def reset_classifier(self, num_classes, global_pool=None) that builds a new head "
        "(nn.Identity() for 0 classes) and sets self.num_classes",
    ),
    ("forward_features", "def forward_features(self, x): everything before pooling"),
    (
        "forward_head",
        "def forward_head(self, x, pre_logits=False): pooling and dropout, then the head "
        "unless pre_logits",
    ),
)


def _head_width(model: nn.Module) -> int:
    """What ``forward_head(x, pre_logits=True)`` returns per image (timm's head_hidden_size)."""
    width = getattr(model, "head_hidden_size", None)
    return int(width if isinstance(width, int) else getattr(model, "num_features", 0))


def _check_model_api(ctx: _Context) -> str:
    import torch

    model: Any = _model(ctx).eval()  # any model: the check looks for the API
    problems = [
        f"no int attribute {attr} ({how})"
        for attr, how in _REQUIRED_ATTRS
        if isinstance(getattr(model, attr, None), bool)
        or not isinstance(getattr(model, attr, None), int)
    ]
    problems += [
        f"no method {method} (add {how})"
        for method, how in _REQUIRED_METHODS
        if not callable(getattr(model, method, None))
    ]
    if problems:
        raise _CheckFailed(
            f"{type(model).__name__} lacks timm's model API: {'; '.join(problems)}. {_EXAMPLE}"
        )
    if model.num_classes != ctx.num_classes:
        raise _CheckFailed(
            f"num_classes is {model.num_classes} but the model has {ctx.num_classes} outputs; "
            "set self.num_classes = num_classes"
        )
    x = ctx.inputs()
    with torch.no_grad():
        features = model.forward_features(x)
        out = model(x)
        if not _close(model.forward_head(features), out):
            raise _CheckFailed(
                "forward(x) differs from forward_head(forward_features(x)); define forward as "
                "exactly that, so features and logits come from the same computation"
            )
        try:
            pooled = model.forward_head(features, pre_logits=True)
        except TypeError as e:
            raise _CheckFailed(
                f"forward_head does not take pre_logits ({e}); add the keyword: "
                "def forward_head(self, x, pre_logits=False), returning the pooled features "
                "before the classifier when it is True"
            ) from None
    expected = (x.shape[0], _head_width(model))
    if tuple(pooled.shape) != expected:
        raise _CheckFailed(
            f"forward_head(x, pre_logits=True) gave {tuple(pooled.shape)}, expected (batch, "
            f"num_features) = {expected}: return the pooled features, before the classifier"
        )
    if not isinstance(model.get_classifier(), torch.nn.Module):
        raise _CheckFailed("get_classifier() must return the head module (an nn.Module)")
    return (
        f"num_classes {model.num_classes}, num_features {model.num_features}; forward == "
        f"forward_head(forward_features(x)); pre_logits -> {expected}"
    )


def _check_reset_classifier(ctx: _Context) -> str:
    import torch

    # The last check: it replaces the head of the shared model.
    model: Any = _model(ctx).eval()
    if not callable(getattr(model, "reset_classifier", None)):
        raise _CheckFailed(f"no method reset_classifier (add {_REQUIRED_METHODS[1][1]})")
    n, x = ctx.overrides["num_classes"], ctx.inputs()
    model.reset_classifier(n)
    with torch.no_grad():
        out = model(x)
    if tuple(out.shape) != (x.shape[0], n) or getattr(model, "num_classes", None) != n:
        raise _CheckFailed(
            f"after reset_classifier({n}) the output is {tuple(out.shape)} and num_classes "
            f"{getattr(model, 'num_classes', None)}; build a new head with {n} outputs and set "
            f"self.num_classes = {n}"
        )
    model.reset_classifier(0)
    with torch.no_grad():
        pooled = model(x)
    expected = (x.shape[0], _head_width(model))
    head_params = sum(p.numel() for p in model.get_classifier().parameters())
    if tuple(pooled.shape) != expected or head_params:
        raise _CheckFailed(
            f"after reset_classifier(0) the output is {tuple(pooled.shape)} and the head has "
            f"{head_params} parameters; expected the pooled features {expected} from a head "
            "without parameters: use nn.Identity() as the head for 0 classes (as timm)"
        )
    return f"reset_classifier({n}) -> {tuple(out.shape)}; reset_classifier(0) -> {expected}"


def _check_forward_intermediates(ctx: _Context) -> str:
    import copy

    import torch

    from zoo.errors import ZooError
    from zoo.models.features import features_only

    model: Any = _model(ctx).eval()  # any model: the check looks for the API
    if not callable(getattr(model, "forward_intermediates", None)):
        raise _NotProvided(
            "optional, not provided: add forward_intermediates(x, indices=None, norm=False, "
            "stop_early=False, output_fmt='NCHW', intermediates_only=False) and feature_info "
            "(one dict(module=..., num_chs=..., reduction=...) per feature map) for "
            f"features_only=True and timm's feature extraction; {_EXAMPLE}"
        )
    try:
        getter = features_only(model, prune=False)
    except ZooError as e:
        raise _CheckFailed(str(e)) from None
    info, x = getter.feature_info, ctx.inputs()
    with torch.no_grad():
        result = model.forward_intermediates(x)
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], list)):
            raise _CheckFailed(
                "forward_intermediates(x) must return (final features, [feature maps]) unless "
                "intermediates_only=True"
            )
        maps = result[1]
        picked = sorted({0, len(maps) - 1})
        only = model.forward_intermediates(x, indices=picked, intermediates_only=True)
        extracted = getter(x)
    if len(maps) != len(info):
        raise _CheckFailed(
            f"forward_intermediates(x) returned {len(maps)} maps but feature_info describes "
            f"{len(info)}; indices=None must return one map per feature_info entry"
        )
    problems = _feature_info_problems(maps, info.info, ctx.img_size)
    if problems:
        raise _CheckFailed(f"feature_info does not describe the maps: {_listed(problems)}")
    if len(only) != len(picked) or not all(
        _close(a, maps[i]) for a, i in zip(only, picked, strict=True)
    ):
        raise _CheckFailed(
            f"forward_intermediates(x, indices={picked}, intermediates_only=True) must return "
            "a list of just those maps, equal to the same maps taken with indices=None"
        )
    if [t.shape[1] for t in extracted] != info.channels():
        raise _CheckFailed("features_only(model) maps do not have feature_info's channels")
    pruned = ""
    if callable(getattr(model, "prune_intermediate_layers", None)) and not ctx.expensive:
        first = features_only(copy.deepcopy(model), out_indices=[0])
        with torch.no_grad():
            if not _close(first(x)[0], maps[0]):
                raise _CheckFailed(
                    "after prune_intermediate_layers([0]) the first feature map differs: prune "
                    "only the layers after the last index requested"
                )
        pruned = "; pruning keeps them"
    return (
        f"{len(maps)} feature maps, channels {info.channels()}, reductions "
        f"{info.reduction()}{pruned}"
    )


def _feature_info_problems(
    maps: list[torch.Tensor], info: list[dict[str, Any]], img_size: int
) -> list[str]:
    problems = []
    for i, (t, d) in enumerate(zip(maps, info, strict=True)):
        if t.ndim < 2 or t.shape[1] != d["num_chs"]:
            problems.append(f"map {i} is {tuple(t.shape)}, num_chs says {d['num_chs']}")
        elif t.ndim == 4 and any(abs(s - img_size / d["reduction"]) >= 1 for s in t.shape[2:]):
            problems.append(
                f"map {i} is {tuple(t.shape[2:])} for a {img_size}x{img_size} input, "
                f"reduction says {d['reduction']}"
            )
    return problems


def _check_grad_checkpointing(ctx: _Context) -> str:
    model = _model(ctx).train()
    enable = getattr(model, "set_grad_checkpointing", None)
    if not callable(enable):
        raise _NotProvided(
            "optional, not provided: add set_grad_checkpointing(enable=True) after which "
            "forward_features runs each block as torch.utils.checkpoint.checkpoint(block, x, "
            f"use_reentrant=False), to train big models in less memory; {_EXAMPLE}"
        )
    x = ctx.inputs()
    out, grads = _train_step(model, x, None)
    recomputed: list[str] = []
    try:
        enable(True)
        out_ckpt, grads_ckpt = _train_step(model, x, recomputed)
    finally:
        enable(False)
    if not recomputed:
        raise _CheckFailed(
            "set_grad_checkpointing(True) changed nothing: no layer ran again in the backward "
            "pass; when self.grad_checkpointing is set, run each block as "
            "torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)"
        )
    differ = [n for n in grads if n not in grads_ckpt or not _close(grads[n], grads_ckpt[n])]
    if not _close(out, out_ckpt) or differ or grads.keys() != grads_ckpt.keys():
        raise _CheckFailed(
            "with set_grad_checkpointing(True) the training step gives different outputs or "
            f"gradients (differ: {_listed(differ) or 'outputs'}); checkpoint whole blocks and "
            "keep torch.utils.checkpoint's preserve_rng_state=True so dropout masks replay"
        )
    return f"same outputs and gradients; {len(set(recomputed))} layers recomputed in backward"


def _train_step(
    model: nn.Module, x: torch.Tensor, recomputed: list[str] | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One seeded forward/backward; with ``recomputed``, names of the layers whose forward
    runs again during the backward pass are appended to it."""
    import torch

    backward = False

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if backward and recomputed is not None:
            recomputed.append(names[module])

    names = {m: n for n, m in model.named_modules() if n}
    handles = [m.register_forward_hook(hook) for m in names]
    try:
        torch.manual_seed(_SEED)
        model.zero_grad(set_to_none=True)
        out = model(x)
        target = torch.arange(out.shape[0], device=out.device) % out.shape[-1]
        backward = True
        torch.nn.functional.cross_entropy(out.float(), target).backward()
    finally:
        for h in handles:
            h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


def _check_group_matcher(ctx: _Context) -> str:
    model = _model(ctx)
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        raise _NotProvided(
            "optional, not provided: add group_matcher(coarse=False) returning regexes over "
            r"parameter names, e.g. dict(stem=r'^stem\.', blocks=r'^blocks\.(\d+)\.'), so "
            f"timm's optimizer factory can apply layer-wise lr decay (layer_decay=...); {_EXAMPLE}"
        )
    from timm.models import group_parameters  # timm takes seconds to import: only when needed

    counts = []
    for coarse in (False, True):
        spec = matcher(coarse=coarse)
        if not isinstance(spec, dict):
            raise _CheckFailed(
                f"group_matcher(coarse={coarse}) returned {type(spec).__name__}; return a dict "
                r"of regexes like dict(stem=r'^stem\.', blocks=r'^blocks\.(\d+)\.')"
            )
        layer_of = group_parameters(model, spec, reverse=True)
        counts.append(max(layer_of.values(), default=0) + 1)
    if counts[0] < 2:
        raise _CheckFailed(
            "group_matcher() puts every parameter in one group, so timm's layer decay has no "
            "effect; match the stem and each block with its own number, e.g. "
            r"blocks=r'^blocks\.(\d+)\.'"
        )
    return f"{counts[0]} layer groups for timm's layer decay ({counts[1]} coarse)"


def _check_no_weight_decay(ctx: _Context) -> str:
    from collections.abc import Collection

    model = _model(ctx)
    fn = getattr(model, "no_weight_decay", None)
    if not callable(fn):
        raise _NotProvided(
            "optional, not provided: add no_weight_decay() returning the set of parameter names "
            "to exempt from weight decay besides biases and norms (timm exempts 1-D parameters "
            "anyway); set() when there are none"
        )
    names = fn()
    if (
        isinstance(names, str)
        or not isinstance(names, Collection)
        or not all(isinstance(n, str) for n in names)
    ):
        raise _CheckFailed(f"no_weight_decay() must return a set of parameter names, got {names!r}")
    listed = f": {_listed(sorted(names))}" if names else " besides 1-D parameters"
    return f"{len(names)} names exempt from weight decay{listed}"


def _check_pretrained_cfg(ctx: _Context) -> str:
    from collections.abc import Mapping

    model = _model(ctx)
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is None:
        raise _NotProvided(
            "optional, not provided: add model.pretrained_cfg = model.default_cfg = "
            "dict(input_size=(C, H, W), mean=(...), std=(...), interpolation='bilinear', "
            "crop_pct=1.0, crop_mode='center', num_classes=N, label_names=None) in the builder: "
            f"the data config timm.data.resolve_data_config and zoo predict read; {_EXAMPLE}"
        )
    if not isinstance(cfg, Mapping):
        raise _CheckFailed(f"pretrained_cfg must be a dict in timm's keys, got {type(cfg)}")
    expected = (ctx.in_chans, ctx.img_size, ctx.img_size)
    problems = []
    size = cfg.get("input_size")
    if not isinstance(size, list | tuple) or tuple(size) != expected:
        problems.append(f"input_size is {size!r}, the model takes {expected}")
    for key in ("mean", "std"):
        values = cfg.get(key)
        if not isinstance(values, list | tuple) or len(values) != ctx.in_chans:
            problems.append(f"{key} is {values!r}, needs one value per channel ({ctx.in_chans})")
    classes = getattr(model, "num_classes", None)
    if cfg.get("num_classes") not in (None, classes):
        problems.append(f"num_classes is {cfg['num_classes']}, the model has {classes}")
    labels = cfg.get("label_names")
    if labels is not None and len(labels) != classes:
        problems.append(f"{len(labels)} label_names for {classes} classes")
    if problems:
        raise _CheckFailed(f"pretrained_cfg does not describe the model: {'; '.join(problems)}")
    from timm.data import resolve_data_config

    resolved = resolve_data_config({}, model=model)
    for key in ("input_size", "mean", "std"):
        if tuple(resolved[key]) != tuple(cfg[key]):
            raise _CheckFailed(
                f"timm.data.resolve_data_config({{}}, model=model) gives {key} "
                f"{resolved[key]}, pretrained_cfg says {cfg[key]}"
            )
    return f"input_size {expected}, mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}"


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding (the same computation, possibly in another order)."""
    import torch

    try:
        torch.testing.assert_close(a, b)
    except AssertionError:
        return False
    return True


_CHECK_FUNCTIONS: tuple[tuple[str, Callable[[_Context], str]], ...] = (
    ("init_deterministic", _check_deterministic),
    ("forward_default", _check_forward_default),
    ("forward_num_classes", _check_num_classes),
    ("forward_in_chans", _check_in_chans),
    ("forward_img_size", _check_img_size),
    ("backward", _check_backward),
    ("safetensors_roundtrip", _check_roundtrip),
    ("config_rebuild", _check_config_rebuild),
    ("model_api", _check_model_api),
    ("forward_intermediates", _check_forward_intermediates),
    ("grad_checkpointing", _check_grad_checkpointing),
    ("group_matcher", _check_group_matcher),
    ("no_weight_decay", _check_no_weight_decay),
    ("pretrained_cfg", _check_pretrained_cfg),
    ("reset_classifier", _check_reset_classifier),
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


def _result(
    check: str, passed: bool, message: str, start: float, skipped: bool = False
) -> CheckResult:
    return CheckResult(check, passed, message, round(time.perf_counter() - start, 3), skipped)

"""zoo-timm: every timm architecture in zoo's registry as ``timm/<name>``.

Importing this module registers the ``timm/`` namespace and nothing else: timm itself is
imported only when someone lists ``timm/*`` names or builds one, so ``zoo models`` and
``zoo.create("mlpmixer_p4")`` stay fast with this plugin installed.

    >>> import zoo
    >>> model = zoo.create("timm/resnet18", num_classes=10, in_chans=1)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zoo.errors import ModelArgumentError, WeightsError
from zoo.models.registry import register_namespace

if TYPE_CHECKING:
    from torch import nn

__all__ = ["PREFIX", "builder_for", "create_timm", "list_names"]
__version__ = "0.1.0"

PREFIX = "timm/"
# timm options that say where pretrained weights come from: not part of the architecture,
# so they are not recorded in zoo_cfg (a rebuilt model gets weights from the export).
_WEIGHT_SOURCE_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")
_NETWORK_LIBRARIES = ("httpx", "httpx2", "requests", "urllib3")
_log = logging.getLogger(__name__)


def list_names() -> list[str]:
    """timm's architecture names (without the ``timm/`` prefix)."""
    import timm

    return list(timm.list_models())


def builder_for(name: str) -> Callable[..., nn.Module] | None:
    """A zoo builder for timm architecture ``name``, or None when timm has no such model."""
    import timm

    if not timm.is_model(name):
        return None

    def build(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_timm(name, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"timm's {name} (built with timm.create_model)."
    return build


def create_timm(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build timm architecture ``name`` and record on ``model.zoo_cfg`` how to rebuild it.

    ``num_classes`` and ``in_chans`` go to timm as they are. ``img_size`` goes to timm for
    architectures that take it (ViT, Mixer, ...); architectures with global pooling (ResNet,
    ...) do not, and for them it only records the input size, as for zoo's own resnet18.
    """
    try:
        model = _create(name, pretrained, kwargs)
    except TypeError as e:
        if "unexpected keyword argument 'img_size'" not in str(e):
            raise ModelArgumentError(f"timm/{name} rejected its arguments: {e}") from None
        _log.debug("timm/%s takes no img_size; recording it as the input size only", name)
        model = _create(name, pretrained, {k: v for k, v in kwargs.items() if k != "img_size"})
    input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    args = {k: v for k, v in kwargs.items() if k not in _WEIGHT_SOURCE_KWARGS}
    args["num_classes"] = int(getattr(model, "num_classes", kwargs.get("num_classes", 1000)))
    args.setdefault("in_chans", 3)  # every timm architecture defaults to 3 channels
    args.setdefault("img_size", int(input_size[-1]))
    vars(model)["zoo_cfg"] = {"architecture": PREFIX + name, "args": args}
    return model


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:
        if not pretrained or not _is_download_error(e):
            raise
        raise WeightsError(
            f"could not download timm's pretrained weights for timm/{name} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}). Connect to the internet "
            "(and unset HF_HUB_OFFLINE), or download the weights file elsewhere and pass it: "
            f"zoo.create('timm/{name}', pretrained=True, "
            "pretrained_cfg_overlay={'file': '/path/to/model.safetensors'}), or copy a "
            "Hugging Face cache that holds them into $HF_HOME"
        ) from None


def _is_download_error(e: BaseException) -> bool:
    """Hub, HTTP and connection errors (huggingface_hub's are OSErrors, as are urllib's)."""
    top = type(e).__module__.split(".")[0]
    return isinstance(e, OSError) or top in _NETWORK_LIBRARIES


register_namespace(PREFIX, list_names, builder_for)

"""torch.hub entry points: one per zoo built-in architecture.

    import torch

    torch.hub.list("OWNER/zoo")                                       # the built-in names
    model = torch.hub.load("OWNER/zoo", "mlpmixer_p4")                # from GitHub
    model = torch.hub.load("path/to/zoo", "resnet18", source="local", num_classes=100, in_chans=1)
    model = torch.hub.load("OWNER/zoo", "mlpmixer_p4", pretrained="hf-hub:me/mixer-p4")

Each entry takes the keyword arguments of ``zoo.create``: ``pretrained`` (False, True for the
local weights store's tag, or a weights source: ``hf-hub:org/repo[@rev]``, a run or export
directory), ``num_classes``, ``in_chans``, ``img_size`` and the architecture's own arguments.
Entries build zoo's own models only; a third-party plugin that registers the same name does
not make them ambiguous (pass ``plugin=DIST`` to choose another provider).

torch.hub puts this repository first on ``sys.path``, so the ``zoo`` imported below is this
checkout's, whether or not zoo is pip-installed. The entries are generated from the registry
at import time as module attributes, which is where ``torch.hub.list`` and
``torch.hub.load`` look for them (``dir(module)``). Module-level names that are not entries
start with ``_``: torch.hub lists every other callable.
"""

from __future__ import annotations

import typing as _typing

import zoo as _zoo
from zoo.models.plugins import BUILTIN_DISTRIBUTION as _BUILTIN

# Import names (torch.hub checks them with importlib before calling an entry): torch builds
# the models, safetensors and huggingface_hub load the weights `pretrained` names.
dependencies = ["torch", "safetensors", "huggingface_hub"]


def _entry(name: str) -> _typing.Callable[..., _typing.Any]:
    """The torch.hub entry point that builds ``name`` with ``zoo.create``."""

    def entry(pretrained: bool | str = False, **kwargs: _typing.Any) -> _typing.Any:
        kwargs.setdefault("plugin", _BUILTIN)
        return _zoo.create(name, pretrained=pretrained, **kwargs)

    doc = _zoo.model_info(name, plugin=_BUILTIN)["doc"]
    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = (
        f"zoo.create({name!r}, **kwargs): {doc}\n\n"
        "Keyword arguments are zoo.create's: pretrained (False, True, or a weights source "
        "such as 'hf-hub:org/repo' or a run directory), num_classes, in_chans, img_size, "
        "and the architecture's own arguments."
    )
    return entry


for _name in _zoo.list_models(plugin=_BUILTIN):
    globals()[_name] = _entry(_name)
del _name

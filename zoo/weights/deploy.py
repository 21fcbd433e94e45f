"""Deployment exports: ONNX, TorchScript and torch.export's ExportedProgram.

:func:`export_deployment` loads a run or export directory through
:func:`~zoo.weights.files.load_model_dir` and writes a directory holding a copy of its
``config.json`` (input size, mean/std, class names) and one model file:

===================  ========================  ================================================
format               file                      made with
===================  ========================  ================================================
``onnx``             ``model.onnx``            ``torch.onnx.export(dynamo=True)``; run with
                                               onnxruntime (``pip install 'zoo-classifiers[onnx]'``)
``torchscript``      ``model.torchscript.pt``  ``torch.jit.trace``; load with ``torch.jit.load``
``exported-program`` ``model.pt2``             ``torch.export.export`` + ``torch.export.save``;
                                               load with ``torch.export.load(...).module()``
===================  ========================  ================================================

The input has ``config.json``'s ``input_size``, batch 1; with ``dynamic_batch`` the batch
dimension is dynamic (ONNX dimension ``batch``, a ``torch.export.Dim``). Every file is loaded
back before the directory appears and compared with the PyTorch model on random input (at
batch 1 and 3 when the batch is dynamic); a mismatch is an :class:`~zoo.errors.ExportError`
and nothing is written.

TorchScript is *traced*, not scripted. Tracing takes any module whose forward runs on tensors
(the built-ins, plugin models, timm models) as it is; scripting compiles the source of every
method forward reaches and refuses ordinary Python that plugins use freely (``**kwargs``,
dataclasses, untyped helpers). What tracing gives up, data-dependent control flow, a
classifier's forward does not have, and the check at a second batch size catches a batch
size frozen into the graph. torch.jit is deprecated upstream: prefer ``exported-program``.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._fs import copy_regular
from zoo.errors import ExportError
from zoo.weights.files import (
    CONFIG_NAME,
    check_export_target,
    load_model_dir,
    read_config,
    staged_dir,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "DEPLOY_FORMATS",
    "FILE_NAMES",
    "FORMATS",
    "ONNX_INSTALL",
    "DeployResult",
    "export_deployment",
]

FORMATS = ("safetensors", "onnx", "torchscript", "exported-program")
DEPLOY_FORMATS = FORMATS[1:]
FILE_NAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "exported-program": "model.pt2",
}
ONNX_INSTALL = "pip install 'zoo-classifiers[onnx]'"
_ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
# Batch sizes: the example the export is traced with, and those it is checked at. A dynamic
# batch is traced at 2 because torch.export specialises dimensions of size 1.
_STATIC = (1, (1,))
_DYNAMIC = (2, (1, 3))
# |export - PyTorch| <= atol + rtol * |PyTorch|, elementwise (torch.isclose).
_ATOL = 1e-4
_RTOL = 1e-4
# ONNX protobuf files stop at 2 GiB; larger weights go to model.onnx.data next to it.
_ONNX_INLINE_BYTES = 1_500_000_000


@dataclass(frozen=True)
class DeployResult:
    """What :func:`export_deployment` wrote and how closely it matches PyTorch."""

    path: Path  # the export directory
    file: Path  # the model file in it
    format: str
    input_size: tuple[int, ...]  # one image: channels, height, width
    dynamic_batch: bool
    max_abs_diff: dict[int, float]  # batch size checked -> max |export - PyTorch|

    def summary(self) -> str:
        """One line: the file, its batch dimension, and the check against PyTorch."""
        batch = "dynamic batch" if self.dynamic_batch else "batch 1"
        diffs = ", ".join(f"{d:.1e} (batch {b})" for b, d in self.max_abs_diff.items())
        return f"{self.file.name}: {batch}; max abs diff vs PyTorch {diffs}"


def export_deployment(
    run_dir: str | Path,
    fmt: str,
    out_dir: str | Path | None = None,
    *,
    dynamic_batch: bool = False,
    force: bool = False,
) -> DeployResult:
    """Export the model of ``run_dir`` (a run or export directory) as ``fmt``, one of
    :data:`DEPLOY_FORMATS`, to ``out_dir`` (default ``RUN/export-FORMAT``).

    An existing ``out_dir`` is refused unless ``force``. The directory appears whole or not at
    all, and only after the file was loaded back and matched the PyTorch model.
    """
    if fmt not in DEPLOY_FORMATS:
        hint = "; safetensors is zoo.weights.files.export_run" if fmt == "safetensors" else ""
        raise ExportError(
            f"unknown deployment format {fmt!r}; choose one of {', '.join(DEPLOY_FORMATS)}{hint}"
        )
    if fmt == "onnx":
        _require_onnx()  # before anything is loaded or written
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / f"export-{fmt}"
    check_export_target(run, out, force=force)
    model = load_model_dir(run).eval()
    input_size = _input_size(read_config(run), run / CONFIG_NAME)
    example_batch, check_batches = _DYNAMIC if dynamic_batch else _STATIC
    save, load = _EXPORTERS[fmt]
    with staged_dir(out) as tmp:
        copy_regular(run / CONFIG_NAME, tmp / CONFIG_NAME, error=ExportError)
        file = tmp / FILE_NAMES[fmt]
        example = _random_input(example_batch, input_size, seed=0)
        try:
            save(model, example, file, dynamic_batch)
            exported = load(file)
        except Exception as e:
            raise ExportError(
                f"could not export {_name(model)} to {fmt}: {type(e).__name__}: {_first_line(e)}"
                + ("; try without --dynamic-batch" if dynamic_batch else "")
            ) from e
        diffs = _compare(model, exported, check_batches, input_size, fmt)
    return DeployResult(out, out / file.name, fmt, input_size, dynamic_batch, diffs)


def _require_onnx() -> None:
    """Raise one line naming the pip command when the ``onnx`` extra is not installed."""
    missing = []
    for module in _ONNX_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(
            f"--format onnx needs {', '.join(missing)}, which is not installed; "
            f"install it with {ONNX_INSTALL}"
        )


def _input_size(config: Mapping[str, Any], where: Path) -> tuple[int, ...]:
    value = config.get("input_size")
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ExportError(
            f"{where} has input_size {value!r}, expected [channels, height, width]; "
            "re-export the run with `zoo export RUN` to record it"
        )
    return tuple(value)


def _random_input(batch: int, input_size: Sequence[int], seed: int) -> torch.Tensor:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *input_size, generator=generator)


def _compare(
    model: nn.Module,
    exported: Callable[[torch.Tensor], torch.Tensor],
    batches: Sequence[int],
    input_size: Sequence[int],
    fmt: str,
) -> dict[int, float]:
    """Max abs difference per batch size; an ExportError beyond tolerance."""
    import torch

    diffs = {}
    for batch in batches:
        x = _random_input(batch, input_size, seed=batch)
        with torch.no_grad():
            want = model(x)
            got = exported(x)
        if got.shape != want.shape:
            raise ExportError(
                f"the {fmt} export of {_name(model)} returns shape {tuple(got.shape)} for batch "
                f"{batch}, PyTorch {tuple(want.shape)}; export without --dynamic-batch"
            )
        diffs[batch] = (got - want).abs().max().item()
        if not torch.isclose(got, want, rtol=_RTOL, atol=_ATOL).all():
            raise ExportError(
                f"the {fmt} export of {_name(model)} differs from PyTorch by up to "
                f"{diffs[batch]:.2e} at batch {batch} (tolerance {_ATOL:g} + {_RTOL:g} x |y|); "
                "try another --format"
            )
    return diffs


def _name(model: nn.Module) -> str:
    return str(getattr(model, "zoo_cfg", {}).get("architecture", type(model).__name__))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else "no message"


def _dynamic_shapes(dynamic_batch: bool) -> tuple[dict[int, Any]] | None:
    import torch

    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


# -- one saver and one loader per format ------------------------------------------------------


def _save_onnx(model: nn.Module, example: torch.Tensor, file: Path, dynamic_batch: bool) -> None:
    import torch

    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    torch.onnx.export(
        model,
        (example,),
        str(file),
        dynamo=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=_dynamic_shapes(dynamic_batch),
        external_data=size > _ONNX_INLINE_BYTES,
        verbose=False,
    )


def _load_onnx(file: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnx
    import onnxruntime
    import torch

    onnx.checker.check_model(str(file))
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return run


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch.jit warns on every call that it is deprecated; the module docstring says why
    zoo still offers it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        yield


def _save_torchscript(
    model: nn.Module, example: torch.Tensor, file: Path, dynamic_batch: bool
) -> None:
    import torch

    with _quiet_jit():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(file))


def _load_torchscript(file: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    with _quiet_jit():
        module: Callable[[torch.Tensor], torch.Tensor] = torch.jit.load(str(file))
    return module


def _save_exported_program(
    model: nn.Module, example: torch.Tensor, file: Path, dynamic_batch: bool
) -> None:
    import torch

    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(dynamic_batch))
    torch.export.save(program, str(file))


def _load_exported_program(file: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    module: Callable[[torch.Tensor], torch.Tensor] = torch.export.load(str(file)).module()
    return module


_Saver = Callable[["nn.Module", "torch.Tensor", Path, bool], None]
_Loader = Callable[[Path], Callable[["torch.Tensor"], "torch.Tensor"]]
_EXPORTERS: dict[str, tuple[_Saver, _Loader]] = {
    "onnx": (_save_onnx, _load_onnx),
    "torchscript": (_save_torchscript, _load_torchscript),
    "exported-program": (_save_exported_program, _load_exported_program),
}

"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is two files in ``<run>/checkpoints/``::

    epoch-0003.safetensors   every tensor: model weights, optimizer moments, RNG states
    last.json                everything else (epoch, scheduler counters, param groups, the
                             metrics history, ...) plus the name and sha256 of the
                             safetensors file it belongs to, whose name and metadata repeat
                             the epoch (an edited ``epoch`` is refused, not trained again)

Writing order makes a crash harmless: the new safetensors file is written (atomically)
under a fresh name, then ``last.json`` is renamed over the old one, which is the commit
point, and only then is the previous safetensors file deleted. A kill at any moment leaves
a ``last.json`` that names a complete tensors file with a matching hash.

Nested state (``optimizer.state_dict()`` and friends) is split by :func:`split_tensors`:
tensors move to a flat ``{"optim/state/0/exp_avg": tensor}`` map and are replaced in the
JSON tree by ``{"__tensor__": "optim/state/0/exp_avg"}``; tuples and dicts with non-string
keys get tagged encodings, so :func:`join_tensors` rebuilds the exact structure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._fs import check_dir, read_capped
from zoo._io import atomic_open, atomic_write_bytes
from zoo.errors import RunError
from zoo.runs.files import CHECKPOINT_DIR

if TYPE_CHECKING:
    import torch

__all__ = [
    "BEST_JSON",
    "BEST_TENSORS",
    "CHECKPOINT_DIR",
    "JSON_NAME",
    "get_rng_state",
    "join_tensors",
    "load_best",
    "load_checkpoint",
    "load_record",
    "save_best",
    "save_checkpoint",
    "set_rng_state",
    "split_tensors",
]

JSON_NAME = "last.json"
BEST_TENSORS = "best.safetensors"  # the best epoch's model weights (checkpoint.keep_best)
BEST_JSON = "best.json"  # its epoch, monitored value and the tensors file's sha256
FORMAT_VERSION = 1
# Caps that refuse damage before it fills memory (the tensors of a 10^9-parameter model
# with Adam state are 16 GB).
MAX_RECORD_BYTES = 256 << 20
MAX_TENSOR_BYTES = 64 << 30


def split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of ``obj`` whose tensors are moved into ``tensors`` (CPU, contiguous)
    under slash-joined key paths starting with ``prefix``."""
    import torch

    if isinstance(obj, torch.Tensor):
        if prefix in tensors:  # only possible when a key itself contains "/"
            raise ValueError(f"two tensors would be stored under {prefix!r}")
        # copy: safetensors refuses tensors that share storage (views of one buffer)
        tensors[prefix] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: split_tensors(v, _path(prefix, k), tensors) for k, v in obj.items()}
        return {
            "__items__": [[k, split_tensors(v, _path(prefix, k), tensors)] for k, v in obj.items()]
        }
    if isinstance(obj, tuple):
        return {
            "__tuple__": [split_tensors(v, _path(prefix, i), tensors) for i, v in enumerate(obj)]
        }
    if isinstance(obj, list):
        return [split_tensors(v, _path(prefix, i), tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint {type(obj).__name__} at {prefix!r}")


def _path(prefix: str, key: Any) -> str:
    return f"{prefix}/{key}" if prefix else str(key)


def join_tensors(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {_key(k): join_tensors(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def _key(key: Any) -> Any:
    # JSON keeps int and str keys apart inside "__items__" pairs; lists (from tuples) come
    # back as tuples so they stay hashable.
    return tuple(key) if isinstance(key, list) else key


def get_rng_state() -> dict[str, Any]:
    """Every global random state a training step may draw from."""
    import numpy as np
    import torch

    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(directory: str | Path, state: Mapping[str, Any], epoch: int) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and plain values) as the checkpoint of
    ``epoch`` in ``directory``; return the path of ``last.json``."""
    from safetensors.torch import save

    directory = Path(directory)
    # never write into (or rotate files out of) a checkpoints/ that links out of the run
    check_dir(directory, error=RunError, verb="write checkpoints into")
    tensors: dict[str, torch.Tensor] = {}
    tree = split_tensors(dict(state), "", tensors)
    blob = save(tensors, metadata={"format": "pt", "epoch": str(epoch)})
    name = f"epoch-{epoch:04d}.safetensors"
    atomic_write_bytes(directory / name, blob)
    record = {
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "tensors_file": name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "state": tree,
    }
    with atomic_open(directory / JSON_NAME, "w") as f:  # the commit point
        json.dump(record, f)
    # also temporary files that a process killed mid-write left behind
    for old in [*directory.glob("epoch-*.safetensors"), *directory.glob(".*.tmp")]:
        if old.name != name:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    return directory / JSON_NAME


def load_record(directory: str | Path) -> tuple[dict[str, Any], int]:
    """The JSON part of the checkpoint in ``directory``, without reading its tensors:
    ``(state, epoch)`` with ``{"__tensor__": key}`` where tensors go. Raises as
    :func:`load_checkpoint` does."""
    directory = Path(directory)
    record = _read_record(directory)
    try:
        state = record["state"]
    except KeyError as e:
        raise RunError(
            f"checkpoint {directory / JSON_NAME} is malformed ({e!r}); start the run again"
        ) from None
    if not isinstance(state, dict):
        raise RunError(f"checkpoint {directory / JSON_NAME} is malformed; start the run again")
    return state, _epoch(directory, record)


def _epoch(directory: Path, record: Mapping[str, Any], stored: str | None = None) -> int:
    """The epoch ``record`` (last.json) says it completed, checked against the name of the
    tensors file it names and (``stored``) the epoch written inside that file: an edited or
    damaged ``epoch`` must not make a resumed run silently train an epoch again."""
    path = directory / JSON_NAME
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise RunError(
            f"checkpoint {path} is malformed (epoch {epoch!r:.40} is not a positive integer); "
            "start the run again"
        )
    name = str(record["tensors_file"])
    named = int(re.sub(r"\D", "", name))
    for source, value in ((f"the name of its tensors file {name}", named), (name, stored)):
        if value is not None and str(value) != str(epoch):
            raise RunError(
                f"checkpoint {path} says epoch {epoch}, but {source} says epoch {value}: "
                "last.json was edited or damaged; restore it or start the run again"
            )
    return epoch


def _read_record(directory: Path) -> dict[str, Any]:
    """last.json of ``directory``, checked as far as naming its tensors file."""
    path = directory / JSON_NAME
    try:
        check_dir(directory, error=RunError, verb="resume from")
        record = json.loads(read_capped(path, MAX_RECORD_BYTES, inside=directory, error=RunError))
        if not re.fullmatch(r"epoch-\d+\.safetensors", record["tensors_file"]):
            raise ValueError(f"tensors_file {record['tensors_file']!r} is not a checkpoint name")
        return dict(record)
    except FileNotFoundError as e:
        raise _incomplete(directory, e) from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:  # bad JSON too
        raise RunError(f"checkpoint {path} is unreadable ({e}); start the run again") from None


def _incomplete(directory: Path, missing: FileNotFoundError) -> RunError:
    # `zoo train --resume RUN` starts such a run over from its recorded recipe
    # (zoo.training.launch); no --force needed
    return RunError(
        f"no complete checkpoint in {directory} ({missing.filename} is missing): the run did "
        "not finish an epoch"
    )


def load_checkpoint(directory: str | Path) -> tuple[dict[str, Any], int]:
    """Read the checkpoint in ``directory``: ``(state, epoch)``. Tensors are on the CPU.
    A missing, truncated or mismatched checkpoint raises :class:`RunError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = Path(directory)
    path = directory / JSON_NAME
    record = _read_record(directory)
    try:
        blob = read_capped(directory / record["tensors_file"], MAX_TENSOR_BYTES, error=RunError)
    except FileNotFoundError as e:
        raise _incomplete(directory, e) from None
    except OSError as e:
        raise RunError(f"checkpoint {path} is unreadable ({e}); start the run again") from None
    if hashlib.sha256(blob).hexdigest() != record.get("sha256"):
        raise RunError(
            f"checkpoint {directory / record['tensors_file']} does not match the hash in {path} "
            "(corrupted or truncated); start the run again"
        )
    epoch = _epoch(directory, record, _stored_epoch(blob))
    try:
        tensors = load(blob)
        return join_tensors(record["state"], tensors), epoch
    except (KeyError, ValueError, TypeError, SafetensorError) as e:  # valid JSON, wrong shape
        raise RunError(f"checkpoint {path} is malformed ({e!r}); start the run again") from None


def _stored_epoch(blob: bytes) -> str | None:
    """The epoch :func:`save_checkpoint` wrote into the metadata of a safetensors file (None
    when it has none): the header is an 8-byte little-endian length and that much JSON."""
    try:
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + size])
        epoch = header.get("__metadata__", {}).get("epoch")
    except (ValueError, AttributeError, RecursionError):
        return None  # safetensors' own loader says what is wrong with it
    return epoch if isinstance(epoch, str) else None


def save_best(
    directory: str | Path, weights: Mapping[str, torch.Tensor], record: Mapping[str, Any]
) -> Path:
    """Write the best epoch's model ``weights`` and ``record`` (epoch, monitor, value) as
    ``best.safetensors`` + ``best.json``, each atomically, the JSON (with the tensors' hash)
    last. Call it after the epoch's checkpoint: should a crash leave ``best.json`` behind
    ``last.json``, the checkpoint's own weights are the best ones (see :func:`load_best`)."""
    from safetensors.torch import save

    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    blob = save(tensors, metadata={"format": "pt", "epoch": str(record["epoch"])})
    atomic_write_bytes(directory / BEST_TENSORS, blob)
    with atomic_open(directory / BEST_JSON, "w") as f:
        json.dump({**record, "sha256": hashlib.sha256(blob).hexdigest()}, f)
    return directory / BEST_JSON


def load_best(directory: str | Path, epoch: int) -> dict[str, torch.Tensor] | None:
    """The best weights saved for ``epoch``, or None when ``best.json`` names another epoch
    (or none). A damaged file raises :class:`RunError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = Path(directory)
    try:
        raw = read_capped(directory / BEST_JSON, MAX_RECORD_BYTES, inside=directory, error=RunError)
        record = json.loads(raw)
        if int(record["epoch"]) != epoch:
            return None
        blob = read_capped(
            directory / BEST_TENSORS, MAX_TENSOR_BYTES, inside=directory, error=RunError
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise RunError(
            f"{directory / BEST_JSON} is unreadable ({e}); start the run again"
        ) from None
    if hashlib.sha256(blob).hexdigest() != record.get("sha256"):
        return None  # written, but its record was not: an interrupted save
    try:
        return dict(load(blob))
    except (ValueError, SafetensorError) as e:
        raise RunError(
            f"{directory / BEST_TENSORS} is malformed ({e!r}); start the run again"
        ) from None

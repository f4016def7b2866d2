"""A user's dataset from an ``.npz`` file, validated with errors that say how to fix the file."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fnas.data.dataset import Dataset, check_fractions, check_seed, make_dataset, stratified_indices

SPLIT_KEYS = ("X_train", "y_train", "X_valid", "y_valid", "X_test", "y_test")


def _npz_array(data: Any, key: str, where: str) -> np.ndarray:
    try:
        return np.asarray(data[key])
    except ValueError as err:
        if "allow_pickle" in str(err):  # object arrays need pickle, which we refuse for safety
            raise ValueError(
                f"{where}: array {key!r} holds Python objects (dtype object), which cannot be read without pickle "
                "(unsafe for files from others, so fnas never does); save plain numeric arrays, e.g. "
                "np.savez(path, X=X.astype('float32'), y=y.astype('int64'))"
            ) from err
        raise ValueError(_damaged(where, f"array {key!r} cannot be read")) from err
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(_damaged(where, f"array {key!r} cannot be read")) from err


def _damaged(where: str, what: str) -> str:
    return (f"{where}: not a readable .npz archive ({what}: it is damaged or truncated, e.g. a copy or download that "
            "stopped early); write it again with np.savez(path, X=X, y=y)")


def _sniff(p: Path) -> str | None:
    """What ``p`` holds when it is not a zip (.npz) or .npy file, in a user's words; ``None`` when it is."""
    with open(p, "rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        return None
    if not head:
        return "it is empty"
    if head[:1] == b"\x80":
        return "it holds a Python pickle"
    try:
        head.decode("utf-8")
        return "it holds text (a CSV or JSON file renamed .npz?)"
    except UnicodeDecodeError:
        return "it holds other binary data"


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


def _check_y(y: np.ndarray, n: int, key: str, xkey: str, where: str, n_max: int | None = None) -> np.ndarray:
    n_max = n if n_max is None else n_max  # labels >= the sample count in all cannot be contiguous
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
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            bad = y[~(np.isfinite(y) & (y == np.round(y)))]
            raise ValueError(
                f"{where}: {key} holds {bad.size} non-integer label(s) (e.g. {bad[0].item()!r}); labels must be "
                "integers 0..K-1, remap with np.unique(y, return_inverse=True)[1] after fixing the NaN/fractional ones"
            )
        y = y.astype(np.int64)  # integral floats (common after pandas round trips) are fine
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: {key} has dtype {y.dtype}; labels must be integers 0..K-1, map class "
            "names to ints first (e.g. np.unique(labels, return_inverse=True)[1])"
        )
    if y.dtype.kind == "i" and y.min() < 0:
        raise ValueError(
            f"{where}: {key} has negative labels {np.unique(y[y < 0])[:10].tolist()}; labels "
            "must be 0..K-1, remap with np.unique(y, return_inverse=True)[1]"
        )
    if y.max() >= n_max:  # more classes than any split could hold (also keeps uint64 labels in int64)
        raise ValueError(
            f"{where}: {key} has label {int(y.max())}, more classes than samples; labels must be 0..K-1, "
            "remap with np.unique(y, return_inverse=True)[1]"
        )
    return y.astype(np.int64)


def _check_contiguous(y_all: np.ndarray, y_train: np.ndarray, where: str) -> int:
    k = int(y_all.max()) + 1
    if k > y_all.size:  # more classes than samples: some never occur (and np.arange(k) could be huge)
        raise ValueError(
            f"{where}: labels must cover 0..K-1 contiguously but the largest is {k - 1} with only {y_all.size} "
            "samples in all; remap with np.unique(y, return_inverse=True)[1]"
        )
    missing = np.setdiff1d(np.arange(k), y_all).tolist()
    if missing:
        raise ValueError(
            f"{where}: labels must cover 0..{k - 1} contiguously but class(es) {missing[:20]} "
            "never occur; remap with np.unique(y, return_inverse=True)[1]"
        )
    if k < 2:
        raise ValueError(f"{where}: only one class (0) found; classification needs at least 2")
    missing_train = np.setdiff1d(np.arange(k), y_train).tolist()
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
    if p.is_dir():
        raise ValueError(f"{where}: is a folder; give the path of the .npz file")
    if not p.is_file():
        raise ValueError(f"{where}: no such file; check the path (cwd is {os.getcwd()})")
    what = _sniff(p)
    if what is not None:
        raise ValueError(
            f"{where}: not a readable .npz archive ({what}); an .npz is a zip of numeric arrays: write it with "
            "np.savez(path, X=X, y=y)"
        )
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(_damaged(where, "cannot be opened")) from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{where}: file holds a single .npy array, not an .npz archive; write it with "
            "np.savez(path, X=X, y=y)"
        )
    with data:
        keys = set(data.files)
        present = [k for k in SPLIT_KEYS if k in keys]
        if present:
            absent = [k for k in SPLIT_KEYS if k not in keys]
            if absent:
                raise ValueError(
                    f"{where}: explicit splits need all of {list(SPLIT_KEYS)} but {absent} "
                    f"are missing (keys found: {sorted(keys)}); add them, or store only X and y "
                    "for an automatic split"
                )
            arrays = {k: _npz_array(data, k, where) for k in SPLIT_KEYS}
        elif "X" in keys and "y" in keys:
            arrays = {k: _npz_array(data, k, where) for k in ("X", "y")}
        else:
            raise ValueError(
                f"{where}: missing keys {[k for k in ('X', 'y') if k not in keys]} (keys found: "
                f"{sorted(keys)}); store X and y (np.savez(path, X=X, y=y)) or all of "
                f"{list(SPLIT_KEYS)}"
            )
        class_names_raw = _npz_array(data, "class_names", where) if "class_names" in keys else None

    if present:
        parts = []
        total = sum(arrays[k].size for k in ("y_train", "y_valid", "y_test"))
        for xk, yk in (("X_train", "y_train"), ("X_valid", "y_valid"), ("X_test", "y_test")):
            x = _check_x(arrays[xk], xk, where)
            parts.append((x, _check_y(arrays[yk], x.shape[0], yk, xk, where, total)))
        shapes = {k: p_[0].shape[1:] for k, p_ in zip(("X_train", "X_valid", "X_test"), parts)}
        if len(set(shapes.values())) != 1:
            raise ValueError(
                f"{where}: per-sample shapes differ between splits {shapes}; all splits need "
                "the same channels and length/size"
            )
        y_all = np.concatenate([y for _, y in parts])
        k = _check_contiguous(y_all, parts[0][1], where)
    else:
        fv, ft = check_fractions(valid_fraction, test_fraction)
        rng = np.random.default_rng(check_seed(seed))
        x = _check_x(arrays["X"], "X", where)
        y = _check_y(arrays["y"], x.shape[0], "y", "X", where)
        k = _check_contiguous(y, y, where)
        idx = stratified_indices(y, (fv, ft), rng, every_class_everywhere=True, what=where)
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
    return make_dataset(f"npz:{p.stem}", parts, k, names, standardize=True)

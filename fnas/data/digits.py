"""scikit-learn's bundled 8x8 handwritten digits as 1-channel images."""

from __future__ import annotations

import numpy as np

from fnas.data.dataset import Dataset, check_fractions, check_seed, make_dataset, stratified_indices
from fnas.data.optional import MissingDependencyError


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
    fv, ft = check_fractions(valid_fraction, test_fraction)
    rng = np.random.default_rng(check_seed(seed))
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise MissingDependencyError(
            "load_digits needs scikit-learn; install it with `pip install scikit-learn`"
        ) from err
    x, y = _sk_load_digits(return_X_y=True)
    x = (x.astype(np.float64) / 16.0).reshape(-1, 1, 8, 8)
    tr, va, te = stratified_indices(
        y, (fv, ft), rng, every_class_everywhere=True, what="load_digits"
    )
    parts = [(x[i], y[i]) for i in (tr, va, te)]
    return make_dataset("digits", parts, 10, [str(d) for d in range(10)], standardize=True)

"""Bundled real datasets (smartwatch IMU, sklearn digits, UCR, user .npz) and DataLoader helpers.

Every loader returns a :class:`Dataset` of float32 ``(N, C, T, 1)`` / ``(N, C, H, W)`` tensors and
int64 labels in ``0..K-1``; where inputs are standardised, only train-split statistics are used.
The package is a leaf: it imports nothing of fnas but :func:`fnas.core.checks.check_input`.
"""

from fnas.core.checks import check_input  # re-exported: part of the data API
from fnas.data.dataset import Dataset, Split, merge_splits
from fnas.data.digits import load_digits
from fnas.data.loaders import load_dataset, make_loader
from fnas.data.npz import load_npz
from fnas.data.optional import MissingDependencyError
from fnas.data.ucr import list_ucr_datasets, load_ucr
from fnas.data.watch import load_watch

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

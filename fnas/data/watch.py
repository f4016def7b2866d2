"""The smartwatch IMU exercise data shipped inside ``seglearn``, windowed and split by subject."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fnas.data import optional
from fnas.data.dataset import Dataset, make_dataset
from fnas.data.optional import MissingDependencyError

WATCH_SUBJECTS = tuple(range(1, 11))


def _watch_file() -> Path:
    pkg = optional.package_dir("seglearn")
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
    return make_dataset("watch", parts, len(names), names, standardize=bool(normalize))

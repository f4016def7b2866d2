"""Bad input, fuzzed (hypothesis), through ``fnas.cli.main`` in-process: every case exits 2 with one line on
stderr that names the problem, never a traceback or a numpy/torch message, and writes nothing.

Three boundaries: a user's ``.npz`` data file, a genotype JSON file (cell and chain), and the options of
``fnas search / train / show / export``. Every generated case is invalid by construction.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fnas.cli import main
from fnas.search import HYPERGRADS, SELECTIONS
from fnas.spaces.cell.genotype import MY_CUSTOM_GENOTYPE, save_genotype

pytestmark = pytest.mark.usefixtures("single_thread")

# the genotype fuzz's strategies (tests/spaces has no __init__, so load the module by path)
_spec = importlib.util.spec_from_file_location(
    "genotype_fuzz", Path(__file__).parents[1] / "spaces" / "test_genotype_fuzz.py")
GF = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(GF)

CELL = ["--space", "cell", "--C", "4", "--layers", "3", "--nodes", "2", "--multiplier", "2", "--stem-multiplier", "1",
        "--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0", "--train-epochs", "0", "--quiet"]
CHAIN = ["--widths", "4,4", "--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0", "--train-epochs", "0",
         "--quiet"]
# words of numpy's, torch's and Python's own errors that must never reach the user
LEAKS = ("Traceback", "allow_pickle", "pickled", "weights_only", "numpy", "np.float", "np.int", "dtype('",
         "Error:", "Errno", "codec", "zip file", "Expected one of", "torch.")
N, C, T, K = 24, 2, 8, 3
SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
_serial = itertools.count()


@pytest.fixture(scope="module")
def tally(request):
    """``tally[what] += 1`` per example or kill; the module's totals are printed when it ends (as the
    "reliability tally" that docs/reliability.md quotes). Here, not in a conftest.py: a second conftest
    module would shadow ``from conftest import ...`` in other test folders."""
    counts: Counter = Counter()
    yield counts
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n--- reliability tally ({request.module.__name__})")
        for what, count in sorted(counts.items()):
            print(f"{what}: {count}")


def run_fnas(*argv) -> tuple[int, str]:
    """``fnas ARGV`` in-process; returns (exit code, stderr). An exception escaping ``main`` fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def assert_rejected(command: str, argv: list, *, nothing_at: Path | None = None) -> str:
    """Exit 2, one ``fnas COMMAND: error: ...`` line with no leaked library text, ``nothing_at`` not created."""
    code, err = run_fnas(command, *argv)
    assert code == 2, f"fnas {command} {' '.join(map(str, argv))} -> exit {code}: {err}"
    assert err.startswith(f"fnas {command}: error: ") and err.endswith("\n"), err
    assert err.count("\n") == 1, err
    leaked = [w for w in LEAKS if w in err]
    assert not leaked, (leaked, err)
    assert len(err) > len(f"fnas {command}: error: ") + 20, err  # says something
    if nothing_at is not None:
        assert not nothing_at.exists(), err
    return err


def _valid() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, C, T)).astype(np.float32), np.arange(N) % K


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --- (a) .npz data files ------------------------------------------------------------------------

WRONG_DTYPES = st.sampled_from(["object", "str", "complex", "datetime64[s]", "V4"])
BAD_FLOATS = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def bad_npz(draw) -> tuple[str, object]:
    """(what is wrong, how to write the file): one defect applied to a valid X (N, C, T), y."""
    x, y = _valid()
    kind = draw(st.sampled_from([
        "keys", "x_dtype", "y_dtype", "x_rank", "y_rank", "non_finite", "empty", "lengths", "negative",
        "fractional", "label_gap", "huge_label", "text", "pickle", "npy", "truncated", "bytes", "splits", "overflow",
    ]))
    arrays = {"X": x, "y": y}
    if kind == "keys":
        names = st.text("abcdefgXYZ_xy0123", min_size=1, max_size=8).filter(lambda k: k not in ("X", "y"))
        keep = draw(st.sampled_from(["X", "y", None]))
        arrays = {(k if k == keep else draw(names)): v for k, v in arrays.items()}
    elif kind == "x_dtype":
        arrays["X"] = x.astype(draw(WRONG_DTYPES))
    elif kind == "y_dtype":
        arrays["y"] = y.astype(draw(WRONG_DTYPES | st.sampled_from(["bool", "complex64"])))
    elif kind == "x_rank":
        rank = draw(st.sampled_from([0, 1, 2, 5, 6]))
        arrays["X"] = np.zeros((N,) + (2,) * (rank - 1), np.float32) if rank else np.float32(1.0)
    elif kind == "y_rank":
        arrays["y"] = np.eye(K)[y] if draw(st.booleans()) else np.int64(1)  # one-hot, or a scalar
    elif kind == "non_finite":
        idx = tuple(draw(st.integers(0, s - 1)) for s in x.shape)
        x = x.copy()
        x[idx] = draw(BAD_FLOATS)
        arrays["X"] = x
    elif kind == "empty":
        axis = draw(st.integers(0, 2))
        shape = list(x.shape)
        shape[axis] = 0
        arrays = {"X": np.zeros(shape, np.float32), "y": y[: shape[0]]}
    elif kind == "lengths":
        arrays["y"] = np.resize(y, draw(st.integers(1, 2 * N).filter(lambda n: n != N)))
    elif kind == "negative":
        y = y.copy()
        y[draw(st.integers(0, N - 1))] = draw(st.integers(-(2 ** 63), -1))
        arrays["y"] = y
    elif kind == "fractional":
        y = y.astype(np.float64)
        y[draw(st.integers(0, N - 1))] = draw(st.floats(0, K, exclude_min=True).filter(lambda v: v != round(v))
                                              | BAD_FLOATS)
        arrays["y"] = y
    elif kind == "label_gap":  # a class beyond K: class K never occurs
        y = y.copy()
        y[draw(st.integers(0, N - 1))] = draw(st.integers(K + 1, N + 5))
        arrays["y"] = y
    elif kind == "huge_label":
        y = y.astype(np.uint64)
        y[draw(st.integers(0, N - 1))] = draw(st.integers(N, 2 ** 64 - 1))
        arrays["y"] = y
    elif kind == "splits":
        splits = {"X_train": x, "y_train": y, "X_valid": x, "y_valid": y, "X_test": x, "y_test": y}
        if draw(st.booleans()):
            del splits[draw(st.sampled_from(sorted(splits)))]
        else:
            splits["X_valid"] = x[:, :1]
        arrays = splits
    elif kind == "overflow":
        arrays["X"] = x.astype(np.float64) * draw(st.sampled_from([1e300, 1e250, 1e200]))
    if kind == "text":
        text = draw(st.text(min_size=0, max_size=200))
        return kind, lambda p: p.write_text(text)
    if kind == "pickle":
        return kind, lambda p: p.write_bytes(pickle.dumps(arrays))
    if kind == "npy":
        return kind, lambda p: np.save(open(p, "wb"), x)  # noqa: SIM115 - np.save closes nothing; fine for a test
    if kind == "bytes":
        data = draw(st.binary(max_size=300))
        return kind, lambda p: p.write_bytes(data)
    if kind == "truncated":
        cut = draw(st.floats(0.05, 0.98))

        def write(p: Path) -> None:
            np.savez(p, X=x, y=y)
            raw = p.read_bytes()
            p.write_bytes(raw[: int(cut * len(raw))])

        return kind, write
    return kind, lambda p: np.savez(p, **arrays)


@settings(max_examples=150, **SETTINGS)
@given(case=bad_npz())
def test_bad_npz_files_exit_2_with_one_clear_line(case, folder, tally):
    kind, write = case
    path = folder / f"data{next(_serial)}.npz"
    write(path)
    assert_rejected("search", ["--data", path, "--out", folder / "run", *CELL], nothing_at=folder / "run")
    tally["npz files (search --data)"] += 1
    tally[f"npz files (search --data), defect {kind}"] += 1


# --- (b) genotype JSON files ---------------------------------------------------------------------


def _targeted(base: dict, space: str):
    """Mutations users make by hand: string indices, unknown ops, out-of-range inputs, wrong types."""
    if space == "cell":
        def mutate(cell: str, node: int, how: str, junk):
            doc = json.loads(json.dumps(base))
            op, idx = doc[cell][node]
            doc[cell][node] = {"string_index": [op, str(idx)], "unknown_op": [str(junk) + "_op", idx],
                               "out_of_range": [op, node + 1 + abs(int(junk)) % 50], "negative": [op, -1 - abs(int(junk)) % 5],
                               "wrong_type": junk, "float_index": [op, idx + 0.5]}[how]
            return doc

        return st.builds(mutate, st.sampled_from(["normal", "reduce"]), st.integers(0, 3),
                         st.sampled_from(["string_index", "unknown_op", "out_of_range", "negative", "wrong_type",
                                          "float_index"]), st.integers(-99, 99))

    def mutate_chain(block: int, how: str, junk):
        doc = json.loads(json.dumps(base))
        op, width = doc["blocks"][block]
        doc["blocks"][block] = {"string_width": [op, str(width)], "unknown_op": [f"conv_k{2 * abs(junk) + 4}_x", width],
                                "zero_width": [op, -abs(junk)], "wrong_type": junk, "float_width": [op, width + 0.5],
                                "short": [op]}[how]
        return doc

    return st.builds(mutate_chain, st.integers(0, 3),
                     st.sampled_from(["string_width", "unknown_op", "zero_width", "wrong_type", "float_width", "short"]),
                     st.integers(-99, 99))


def _documents(base: dict, space: str):
    """JSON text: a targeted mutation, the genotype fuzz's mutations, or malformed text (cut or garbled)."""
    as_text = st.builds(lambda d: json.dumps(d, allow_nan=True), _targeted(base, space) | GF._mutations(base))
    text = json.dumps(base)
    cut = st.integers(0, len(text) - 1).map(lambda n: text[:n])
    garbled = st.builds(lambda n, s: text[:n] + s + text[n:], st.integers(0, len(text)), st.sampled_from(
        ["'", ",,", "}", "[", "NaN", "\x00", "\\", "0x1"]))
    return as_text | cut | garbled | st.text(max_size=40)


def _genotype_case(text: str, folder: Path, tally, space: str) -> None:
    path = folder / f"genotype{next(_serial)}.json"
    path.write_text(text)
    missing = folder / "no_such_data.npz"  # a genotype the parser accepts is stopped by the data instead
    err = assert_rejected("train", [path, "--out", folder / "trained", "--data", missing, "--epochs", "1"],
                          nothing_at=folder / "trained")
    tally[f"genotype files ({space})"] += 1
    if str(missing) not in err:
        tally[f"genotype files ({space}), rejected for the genotype itself"] += 1


@settings(max_examples=100, **SETTINGS)
@given(text=_documents(GF.CELL, "cell"))
def test_bad_cell_genotype_files_exit_2(text, folder, tally):
    _genotype_case(text, folder, tally, "cell")


@settings(max_examples=100, **SETTINGS)
@given(text=_documents(GF.CHAIN, "chain"))
def test_bad_chain_genotype_files_exit_2(text, folder, tally):
    _genotype_case(text, folder, tally, "chain")


# --- (c) command-line options ----------------------------------------------------------------------

NOT_INT = st.sampled_from(["x", "1.5", "", "1e3", "nan", "--", "0x10", "1_0.5"])
NOT_NUMBER = st.sampled_from(["x", "", "nan", "inf", "-inf", "1e400", "--", "1,5"])


def _ints_below(low: int):
    return st.integers(max_value=low - 1).map(str) | NOT_INT


def _floats_outside(low: float = 0.0, high: float | None = None, *, open_low: bool = False):
    below = st.floats(max_value=low, allow_nan=False, allow_infinity=False).filter(
        lambda v: v < low or (open_low and v == low))
    out = below | NOT_NUMBER
    if high is not None:
        out |= st.floats(min_value=high, allow_nan=False, allow_infinity=False)
    return out.map(str)


def _not_one_of(choices):
    return st.text(min_size=1, max_size=8).filter(lambda t: t not in choices)


SEARCH = {
    "--batch-size": _ints_below(1), "--C": _ints_below(1), "--layers": _ints_below(1), "--nodes": _ints_below(1),
    "--multiplier": _ints_below(1), "--stem-multiplier": _ints_below(1), "--partial-channels": _ints_below(1),
    "--unroll-steps": _ints_below(1), "--checkpoint-every": _ints_below(0), "--train-epochs": _ints_below(0),
    "--seed": _ints_below(0), "--threads": _ints_below(0), "--max-params": _ints_below(1),
    "--max-macs": _ints_below(1), "--max-sram": _ints_below(1), "--epochs": _ints_below(1).filter(lambda v: v != ""),
    "--warmup-epochs": st.integers(max_value=-1).map(str) | st.sampled_from(["x", "1.5", "autox"]),
    "--lr": _floats_outside(), "--lr-min": _floats_outside(), "--momentum": _floats_outside(0.0, 1.0),
    "--weight-decay": _floats_outside(), "--grad-clip": _floats_outside(open_low=True), "--arch-lr": _floats_outside(),
    "--arch-weight-decay": _floats_outside(), "--train-lr": _floats_outside(open_low=True),
    "--penalty-weight": _floats_outside(), "--beta-weight": _floats_outside(),
    "--hypergrad": _not_one_of(HYPERGRADS), "--selection": _not_one_of(SELECTIONS),
    "--space": _not_one_of(("chain", "cell")), "--mode": st.sampled_from(["foo", "Memory+", "Memroy", "MACs", "+"]),
    "--primitives": st.sampled_from(["foo", ",", "conv_3x3,foo", "none,none"]),
    "--reductions": st.sampled_from(["9", "-1", "x", "0,0"]), "--device": st.sampled_from(["foo", "cuda:x", "-1", "gpu"]),
}
# pairs of options that contradict each other or the data
CONFLICTS = st.sampled_from([
    ["--space", "chain", "--C", "4"], ["--space", "chain", "--nodes", "2"],
    ["--space", "cell", "--widths", "8,8"], ["--space", "cell", "--kernels", "3"],
    ["--epochs", "2", "--warmup-epochs", "2"], ["--epochs", "1", "--warmup-epochs", "5"],
    ["--batch-size", "1000"], ["--lr", "0.01", "--lr-min", "0.1"],
    ["--mode", "Memory", "--penalty-weight", "1", "--max-params", "1"],
    ["--space", "chain", "--widths", "8,8", "--kernels", "4"], ["--space", "chain", "--widths", "8,8", "--strides", "0,1"],
    ["--space", "chain", "--widths", "8,8", "--width-fractions", "0"], ["--space", "chain", "--widths", "8,8", "--op-types", "foo"],
    ["--space", "chain", "--widths", "0,8"], ["--partial-channels", "3"], ["--resume", "NOT_A_RUN"],
    ["--config", "NOT_A_RUN"],
])
TRAIN = {"--epochs": _ints_below(1), "--batch-size": _ints_below(1), "--lr": _floats_outside(open_low=True),
         "--seed": _ints_below(0), "--C": _ints_below(1), "--layers": _ints_below(1),
         "--stem-multiplier": _ints_below(1), "--threads": _ints_below(0), "--device": SEARCH["--device"]}
EXPORT = {"--opset": st.integers(max_value=17).map(str) | NOT_INT, "--calib-samples": _ints_below(1),
          "--seed": _ints_below(0), "--threads": _ints_below(0), "--calib-split": st.sampled_from(["test", "x", ""]),
          "--format": st.sampled_from(["onnx2", "tf", ""])}


def _one_bad(table: dict):
    return st.sampled_from(sorted(table)).flatmap(lambda opt: table[opt].map(lambda v: [opt, v]))


@pytest.fixture(scope="module")
def data(folder) -> Path:
    path = folder / "ok.npz"
    x, y = _valid()
    np.savez(path, X=x, y=y)
    return path


@pytest.fixture(scope="module")
def genotype(folder) -> Path:
    path = folder / "ok_genotype.json"
    save_genotype(MY_CUSTOM_GENOTYPE, path)
    return path


def _swap(argv: list, data: Path, folder: Path) -> list:
    return [str(data) if a == "DATA" else str(folder / "not_a_run") if a == "NOT_A_RUN" else a for a in argv]


@settings(max_examples=150, **SETTINGS)
@given(bad=_one_bad(SEARCH) | CONFLICTS, space=st.sampled_from([CELL, CHAIN]))
def test_bad_search_options_exit_2(bad, space, data, folder, tally):
    out = folder / f"search_run{next(_serial)}"
    # the bad option last, so it overrides the tiny space's own choice of the same option
    assert_rejected("search", ["--data", data, "--out", out, *space, *[f"{a}" for a in _swap(bad, data, folder)]],
                    nothing_at=out)
    tally["CLI option sets: search"] += 1


@settings(max_examples=80, **SETTINGS)
@given(bad=_one_bad(TRAIN) | st.sampled_from([["--C", "4", "CHAIN"], ["--out", "DATA"]]))
def test_bad_train_options_exit_2(bad, data, genotype, folder, tally):
    source = genotype
    if "CHAIN" in bad:  # size options of a cell network on a chain genotype
        source = folder / "chain_genotype.json"
        source.write_text(json.dumps(GF.CHAIN))
        bad = [a for a in bad if a != "CHAIN"]
    out = folder / f"train_run{next(_serial)}"
    argv = [source, "--data", data, *(["--out", out] if "--out" not in bad else []), *_swap(bad, data, folder)]
    assert_rejected("train", argv, nothing_at=out)
    tally["CLI option sets: train"] += 1


@settings(max_examples=50, **SETTINGS)
@given(bad=_one_bad(EXPORT), target=st.sampled_from(["run", "missing", "file", "empty", "garbage"]))
def test_bad_export_and_show_arguments_exit_2(bad, target, data, folder, tally):
    path = {"run": folder, "missing": folder / "nowhere", "file": data, "empty": folder / "empty",
            "garbage": folder / "garbage"}[target]
    (folder / "empty").mkdir(exist_ok=True)
    (folder / "garbage").mkdir(exist_ok=True)
    (folder / "garbage" / "config.json").write_text('{"cli": 3, "search": [')
    (folder / "garbage" / "genotype.json").write_text("[]")
    out = folder / f"exported{next(_serial)}"
    assert_rejected("export", [path, "--out", out, *bad], nothing_at=out)
    tally["CLI option sets: export"] += 1
    if target != "run":
        assert_rejected("show", [path])
        tally["CLI option sets: show"] += 1


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b"{not json", b'{"cli": {}}', b"[]"])
def test_bad_replayed_config_exit_2(content, data, folder, tally):
    config = folder / f"config{next(_serial)}.json"
    config.write_bytes(content)
    out = folder / f"replay{next(_serial)}"
    err = assert_rejected("search", ["--config", config, "--data", data, "--out", out], nothing_at=out)
    assert "codec" not in err and "is not the config.json of an `fnas search` run" in err
    tally["CLI option sets: search --config"] += 1

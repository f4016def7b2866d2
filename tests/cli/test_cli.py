"""The ``fnas`` command driven as a user would: ``fnas.cli.main(argv)`` on tiny runs of a user .npz."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from fnas.app.runs import open_run
from fnas.cli import main
from fnas.cost import genotype_cost
from fnas.spaces.cell.genotype import Genotype_CNN, load_genotype, save_genotype

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--space", "cell", "--C", "4", "--layers", "3", "--nodes", "2", "--multiplier", "2", "--stem-multiplier",
        "1", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0", "--quiet"]
PNG = b"\x89PNG\r\n\x1a\n"


def fnas(*argv) -> tuple[int, str, str]:
    """Run ``fnas ARGV``; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def series(n: int, channels: int, length: int, classes: int, seed: int = 0):
    """Learnable toy time series: class k is a noisy sine with k + 1 periods."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    t = np.arange(length)
    phase = rng.uniform(0, 2 * np.pi, (n, channels, 1))
    x = np.sin(2 * np.pi * (y[:, None, None] + 1) * t / length + phase)
    return (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32), y


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """The user's own data: X (N, C, T) and y, split automatically."""
    path = tmp_path_factory.mktemp("data") / "mydata.npz"
    x, y = series(90, 2, 16, 3)
    np.savez(path, X=x, y=y)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, npz):
    """``fnas search --train-epochs 0`` then ``fnas train RUN``: a trained run folder."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    code, out, err = fnas("search", "--data", npz, "--out", folder, "--train-epochs", "0", *TINY)
    assert code == 0, err
    assert "not trained yet" in out and f"fnas train {folder}" in out
    assert not (folder / "model.pt").exists()
    code, out, err = fnas("train", folder, "--epochs", "2", "--quiet")
    assert code == 0, err
    return folder


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["search", "train", "show", "export"])
def test_every_command_has_help(command):
    code, out, _ = fnas(command, "--help")
    assert code == 0
    assert out.startswith(f"usage: fnas {command}")


def test_no_command_is_a_usage_error():
    code, _, err = fnas()
    assert code == 2 and "usage: fnas" in err


# --- the round trip on the user's data ---------------------------------------------------------


def test_search_writes_a_run_folder(run, npz):
    for name in ("config.json", "genotype.json", "metrics.jsonl", "alphas.pt", "checkpoint.pt", "model.pt",
                 "summary.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["cli"]["data"] == str(npz.resolve())  # absolute: a replay works from anywhere
    assert config["search"]["space"]["in_channels"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["search", "train", "train"]
    assert {"train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "genotype"} <= set(records[0])
    alphas = torch.load(run / "alphas.pt", weights_only=True)
    assert len(alphas) == 1 and alphas[0]["normal"].shape == (3, 7)  # 2 nodes: 3 edges; 7 primitives
    torch.testing.assert_close(alphas[0]["normal"].sum(-1), torch.ones(3))
    for name in ("alphas_normal.png", "alphas_reduce.png", "cells.png", "curves.png"):
        assert (run / "plots" / name).read_bytes()[:8] == PNG, name


def test_search_compile_runs_the_compiled_step(npz, tmp_path, monkeypatch):
    """``--compile`` reaches run_search; the backend is swapped for aot_eager (inductor takes minutes)."""
    import fnas.search.loop as search_module

    calls = []
    original = search_module.compile_search_step

    def spy(cfg, *, backend="inductor", **kw):
        calls.append(backend)
        return original(cfg, backend="aot_eager", **kw)

    monkeypatch.setattr(search_module, "compile_search_step", spy)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the compile cache, not the user's
    torch._dynamo.reset()
    folder = tmp_path / "run"
    code, _, err = fnas("search", "--data", npz, "--out", folder, "--train-epochs", "0", "--compile", *TINY)
    assert code == 0, err
    assert calls == ["inductor"]
    assert json.loads((folder / "config.json").read_text())["cli"]["compile"] is True
    assert (folder / "genotype.json").is_file()


def test_show_prints_genotype_exact_cost_accuracy_and_plots(run):
    code, out, err = fnas("show", run)
    assert code == 0, err
    genotype = load_genotype(run / "genotype.json")
    summary = json.loads((run / "summary.json").read_text())
    cost = genotype_cost(genotype, open_run(run).space)
    assert f"{cost.params:,} parameters" in out and f"{cost.macs:,} MACs" in out
    assert f"{cost.peak_sram_bytes_int8:,} B int8" in out and f"{cost.peak_sram_bytes_f32:,} B float32" in out
    assert f"{summary['test_acc']:.4f} on the held-out test split" in out
    # the search's time (all of it, see resume) and, where it took a second or more, the selection's share
    assert 0 <= summary["selection_seconds"] <= summary["search_seconds"]
    select = f", genotype selection {summary['selection_seconds']:.0f} s of them" if summary["selection_seconds"] >= 1 else ""
    assert f"1 epochs in {summary['search_seconds']:.0f} s{select};" in out
    assert summary["params"] == cost.params
    for op, _ in genotype.normal:
        assert op in out
    for name in ("alphas_normal.png", "alphas_reduce.png", "cells.png", "curves.png"):
        assert str(run / "plots" / name) in out


def test_show_draws_missing_plots(run):
    (run / "plots" / "cells.png").unlink()
    code, out, _ = fnas("show", run)
    assert code == 0
    assert (run / "plots" / "cells.png").read_bytes()[:8] == PNG


def test_train_never_overwrites_a_trained_run(run):
    before = (run / "model.pt").read_bytes()
    code, _, err = fnas("train", run, "--epochs", "1", "--quiet")
    assert code == 2
    assert "already holds a trained model.pt" in err and "--out" in err
    assert (run / "model.pt").read_bytes() == before


def test_train_a_run_again_into_a_new_folder(run, tmp_path):
    out = tmp_path / "bigger"
    code, stdout, err = fnas("train", run, "--out", out, "--epochs", "1", "--C", "6", "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert "held-out test split" in stdout and 0.0 <= summary["test_acc"] <= 1.0
    code, shown, _ = fnas("show", out)  # the new folder is a run folder too
    assert code == 0 and "C=6" in shown and f"{summary['params']:,} parameters" in shown


def test_train_a_bare_genotype_on_explicit_splits(tmp_path):
    x, y = series(48, 3, 12, 2, seed=1)
    data = tmp_path / "splits.npz"
    np.savez(data, X_train=x[:24], y_train=y[:24], X_valid=x[24:36], y_valid=y[24:36], X_test=x[36:], y_test=y[36:])
    genotype = Genotype_CNN([("conv_bn_relu_3x1", 0), ("max_pool_3x1", 1)], range(1, 3),
                            [("skip_connect", 0), ("conv_bn_relu_5x1", 1)], range(1, 3))
    save_genotype(genotype, tmp_path / "g.json")
    out = tmp_path / "trained"
    code, stdout, err = fnas("train", tmp_path / "g.json", "--data", data, "--out", out, "--epochs", "1",
                             "--C", "4", "--layers", "3", "--stem-multiplier", "1", "--batch-size", "8", "--quiet")
    assert code == 0, err
    assert "12 samples" in stdout  # the given test split, not an automatic one
    # a bare genotype carries no space: one line says which one it is trained in, and how to choose another
    assumed = [line for line in stdout.splitlines() if line.startswith("assumed")]
    assert assumed == [f"assumed   the cell space C=4, layers 3, stem multiplier 1: {tmp_path / 'g.json'} holds a bare "
                       "genotype without the space it was searched in; choose with --C, --layers, --stem-multiplier"]
    assert load_genotype(out / "genotype.json") == genotype
    assert (out / "model.pt").is_file() and (out / "plots" / "cells.png").is_file()


def test_train_a_searched_genotype_file_rebuilds_its_space_on_its_data(run, npz, tmp_path):
    """Issue 16: ``fnas train genotype.json`` trained the default space (C=8) on the watch data."""
    saved = json.loads((run / "genotype.json").read_text())
    assert saved["space"] == "cell" and saved["space_config"] == json.loads((run / "config.json").read_text())[
        "search"]["space"]
    assert saved["data"] == {"spec": str(npz.resolve()), "name": "npz:mydata", "in_channels": 2, "input_shape": [16, 1],
                             "num_classes": 3}
    assert load_genotype(run / "genotype.json") == open_run(run).genotype  # the seed's reader still reads it
    out = tmp_path / "again"
    code, stdout, err = fnas("train", run / "genotype.json", "--out", out, "--epochs", "1", "--quiet")
    assert code == 0, err
    assert "assumed" not in stdout and "npz:mydata" in stdout
    assert open_run(out).space == open_run(run).space
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"] == json.loads((run / "summary.json").read_text())["params"]
    assert json.loads((out / "genotype.json").read_text())["data"] == saved["data"]  # and it passes both on
    code, usage, _ = fnas("train", "--help")
    usage = " ".join(usage.split())  # argparse wraps the description at the terminal's width
    assert code == 0 and "carries the space it was searched in" in usage and "says what it assumed" in usage


def test_train_a_genotype_file_on_data_it_does_not_fit(run, npz, tmp_path):
    images = tmp_path / "images.npz"
    np.savez(images, X=np.random.default_rng(0).standard_normal((60, 1, 8, 8)).astype(np.float32), y=np.arange(60) % 3)
    code, _, err = fnas("train", run / "genotype.json", "--data", images, "--out", tmp_path / "out")
    assert code == 2
    assert "searched in a cell space for 2 channels, input (16, 1), 3 classes) does not fit npz:images" in err
    assert f"--data {npz.resolve()}" in err
    assert not (tmp_path / "out").exists()


def test_config_replays_a_search(run, tmp_path):
    out = tmp_path / "replay"
    code, _, err = fnas("search", "--config", run / "config.json", "--out", out, "--train-epochs", "0")
    assert code == 0, err
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][0]
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert again["genotype"] == first["genotype"]
    assert again["train_loss"] == pytest.approx(first["train_loss"], rel=1e-6)
    saved = json.loads((out / "config.json").read_text())["cli"]
    assert saved["C"] == 4 and saved["train_epochs"] == 0  # replayed, and the override applied


# --- bad input: exit 2, a message naming the problem, nothing written -----------------------------


def _bad_npz(tmp_path, kind: str):
    path = tmp_path / f"{kind}.npz"
    x, y = series(30, 2, 16, 3)
    if kind == "missing":
        return path
    if kind == "not_an_npz":
        path.write_text("hello")
    elif kind == "wrong_keys":
        np.savez(path, inputs=x, y=y)
    elif kind == "wrong_rank":
        np.savez(path, X=x[:, 0], y=y)
    elif kind == "nan":
        x[3, 1, 4] = np.nan
        np.savez(path, X=x, y=y)
    elif kind == "labels_gap":
        np.savez(path, X=x, y=y * 2)
    elif kind == "negative_labels":
        np.savez(path, X=x, y=y - 1)
    elif kind == "too_few":
        np.savez(path, X=x[:5], y=np.array([0, 0, 0, 1, 1]))
    elif kind == "split_missing":
        np.savez(path, X_train=x, y_train=y, X_valid=x, y_valid=y, X_test=x)
    return path


BAD_DATA = {
    "missing": "no such file",
    "not_an_npz": "not a readable .npz",
    "wrong_keys": "missing keys ['X']",
    "wrong_rank": "rank 2",
    "nan": "non-finite",
    "labels_gap": "0..4 contiguously",
    "negative_labels": "negative labels",
    "too_few": "fewer than 3 samples",
    "split_missing": "y_test",
}


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_search_rejects_bad_npz(tmp_path, kind):
    path = _bad_npz(tmp_path, kind)
    code, out, err = fnas("search", "--data", path, "--out", tmp_path / "run", *TINY)
    assert code == 2
    assert err.startswith("fnas search: error:") and BAD_DATA[kind] in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec, message", [("mnist", "unknown dataset spec 'mnist'"),
                                           ("ucr:NoSuchSet", "NoSuchSet")], ids=["name", "ucr"])
def test_search_rejects_unknown_datasets(tmp_path, spec, message):
    code, _, err = fnas("search", "--data", spec, "--out", tmp_path / "run", *TINY)
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


def test_search_refuses_a_non_empty_out(tmp_path, npz):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = fnas("search", "--data", npz, "--out", out, *TINY)
    assert code == 2 and "exists and is not empty" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["show", "export", "train"])
@pytest.mark.parametrize("what", ["nonexistent", "empty_dir", "other_dir"])
def test_commands_reject_folders_that_are_not_runs(tmp_path, command, what):
    folder = tmp_path / "x"
    if what != "nonexistent":
        folder.mkdir()
    if what == "other_dir":
        (folder / "config.json").write_text("{}")
    code, _, err = fnas(command, folder)
    assert code == 2 and err.startswith(f"fnas {command}: error:")
    assert ("does not exist" if what == "nonexistent" else "not an fnas run folder") in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ([] if what == "nonexistent" else
                                                          ["x"] if what == "empty_dir" else ["config.json", "x"])


def test_show_rejects_a_file(npz):
    code, _, err = fnas("show", npz)
    assert code == 2 and "is a file; give the run folder" in err


@pytest.mark.parametrize("content, message", [("not json", "not valid JSON"), ('{"normal": []}', "missing keys")],
                         ids=["not_json", "not_a_genotype"])
def test_train_rejects_bad_genotype_files(tmp_path, content, message):
    path = tmp_path / "g.json"
    path.write_text(content)
    code, _, err = fnas("train", path, "--out", tmp_path / "out")
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()


def test_train_refuses_a_non_empty_out(run, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = fnas("train", run, "--out", tmp_path, "--epochs", "1")
    assert code == 2 and "exists and is not empty" in err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_export_needs_a_trained_run(run, tmp_path):
    for name in ("config.json", "genotype.json"):  # a search-only run: no model.pt
        (tmp_path / name).write_bytes((run / name).read_bytes())
    code, _, err = fnas("export", tmp_path)
    assert code == 2 and "has no trained model" in err and f"fnas train {tmp_path}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "genotype.json"]


# --- resume ------------------------------------------------------------------------------------


def test_search_killed_then_resumed_equals_an_uninterrupted_run(npz, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from fnas.core import tree
    from fnas.search.loop import load_checkpoint

    opts = ["--data", npz, "--train-epochs", "0", "--checkpoint-every", "1", *TINY[:-5], "--epochs", "4",
            "--warmup-epochs", "1", "--hypergrad", "exact", "--quiet"]
    whole = tmp_path / "whole"
    code, _, err = fnas("search", "--out", whole, *opts)
    assert code == 0, err

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "fnas.cli", "search", "--out", str(killed), *map(str, opts)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ckpt = killed / "checkpoint.pt"
        try:
            if ckpt.is_file() and int(load_checkpoint(ckpt)["state"]["step"]) >= 2:
                break
        except ValueError:  # caught between the rename and the read: try again
            pass
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the search finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "genotype.json").exists()
    first = load_checkpoint(killed / "checkpoint.pt")["elapsed_seconds"]  # the killed process's search time

    code, out, err = fnas("search", "--resume", killed, "--quiet")
    assert code == 0, err
    assert "resuming" in out
    # the reported search time is both processes': the killed one's (from its checkpoint) and the resumed one's
    summary = json.loads((killed / "summary.json").read_text())
    total = load_checkpoint(killed / "checkpoint.pt")["elapsed_seconds"]  # both, up to the last epoch's end
    assert total > first > 0 and summary["resumed_seconds"] == round(first, 1)
    assert summary["search_seconds"] >= round(total, 1) and summary["total_seconds"] >= summary["search_seconds"]
    assert f"{first:.0f} s of them before the resume" in out
    assert "resumed_seconds" not in json.loads((whole / "summary.json").read_text())
    code, shown, _ = fnas("show", killed)
    before = f"{summary['resumed_seconds']:.0f} s of them before a resume"
    assert code == 0 and f"in {summary['search_seconds']:.0f} s ({before})" in shown
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    assert tree.all_equal(a["state"]["alphas"], b["state"]["alphas"])
    assert tree.all_equal(a["state"]["weights"], b["state"]["weights"])
    assert load_genotype(whole / "genotype.json") == load_genotype(killed / "genotype.json")
    # every epoch logged across the two processes (a kill between a log line and its checkpoint may
    # repeat a line, never lose one)
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["phase"] == "search"]
    assert sorted(set(epochs)) == [0, 1, 2, 3]


def test_resume_rejects_finished_and_foreign_folders(run, tmp_path):
    code, _, err = fnas("search", "--resume", run)
    assert code == 2 and "already finished" in err
    code, _, err = fnas("search", "--resume", tmp_path)
    assert code == 2 and "not a search run folder" in err

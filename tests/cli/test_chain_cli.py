"""``fnas`` on the chain space (the default): search -> show -> train -> export on tiny data, budgets that size
the space (chains and cells), the search length rule, and bad chain options."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_cli import PNG, TINY, fnas, series

from fnas.app import runs
from fnas.app.spaces import space_from_dict
from fnas.cli.search import resolve_schedule
from fnas.cost import genotype_cost
from fnas.search.defaults import DEFAULTS
from fnas.spaces.chain import ChainSpaceConfig

pytestmark = pytest.mark.usefixtures("single_thread")

CHAIN = ["--widths", "8,16,8", "--kernels", "3,5", "--dilations", "1,2", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sensors.npz"
    x, y = series(90, 2, 16, 3)
    np.savez(path, X=x, y=y)
    return path


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, npz):
    """``fnas search`` (default space: chain) with ``--train-epochs 0``, then ``fnas train RUN``."""
    folder = tmp_path_factory.mktemp("runs") / "chain"
    code, out, err = fnas("search", "--data", npz, "--out", folder, "--train-epochs", "0", "--epochs", "2", *CHAIN)
    assert code == 0, err
    assert "schedule  2 search epochs x 6 steps = 12 steps; the first 0 epochs" in out
    code, _, err = fnas("train", folder, "--epochs", "2", "--quiet")
    assert code == 0, err
    return folder


def test_the_default_space_is_the_chain(chain_run):
    assert DEFAULTS["space"] == "chain"
    config = json.loads((chain_run / "config.json").read_text())
    assert config["cli"]["space"] == "chain" and config["selection"] == "alphas"
    assert config["schedule"] == {"epochs": 2, "warmup_epochs": 0, "steps_per_epoch": 6}
    saved = config["search"]["space"]
    assert saved["type"] == "chain" and saved["widths"] == [8, 16, 8] and saved["kernels"] == [3, 5]
    assert config["search"]["penalty_weight"] == DEFAULTS["chain_penalty_weight"]


def test_config_json_round_trips_the_chain_space(chain_run):
    config = json.loads((chain_run / "config.json").read_text())
    space = space_from_dict(config["search"]["space"], "config.json")
    assert space == ChainSpaceConfig(in_channels=2, num_classes=3, input_shape=(16, 1), widths=(8, 16, 8),
                                     kernels=(3, 5), dilations=(1, 2))
    run = runs.open_run(chain_run)
    assert run.space == space and run.selection == "alphas"
    genotype = json.loads((chain_run / "genotype.json").read_text())
    assert genotype["space"] == "chain" and genotype["space_config"] == config["search"]["space"]
    assert [tuple(b) for b in genotype["blocks"]] == list(run.genotype.blocks)


def test_chain_run_files_and_plots(chain_run):
    for name in ("alphas.pt", "checkpoint.pt", "model.pt", "summary.json", "metrics.jsonl"):
        assert (chain_run / name).is_file(), name
    alphas = torch.load(chain_run / "alphas.pt", weights_only=True)
    assert len(alphas) == 2 and set(alphas[0]) == {f"b{b}_{k}" for b in range(3) for k in ("op", "width")}
    for name in ("alphas_chain.png", "chain.png", "curves.png"):
        assert (chain_run / "plots" / name).read_bytes()[:8] == PNG, name
    assert not (chain_run / "plots" / "cells.png").exists()


def test_show_prints_the_chain_block_by_block(chain_run):
    code, out, err = fnas("show", chain_run)
    assert code == 0, err
    run = runs.open_run(chain_run)
    cost = genotype_cost(run.genotype, run.space)
    assert "chain space" in out and "chain of 3 blocks, max widths [8, 16, 8]" in out
    assert "genotype (alphas selection)" in out
    for b, (op, width) in enumerate(run.genotype.blocks):
        p, m = cost.parts[f"blocks.{b}.{op}"]
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  block {b} "))
        if op == "identity":
            assert "identity" in line
        else:
            kind, k, d = op.split("_")
            assert f"{kind} {k} {d}, width {width}" in line and f"{p:,} params" in line and f"{m:,} MACs" in line
    assert f"{cost.params:,} parameters" in out and f"{cost.peak_sram_bytes_int8:,} B int8" in out
    assert sum(p for p, _ in cost.totals().values()) == cost.params
    summary = json.loads((chain_run / "summary.json").read_text())
    assert summary["params"] == cost.params and f"{summary['test_acc']:.4f} on the held-out" in out
    assert str(chain_run / "plots" / "chain.png") in out


def test_config_replays_a_chain_search(chain_run, tmp_path):
    out = tmp_path / "replay"
    code, _, err = fnas("search", "--config", chain_run, "--out", out, "--train-epochs", "0")
    assert code == 0, err
    first = [json.loads(line) for line in (chain_run / "metrics.jsonl").read_text().splitlines()][0]
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert again["genotype"] == first["genotype"] and again["genotype"]["space"] == "chain"
    assert again["train_loss"] == pytest.approx(first["train_loss"], rel=1e-6)


@pytest.mark.parametrize("bare", [False, True], ids=["with_space", "bare"])
def test_train_a_chain_genotype_file(chain_run, npz, tmp_path, bare):
    """genotype.json carries its space; a hand-written one without it gets the genotype's own space."""
    data = json.loads((chain_run / "genotype.json").read_text())
    if bare:
        data = {"space": "chain", "blocks": data["blocks"]}
    (tmp_path / "g.json").write_text(json.dumps(data))
    out = tmp_path / "trained"
    code, stdout, err = fnas("train", tmp_path / "g.json", "--data", npz, "--out", out, "--epochs", "1",
                             "--batch-size", "8", "--quiet")
    assert code == 0, err
    run = runs.open_run(out)
    assert list(run.genotype.blocks) == [tuple(b) for b in data["blocks"]]
    assert (out / "model.pt").is_file() and (out / "plots" / "chain.png").is_file()
    if not bare:
        assert run.space == runs.open_run(chain_run).space
    code, shown, _ = fnas("show", out)
    assert code == 0 and "chain space" in shown


def test_train_rejects_cell_sizes_for_a_chain(chain_run, tmp_path):
    code, _, err = fnas("train", chain_run, "--out", tmp_path / "x", "--C", "4")
    assert code == 2 and "--C sizes a cell network, but this is a chain genotype" in err
    assert not (tmp_path / "x").exists()


def test_export_a_chain_run(chain_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    code, out, err = fnas("export", chain_run, "--out", tmp_path / "exported")
    assert code == 0, err
    report = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert report["float32"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert (tmp_path / "exported" / "model_int8.onnx").is_file() and "int8 QDQ" in out


def test_export_a_chain_run_to_tflite_after_onnx(chain_run, tmp_path):
    pytest.importorskip("litert_torch", reason="the tflite extra is not installed")
    pytest.importorskip("tflite_micro", reason="the tflite extra is not installed")
    out_dir = tmp_path / "run"
    shutil.copytree(chain_run, out_dir)  # exports go into the run folder itself
    assert fnas("export", out_dir)[0] == 0
    code, out, err = fnas("export", out_dir, "--format", "tflite")
    assert code == 0, err
    report = json.loads((out_dir / "export.json").read_text())
    assert "float32" in report and "int8" in report  # the ONNX report is kept
    tfl = report["tflite"]
    run = runs.open_run(out_dir)
    assert tfl["arena"]["predicted_sram_bytes"] == genotype_cost(run.genotype, run.space).peak_sram_bytes_int8
    assert tfl["arena"]["total_bytes"] > 0 and "tensor arena" in out
    header = (out_dir / "model_data.h").read_text()
    assert f"g_model_len = {(out_dir / 'model_int8.tflite').stat().st_size}" in header
    code, _, err = fnas("export", out_dir, "--format", "tflite")  # nothing is overwritten
    assert code == 2 and "model.tflite" in err


# --- the budget sizes the space -------------------------------------------------------------------


def test_a_chain_search_without_budget_or_widths_gets_the_default_budget(npz, tmp_path):
    code, out, err = fnas("search", "--data", npz, "--out", tmp_path / "r", "--train-epochs", "0", "--epochs", "1",
                          "--batch-size", "8", "--quiet")
    assert code == 0, err
    assert f"--max-params {DEFAULTS['chain_max_params']:,} is the chain search's default budget" in out
    run = runs.open_run(tmp_path / "r")
    assert genotype_cost(run.genotype, run.space).params <= DEFAULTS["chain_max_params"]


@pytest.mark.parametrize("space", ["chain", "cell"])
def test_a_budget_sizes_the_space(npz, tmp_path, space):
    """Without a size option, ``--max-params 5000`` picks the size (it used to fail on cells: 'shrink the space')."""
    out = tmp_path / "run"
    code, stdout, err = fnas("search", "--data", npz, "--out", out, "--space", space, "--max-params", "5000",
                             "--batch-size", "8", "--epochs", "1", "--train-epochs", "0", "--quiet")
    assert code == 0, err
    sized = [line for line in stdout.splitlines() if "sized to the budget" in line]
    assert len(sized) == 1 and f"{space} space" in sized[0] and "for a budget of 5,000" in sized[0]
    config = json.loads((out / "config.json").read_text())
    assert config["sized"] in sized[0]
    run = runs.open_run(out)
    assert genotype_cost(run.genotype, run.space).params <= 5000
    assert "params <= 5,000: met" in stdout
    if space == "chain":
        assert run.space.widths != DEFAULTS["chain_widths"]
    else:
        assert config["cli"]["C"] is None and run.space.layers == DEFAULTS["layers"]


def _plain_sizing(space, budget):
    """The same data's space sized to ``budget`` without --hold-fcn."""
    from fnas.spaces.chain import for_budget

    base = ChainSpaceConfig(in_channels=space.in_channels, num_classes=space.num_classes,
                            input_shape=space.input_shape, widths=DEFAULTS["chain_widths"])
    return for_budget(max_params=budget, base=base)


def test_hold_fcn_widens_the_sized_space_until_the_budgets_fcn_is_a_member(npz, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = fnas("search", "--data", npz, "--out", out, "--max-params", "5000", "--hold-fcn",
                             "--batch-size", "8", "--epochs", "1", "--train-epochs", "0", "--quiet")
    assert code == 0, err
    sized = next(line for line in stdout.splitlines() if "sized to the budget" in line)
    w = int(sized.split("hold the budget's FCN (w=")[1].split(")")[0])
    run = runs.open_run(out)
    convs = [width for op, width in run.space.fcn_genotype(w).blocks if op != "identity"]
    assert convs == [w, 2 * w, w] and genotype_cost(run.space.fcn_genotype(w), run.space).params <= 5000
    plain, _ = _plain_sizing(run.space, 5000)
    assert all(h >= p for h, p in zip(run.space.widths, plain.widths)) and run.space.widths != plain.widths
    assert genotype_cost(run.genotype, run.space).params <= 5000
    assert json.loads((out / "config.json").read_text())["cli"]["hold_fcn"] is True


def test_a_size_option_turns_the_sizing_off(npz, tmp_path):
    code, stdout, err = fnas("search", "--data", npz, "--out", tmp_path / "run", "--space", "cell", "--C", "8",
                             "--max-params", "500", "--batch-size", "8", "--epochs", "1", "--quiet")
    assert code == 2 and "below the minimum achievable" in err and "sized" not in stdout
    assert not (tmp_path / "run").exists()


def test_a_budget_no_cell_size_meets(npz, tmp_path):
    code, _, err = fnas("search", "--data", npz, "--out", tmp_path / "run", "--space", "cell", "--max-params", "100",
                        "--batch-size", "8", "--epochs", "1", "--quiet")
    assert code == 2 and "no even C lets the budget bind" in err and "C=2" in err
    assert not (tmp_path / "run").exists()


# --- the search length --------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, want", [(32, (10, 2)), (3, (100, 20)), (6, (50, 10)), (1000, (1, 0))])
def test_auto_epochs_give_at_least_the_minimum_steps(steps, want):
    schedule = resolve_schedule("auto", "auto", steps_per_epoch=steps)
    assert (schedule.epochs, schedule.warmup_epochs) == want
    assert schedule.steps >= DEFAULTS["min_search_steps"]
    assert (schedule.epochs - 1) * steps < DEFAULTS["min_search_steps"]  # the fewest such epochs


def test_explicit_epochs_and_warmup():
    assert resolve_schedule(7, "auto", steps_per_epoch=5)[:2] == (7, 1)
    assert resolve_schedule("auto", 3, steps_per_epoch=32)[:2] == (10, 3)
    with pytest.raises(ValueError, match="alphas would never train"):
        resolve_schedule(3, 3, steps_per_epoch=5)
    with pytest.raises(ValueError, match=r"'auto' chose 10"):
        resolve_schedule("auto", 12, steps_per_epoch=32)


def test_a_warmup_as_long_as_the_search_is_an_error(npz, tmp_path):
    code, _, err = fnas("search", "--data", npz, "--out", tmp_path / "run", "--epochs", "2", "--warmup-epochs", "2",
                        *CHAIN)
    assert code == 2 and "--warmup-epochs 2 is not fewer than the 2 search epochs" in err
    assert not (tmp_path / "run").exists()


def test_help_says_what_the_defaults_do():
    code, out, _ = fnas("search", "--help")
    text = " ".join(out.split())
    assert code == 0 and "(default: chain)" in text
    assert f"at least {DEFAULTS['min_search_steps']} search steps" in text and "(default: auto)" in text
    assert "'alphas' on chains, 'perturbation' on cells" in text and "sized so that the budget binds" in text


# --- bad chain options: exit 2, the option named, nothing written ----------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--kernels", "8"], "--kernels must be odd"),
    (["--widths", "0"], "--widths must hold positive ints"),
    (["--widths", "8,x"], "expected comma-separated int values"),
    (["--op-types", "lstm"], "--op-types must be distinct names from"),
    (["--strides", "1,2"], "--strides has 2 entries but widths has 3 blocks"),
    (["--space", "chain", "--C", "4"], "--C is a cell-space option, but --space is chain"),
    (["--space", "cell", "--kernels", "3"], "--kernels is a chain-space option, but --space is cell"),
    (["--layers", "3"], "--layers is a cell-space option, but the default space is chain; pass --space cell"),
    (["--hold-fcn", "--max-params", "5000"], "--hold-fcn widens a space sized to a budget; with --widths"),
    (["--space", "cell", "--hold-fcn"], "--hold-fcn is a chain-space option, but --space is cell"),
], ids=["even-kernel", "zero-width", "not-a-number", "op-type", "strides", "cell-option", "chain-option",
        "cell-option-default", "hold-fcn-with-widths", "hold-fcn-on-cells"])
def test_bad_chain_options(npz, tmp_path, argv, message):
    base = ["--widths", "8,16,8"] if not {"--widths", "cell", "--C", "--layers"} & set(argv) else []
    code, _, err = fnas("search", "--data", npz, "--out", tmp_path / "run", "--batch-size", "8", "--epochs", "1",
                        *base, *argv)
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists()


def test_the_chain_space_takes_time_series_only(tmp_path):
    path = tmp_path / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.standard_normal((60, 1, 6, 6)).astype(np.float32), y=np.arange(60) % 2)
    code, _, err = fnas("search", "--data", path, "--out", tmp_path / "run", "--space", "chain", "--epochs", "1")
    assert code == 2 and "the chain space is kx1 (time series) only; pass --space cell" in err
    assert not (tmp_path / "run").exists()


def test_a_cell_run_from_before_the_chain_space_resumes_as_cells(npz, tmp_path):
    """config.json of older runs names no space: it is a cell run, though the default is now the chain."""
    folder = tmp_path / "old"
    code, _, err = fnas("search", "--data", npz, "--out", folder, "--train-epochs", "0", *TINY)
    assert code == 0, err
    config = json.loads((folder / "config.json").read_text())
    del config["cli"]["space"], config["search"]["space"]["type"]
    (folder / "config.json").write_text(json.dumps(config))
    want = json.loads((folder / "genotype.json").read_text())
    (folder / "genotype.json").unlink()
    code, out, err = fnas("search", "--resume", folder, "--quiet")
    assert code == 0, err
    assert json.loads((folder / "genotype.json").read_text()) == want and "normal" in want
    assert runs.open_run(folder).space.C == 4

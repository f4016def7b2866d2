"""Run folders (``fnas.app.runs``): the files round-trip (genotype files with their space and data), a torn
metrics line is skipped, a folder that is not a run says what is missing."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fnas.app import runs
from fnas.app.spaces import space_to_dict
from fnas.app.train import build_network
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import Genotype_CNN, save_genotype
from fnas.spaces.chain import ChainSpaceConfig

GENOTYPE = Genotype_CNN(normal=[("conv_bn_relu_3x1", 0), ("skip_connect", 1)], normal_concat=range(1, 3),
                        reduce=[("max_pool_3x1", 0), ("conv_bn_relu_3x1", 1)], reduce_concat=range(1, 3))
SPACE = SpaceConfig(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(16, 1), nodes=2, multiplier=2,
                    stem_multiplier=1)


@pytest.fixture
def run_folder(tmp_path):
    runs.write_config(tmp_path, {"command": "train", "space": dataclasses.asdict(SPACE), "cli": {"data": "x.npz"}})
    runs.write_genotype(tmp_path, GENOTYPE)
    return tmp_path


def test_open_run_reads_space_genotype_and_no_summary(run_folder):
    run = runs.open_run(run_folder)
    assert run.space == SPACE and run.genotype == GENOTYPE and run.summary is None
    assert run.data == "x.npz" and run.warmup_epochs == 0 and not run.trained


def test_model_round_trip(run_folder):
    model = build_network(SPACE, GENOTYPE, torch.Generator().manual_seed(3))
    runs.save_model(run_folder, model)
    loaded = runs.load_model(runs.open_run(run_folder))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert not loaded.training


def test_metrics_skip_a_torn_last_line(tmp_path):
    runs.append_metrics(tmp_path, "search", {"epoch": 0})
    with open(tmp_path / runs.METRICS, "a") as fh:
        fh.write('{"phase": "search", "ep')  # a crash mid-append
    assert runs.read_metrics(tmp_path) == [{"phase": "search", "epoch": 0}]


def test_alphas_round_trip_and_absent(tmp_path):
    assert runs.load_alphas(tmp_path) is None
    history = [{"normal": torch.full((3, 2), 0.5), "reduce": torch.full((3, 2), 0.5)}]
    runs.save_alphas(tmp_path, history)
    assert torch.equal(runs.load_alphas(tmp_path)[0]["normal"], history[0]["normal"])


@pytest.mark.parametrize("files, match", [((), "config.json and genotype.json missing"),
                                          (("config.json",), "genotype.json missing")], ids=["empty", "no-genotype"])
def test_a_folder_that_is_not_a_run(tmp_path, files, match):
    for name in files:
        (tmp_path / name).write_text(json.dumps({}))
    with pytest.raises(ValueError, match=match):
        runs.open_run(tmp_path)


def test_untrained_run_has_no_model(run_folder):
    with pytest.raises(ValueError, match="has no trained model"):
        runs.load_model(runs.open_run(run_folder))


# --- genotype files carry their space and data (issue 16) ---------------------------------------------

DATA = {"spec": "/data/x.npz", "name": "npz:x", "in_channels": 2, "input_shape": [16, 1], "num_classes": 3}


@pytest.mark.parametrize("kind", ["cell", "chain"])
def test_genotype_files_round_trip_with_their_space_and_data(tmp_path, kind):
    if kind == "cell":
        space, genotype = SPACE, GENOTYPE
    else:
        space = ChainSpaceConfig(in_channels=2, num_classes=3, input_shape=(16, 1), widths=(8, 8, 16))
        genotype = space.fcn_genotype(8)
    runs.write_genotype(tmp_path, genotype, space, DATA)
    saved = json.loads((tmp_path / runs.GENOTYPE).read_text())
    assert saved["space"] == kind and saved["data"] == DATA
    assert saved["space_config"] == json.loads(json.dumps(space_to_dict(space)))  # as config.json stores it
    assert runs.read_genotype_file(tmp_path / runs.GENOTYPE) == (genotype, space, DATA)


def test_a_bare_genotype_file_has_no_space_or_data(tmp_path):
    save_genotype(GENOTYPE, tmp_path / "g.json")  # the seed's format
    assert runs.read_genotype_file(tmp_path / "g.json") == (GENOTYPE, None, None)


@pytest.mark.parametrize("change, match", [
    ({"data": "watch"}, "'data' must be an object with the dataset's 'spec'"),
    ({"space_config": {"type": "chain"}}, "'space_config' is a chain space, but the genotype is a cell genotype"),
], ids=["data_not_an_object", "chain_space_for_cells"])
def test_a_broken_genotype_file_says_what_is_wrong(tmp_path, change, match):
    runs.write_genotype(tmp_path, GENOTYPE, SPACE, DATA)
    path = tmp_path / runs.GENOTYPE
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ValueError, match=match):
        runs.read_genotype_file(path)

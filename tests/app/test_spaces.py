"""Which space a run holds (``fnas.app.spaces``) and spaces sized to a budget (``fnas.app.sizing``)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fnas.app import runs
from fnas.app.sizing import size_cell_space, size_chain_space
from fnas.app.spaces import chain_genotype_from_json, chain_space_for, genotype_json, space_from_dict, space_to_dict
from fnas.app.train import build_network
from fnas.cost import genotype_cost, max_cost, min_cost
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.chain import ChainGenotype, ChainSpaceConfig

CHAIN = ChainSpaceConfig(in_channels=2, num_classes=3, input_shape=(16, 1), widths=(8, 8, 16), kernels=(3, 5),
                         strides=(1, 1, 2), width_policy="alphas")
CELL = SpaceConfig(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(16, 1), nodes=2, multiplier=2)
GENOTYPE = ChainGenotype((("conv_k5_d2", 8), ("identity", 8), ("sep_k3_d1", 12)))


@pytest.mark.parametrize("space", [CHAIN, CELL], ids=["chain", "cell"])
def test_space_round_trips_through_json(space):
    data = json.loads(json.dumps(space_to_dict(space)))
    assert data["type"] == ("chain" if space is CHAIN else "cell")
    assert space_from_dict(data, "x") == space


def test_a_space_without_type_is_a_cell_space():
    data = dataclasses.asdict(CELL)  # config.json before the chain space
    assert space_from_dict(data, "x") == CELL


@pytest.mark.parametrize("data, message", [(None, "has no search space"), ({"type": "tree"}, "unknown search space"),
                                           ({"type": "chain", "kernels": [4]}, "must be odd")])
def test_bad_saved_spaces(data, message):
    with pytest.raises(ValueError, match=message):
        space_from_dict(data, "config.json")


def test_chain_genotype_json_carries_its_space():
    data = json.loads(json.dumps(genotype_json(GENOTYPE, CHAIN)))
    assert data["space"] == "chain" and data["space_config"] == json.loads(json.dumps(space_to_dict(CHAIN)))
    genotype, space = chain_genotype_from_json(data, "g.json")
    assert genotype == GENOTYPE and space == CHAIN


@pytest.mark.parametrize("blocks, message", [([], "non-empty list"), ([["conv_k3_d1", 0]], "positive width"),
                                             ([["lstm", 4]], "Unknown chain op")])
def test_bad_chain_genotype_files(blocks, message):
    with pytest.raises(ValueError, match=message):
        chain_genotype_from_json({"space": "chain", "blocks": blocks}, "g.json")


def test_chain_space_for_other_data_and_for_a_bare_genotype():
    moved = chain_space_for(GENOTYPE, in_channels=5, num_classes=4, input_shape=(32, 1), base=CHAIN)
    assert (moved.in_channels, moved.num_classes, moved.input_shape) == (5, 4, (32, 1))
    assert moved.strides == CHAIN.strides and moved.widths == CHAIN.widths
    bare = chain_space_for(GENOTYPE, in_channels=2, num_classes=3, input_shape=(16, 1))
    assert bare.widths == (8, 8, 12) and 2 in bare.dilations
    assert genotype_cost(GENOTYPE, bare).params == genotype_cost(GENOTYPE, dataclasses.replace(CHAIN,
                                                                                               strides=())).params
    with pytest.raises(ValueError, match="block 0: identity carries its input width 2"):
        chain_space_for(ChainGenotype((("identity", 3), ("identity", 3))), in_channels=2, num_classes=3,
                        input_shape=(16, 1))


def test_a_chain_run_folder_round_trips(tmp_path):
    runs.write_config(tmp_path, {"command": "train", "space": space_to_dict(CHAIN), "cli": {"data": "x.npz"}})
    runs.write_genotype(tmp_path, GENOTYPE, CHAIN)
    model = build_network(CHAIN, GENOTYPE, torch.Generator().manual_seed(1))
    runs.save_model(tmp_path, model)
    run = runs.open_run(tmp_path)
    assert run.space == CHAIN and run.genotype == GENOTYPE and run.selection is None
    loaded = runs.load_model(run)
    x = torch.randn(3, 2, 16, 1)
    torch.testing.assert_close(loaded(x), model.eval()(x))


@pytest.mark.parametrize("budget", [{"params": 3000}, {"macs": 40000}, {"params": 3000, "sram": 400}])
def test_sized_chain_spaces_let_the_budget_bind(budget):
    space, line = size_chain_space(CHAIN, {"params": None, "macs": None, "sram": None, **budget})
    assert line.startswith("sized to the budget: chain space widths=")
    for metric, b in budget.items():
        assert min_cost(space, metric) <= b < max_cost(space, metric)


def test_sized_cell_space_is_the_smallest_even_c_that_binds():
    space, line = size_cell_space(CELL, {"params": 5000})
    assert space.C % 2 == 0 and min_cost(space, "params") <= 5000 < max_cost(space, "params")
    smaller = dataclasses.replace(CELL, C=space.C - 2) if space.C > 2 else None
    assert smaller is None or max_cost(smaller, "params") <= 5000
    assert f"C={space.C}" in line and "for a budget of 5,000" in line
    with pytest.raises(ValueError, match="no even C lets the budget bind"):
        size_cell_space(CELL, {"params": 50})

"""fnas.spaces.chain: ChainSpaceConfig validation and geometry, genotypes (validation, JSON, derive, samplers, FCN)."""

from __future__ import annotations

import json

import pytest
import torch

from fnas.spaces.base import Space
from fnas.spaces.chain import (
    IDENTITY,
    ChainGenotype,
    ChainSpaceConfig,
    derive_genotype,
    fcn_genotype,
    genotype_from_dict,
    genotype_to_dict,
    random_genotype,
)

from chain_helpers import onehot_alphas, tiny
from conftest import make_gen

# --- config ------------------------------------------------------------------------------------


def test_default_config_is_a_space():
    cfg = ChainSpaceConfig()
    assert isinstance(cfg, Space)
    assert cfg.is_1d and cfg.num_blocks == 4 and cfg.strides == (1, 1, 1, 1)
    assert cfg.taps == (9 - 1) * 4 + 1


def test_candidates_are_type_major_with_identity_last_where_shapes_allow():
    cfg = tiny()
    ops = ("conv_k3_d1", "conv_k3_d2", "conv_k5_d1", "conv_k5_d2", "sep_k3_d1", "sep_k3_d2", "sep_k5_d1", "sep_k5_d2")
    # block 0: 2 -> 4 channels; block 1: 4 -> 4 (identity); block 2: stride 2 (no identity)
    assert cfg.candidates == (ops, ops + (IDENTITY,), ops)
    assert cfg.identity_allowed == (False, True, False)
    assert cfg.width_choices == ((2, 4), (2, 4), (3, 6))
    assert cfg.lengths == (16, 16, 8)
    assert tiny(identity=False).candidates[1] == ops


def test_width_choices_are_rounded_deduplicated_and_at_least_one():
    cfg = tiny(widths=(2, 2, 2), width_fractions=(0.1, 0.25, 0.5, 1.0))
    assert cfg.width_choices[0] == (1, 2)


@pytest.mark.parametrize(
    "changes, match",
    [
        pytest.param(dict(input_shape=(16, 4)), r"\(T, 1\)", id="2d-input"),
        pytest.param(dict(kernels=(3, 8)), "odd", id="even-kernel"),
        pytest.param(dict(widths=()), "empty", id="no-blocks"),
        pytest.param(dict(widths=(4, 0)), "positive ints", id="zero-width"),
        pytest.param(dict(widths=(4, True)), "positive ints", id="bool-width"),
        pytest.param(dict(strides=(1, 2)), "one stride per block", id="strides-length"),
        pytest.param(dict(op_types=("conv", "pool")), "op_types", id="unknown-op-type"),
        pytest.param(dict(op_types=()), "op_types", id="no-op-types"),
        pytest.param(dict(width_fractions=(0.5, 1.5)), r"\(0, 1\]", id="fraction-above-1"),
        pytest.param(dict(dilations=(1, 1)), "duplicates", id="duplicate-dilation"),
        pytest.param(dict(num_classes=1), ">= 2", id="one-class"),
        pytest.param(dict(in_channels=2.0), "positive int", id="float-channels"),
        pytest.param(dict(identity="yes"), "bools", id="identity-not-bool"),
    ],
)
def test_config_rejects_with_a_fix(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny(**changes)


def test_config_is_hashable_and_lists_become_tuples():
    cfg = tiny(widths=[4, 4, 6], kernels=[3, 5])
    assert cfg == tiny() and hash(cfg) == hash(tiny())


# --- genotypes ---------------------------------------------------------------------------------


def test_json_round_trip():
    cfg = tiny()
    g = ChainGenotype((("conv_k5_d2", 4), (IDENTITY, 4), ("sep_k3_d1", 3)))
    data = json.loads(json.dumps(cfg.genotype_to_dict(g)))
    assert data == {"space": "chain", "blocks": [["conv_k5_d2", 4], ["identity", 4], ["sep_k3_d1", 3]]}
    assert cfg.genotype_from_dict(data) == g
    assert genotype_from_dict(genotype_to_dict(g), cfg) == g


MEMBER = [["conv_k3_d1", 4], ["identity", 4], ["sep_k3_d1", 3]]


def _with(block: int, entry: list) -> list:
    """MEMBER with block ``block`` replaced by ``entry``."""
    return [entry if b == block else e for b, e in enumerate(MEMBER)]


@pytest.mark.parametrize(
    "blocks, match",
    [
        pytest.param(_with(0, ["conv_k7_d1", 4]), r"block 0: op 'conv_k7_d1' is not allowed; allowed: \['conv_k3_d1'",
                     id="unknown-kernel"),
        pytest.param(_with(0, ["pool_k3_d1", 4]), "block 0: op 'pool_k3_d1'", id="unknown-op"),
        pytest.param(_with(0, [3, 4]), "block 0: op 3 is not allowed", id="op-not-a-string"),
        pytest.param(_with(2, ["sep_k3_d1", 4]), r"block 2: width 4 is not allowed; allowed: \[3, 6\]",
                     id="width-not-a-choice"),
        pytest.param(_with(2, ["identity", 4]), r"block 2: op 'identity' is not allowed \(identity needs stride 1",
                     id="identity-where-strided"),
        pytest.param(_with(0, ["identity", 2]), "block 0: op 'identity' is not allowed", id="identity-changing-width"),
        pytest.param(_with(1, ["identity", 2]), "block 1: identity carries its input width 4",
                     id="identity-wrong-width"),
        pytest.param(MEMBER[:2], "2 blocks but the space has 3", id="too-short"),
        pytest.param(_with(0, ["conv_k3_d1", 4.0]), r"block 0: width must be an int, got 4\.0", id="float-width"),
        pytest.param(_with(0, ["conv_k3_d1", "4"]), "block 0: width must be an int, got '4'", id="string-width"),
        pytest.param(_with(0, ["conv_k3_d1", True]), "block 0: width must be an int", id="bool-width"),
        pytest.param(_with(0, ["conv_k3_d1"]), r"block 0: expected \[op_name, width\]", id="pair-missing"),
    ],
)
def test_bad_genotypes_name_the_block_and_the_allowed_values(blocks, match):
    tiny().genotype_from_dict({"blocks": MEMBER})  # the unchanged genotype is a member
    with pytest.raises(ValueError, match=match):
        tiny().genotype_from_dict({"space": "chain", "blocks": blocks})


@pytest.mark.parametrize(
    "data, match",
    [
        pytest.param({"normal": []}, "space': 'chain'", id="cell-genotype"),
        pytest.param({"space": "cell", "blocks": []}, "for the 'cell' space", id="other-space"),
        pytest.param({"blocks": "conv"}, "must be a list", id="blocks-not-a-list"),
        pytest.param([["conv_k3_d1", 4]], "space': 'chain'", id="not-a-dict"),
    ],
)
def test_malformed_genotype_json(data, match):
    with pytest.raises(ValueError, match=match):
        tiny().genotype_from_dict(data)


def test_validate_rejects_non_genotypes():
    with pytest.raises(ValueError, match="Expected a ChainGenotype"):
        tiny().validate([("conv_k3_d1", 4)] * 3)


def test_derive_takes_the_argmax_and_identity_carries_its_input_width():
    cfg = tiny()
    g = ChainGenotype((("sep_k5_d2", 2), (IDENTITY, 2), ("conv_k3_d2", 6)))
    alphas = onehot_alphas(cfg, g, hot=1.0, cold=0.0)
    alphas["b1_width"][1] = 5.0  # ignored: identity keeps 2 channels
    assert derive_genotype(alphas, cfg) == g == cfg.derive(alphas)


def test_derive_rejects_wrong_shapes():
    cfg = tiny()
    _, alphas, _ = cfg.init(make_gen(0))
    alphas["b1_op"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"alphas\['b1_op'\] must have shape \(9,\)"):
        cfg.derive(alphas)
    del alphas["b2_width"]
    with pytest.raises(ValueError, match="missing"):
        cfg.derive({k: v for k, v in alphas.items() if k != "b1_op"} | {"b1_op": torch.zeros(9)})


def test_random_genotypes_are_members_deterministic_and_cover_the_choices():
    cfg = tiny()
    draws = [random_genotype(cfg, make_gen(s)) for s in range(200)]
    for g in draws:
        cfg.validate(g)
    assert random_genotype(cfg, make_gen(3)) == draws[3] == cfg.random_genotype(make_gen(3))
    assert {g.blocks[1][0] for g in draws} == set(cfg.candidates[1])
    assert {g.blocks[2][1] for g in draws} == {3, 6}


@pytest.mark.parametrize("w", [8, 16, 24, 32])
def test_the_fcn_at_its_usual_widths_is_a_member_of_the_default_space(w):
    cfg = ChainSpaceConfig()
    g = fcn_genotype(cfg, w)
    cfg.validate(g)
    convs = [(op, width) for op, width in g.blocks if op != IDENTITY]
    # Wang et al.: kernels 8, 5, 3 (8 -> 9, the nearest odd kernel, ties to the larger), widths w, 2w, w
    assert convs == [("conv_k9_d1", w), ("conv_k5_d1", 2 * w), ("conv_k3_d1", w)]
    assert g == cfg.fcn_genotype(w)


def test_fcn_maps_to_the_nearest_member():
    cfg = tiny(widths=(4, 8, 4), strides=(1, 1, 1), kernels=(3, 7), dilations=(1,))
    assert cfg.fcn_genotype(3).blocks == (("conv_k7_d1", 4), ("conv_k7_d1", 8), ("conv_k3_d1", 4))


@pytest.mark.parametrize(
    "changes, match",
    [
        pytest.param(dict(op_types=("sep",)), "needs op type 'conv'", id="no-conv"),
        pytest.param(dict(dilations=(2,)), "dilation 1", id="no-dilation-1"),
        pytest.param(dict(widths=(4, 4), strides=()), "at least 3", id="two-blocks"),
        pytest.param(dict(widths=(4, 6, 8, 10), strides=()), "identity", id="no-identity-room"),
    ],
)
def test_fcn_errors_say_why(changes, match):
    with pytest.raises(ValueError, match=match):
        fcn_genotype(tiny(**changes), 2)

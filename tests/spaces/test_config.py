"""Tests for fnas.config: SpaceConfig / SearchConfig validation and derived properties."""

from __future__ import annotations

import dataclasses

import pytest

from fnas.spaces import primitives as P
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig


def test_defaults_are_valid_and_frozen():
    space = SpaceConfig()
    cfg = SearchConfig(space=space)
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.C = 3  # type: ignore[misc]
    assert cfg.space is space
    assert space.primitives == P.SEED_KX1


def test_lists_are_normalised_to_tuples():
    space = SpaceConfig(primitives=["none", "skip_connect"], input_shape=[16, 1])
    assert space.primitives == ("none", "skip_connect")
    assert space.input_shape == (16, 1)
    hash(space)  # usable as a static (hashable) config


@pytest.mark.parametrize(
    "layers, expected",
    [pytest.param(3, (1, 2), id="3"), pytest.param(5, (1, 3), id="5"), pytest.param(8, (2, 5), id="8")],
)
def test_reduction_layers(layers, expected):
    assert SpaceConfig(layers=layers).reduction_layers == expected


@pytest.mark.parametrize(
    "layers, reductions, expected",
    [
        pytest.param(8, None, (2, 5), id="seed"),
        pytest.param(8, (), (), id="none"),
        pytest.param(8, (7,), (7,), id="last"),
        pytest.param(5, [4, 0], (0, 4), id="list-sorted"),
    ],
)
def test_reductions_override_the_seed_rule(layers, reductions, expected):
    space = SpaceConfig(layers=layers, reductions=reductions)
    assert space.reduction_layers == expected
    assert space.reductions == (None if reductions is None else expected)
    hash(space)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(dict(layers=4, reductions=(4,)), r"distinct cell indices in \[0, 4\)", id="out-of-range"),
        pytest.param(dict(reductions=(-1,)), r"distinct cell indices", id="negative"),
        pytest.param(dict(reductions=(2, 2)), r"distinct", id="duplicate"),
        pytest.param(dict(reductions=(True,)), r"tuple of cell indices", id="bool"),
        pytest.param(dict(reductions="2"), r"tuple of cell indices", id="string"),
        pytest.param(dict(preprocess="sometimes"), r"preprocess must be one of", id="preprocess"),
    ],
)
def test_skeleton_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpaceConfig(**kwargs)


def test_network_follows_the_skeleton():
    from fnas.spaces.cell.genotype import MY_CUSTOM_GENOTYPE

    space = SpaceConfig(C=4, layers=4, reductions=(3,), preprocess="when_needed", stem_multiplier=1)
    net = space.network(MY_CUSTOM_GENOTYPE)
    assert net.reductions == [3] and net.preprocess == "when_needed"
    assert [cell.pre is None for cell in net.cells] == [True, False, False, False]


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_edges_order_and_count(nodes):
    space = SpaceConfig(nodes=nodes, multiplier=1)
    edges = space.edges()
    assert len(edges) == space.num_edges == nodes * (nodes + 1) // 2
    assert edges == [(i, j) for j in range(1, nodes + 1) for i in range(j)]


def test_is_1d_for_kx1_and_2d_spaces():
    assert SpaceConfig(input_shape=(16, 1)).is_1d
    assert not SpaceConfig(input_shape=(8, 8), primitives=P.DARTS_2D, in_channels=1).is_1d


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(dict(primitives=("none", "conv_bn_relu_9x1")), r"Unknown primitive 'conv_bn_relu_9x1'",
                     id="unknown-primitive"),
        pytest.param(dict(nodes=2, multiplier=3), r"multiplier \(3\) must be <= nodes \(2\)", id="multiplier>nodes"),
        pytest.param(dict(input_shape=(8, 8)), r"kx1 primitives need input_shape \(T, 1\)", id="kx1-on-2d-input"),
        pytest.param(dict(primitives=("none", "conv_bn_relu_3x1", "sep_conv_3x3")), r"mixes kx1 and kxk",
                     id="mixed-1d-2d"),
        pytest.param(dict(primitives=()), r"primitives is empty", id="empty"),
        pytest.param(dict(primitives=("none",)), r"besides 'none'", id="only-none"),
        pytest.param(dict(primitives=("none", "skip_connect", "none")), r"duplicates", id="duplicates"),
        pytest.param(dict(C=0), r"SpaceConfig\.C must be a positive int", id="C=0"),
        pytest.param(dict(layers=2.5), r"SpaceConfig\.layers must be a positive int", id="float-layers"),
        pytest.param(dict(num_classes=1), r"num_classes must be >= 2", id="one-class"),
        pytest.param(dict(input_shape=(16,)), r"input_shape must be", id="1-tuple-shape"),
        pytest.param(dict(C=5), r"needs an even C", id="odd-C-with-skip"),
    ],
)
def test_space_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpaceConfig(**kwargs)


def test_unknown_primitive_error_lists_known_names():
    with pytest.raises(ValueError) as err:
        SpaceConfig(primitives=("none", "bogus_op"))
    assert "conv_bn_relu_3x1" in str(err.value) and "sep_conv_3x3" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(dict(hypergrad="second_order"), r"Unknown hypergrad 'second_order'", id="bad-hypergrad"),
        pytest.param(dict(unroll_steps=2), r"unroll_steps=2 needs hypergrad='exact'", id="unroll-first-order"),
        pytest.param(dict(unroll_steps=3, hypergrad="finite_difference"), r"needs hypergrad='exact'",
                     id="unroll-finite-difference"),
        pytest.param(dict(unroll_steps=0, hypergrad="exact"), r"unroll_steps must be an int >= 1", id="unroll-0"),
        pytest.param(dict(lr=-0.1), r"SearchConfig\.lr must be a non-negative", id="negative-lr"),
        pytest.param(dict(lr=0.01, lr_min=0.1), r"lr_min .* must not exceed lr", id="lr_min>lr"),
        pytest.param(dict(arch_betas=(0.9, 1.0)), r"arch_betas", id="beta=1"),
        pytest.param(dict(total_steps=0), r"total_steps must be >= 1", id="no-steps"),
        pytest.param(dict(warmup_steps=-1), r"warmup_steps >= 0", id="negative-warmup"),
        pytest.param(dict(space="watch"), r"space must be a SpaceConfig", id="space-not-config"),
    ],
)
def test_search_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(**kwargs)


def test_search_config_exact_unrolled_is_valid_and_replace_revalidates():
    cfg = SearchConfig(hypergrad="exact", unroll_steps=2)
    assert cfg.unroll_steps == 2
    assert cfg.replace(total_steps=7).total_steps == 7
    with pytest.raises(ValueError, match="needs hypergrad='exact'"):
        cfg.replace(hypergrad="first_order")

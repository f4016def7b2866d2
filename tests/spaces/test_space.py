"""Tests for SpaceConfig as a ``fnas.spaces.base.Space``: the methods delegate to the cell functions."""

from __future__ import annotations

import pytest
import torch

from fnas.core import tree
from fnas.spaces.base import Space
from fnas.spaces.cell.genotype import (
    MY_CUSTOM_GENOTYPE,
    Genotype_CNN,
    derive_from_scores,
    derive_genotype,
    genotype_to_dict,
    random_genotype,
)
from fnas.spaces.cell.network import NetworkCnn
from fnas.spaces.cell.supernet import apply_supernet, init_supernet

from conftest import make_batch, make_gen, tiny_space

pytestmark = pytest.mark.usefixtures("single_thread")


def test_space_config_is_a_space():
    assert isinstance(tiny_space(), Space)


def test_init_and_apply_delegate_to_the_supernet():
    space = tiny_space()
    weights, alphas, stats = space.init(make_gen(0), dtype=torch.float64)
    want = init_supernet(space, make_gen(0), dtype=torch.float64)
    assert all(tree.all_equal(a, b) for a, b in zip((weights, alphas, stats), want))
    x, _ = make_batch(space, dtype=torch.float64)
    logits, new = space.apply(weights, alphas, stats, x, train=True)
    ref_logits, ref_new = apply_supernet(weights, alphas, stats, x, cfg=space, train=True)
    assert torch.equal(logits, ref_logits) and tree.all_equal(new, ref_new)


def test_derive_from_alphas_and_from_scores():
    space = tiny_space()
    gen = make_gen(3)
    shape = (space.num_edges, len(space.primitives))
    alphas = {k: torch.randn(shape, generator=gen) for k in ("normal", "reduce")}
    assert space.derive(alphas) == derive_genotype(alphas, space)
    scores = {k: torch.randn(shape, generator=gen, dtype=torch.float64) for k in ("normal", "reduce")}
    assert space.derive(scores, from_scores=True) == derive_from_scores(scores, space)


def test_random_genotype_is_a_member():
    space = tiny_space()
    genotype = space.random_genotype(make_gen(5))
    assert genotype == random_genotype(space, make_gen(5))
    space.validate(genotype)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param(dict(normal=[("sep_conv_3x1", 0), ("skip_connect", 1)]), "not an op of this space", id="foreign-op"),
        pytest.param(dict(normal=[("none", 0), ("skip_connect", 1)]), "not an op of this space", id="none"),
        pytest.param(dict(normal_concat=[2, 1]), "concatenates the last", id="concat"),
        pytest.param(dict(reduce=[("skip_connect", 1), ("skip_connect", 0)]), "may only read", id="input"),
    ],
)
def test_validate_names_what_is_not_in_the_space(change, match):
    space = tiny_space()
    genotype = Genotype_CNN([("skip_connect", 0), ("max_pool_3x1", 1)], range(1, 3),
                            [("conv_bn_relu_3x1", 0), ("skip_connect", 1)], range(1, 3))  # fmt: skip
    space.validate(genotype)
    with pytest.raises(ValueError, match=match):
        space.validate(genotype._replace(**change))


def test_network_and_json_round_trip():
    space = tiny_space(nodes=4, multiplier=4, C=4)
    net = space.network(MY_CUSTOM_GENOTYPE, make_gen(0))
    assert isinstance(net, NetworkCnn) and net.kx1
    x, _ = make_batch(space)
    assert net(x).shape == (x.shape[0], space.num_classes)
    data = space.genotype_to_dict(MY_CUSTOM_GENOTYPE)
    assert data == genotype_to_dict(MY_CUSTOM_GENOTYPE)
    assert space.genotype_from_dict(data) == MY_CUSTOM_GENOTYPE
    with pytest.raises(ValueError, match="not an op of this space"):
        tiny_space(nodes=4, multiplier=4, primitives=("none", "skip_connect")).genotype_from_dict(data)

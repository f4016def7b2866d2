"""Tests for fnas.operations: the seed's ``OPS`` dict, its built-ins, and user nn.Module entries in search."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fnas.spaces.primitives import modules as O
from fnas.spaces import primitives as P
from fnas.core import tree
from fnas.spaces.cell.genotype import Genotype_CNN
from fnas.spaces.cell.network import NetworkCnn
from fnas.spaces.cell.supernet import apply_supernet, init_supernet

from conftest import make_batch, make_gen, tiny_space, tol

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SEED_OP = "conv_bn_relu_1x1"


def conv_bn_relu_1x1(C: int, stride: int, affine: bool) -> nn.Module:
    """The seed README's example entry, written with plain torch.nn."""
    return nn.Sequential(
        nn.Conv2d(C, C, (1, 1), stride=(stride, 1), padding=(0, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
        nn.ReLU(inplace=False),
    )


@pytest.fixture
def with_seed_op(seed_ops):
    seed_ops[SEED_OP] = conv_bn_relu_1x1
    yield SEED_OP


BUILTINS = sorted(set(P.SEED_KX1 + P.KX1_EXTRA + P.KX1_WIDE + P.DARTS_2D))


@pytest.mark.parametrize("stride", [pytest.param(1, id="s1"), pytest.param(2, id="s2")])
@pytest.mark.parametrize("name", BUILTINS)
def test_ops_has_every_builtin_as_a_module_factory(name, stride):
    assert name in O.OPS and O.is_builtin(name)
    module = O.OPS[name](4, stride, False)
    assert isinstance(module, nn.Module)
    kx1 = P.get(name).kind != "2d"
    x = torch.randn(2, 4, 7, 1 if kx1 else 7)  # the seed's layout: (N, C, T, 1)
    y = module(x)
    t = math.ceil(7 / stride)
    assert y.shape == (2, 4, t, 1 if kx1 else t)


def test_functional_op_updates_its_buffers_only_in_train_mode():
    module = O.OPS["conv_bn_relu_3x1"](4, 1, True)
    buffers = {k: b.clone() for k, b in module.named_buffers()}
    assert buffers, "a BN op must expose its running statistics as buffers"
    x = torch.randn(3, 4, 9, 1) * 3 + 2
    module.eval()
    module(x)
    assert all(torch.equal(b, buffers[k]) for k, b in module.named_buffers())
    module.train()
    module(x)
    assert all(not torch.equal(b, buffers[k]) for k, b in module.named_buffers())
    assert any(p.requires_grad for p in module.parameters())


def test_user_entry_is_a_known_primitive_only_while_present(seed_ops):
    assert SEED_OP not in P.names()
    seed_ops[SEED_OP] = conv_bn_relu_1x1
    assert SEED_OP in P.names()
    tiny_space(primitives=("none", SEED_OP))  # accepted by the config


def test_seed_ops_fixture_cleaned_up():
    # Runs after the tests above: their OPS entries are gone.
    assert SEED_OP not in O.OPS
    with pytest.raises(ValueError, match="Unknown primitive"):
        tiny_space(primitives=("none", SEED_OP))


def _op_leaves(t: dict) -> dict[str, torch.Tensor]:
    """Leaves of the user op (the mixed-op trees are keyed by primitive name)."""
    return {k: v for k, v in tree.flatten_dict(t).items() if SEED_OP in k.split(".")}


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="f32"), pytest.param(F64, id="f64")])
@pytest.mark.parametrize("fused", [pytest.param(True, id="fused"), pytest.param(False, id="plain")])
def test_user_module_runs_in_the_search_network(with_seed_op, fused, dtype):
    space = tiny_space(primitives=("none", "skip_connect", "conv_bn_relu_3x1", SEED_OP), fused=fused)
    weights, alphas, stats = init_supernet(space, make_gen(0), dtype=dtype)
    stats0, weights0 = tree.clone(stats), tree.clone(weights)
    x, y = make_batch(space, dtype=dtype)

    def loss(w):
        logits, new = apply_supernet(w, alphas, stats, x, cfg=space, train=True)
        return torch.nn.functional.cross_entropy(logits, y), new

    grads, new_stats = torch.func.grad(loss, has_aux=True)(weights)
    op_grads = _op_leaves(grads)
    assert len(op_grads) == space.layers * space.num_edges  # one conv weight per edge
    assert all(float(g.abs().sum()) > 0 for g in op_grads.values()), "no gradient reached the user module"
    assert all(g.dtype == dtype for g in op_grads.values())
    # BatchNorm statistics of the user module come back updated; the inputs are untouched.
    op_stats = _op_leaves(new_stats)
    means = [v for k, v in op_stats.items() if k.endswith("running_mean")]
    counts = [v for k, v in op_stats.items() if k.endswith("num_batches_tracked")]
    assert len(means) == space.layers * space.num_edges
    assert all(float(m.abs().sum()) > 0 for m in means) and all(m.dtype == dtype for m in means)
    assert all(int(c) == 1 for c in counts)
    assert tree.all_equal(stats, stats0) and tree.all_equal(weights, weights0)
    # Eval mode leaves the statistics as they are.
    _, same = apply_supernet(weights, alphas, stats, x, cfg=space, train=False)
    assert tree.all_equal(same, stats0)


GENOTYPE = Genotype_CNN(
    normal=[(SEED_OP, 0), ("skip_connect", 1)],
    normal_concat=range(1, 3),
    reduce=[(SEED_OP, 0), ("conv_bn_relu_3x1", 1)],
    reduce_concat=range(1, 3),
)


def _net(space) -> NetworkCnn:
    return NetworkCnn(
        space.C, space.num_classes, space.layers, GENOTYPE, space.in_channels, space.with_input_batchnorm,
        space.nodes, space.multiplier, space.stem_multiplier, gen=make_gen(1),
    )


def test_user_module_in_network_cnn(with_seed_op):
    space = tiny_space()
    net = _net(space).train()
    users = [m for m in net.modules() if isinstance(m, nn.Sequential)]
    assert len(users) == space.layers  # node 1 of every cell
    x, y = make_batch(space)
    counts = [int(m[1].num_batches_tracked) for m in users]
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert all(float(m[0].weight.grad.abs().sum()) > 0 for m in users)
    assert all(int(m[1].num_batches_tracked) == c + 1 for m, c in zip(users, counts))


def _onehot(space, cell) -> torch.Tensor:
    a = torch.zeros(space.num_edges, len(space.primitives), dtype=F64)
    for row, (i, j) in enumerate(space.edges()):
        op, idx = cell[j - 1]
        a[row, space.primitives.index(op if idx == i else "none")] = 1e4
    return a


@pytest.mark.parametrize("train", [pytest.param(False, id="eval"), pytest.param(True, id="train")])
def test_user_module_network_matches_supernet(with_seed_op, train):
    space = tiny_space(primitives=("none", "skip_connect", "conv_bn_relu_3x1", SEED_OP), pool_bn=False)
    gen = make_gen(0)
    weights, _, stats = init_supernet(space, gen, dtype=F64)
    alphas = {"normal": _onehot(space, GENOTYPE.normal), "reduce": _onehot(space, GENOTYPE.reduce)}
    x, _ = make_batch(space, dtype=F64)
    _, stats = apply_supernet(weights, alphas, stats, 2 * x + 1, cfg=space, train=True)  # non-trivial stats
    net = _net(space).double()
    net.load_supernet(weights, stats)
    net.train(train)
    want, _ = apply_supernet(weights, alphas, stats, x, cfg=space, train=train)
    torch.testing.assert_close(net(x), want, **tol(F64))


def test_ops_override_of_a_builtin_name_reaches_the_search_network(seed_ops):
    calls = []

    def factory(C, stride, affine):
        calls.append((C, stride))
        return conv_bn_relu_1x1(C, stride, affine)

    seed_ops["conv_bn_relu_3x1"] = factory
    assert not O.is_builtin("conv_bn_relu_3x1")  # NetworkCnn will instantiate the user's module
    space = tiny_space(primitives=("none", "conv_bn_relu_3x1"))
    weights, alphas, stats = init_supernet(space, make_gen(0))
    apply_supernet(weights, alphas, stats, make_batch(space)[0], cfg=space, train=False)
    assert calls, "the search network did not use the overriding OPS entry"


def test_user_module_forward_leaves_the_global_rng_alone(with_seed_op):
    space = tiny_space(primitives=("none", SEED_OP))
    weights, alphas, stats = init_supernet(space, make_gen(0))
    x, _ = make_batch(space)
    rng = torch.get_rng_state()
    apply_supernet(weights, alphas, stats, x, cfg=space, train=True)
    assert torch.equal(rng, torch.get_rng_state()), "apply_supernet advanced torch's global RNG"


@pytest.fixture
def seed_readme_op(seed_ops):
    """The seed README's custom-op example, verbatim with ``nas`` renamed ``fnas``."""
    from fnas.genotypes import PRIMITIVES_CNN
    from fnas.operations import OPS, ConvBNReLU

    PRIMITIVES_CNN.append("conv_bn_relu_1x1")
    OPS["conv_bn_relu_1x1"] = lambda C, stride, affine: ConvBNReLU(C, C, (1, 1), (stride, 1), (0, 0), affine=affine)
    yield PRIMITIVES_CNN
    PRIMITIVES_CNN.remove("conv_bn_relu_1x1")


def test_conv_bn_relu_is_the_seeds_block():
    from fnas.operations import ConvBNReLU

    block = ConvBNReLU(4, 6, (3, 1), (2, 1), (1, 0), affine=False)
    conv, bn, relu = block.op
    assert isinstance(conv, nn.Conv2d) and conv.bias is None and conv.stride == (2, 1) and conv.padding == (1, 0)
    assert isinstance(bn, nn.BatchNorm2d) and not bn.affine and bn.num_features == 6
    assert isinstance(relu, nn.ReLU)
    assert block(torch.randn(2, 4, 9, 1)).shape == (2, 6, 5, 1)
    assert ConvBNReLU(4, 4, (1, 1), (1, 1), (0, 0)).op[1].affine  # affine by default


def test_seed_readme_custom_op_searches_and_builds(seed_readme_op):
    from fnas.model import NetworkCnn as SeedNetworkCnn
    from fnas.search import init_search, search_step
    from fnas.search.config import SearchConfig

    space = tiny_space(primitives=tuple(seed_readme_op))  # the seed's PRIMITIVES_CNN + the new op
    cfg = SearchConfig(space=space, total_steps=2)
    state = init_search(cfg, make_gen(0))
    assert _op_leaves(state.weights), "the search network has no weights for the custom op"
    batch = make_batch(space, n=6)
    for _ in range(2):
        state, metrics = search_step(state, batch, batch, cfg=cfg)
    assert all(torch.isfinite(v).all() for v in tree.leaves(state.alphas))
    assert all(torch.isfinite(v).all() for v in tree.leaves(_op_leaves(state.weights)))
    genotype = Genotype_CNN(
        normal=[("conv_bn_relu_1x1", 0), ("skip_connect", 1)],
        normal_concat=range(1, 3),
        reduce=[("conv_bn_relu_1x1", 0), ("max_pool_3x1", 1)],
        reduce_concat=range(1, 3),
    )
    net = SeedNetworkCnn(
        C=space.C, num_classes=space.num_classes, layers=space.layers, genotype=genotype,
        in_channels=space.in_channels, with_input_batchnorm=True, nodes_per_layer=space.nodes,
        multiplier=space.multiplier, stem_multiplier=space.stem_multiplier,
    )  # fmt: skip
    assert sum(1 for m in net.modules() if type(m).__name__ == "ConvBNReLU") == space.layers
    logits = net(batch[0])
    assert logits.shape == (6, space.num_classes) and torch.isfinite(logits).all()

"""Tests for fnas.model: NetworkCnn with the seed's signature, and its equivalence to a one-hot supernet."""

from __future__ import annotations

import io
import math
import random

import pytest
import torch
import torch.nn.functional as F

from fnas.spaces import primitives as P
from fnas.core import tree
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import MY_CUSTOM_GENOTYPE, Genotype_CNN
from fnas.spaces.cell.network import NetworkCnn
from fnas.spaces.cell.supernet import apply_supernet, init_supernet

from conftest import make_batch, make_gen, tol

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def test_seed_genotype_builds_with_the_seed_signature():
    model = NetworkCnn(
        C=16,
        num_classes=10,
        layers=8,
        genotype=MY_CUSTOM_GENOTYPE,
        in_channels=1,
        with_input_batchnorm=True,
        nodes_per_layer=4,
        multiplier=4,
        stem_multiplier=3,
    )
    x = torch.randn(2, 1, 16, 1)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 10) and bool(torch.isfinite(logits).all())
    F.cross_entropy(logits, torch.tensor([0, 9])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    assert model.genotype is MY_CUSTOM_GENOTYPE


def test_seed_network_is_unchanged():
    """The seed's arguments build what they built before reductions / preprocess existed (numbers
    recorded from that code: parameter count, state_dict size, train-mode logits for fixed seeds)."""
    net = NetworkCnn(16, 7, 8, MY_CUSTOM_GENOTYPE, 6, True, 4, 4, 3, gen=make_gen(0)).double()
    assert sum(p.numel() for p in net.parameters()) == 205139
    assert len(net.state_dict()) == 131
    assert net.reductions == [2, 5]
    same = NetworkCnn(16, 7, 8, MY_CUSTOM_GENOTYPE, 6, True, 4, 4, 3, gen=make_gen(0), reductions=None,
                      preprocess="always").double()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), same.state_dict().values()))
    space = SpaceConfig(C=16, num_classes=7, layers=8, in_channels=6, input_shape=(128, 1))
    built = space.network(MY_CUSTOM_GENOTYPE, make_gen(0)).double()
    assert list(built.state_dict()) == list(net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), built.state_dict().values()))
    x = torch.randn(2, 6, 128, 1, generator=make_gen(1), dtype=F64)
    want = torch.tensor([
        -0.03583907708, -0.545168327501, 0.035389710142, -0.137853894242, 0.213415395979, 0.430562545555,
        0.327278629567, -0.000908716315, -0.640997453361, 0.031269884615, 0.094668872675, -0.037175135437,
        0.241447748966, 0.401759064915,
    ], dtype=F64).reshape(2, 7)  # fmt: skip
    torch.testing.assert_close(net.train()(x), want, rtol=0, atol=1e-9)
    torch.testing.assert_close(built.train()(x), want, rtol=0, atol=1e-9)


# --- THE equivalence: one-hot supernet == NetworkCnn holding the same weights --------------------


def _random_genotype(primitives, nodes: int, multiplier: int, seed: int, need_kind: str | None = None) -> Genotype_CNN:
    rng = random.Random(seed)
    ops = [p for p in primitives if p != "none"]
    concat = range(nodes - multiplier + 1, nodes + 1)
    while True:
        cells = [[(rng.choice(ops), rng.randrange(j)) for j in range(1, nodes + 1)] for _ in range(2)]
        kinds = {P.get(op).kind for cell in cells for op, _ in cell}
        # NetworkCnn infers its layout from the genotype; see test_2d_genotype_of_layout_free_ops_only.
        if need_kind is None or need_kind in kinds:
            return Genotype_CNN(cells[0], concat, cells[1], concat)


def _onehot_alphas(space: SpaceConfig, genotype: Genotype_CNN) -> dict:
    """All weight on the genotype's op on the genotype's edge, on `none` elsewhere (cfg.edges() order)."""
    out = {}
    for kind, cell in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        a = torch.full((space.num_edges, len(space.primitives)), -5.0, dtype=F64)
        for row, (i, j) in enumerate(space.edges()):
            op, idx = cell[j - 1]
            a[row, space.primitives.index(op if idx == i else "none")] = 1e4
        out[kind] = a
    return out


KX1_EXTRA_SET = P.SEED_KX1 + P.KX1_EXTRA
CASES = [
    pytest.param(MY_CUSTOM_GENOTYPE, P.SEED_KX1, 4, 4, (16, 1), id="seed-genotype"),
    *[pytest.param(_random_genotype(P.SEED_KX1, 3, 2, s), P.SEED_KX1, 3, 2, (12, 1), id=f"kx1-random{s}")
      for s in range(3)],
    pytest.param(_random_genotype(KX1_EXTRA_SET, 3, 3, 7), KX1_EXTRA_SET, 3, 3, (11, 1), id="kx1-extra-random"),
    *[pytest.param(_random_genotype(P.LEAN_KX1, 3, m, 11 + m), P.LEAN_KX1, 3, m, (12, 1), id=f"kx1-lean-m{m}")
      for m in (1, 2)],
    *[pytest.param(_random_genotype(P.DARTS_2D, 3, 2, s, "2d"), P.DARTS_2D, 3, 2, (6, 6), id=f"2d-random{s}")
      for s in range(2)],
]


# Cell skeletons: the seed's; the lean one (one late reduction, 1x1 preprocessing only where the
# channels change, a C-wide stem); one without reduction cells.
SKELETONS = {
    "seed": dict(stem_multiplier=2),
    "lean": dict(reductions=(2,), preprocess="when_needed", stem_multiplier=1),
    "flat": dict(reductions=(), preprocess="when_needed", stem_multiplier=2),
}


@pytest.mark.parametrize("skeleton", SKELETONS)
@pytest.mark.parametrize("train", [pytest.param(False, id="eval"), pytest.param(True, id="train")])
@pytest.mark.parametrize("genotype, primitives, nodes, multiplier, shape", CASES)
def test_network_matches_one_hot_supernet(genotype, primitives, nodes, multiplier, shape, train, skeleton):
    in_channels = 1 if shape[1] == 1 else 3
    space = SpaceConfig(
        C=4, num_classes=5, layers=3, in_channels=in_channels, input_shape=shape, nodes=nodes,
        multiplier=multiplier, primitives=primitives, pool_bn=False, **SKELETONS[skeleton],
    )
    gen = make_gen(0)
    weights, _, stats = init_supernet(space, gen, dtype=F64)
    # Move every weight (incl. the stem's affine BN) and the running statistics off their inits.
    weights = tree.map(lambda t: t + 0.2 * torch.randn(t.shape, generator=gen, dtype=F64), weights)
    alphas = _onehot_alphas(space, genotype)
    x, _ = make_batch(space, n=4, seed=1, dtype=F64)
    _, stats = apply_supernet(weights, alphas, stats, 1.5 * x + 0.5, cfg=space, train=True)

    net = NetworkCnn(
        space.C, space.num_classes, space.layers, genotype, in_channels, True, nodes, multiplier,
        space.stem_multiplier, gen=make_gen(1), reductions=space.reductions, preprocess=space.preprocess,
    ).double()
    assert [cell.pre is not None for cell in net.cells] == ["pre" in weights["cells"][f"c{i}"] for i in range(3)]
    net.load_supernet(weights, stats)
    net.train(train)
    want, new_stats = apply_supernet(weights, alphas, stats, x, cfg=space, train=train)
    got = net(x)  # in train mode this also updates the network's running statistics
    torch.testing.assert_close(got, want, **tol(F64))
    if train:
        # The running statistics moved the same way in both: compare in eval mode afterwards.
        net.eval()
        want_eval, _ = apply_supernet(weights, alphas, new_stats, x, cfg=space, train=False)
        torch.testing.assert_close(net(x), want_eval, **tol(F64))


def test_one_hot_supernet_is_not_trivially_equal():
    """Guard for the test above: a different genotype on the same weights gives different logits."""
    space = SpaceConfig(C=4, num_classes=5, layers=3, in_channels=1, input_shape=(12, 1), nodes=3, multiplier=2,
                        stem_multiplier=2, pool_bn=False)
    weights, _, stats = init_supernet(space, make_gen(0), dtype=F64)
    x, _ = make_batch(space, dtype=F64)
    a = _random_genotype(P.SEED_KX1, 3, 2, 0)
    b = a._replace(normal=[("conv_bn_relu_7x1", 0)] + list(a.normal[1:]))
    assert a != b
    la, _ = apply_supernet(weights, _onehot_alphas(space, a), stats, x, cfg=space, train=False)
    lb, _ = apply_supernet(weights, _onehot_alphas(space, b), stats, x, cfg=space, train=False)
    assert not torch.allclose(la, lb)


def test_2d_genotype_of_layout_free_ops_only():
    g = Genotype_CNN([("skip_connect", 0), ("skip_connect", 1)], range(1, 3),
                     [("skip_connect", 0), ("skip_connect", 1)], range(1, 3))
    net = NetworkCnn(4, 3, 3, g, 3, True, 2, 2, 1, gen=make_gen(0), kx1=False)
    assert net(torch.randn(2, 3, 6, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="contradicts"):
        NetworkCnn(4, 3, 3, _random_genotype(P.DARTS_2D, 2, 2, 3), 3, True, 2, 2, 1, kx1=True)


# --- other behaviour -------------------------------------------------------------------------------


def _small_net(seed: int = 0, **kw) -> NetworkCnn:
    g = _random_genotype(P.SEED_KX1, 2, 2, 3)
    kwargs = dict(C=4, num_classes=3, layers=3, genotype=g, in_channels=2, nodes_per_layer=2, multiplier=2,
                  stem_multiplier=1, gen=make_gen(seed))
    kwargs.update(kw)
    return NetworkCnn(**kwargs)


@pytest.mark.parametrize(
    "shape, match",
    [
        pytest.param((2, 3, 8, 1), r"expects \(N, 2, T, 1\)", id="wrong-channels"),
        pytest.param((2, 2, 8), r"expects \(N, 2, T, 1\)", id="3d-input"),
        pytest.param((2, 2, 8, 8), r"kx1 genotype expects \(N, C, T, 1\)", id="2d-input-for-kx1"),
    ],
)
def test_wrong_input_raises(shape, match):
    with pytest.raises(ValueError, match=match):
        _small_net()(torch.randn(*shape))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(dict(nodes_per_layer=3), r"nodes_per_layer=3", id="nodes-mismatch"),
        pytest.param(dict(multiplier=1), r"multiplier=1", id="multiplier-mismatch"),
        pytest.param(dict(C=0), r"C must be a positive int", id="C=0"),
        pytest.param(dict(genotype=MY_CUSTOM_GENOTYPE._replace(normal=[("nope", 0)] * 4), nodes_per_layer=4,
                          multiplier=4), r"Unknown primitive 'nope'", id="unknown-op"),
    ],
)
def test_invalid_construction_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _small_net(**kwargs)


def test_state_dict_round_trip():
    net = _small_net(seed=0).train()
    x = torch.randn(4, 2, 8, 1)
    net(x * 2 + 1)  # move the running statistics
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    other = _small_net(seed=1)
    other.eval(), net.eval()
    with torch.no_grad():
        assert not torch.allclose(other(x), net(x))
        other.load_state_dict(torch.load(buf, weights_only=True))
        assert torch.equal(other(x), net(x))
    assert set(other.state_dict()) == set(net.state_dict())
    assert any("running_mean" in k for k in net.state_dict())


def test_train_mode_updates_buffers_and_eval_does_not():
    net = _small_net()
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    x = torch.randn(4, 2, 8, 1) * 3 + 1
    net.eval()
    with torch.no_grad():
        net(x)
    assert all(torch.equal(b, buffers[k]) for k, b in net.named_buffers())
    net.train()
    net(x)
    assert sum(not torch.equal(b, buffers[k]) for k, b in net.named_buffers()) >= len(buffers) // 2


@pytest.mark.parametrize("layers", [pytest.param(3, id="layers3"), pytest.param(6, id="layers6")])
def test_reduction_cells_halve_time_and_double_width(layers):
    net = _small_net(layers=layers)
    shapes = []
    hooks = [cell.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for cell in net.cells]
    net.eval()
    with torch.no_grad():
        net(torch.randn(2, 2, 13, 1))
    for h in hooks:
        h.remove()
    c, t, expected = 4, 13, []
    for layer in range(layers):
        if layer in (layers // 3, 2 * layers // 3):
            c, t = 2 * c, math.ceil(t / 2)
        expected.append((2, 2 * c, t, 1))  # multiplier 2
    assert shapes == expected
    assert net.reductions == [layers // 3, 2 * layers // 3]


def test_load_supernet_rejects_a_different_size():
    net = _small_net()
    space = SpaceConfig(C=6, num_classes=3, layers=3, in_channels=2, input_shape=(8, 1), nodes=2, multiplier=2,
                        stem_multiplier=1)
    weights, _, stats = init_supernet(space, make_gen(0))
    with pytest.raises(ValueError, match="build NetworkCnn with the search space's sizes"):
        net.load_supernet(weights, stats)


def test_load_supernet_from_a_space_without_the_genotype_ops():
    net = _small_net()
    space = SpaceConfig(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(8, 1), nodes=2, multiplier=2,
                        stem_multiplier=1, primitives=("none", "skip_connect"))
    weights, _, stats = init_supernet(space, make_gen(0))
    with pytest.raises(ValueError):
        net.load_supernet(weights, stats)


@pytest.mark.parametrize(
    "layers, reductions",
    [pytest.param(3, (), id="none"), pytest.param(4, (3,), id="last"), pytest.param(4, (2, 0), id="first-and-third")],
)
def test_reduction_cells_where_asked(layers, reductions):
    net = _small_net(layers=layers, reductions=reductions)
    shapes = []
    hooks = [cell.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for cell in net.cells]
    net.eval()
    with torch.no_grad():
        net(torch.randn(2, 2, 13, 1))
    for h in hooks:
        h.remove()
    c, t, expected = 4, 13, []
    for layer in range(layers):
        if layer in reductions:
            c, t = 2 * c, math.ceil(t / 2)
        expected.append((2, 2 * c, t, 1))  # multiplier 2
    assert shapes == expected
    assert net.reductions == sorted(reductions)


def test_when_needed_preprocesses_only_where_channels_change():
    # stem_multiplier 1, multiplier 2: cell 0 reads C, cell 1 reads 2C at width C, cell 2 (reducing)
    # reads 2C at width 2C
    net = _small_net(preprocess="when_needed", reductions=(2,))
    assert [cell.pre is not None for cell in net.cells] == [False, True, False]
    always = _small_net(reductions=(2,))
    assert [cell.pre is not None for cell in always.cells] == [True, True, True]
    pre = sum(p.numel() for cell in always.cells for p in cell.pre.parameters())
    saved = sum(p.numel() for p in always.parameters()) - sum(p.numel() for p in net.parameters())
    assert saved == pre - sum(p.numel() for p in net.cells[1].pre.parameters()) == (4 * 4 + 8) + (8 * 8 + 16)
    assert net(torch.randn(2, 2, 8, 1)).shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(dict(reductions=(3,)), r"reductions must be distinct cell indices in \[0, 3\)", id="range"),
        pytest.param(dict(reductions=(1, 1)), r"distinct", id="duplicate"),
        pytest.param(dict(reductions=(1.0,)), r"tuple of cell indices", id="float"),
        pytest.param(dict(reductions=2), r"tuple of cell indices", id="int"),
        pytest.param(dict(preprocess="never"), r"preprocess must be one of \['always', 'when_needed'\]", id="pre"),
    ],
)
def test_invalid_skeleton_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _small_net(**kwargs)


def test_load_supernet_rejects_another_preprocessing():
    net = _small_net(preprocess="when_needed")
    space = SpaceConfig(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(8, 1), nodes=2, multiplier=2,
                        stem_multiplier=1)  # preprocess="always"
    weights, _, stats = init_supernet(space, make_gen(0))
    with pytest.raises(ValueError, match="preprocess"):
        net.load_supernet(weights, stats)

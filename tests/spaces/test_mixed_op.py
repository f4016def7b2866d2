"""Tests for fnas.mixed_op: one-hot mixing reduces to a single primitive; the fused path equals the plain one."""

from __future__ import annotations

import pytest
import torch

from fnas.core import layers as L
from fnas.spaces import primitives as P
from fnas.core import tree
from fnas.spaces.cell.mixed_op import apply_edges_fused, apply_mixed_op, init_mixed_op

from conftest import make_gen, tol

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
C = 4
KX1_ALL = P.SEED_KX1 + P.KX1_EXTRA + P.KX1_WIDE

SPACES = [pytest.param(KX1_ALL, True, id="kx1"), pytest.param(P.DARTS_2D, False, id="2d")]
STRIDES = [pytest.param(1, id="s1"), pytest.param(2, id="s2")]


def _x(kx1: bool, T: int = 8, seed: int = 1) -> torch.Tensor:
    shape = (3, C, T, 1) if kx1 else (3, C, T, T)
    return L.to_layout(torch.randn(*shape, generator=make_gen(seed), dtype=F64) * 1.5 + 0.5)


def _onehot(primitives, k: int) -> torch.Tensor:
    logits = torch.zeros(len(primitives), dtype=F64)
    logits[k] = 1e4
    return torch.softmax(logits, dim=0)  # exactly e_k in float64


def _reference(name: str, params: dict, stats: dict, x, *, stride: int, train: bool, pool_bn: bool):
    """The primitive applied alone (plus the search net's affine-free BN after pools)."""
    prim = P.get(name)
    if prim.family == "pool":
        y, _ = prim.apply({}, {}, x, stride=stride, train=train)
        if pool_bn:
            y, _ = L.apply_bn({}, L.init_bn(C, affine=False, dtype=F64)[1], y, train=train)
        return y
    return prim.apply(params[name], stats[name], x, stride=stride, train=train)[0]


@pytest.mark.parametrize("train", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
@pytest.mark.parametrize("pool_bn", [pytest.param(False, id="no-pool-bn"), pytest.param(True, id="pool-bn")])
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("primitives, kx1", SPACES)
def test_one_hot_alphas_reduce_to_the_single_primitive(primitives, kx1, stride, pool_bn, train):
    params, stats = init_mixed_op(make_gen(0), C, stride, primitives, pool_bn=pool_bn, dtype=F64)
    x = _x(kx1, T=7 if stride == 2 else 8)
    for k, name in enumerate(primitives):
        y, _ = apply_mixed_op(
            params, stats, x, _onehot(primitives, k), primitives=primitives, stride=stride, train=train, pool_bn=pool_bn
        )
        if name == "none":
            assert y is None or float(y.abs().sum()) == 0.0
            continue
        want = _reference(name, params, stats, x, stride=stride, train=train, pool_bn=pool_bn)
        torch.testing.assert_close(y, want, **tol(F64), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("primitives, kx1", SPACES)
def test_mixed_op_is_linear_in_the_mixing_weights(primitives, kx1):
    params, stats = init_mixed_op(make_gen(0), C, 1, primitives, pool_bn=True, dtype=F64)
    x = _x(kx1)
    run = lambda w: apply_mixed_op(params, stats, x, w, primitives=primitives, stride=1, train=True, pool_bn=True)[0]
    w = torch.softmax(torch.randn(len(primitives), generator=make_gen(2), dtype=F64), dim=0)
    want = sum(w[k] * run(_onehot(primitives, k)) for k in range(len(primitives)))
    torch.testing.assert_close(run(w), want, **tol(F64))


def test_all_none_edge_contributes_nothing():
    params, stats = init_mixed_op(make_gen(0), C, 2, ("none",), pool_bn=True, dtype=F64)
    x = _x(True)
    y, new = apply_mixed_op(params, stats, x, torch.ones(1, dtype=F64), primitives=("none",), stride=2, train=True,
                            pool_bn=True)
    assert y is None or (float(y.abs().sum()) == 0.0 and y.shape == (3, C, 4, 1))
    outs, _ = apply_edges_fused([params, params], [stats, stats], x, torch.ones(2, 1, dtype=F64),
                                primitives=("none",), stride=2, train=True, pool_bn=True)
    assert all(o is None or float(o.abs().sum()) == 0.0 for o in outs)


@pytest.mark.parametrize("primitives, kx1", SPACES)
def test_mixed_op_is_pure(primitives, kx1):
    params, stats = init_mixed_op(make_gen(0), C, 2, primitives, pool_bn=True, dtype=F64)
    x = _x(kx1)
    w = torch.softmax(torch.randn(len(primitives), generator=make_gen(3), dtype=F64), dim=0)
    before = tree.clone((params, stats, x, w))
    _, new = apply_mixed_op(params, stats, x, w, primitives=primitives, stride=2, train=True, pool_bn=True)
    assert tree.all_equal((params, stats, x, w), before)
    assert not tree.all_equal(new, stats)
    _, same = apply_mixed_op(params, stats, x, w, primitives=primitives, stride=2, train=False, pool_bn=True)
    assert tree.all_equal(same, stats)


def test_init_mixed_op_is_deterministic():
    a = init_mixed_op(make_gen(5), C, 2, KX1_ALL, pool_bn=True, dtype=F64)
    b = init_mixed_op(make_gen(5), C, 2, KX1_ALL, pool_bn=True, dtype=F64)
    c = init_mixed_op(make_gen(6), C, 2, KX1_ALL, pool_bn=True, dtype=F64)
    assert tree.all_equal(a, b) and not tree.all_equal(a[0], c[0])
    assert all(t.dtype == F64 for t in tree.leaves(a))


E = 3  # edges leaving one state


def _edges(primitives, stride: int, seed: int = 0):
    gen = make_gen(seed)
    pairs = [init_mixed_op(gen, C, stride, primitives, pool_bn=True, dtype=F64) for _ in range(E)]
    return [p for p, _ in pairs], [s for _, s in pairs]


@pytest.mark.parametrize("train", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("primitives, kx1", SPACES)
def test_fused_edges_equal_plain_mixed_ops(primitives, kx1, stride, train):
    params, stats = _edges(primitives, stride)
    x = _x(kx1, T=7)
    w = torch.softmax(torch.randn(E, len(primitives), generator=make_gen(4), dtype=F64), dim=-1)
    before = tree.clone((params, stats, x))
    outs, new = apply_edges_fused(params, stats, x, w, primitives=primitives, stride=stride, train=train, pool_bn=True)
    assert tree.all_equal((params, stats, x), before)
    assert len(outs) == len(new) == E
    for e in range(E):
        want, want_stats = apply_mixed_op(
            params[e], stats[e], x, w[e], primitives=primitives, stride=stride, train=train, pool_bn=True
        )
        torch.testing.assert_close(outs[e], want, **tol(F64))
        assert tree.all_equal(tree.zeros_like(new[e]), tree.zeros_like(want_stats))
        for got, ref in zip(tree.leaves(new[e]), tree.leaves(want_stats)):
            torch.testing.assert_close(got, ref, **tol(F64))


@pytest.mark.parametrize("primitives, kx1", SPACES)
def test_fused_gradient_wrt_mixing_weights(primitives, kx1):
    """d<y_e, r_e>/dw[e, k] = <op_k(x), r_e>: the fused broadcast mixing routes each weight to its op."""
    params, stats = _edges(primitives, 1)
    x = _x(kx1)
    r = torch.randn(E, *x.shape, generator=make_gen(9), dtype=F64)

    def objective(w):
        outs, _ = apply_edges_fused(params, stats, x, w, primitives=primitives, stride=1, train=True, pool_bn=True)
        return sum((o * r[e]).sum() for e, o in enumerate(outs) if o is not None)

    w = torch.softmax(torch.randn(E, len(primitives), generator=make_gen(4), dtype=F64), dim=-1)
    g = torch.func.grad(objective)(w)
    want = torch.zeros_like(w)
    for e in range(E):
        for k, name in enumerate(primitives):
            if name != "none":
                y, _ = apply_mixed_op(params[e], stats[e], x, _onehot(primitives, k), primitives=primitives,
                                      stride=1, train=True, pool_bn=True)
                want[e, k] = (y * r[e]).sum()
    torch.testing.assert_close(g, want, **tol(F64))

"""Tests for fnas.supernet: shapes, purity, determinism, BN statistics, reduction cells, fused == plain."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from fnas.core import layers as L
from fnas.spaces import primitives as P
from fnas.core import tree
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.supernet import apply_supernet, init_supernet

from conftest import make_batch, make_gen, tiny_space, tiny_space_2d, tol

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64

SPACES = [
    pytest.param(tiny_space, id="kx1"),
    pytest.param(lambda **kw: tiny_space(primitives=P.KX1_EXTRA + ("none",), **kw), id="kx1-extra"),
    pytest.param(tiny_space_2d, id="2d"),
    pytest.param(lambda **kw: tiny_space(primitives=P.LEAN_KX1, reductions=(2,), preprocess="when_needed", **kw),
                 id="kx1-lean"),
    pytest.param(lambda **kw: tiny_space(reductions=(), preprocess="when_needed", **kw), id="kx1-flat"),
]


def _structure_equal(a, b) -> bool:
    return tree.all_equal(tree.zeros_like(a), tree.zeros_like(b))


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="f32"), pytest.param(F64, id="f64")])
@pytest.mark.parametrize("make_space", SPACES)
def test_init_and_output_shapes(make_space, dtype):
    space = make_space()
    weights, alphas, stats = init_supernet(space, make_gen(0), dtype=dtype)
    assert set(alphas) == {"normal", "reduce"}
    for a in alphas.values():
        assert a.shape == (space.num_edges, len(space.primitives)) and a.dtype == dtype
        assert float(a.abs().max()) < 1e-2  # DARTS' 1e-3 * randn
    assert all(t.dtype == dtype for t in tree.leaves(weights) + tree.leaves(stats))
    x, _ = make_batch(space, n=3, dtype=dtype)
    for train in (True, False):
        logits, new = apply_supernet(weights, alphas, stats, x, cfg=space, train=train)
        assert logits.shape == (3, space.num_classes) and logits.dtype == dtype
        assert bool(torch.isfinite(logits).all())
        assert _structure_equal(new, stats)


def test_accepts_search_config():
    space = tiny_space()
    weights, alphas, stats = init_supernet(SearchConfig(space=space), make_gen(0))
    x, _ = make_batch(space)
    a, _ = apply_supernet(weights, alphas, stats, x, cfg=space, train=False)
    b, _ = apply_supernet(weights, alphas, stats, x, cfg=SearchConfig(space=space), train=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("make_space", SPACES)
def test_apply_does_not_mutate_its_inputs(make_space):
    space = make_space()
    weights, alphas, stats = init_supernet(space, make_gen(0), dtype=F64)
    x, y = make_batch(space, dtype=F64)
    before = tree.clone((weights, alphas, stats, x))
    apply_supernet(weights, alphas, stats, x, cfg=space, train=True)

    def loss(w, a):
        return F.cross_entropy(apply_supernet(w, a, stats, x, cfg=space, train=True)[0], y)

    torch.func.grad(loss, argnums=(0, 1))(weights, alphas)
    assert tree.all_equal((weights, alphas, stats, x), before)


def test_determinism_from_the_generator():
    space = tiny_space()
    a = init_supernet(space, make_gen(0))
    b = init_supernet(space, make_gen(0))
    c = init_supernet(space, make_gen(1))
    assert tree.all_equal(a, b)
    assert not tree.all_equal(a[0], c[0]) and not tree.all_equal(a[1], c[1])
    assert tree.all_equal(a[2], c[2])  # BN statistics start at (0, 1) whatever the seed
    x, _ = make_batch(space)
    out_a = apply_supernet(*a, x, cfg=space, train=True)
    out_b = apply_supernet(*b, x, cfg=space, train=True)
    assert tree.all_equal(out_a, out_b)


def test_global_rng_is_not_used():
    space = tiny_space()
    torch.manual_seed(0)
    a = init_supernet(space, make_gen(3))
    torch.manual_seed(1)
    b = init_supernet(space, make_gen(3))
    assert tree.all_equal(a, b)


@pytest.mark.parametrize("make_space", SPACES)
def test_train_flag_and_batchnorm_statistics(make_space):
    space = make_space()
    weights, alphas, stats = init_supernet(space, make_gen(0), dtype=F64)
    x, _ = make_batch(space, dtype=F64)
    _, same = apply_supernet(weights, alphas, stats, x, cfg=space, train=False)
    assert tree.all_equal(same, stats)
    _, new = apply_supernet(weights, alphas, stats, x, cfg=space, train=True)
    changed = [not torch.equal(a, b) for a, b in zip(tree.leaves(new), tree.leaves(stats))]
    assert sum(changed) >= len(changed) // 2, "train=True should move the running statistics"
    # Eval mode uses the running statistics: they change the logits.
    l0, _ = apply_supernet(weights, alphas, stats, x, cfg=space, train=False)
    l1, _ = apply_supernet(weights, alphas, new, x, cfg=space, train=False)
    assert not torch.allclose(l0, l1)
    # Train mode normalises with batch statistics: the running ones do not matter.
    t0, _ = apply_supernet(weights, alphas, stats, x, cfg=space, train=True)
    t1, _ = apply_supernet(weights, alphas, new, x, cfg=space, train=True)
    torch.testing.assert_close(t0, t1, **tol(F64))


@pytest.mark.parametrize("train", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
@pytest.mark.parametrize("make_space", SPACES)
def test_fused_equals_plain(make_space, train):
    fused, plain = make_space(fused=True), make_space(fused=False)
    weights, alphas, stats = init_supernet(fused, make_gen(0), dtype=F64)
    alphas = tree.map(lambda a: torch.randn(a.shape, generator=make_gen(5), dtype=F64), alphas)
    x, y = make_batch(fused, dtype=F64)
    _, stats = apply_supernet(weights, alphas, stats, x * 2 + 1, cfg=plain, train=True)
    lf, sf = apply_supernet(weights, alphas, stats, x, cfg=fused, train=train)
    lp, sp = apply_supernet(weights, alphas, stats, x, cfg=plain, train=train)
    torch.testing.assert_close(lf, lp, **tol(F64))
    assert _structure_equal(sf, sp)
    for a, b in zip(tree.leaves(sf), tree.leaves(sp)):
        torch.testing.assert_close(a, b, **tol(F64))

    def loss(w, a, cfg):
        return F.cross_entropy(apply_supernet(w, a, stats, x, cfg=cfg, train=train)[0], y)

    gf = torch.func.grad(loss, argnums=(0, 1))(weights, alphas, fused)
    gp = torch.func.grad(loss, argnums=(0, 1))(weights, alphas, plain)
    for a, b in zip(tree.leaves(gf), tree.leaves(gp)):
        torch.testing.assert_close(a, b, **tol(F64))


def test_gradients_reach_both_alpha_tables_and_the_weights():
    space = tiny_space()
    weights, alphas, stats = init_supernet(space, make_gen(0), dtype=F64)
    x, y = make_batch(space, dtype=F64)
    gw, ga = torch.func.grad(
        lambda w, a: F.cross_entropy(apply_supernet(w, a, stats, x, cfg=space, train=True)[0], y), argnums=(0, 1)
    )(weights, alphas)
    assert float(ga["normal"].abs().sum()) > 0 and float(ga["reduce"].abs().sum()) > 0
    assert float(tree.norm(gw)) > 0


def test_all_none_alphas_give_bias_only_logits():
    """With every edge on `none`, the cells output zeros, so the logits are the head's bias."""
    space = tiny_space()
    weights, _, stats = init_supernet(space, make_gen(0), dtype=F64)
    alphas = {k: torch.zeros(space.num_edges, len(space.primitives), dtype=F64) for k in ("normal", "reduce")}
    for a in alphas.values():
        a[:, space.primitives.index("none")] = 1e4
    x, _ = make_batch(space, dtype=F64)
    logits, _ = apply_supernet(weights, alphas, stats, x, cfg=space, train=False)
    bias = [t for t in tree.leaves(weights) if t.shape == (space.num_classes,)]
    assert len(bias) == 1
    torch.testing.assert_close(logits, bias[0].expand_as(logits), **tol(F64))


# --- reduction cells: a probe primitive records the grid and stride of every edge --------------


def _probe(calls: list) -> P.Primitive:
    def apply(params, stats, x, *, stride, train):
        calls.append((x.shape[1], x.shape[2], stride))
        return L.subsample(x, stride), stats

    return P.Primitive("test_probe", lambda gen, C, stride, *, affine, dtype: ({}, {}), apply, "any", "conv")


def _expected_calls(space, reductions=None) -> Counter:
    """Per edge: (channels, input length, stride) under DESIGN.md's reduction rule, or with the
    reduction cells ``reductions``."""
    calls: Counter = Counter()
    c, t = space.C, space.input_shape[0]
    for layer in range(space.layers):
        reduction = layer in (reductions if reductions is not None else (space.layers // 3, 2 * space.layers // 3))
        if reduction:
            c *= 2
        for i, j in space.edges():
            stride = 2 if reduction and i == 0 else 1
            t_in = t if i == 0 else (math.ceil(t / 2) if reduction else t)
            calls[(c, t_in, stride)] += 1
        if reduction:
            t = math.ceil(t / 2)
    return calls


@pytest.mark.parametrize("layers", [pytest.param(n, id=f"layers{n}") for n in (2, 3, 5, 6)])
def test_reduction_cells_at_one_and_two_thirds(temp_primitives, layers):
    calls: list = []
    temp_primitives(_probe(calls))
    space = tiny_space(layers=layers, input_shape=(13, 1), primitives=("none", "test_probe"))
    weights, alphas, stats = init_supernet(space, make_gen(0))
    x, _ = make_batch(space, n=2)
    apply_supernet(weights, alphas, stats, x, cfg=space, train=False)
    assert Counter(calls) == _expected_calls(space)
    reductions = {layers // 3, 2 * layers // 3}
    assert sum(s == 2 for _, _, s in calls) == len(reductions) * space.nodes  # edges leaving state 0
    # The head reads multiplier * C * 2^(number of reductions) channels.
    head = [t for t in tree.leaves(weights) if t.ndim == 2]
    assert [tuple(t.shape) for t in head] == [(space.num_classes, space.multiplier * space.C * 2 ** len(reductions))]


@pytest.mark.parametrize(
    "layers, reductions",
    [pytest.param(3, (), id="none"), pytest.param(4, (3,), id="last"), pytest.param(5, (0, 4), id="first-and-last")],
)
def test_reduction_cells_where_asked(temp_primitives, layers, reductions):
    calls: list = []
    temp_primitives(_probe(calls))
    space = tiny_space(layers=layers, input_shape=(13, 1), primitives=("none", "test_probe"), reductions=reductions)
    assert space.reduction_layers == reductions
    weights, alphas, stats = init_supernet(space, make_gen(0))
    x, _ = make_batch(space, n=2)
    apply_supernet(weights, alphas, stats, x, cfg=space, train=False)
    assert Counter(calls) == _expected_calls(space, reductions)
    assert sum(s == 2 for _, _, s in calls) == len(reductions) * space.nodes
    head = [t for t in tree.leaves(weights) if t.ndim == 2]
    assert [tuple(t.shape) for t in head] == [(space.num_classes, space.multiplier * space.C * 2 ** len(reductions))]


@pytest.mark.parametrize("stem_multiplier, multiplier, pre", [(1, 2, [False, True, False, True]),
                                                              (2, 2, [True, True, False, True]),
                                                              (1, 1, [False, False, True, False])])
def test_when_needed_preprocessing_only_where_channels_change(stem_multiplier, multiplier, pre):
    # cells 0..3, cell 2 reduces: cell l reads stem_multiplier * C (l = 0) or multiplier * its
    # predecessor's width, and has width C (2 C from cell 2 on)
    space = tiny_space(layers=4, reductions=(2,), preprocess="when_needed", stem_multiplier=stem_multiplier,
                       multiplier=multiplier)
    weights, alphas, stats = init_supernet(space, make_gen(0))
    assert ["pre" in weights["cells"][f"c{i}"] for i in range(4)] == pre
    assert ["pre" in stats["cells"][f"c{i}"] for i in range(4)] == pre
    x, _ = make_batch(space)
    _, new = apply_supernet(weights, alphas, stats, x, cfg=space, train=True)
    assert _structure_equal(new, stats)
    always = init_supernet(tiny_space(layers=4, reductions=(2,), stem_multiplier=stem_multiplier,
                                      multiplier=multiplier), make_gen(0))[0]
    assert all("pre" in always["cells"][f"c{i}"] for i in range(4))


def test_seed_supernet_is_unchanged():
    """The seed skeleton's supernet computes what it did before reductions / preprocess existed
    (numbers recorded from that code)."""
    space = SpaceConfig(C=8, num_classes=7, layers=5, in_channels=6, input_shape=(32, 1))
    weights, alphas, stats = init_supernet(space, make_gen(0), dtype=F64)
    assert sum(t.numel() for t in tree.leaves(weights)) == 407987
    x = torch.randn(2, 6, 32, 1, generator=make_gen(1), dtype=F64)
    alphas = {k: torch.randn(v.shape, generator=make_gen(2), dtype=F64) for k, v in alphas.items()}
    logits, _ = apply_supernet(weights, alphas, stats, x, cfg=space, train=True)
    want = torch.tensor([
        0.405368565628, 0.276343942113, -0.19211949597, 0.253117336182, -0.455441271417, -0.303589370123,
        0.778118738606, 0.054722885149, 0.206377340001, 0.052966594639, -0.452647506595, 0.985015941161,
        0.083927222094, -0.22520631522,
    ], dtype=F64).reshape(2, 7)  # fmt: skip
    torch.testing.assert_close(logits, want, rtol=0, atol=1e-9)


# --- PC-DARTS partial channels -------------------------------------------------------------------


@pytest.mark.parametrize("primitives", [P.SEED_KX1, P.SEED_KX1 + P.KX1_EXTRA], ids=["seed", "seed+extra"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_partial_channels_fused_equals_plain(primitives, train):
    import dataclasses

    space = SpaceConfig(C=8, num_classes=3, layers=4, in_channels=2, input_shape=(33, 1), primitives=primitives,
                        partial_channels=2)
    weights, alphas, stats = init_supernet(space, torch.Generator().manual_seed(0), dtype=torch.float64)
    alphas = tree.map(lambda t: torch.randn(t.shape, generator=torch.Generator().manual_seed(1), dtype=t.dtype),
                      alphas)
    x = torch.randn(5, 2, 33, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fused, _ = apply_supernet(weights, alphas, stats, x, cfg=space, train=train)
    plain, _ = apply_supernet(weights, alphas, stats, x, cfg=dataclasses.replace(space, fused=False), train=train)
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-12)


def test_partial_channels_mixed_ops_see_a_quarter_and_betas_get_gradients():
    space = SpaceConfig(C=8, num_classes=3, layers=3, in_channels=2, input_shape=(16, 1), nodes=2, multiplier=2,
                        partial_channels=4, primitives=("none", "conv_bn_relu_3x1", "max_pool_3x1"))
    weights, alphas, stats = init_supernet(space, torch.Generator().manual_seed(0))
    assert set(alphas) == {"normal", "reduce", "edge_normal", "edge_reduce"}
    assert alphas["edge_normal"].shape == (space.num_edges,)
    conv = [t for k, t in tree.flatten_dict(weights).items()
            if k.startswith("cells.c0.") and k.endswith("conv_bn_relu_3x1.conv.weight")]
    assert conv and all(t.shape[:2] == (2, 2) for t in conv)  # the first cell's C/K = 8/4 channels in and out
    x = torch.randn(4, 2, 16, 1)
    grads = torch.func.grad(lambda a: apply_supernet(weights, a, stats, x, cfg=space, train=True)[0].square().mean())(
        alphas)
    assert grads["edge_normal"].abs().sum() > 0 and grads["edge_reduce"].abs().sum() > 0


def test_partial_channels_betas_fold_into_the_genotype():
    from fnas.spaces.cell.genotype import derive_genotype

    space = SpaceConfig(C=8, num_classes=3, layers=3, in_channels=2, input_shape=(16, 1), nodes=2, multiplier=2,
                        partial_channels=2, primitives=("none", "conv_bn_relu_3x1", "max_pool_3x1"))
    E, ops = space.num_edges, len(space.primitives)  # edges: 0->1, 0->2, 1->2
    alphas = {"normal": torch.zeros(E, ops), "reduce": torch.zeros(E, ops)}
    alphas["normal"][1, 1] = 1.0  # conv on 0->2 is the strongest op of node 2 ...
    alphas["normal"][2, 2] = 0.9  # ... unless the edge weights say 1->2 matters more
    alphas["edge_normal"] = torch.zeros(E)
    alphas["edge_reduce"] = torch.zeros(E)
    assert derive_genotype(alphas, space).normal[1] == ("conv_bn_relu_3x1", 0)
    alphas["edge_normal"][2] = 3.0
    assert derive_genotype(alphas, space).normal[1] == ("max_pool_3x1", 1)


@pytest.mark.parametrize("C, K, match", [(8, 3, "divisor of C=8"), (4, 4, "C/K=1 channels")],
                         ids=["not-a-divisor", "odd-share-with-skip"])
def test_partial_channels_validation(C, K, match):
    with pytest.raises(ValueError, match=match):
        SpaceConfig(C=C, partial_channels=K)


@pytest.mark.parametrize("fused", [pytest.param(True, id="fused"), pytest.param(False, id="plain")])
@pytest.mark.parametrize("make", [pytest.param(tiny_space, id="kx1"), pytest.param(tiny_space_2d, id="2d")])
def test_sync_reaches_every_batch_norm(monkeypatch, make, fused):
    """``apply_supernet(..., sync=s)`` hands ``s`` to every BatchNorm (data-parallel BN is explicit)."""
    primitives = P.SEED_KX1 + P.KX1_EXTRA if make is tiny_space else P.DARTS_2D
    space = make(primitives=primitives, fused=fused)
    weights, alphas, stats = init_supernet(space, make_gen(0))
    seen = []
    batch_norm = L.batch_norm

    def spy(*args, sync=None, **kwargs):
        seen.append(sync)
        return batch_norm(*args, sync=None, **kwargs)  # the marker object is no real Sync: run locally

    monkeypatch.setattr(L, "batch_norm", spy)
    sync = object()
    apply_supernet(weights, alphas, stats, make_batch(space)[0], cfg=space, train=True, sync=sync)
    assert seen and all(s is sync for s in seen), f"{sum(s is not sync for s in seen)} of {len(seen)} BNs lost sync"

"""Tests for fnas.cost: exact costs vs NetworkCnn + FlopCounterMode, expected cost, extremes, budgets, penalty."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fnas import cost as K
from fnas.core import layers as L
from fnas.spaces.primitives import modules as O
from fnas.spaces import primitives as P
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import MY_CUSTOM_GENOTYPE, Genotype_CNN, derive_genotype
from fnas.spaces.cell.network import NetworkCnn
from fnas.spaces.cell.supernet import cell_plan

from conftest import tol

KX1_OPS = tuple(sorted(set(P.SEED_KX1) | set(P.KX1_EXTRA)))
ALL_KX1 = tuple(sorted(set(KX1_OPS) | set(P.KX1_WIDE)))
KX1_SPACE = dict(C=4, num_classes=5, layers=5, in_channels=3, primitives=KX1_OPS)
D2_SPACE = dict(C=4, num_classes=5, layers=5, in_channels=3, primitives=P.DARTS_2D)


def skeleton(name: str, layers: int) -> dict:
    """SpaceConfig fields of a cell skeleton: the seed's, the lean one (one late reduction, no 1x1
    preprocessing where channels match, a C-wide stem), or one without reduction cells."""
    return {
        "seed": {},
        "lean": dict(reductions=(layers - 1,), preprocess="when_needed", stem_multiplier=1),
        "flat": dict(reductions=(), preprocess="when_needed"),
    }[name]


SKELETONS = ["seed", "lean", "flat"]


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py: tiny tensors, one thread


def _measure(genotype: Genotype_CNN, space: SpaceConfig) -> tuple[int, int]:
    """(params, MACs) of the real NetworkCnn: sum(numel) and FlopCounterMode FLOPs / 2 at batch 1."""
    model = NetworkCnn(
        space.C,
        space.num_classes,
        space.layers,
        genotype,
        in_channels=space.in_channels,
        with_input_batchnorm=space.with_input_batchnorm,
        nodes_per_layer=space.nodes,
        multiplier=space.multiplier,
        stem_multiplier=space.stem_multiplier,
        gen=torch.Generator().manual_seed(0),
        reductions=space.reduction_layers,
        preprocess=space.preprocess,
    )
    x = torch.zeros(1, space.in_channels, *space.input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(x)
    return sum(p.numel() for p in model.parameters()), fc.get_total_flops() // 2


def _every_node(op: str, space: SpaceConfig) -> Genotype_CNN:
    """``op`` on every node; nodes read 0, 0, 1, 2, ... (strided and unstrided edges in reduce cells)."""
    cell = [(op, max(0, j - 2)) for j in range(1, space.nodes + 1)]
    concat = range(space.nodes - space.multiplier + 1, space.nodes + 1)
    return Genotype_CNN(cell, concat, cell, concat)


def _random_genotype(space: SpaceConfig, gen: torch.Generator) -> Genotype_CNN:
    ops = [p for p in space.primitives if p != "none"]

    def cell():
        return [
            (ops[int(torch.randint(len(ops), (), generator=gen))], int(torch.randint(j, (), generator=gen)))
            for j in range(1, space.nodes + 1)
        ]

    concat = range(space.nodes - space.multiplier + 1, space.nodes + 1)
    return Genotype_CNN(cell(), concat, cell(), concat)


def _all_genotypes(space: SpaceConfig):
    ops = [p for p in space.primitives if p != "none"]
    concat = range(space.nodes - space.multiplier + 1, space.nodes + 1)
    choices = [[(op, i) for i in range(j) for op in ops] for j in range(1, space.nodes + 1)]
    cells = [list(c) for c in itertools.product(*choices)]
    for normal, reduce in itertools.product(cells, cells):
        yield Genotype_CNN(normal, concat, reduce, concat)


def _alphas_for(genotype: Genotype_CNN, space: SpaceConfig, scale: float, rest: str = "none", seed: int = 0) -> dict:
    """Near one-hot alphas whose derived genotype is ``genotype``.

    ``rest="none"``: the other edges of a node are near one-hot on ``none`` (what DARTS drifts to);
    ``rest="random"``: they are random (unit scale), so only the chosen pair is sharp.
    """
    gen = torch.Generator().manual_seed(seed)
    alphas = {}
    none = space.primitives.index("none")
    for kind in ("normal", "reduce"):
        a = torch.randn(space.num_edges, len(space.primitives), generator=gen, dtype=torch.float64)
        if rest == "none":
            a = a * 0.01
            a[:, none] += scale
        for j, (op, i) in enumerate(getattr(genotype, kind), start=1):
            row = j * (j - 1) // 2 + i
            a[row] = 0.0
            a[row, space.primitives.index(op)] = scale
        alphas[kind] = a
    derived = derive_genotype(alphas, space)
    assert (derived.normal, derived.reduce) == (list(genotype.normal), list(genotype.reduce))
    return alphas


# ------------------------------------------------------------------- exact params and MACs


@pytest.mark.parametrize("skel", SKELETONS)
@pytest.mark.parametrize("T", [13, 16], ids=["T13", "T16"])
@pytest.mark.parametrize("op", ALL_KX1)
def test_kx1_primitive_matches_network(op: str, T: int, skel: str) -> None:
    space = SpaceConfig(input_shape=(T, 1), **{**KX1_SPACE, "primitives": ALL_KX1, **skeleton(skel, 5)})
    genotype = _every_node(op, space)
    cost = K.genotype_cost(genotype, space)
    assert (cost.params, cost.macs) == _measure(genotype, space)


@pytest.mark.parametrize("shape", [(9, 7), (8, 8)], ids=["9x7", "8x8"])
@pytest.mark.parametrize("op", P.DARTS_2D)
def test_2d_primitive_matches_network(op: str, shape: tuple[int, int]) -> None:
    space = SpaceConfig(input_shape=shape, **D2_SPACE)
    genotype = _every_node(op, space)
    if P.get(op).kind == "any":  # NetworkCnn infers 2D from the ops: give it one 2D op (normal cell, node 4)
        genotype = genotype._replace(normal=genotype.normal[:3] + [("sep_conv_3x3", 2)])
    cost = K.genotype_cost(genotype, space)
    assert (cost.params, cost.macs) == _measure(genotype, space)


@pytest.mark.parametrize("T", [127, 128], ids=["T127", "T128"])
def test_seed_genotype_matches_network(T: int) -> None:
    space = SpaceConfig(C=8, in_channels=6, input_shape=(T, 1))  # the seed's layers / nodes / space
    cost = K.genotype_cost(MY_CUSTOM_GENOTYPE, SearchConfig(space=space))
    assert (cost.params, cost.macs) == _measure(MY_CUSTOM_GENOTYPE, space)
    assert cost.params == sum(p for p, _ in cost.parts.values())
    assert cost.peak_sram_bytes_f32 == 4 * cost.peak_sram_bytes_int8


@pytest.mark.parametrize("skel", SKELETONS + ["lean-ops"])
@pytest.mark.parametrize("seed", range(3))
def test_random_genotypes_in_other_shapes_match_network(seed: int, skel: str) -> None:
    lean_ops = dict(skeleton("lean", 4), primitives=P.LEAN_KX1, multiplier=1)
    space = SpaceConfig(**{
        **dict(C=6, num_classes=4, layers=4, in_channels=2, input_shape=(11, 1), nodes=3, multiplier=2,
               stem_multiplier=2, with_input_batchnorm=False, primitives=KX1_OPS),
        **(lean_ops if skel == "lean-ops" else skeleton(skel, 4)),
    })  # fmt: skip
    genotype = _random_genotype(space, torch.Generator().manual_seed(seed))
    cost = K.genotype_cost(genotype, space)
    assert (cost.params, cost.macs) == _measure(genotype, space)


def test_module_primitive_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    def conv_1x1(C, stride, affine):  # the seed README's example of a user op
        conv = nn.Conv2d(C, C, (1, 1), (stride, 1), bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(C, affine=affine), nn.ReLU())

    monkeypatch.setitem(O.OPS, "conv_bn_relu_1x1", conv_1x1)
    rng = torch.get_rng_state()
    search = K.primitive_cost("conv_bn_relu_1x1", 4, 2, (9, 1), kx1=True, affine=False)
    assert torch.equal(rng, torch.get_rng_state())  # measuring leaves the global RNG alone
    assert search == K.OpCost(16, 16 * 5, 4 * 5, (5, 1), (20,))
    space = SpaceConfig(input_shape=(13, 1), **KX1_SPACE)
    genotype = _every_node("conv_bn_relu_1x1", space)
    cost = K.genotype_cost(genotype, space)
    assert (cost.params, cost.macs) == _measure(genotype, space)


def test_module_changing_the_grid_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(O.OPS, "widen", lambda C, stride, affine: nn.Conv2d(C, 2 * C, 1, (stride, 1)))
    with pytest.raises(ValueError, match="keep C channels"):
        K.primitive_cost("widen", 4, 1, (8, 1), kx1=True)


def _pointwise(name: str, **kwargs) -> P.Primitive:
    """A user primitive: a strided 1x1 conv (C*C params, C*C MACs per output position)."""

    def init(gen, C, stride, *, affine, dtype):
        return {"conv": L.init_conv(gen, C, C, (1, 1), dtype=dtype)}, {}

    def apply(params, stats, x, *, stride, train):  # no sync parameter: run() leaves it out
        return L.apply_conv(params["conv"], x, stride=stride), stats

    return P.Primitive(name, init, apply, kind="any", family="conv", **kwargs)


def test_registered_primitive_is_measured(temp_primitives) -> None:
    temp_primitives(_pointwise("test_pointwise"))
    assert K.primitive_cost("test_pointwise", 4, 2, (9, 1), kx1=True) == K.OpCost(16, 16 * 5, 4 * 5, (5, 1), (20,))
    assert K.primitive_cost("test_pointwise", 4, 2, (7, 6), kx1=False) == K.OpCost(16, 16 * 12, 48, (4, 3), (48,))
    space = SpaceConfig(input_shape=(13, 1), **{**KX1_SPACE, "primitives": ("none", "test_pointwise")})
    genotype = _every_node("test_pointwise", space)
    cost = K.genotype_cost(genotype, space)
    assert (cost.params, cost.macs) == _measure(genotype, space)


def test_registered_primitive_uses_its_cost_formula(temp_primitives) -> None:
    calls = []

    def cost(C, stride, shape, *, kx1, affine):
        calls.append((C, stride, shape, kx1, affine))
        out = P.out_grid(shape, stride, kx1)
        return K.OpCost(C * C, C * C * out[0] * out[1], C * out[0] * out[1], out, (C * out[0] * out[1],))

    temp_primitives(_pointwise("test_pointwise_formula", cost=cost))
    assert K.primitive_cost("test_pointwise_formula", 4, 2, 9, kx1=True, affine=False) == K.OpCost(
        16, 80, 20, (5, 1), (20,)
    )
    assert calls == [(4, 2, (9, 1), True, False)]


def test_primitive_cost_formulas() -> None:
    # sep_conv_3x1, C=4, stride 2, T=9 -> 5: 2 x (dw 4*3 + pw 4*4 + BN 2*4) params;
    # MACs 2 x (dw 20*3 + pw 20*4); buffers dw1 out, then two live per step
    assert K.primitive_cost("sep_conv_3x1", 4, 2, 9, kx1=True) == K.OpCost(72, 280, 20, (5, 1), (20, 40, 40, 40))
    assert K.primitive_cost("sep_conv_3x1", 4, 2, 9, kx1=True, affine=False).params == 56
    # dil_conv_3x3 on 7x6, stride 2 -> 4x3: dw 4*9 + pw 16 + BN 8; MACs 48*9 + 48*4
    assert K.primitive_cost("dil_conv_3x3", 4, 2, (7, 6), kx1=False) == K.OpCost(60, 624, 48, (4, 3), (48, 96))
    # factorized reduce: two 1x1 convs 4 -> 2 (16 weights) + BN 8; MACs 4*5 outputs x 4 inputs
    assert K.primitive_cost("skip_connect", 4, 2, 9, kx1=True) == K.OpCost(24, 80, 20, (5, 1), (20,))
    assert K.primitive_cost("skip_connect", 4, 1, 9, kx1=True) == K.OpCost(0, 0, 36, (9, 1), (36,))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("conv_9x9", 4, 1, 8), {"kx1": True}, "Unknown primitive"),
        (("sep_conv_3x3", 4, 1, 8), {"kx1": True}, "space is kx1"),
        (("max_pool_3x1", 4, 3, 8), {"kx1": True}, "stride must be 1 or 2"),
        (("skip_connect", 3, 2, 8), {"kx1": True}, "even C"),
        (("max_pool_3x1", 4, 1, (8, 2)), {"kx1": True}, r"shape must be"),
    ],
    ids=["unknown", "2d-in-kx1", "stride", "odd-C", "shape"],
)
def test_primitive_cost_errors(args, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        K.primitive_cost(*args, **kwargs)


def test_genotype_of_wrong_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="space is 2D"):
        K.genotype_cost(MY_CUSTOM_GENOTYPE, SpaceConfig(input_shape=(8, 8), **{**D2_SPACE, "C": 16}))


# ------------------------------------------------------------------------------ peak SRAM

SRAM_SPACE = SpaceConfig(
    C=2, num_classes=3, layers=1, in_channels=1, input_shape=(9, 1), nodes=3, multiplier=2, stem_multiplier=1,
    primitives=P.SEED_KX1 + ("sep_conv_3x1",),
)  # fmt: skip
SRAM_GENOTYPE = Genotype_CNN(
    # unused: with layers=1 the only cell is a reduction cell
    normal=[("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2)],
    normal_concat=range(2, 4),
    reduce=[("sep_conv_3x1", 0), ("max_pool_3x1", 0), ("skip_connect", 1)],
    reduce_concat=range(2, 4),
)


def test_peak_sram_by_hand() -> None:
    # One reduction cell: C 2 -> 4 channels, T 9 -> 5. s0 = 4*9 = 36 elements; every node 4*5 = 20.
    expected = [
        ("stem", 9 + 18),  # input 1x9 + stem output 2x9 (input BN in place)
        ("cells.0.pre", 18 + 36),  # cell input (the stem output) + s0
        # node 1 = sep_conv(s0), strided; s0 stays live (node 2 reads it)
        ("cells.0.n1.sep_conv_3x1[0]", 36 + 20),  # s0 + dw1 out
        ("cells.0.n1.sep_conv_3x1[1]", 36 + 20 + 20),  # s0 + dw1 out + pw1 out
        ("cells.0.n1.sep_conv_3x1[2]", 36 + 20 + 20),  # s0 + pw1 out + dw2 out
        ("cells.0.n1.sep_conv_3x1[3]", 36 + 20 + 20),  # s0 + dw2 out + s1
        ("cells.0.n2.max_pool_3x1", 20 + 36 + 20),  # s1 (node 3 reads it) + s0 (last use) + s2
        ("cells.0.n3.skip_connect", 20 + 20 + 20),  # s2 (concatenated) + s1 (last use) + s3
        ("head.pool", 40 + 8),  # cell output s2|s3 + pooled (8 channels)
        ("head.linear", 8 + 3),  # pooled + logits
    ]
    cost = K.genotype_cost(SRAM_GENOTYPE, SRAM_SPACE)
    assert list(cost.schedule) == expected
    assert (cost.peak_sram_bytes_int8, cost.peak_sram_bytes_f32) == (76, 304)
    assert cost.peak_at == "cells.0.n1.sep_conv_3x1[1]"


def test_unused_node_is_freed_at_once() -> None:
    space = SpaceConfig(
        C=2, num_classes=3, layers=1, in_channels=1, input_shape=(8, 1), nodes=2, multiplier=1, stem_multiplier=1
    )
    cell = [("max_pool_3x1", 0), ("max_pool_3x1", 0)]
    genotype = Genotype_CNN(cell, [2], cell, [2])
    # s0 = 4*8 = 32; nodes 4*4 = 16. Node 1 is read by nobody: held s0 + its output, then freed.
    steps = dict(K.genotype_cost(genotype, space).schedule)
    assert steps["cells.0.n1.max_pool_3x1"] == 32 + 16
    assert steps["cells.0.n2.max_pool_3x1"] == 32 + 16  # s1 already freed; s0 read for the last time


def test_peak_sram_by_hand_without_preprocessing() -> None:
    # SRAM_GENOTYPE's reduce cell as the normal cell of a network without reduction cells: the stem
    # has the cell's C=2 channels, so state_0 is the stem output itself (18 elements), no 1x1 step.
    space = SpaceConfig(**{**SRAM_SPACE.__dict__, "reductions": (), "preprocess": "when_needed"})
    genotype = SRAM_GENOTYPE._replace(normal=SRAM_GENOTYPE.reduce)
    expected = [
        ("stem", 9 + 18),
        ("cells.0.n1.sep_conv_3x1[0]", 18 + 18),  # s0 (node 2 reads it) + dw1 out
        ("cells.0.n1.sep_conv_3x1[1]", 18 + 18 + 18),
        ("cells.0.n1.sep_conv_3x1[2]", 18 + 18 + 18),
        ("cells.0.n1.sep_conv_3x1[3]", 18 + 18 + 18),  # s0 + dw2 out + s1
        ("cells.0.n2.max_pool_3x1", 18 + 18 + 18),  # s1 (node 3 reads it) + s0 (last use) + s2
        ("cells.0.n3.skip_connect", 18 + 18 + 18),  # s2 (concatenated) + s1 (last use) + s3
        ("head.pool", 36 + 4),  # s2|s3 + pooled (2 nodes x 2 channels)
        ("head.linear", 4 + 3),
    ]
    cost = K.genotype_cost(genotype, space)
    assert list(cost.schedule) == expected
    assert (cost.peak_sram_bytes_int8, cost.peak_at) == (54, "cells.0.n1.sep_conv_3x1[1]")
    assert not any(".pre" in part for part in cost.parts)


@pytest.mark.parametrize(
    ("multiplier", "dropped"),
    [(1, {0, 1, 2}), (2, {0, 3}), (3, {0})],
    ids=["multiplier1", "multiplier2", "multiplier3"],
)
def test_when_needed_drops_exactly_the_preprocessing_where_channels_match(multiplier: int, dropped: set) -> None:
    # stem_multiplier=1: cell 0 reads C channels; a normal cell reads multiplier * C; the reduction
    # cell (the last) reads multiplier * C and has width 2 C
    always = SpaceConfig(C=4, num_classes=3, layers=4, in_channels=2, input_shape=(12, 1), nodes=3,
                         multiplier=multiplier, stem_multiplier=1, reductions=(3,), primitives=P.LEAN_KX1)
    lean = SpaceConfig(**{**always.__dict__, "preprocess": "when_needed"})
    genotype = _random_genotype(lean, torch.Generator().manual_seed(multiplier))
    full, cut = K.genotype_cost(genotype, always), K.genotype_cost(genotype, lean)
    dropped = {f"cells.{layer}.pre" for layer in dropped}
    assert set(full.parts) - set(cut.parts) == dropped and set(cut.parts) <= set(full.parts)
    assert full.params - cut.params == sum(full.parts[p][0] for p in dropped)
    assert full.macs - cut.macs == sum(full.parts[p][1] for p in dropped)
    assert (cut.params, cut.macs) == _measure(genotype, lean)
    assert [s for s, _ in full.schedule if s not in dict(cut.schedule)] == sorted(dropped)


# ------------------------------------------------------------------------- expected cost


@pytest.mark.parametrize(
    ("metric", "estimator"),
    [("params", "genotype"), ("params", "supernet"), ("macs", "genotype"), ("macs", "supernet"), ("sram", "genotype")],
)
def test_expected_cost_is_differentiable(metric: str, estimator: str) -> None:
    space = SpaceConfig(input_shape=(16, 1), **KX1_SPACE)
    gen = torch.Generator().manual_seed(0)
    shape = (space.num_edges, len(space.primitives))
    alphas = {k: torch.randn(shape, generator=gen, requires_grad=True) for k in ("normal", "reduce")}
    value = K.expected_cost(alphas, space, metric=metric, estimator=estimator)
    assert value.ndim == 0 and torch.isfinite(value)
    grads = torch.autograd.grad(value, [alphas["normal"], alphas["reduce"]])
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    func = torch.func.grad(lambda a: K.expected_cost(a, space, metric=metric, estimator=estimator))(
        {k: v.detach() for k, v in alphas.items()}
    )
    torch.testing.assert_close(func["normal"], grads[0])


@pytest.mark.parametrize("metric", ["params", "macs"])
@pytest.mark.parametrize("estimator", ["genotype", "supernet"])
def test_expected_cost_approaches_genotype_cost(metric: str, estimator: str) -> None:
    space = SpaceConfig(C=8, in_channels=6, input_shape=(31, 1))
    exact = getattr(K.genotype_cost(MY_CUSTOM_GENOTYPE, space), metric)
    errors = []
    for scale in (10.0, 30.0):  # every edge near one-hot: the genotype's op, or none
        alphas = _alphas_for(MY_CUSTOM_GENOTYPE, space, scale)
        value = K.expected_cost(alphas, space, metric=metric, estimator=estimator).item()
        errors.append(abs(value - exact) / exact)
    assert errors[1] < 1e-6 and errors[1] < errors[0]


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_genotype_estimator_sharpens_with_tau(metric: str) -> None:
    # Only the chosen pairs are sharp; the other edges are random. As tau -> 0 the pick
    # distribution becomes derive_genotype's argmax, whatever the other edges hold.
    space = SpaceConfig(C=8, in_channels=6, input_shape=(31, 1))
    exact = getattr(K.genotype_cost(MY_CUSTOM_GENOTYPE, space), metric)
    alphas = _alphas_for(MY_CUSTOM_GENOTYPE, space, 30.0, rest="random")
    values = [K.expected_cost(alphas, space, metric=metric, tau=tau).item() for tau in (1.0, 0.1, 0.005)]
    errors = [abs(v - exact) / exact for v in values]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6


def test_expected_sram_approaches_and_bounds_genotype_peak() -> None:
    seed_space = SpaceConfig(C=8, in_channels=6, input_shape=(31, 1))
    for space, genotype in ((SRAM_SPACE, SRAM_GENOTYPE), (seed_space, MY_CUSTOM_GENOTYPE)):
        exact = K.genotype_cost(genotype, space).peak_sram_bytes_int8
        alphas = _alphas_for(genotype, space, 30.0)
        sharp = K.expected_cost(alphas, space, metric="sram", sram_tau=1e-4).item()
        assert sharp == pytest.approx(exact, rel=1e-3)
        smooth = K.expected_cost(alphas, space, metric="sram").item()  # default sram_tau = 0.01
        steps = len(K.genotype_cost(genotype, space).schedule)
        assert exact * (1 - 1e-9) <= smooth <= exact * (1 + 0.01 * math.log(steps))


@pytest.mark.parametrize("skel", SKELETONS)
def test_expected_cost_at_uniform_alphas(skel: str) -> None:
    primitives = ("none", "max_pool_3x1", "skip_connect", "conv_bn_relu_3x1", "dil_conv_3x1")
    space = SpaceConfig(
        C=4, num_classes=3, layers=3, in_channels=2, input_shape=(10, 1), nodes=2, multiplier=2, primitives=primitives,
        **skeleton(skel, 3),
    )
    zeros = {k: torch.zeros(space.num_edges, len(space.primitives), dtype=torch.float64) for k in ("normal", "reduce")}
    genotypes = list(_all_genotypes(space))
    for metric in ("params", "macs"):
        # genotype estimator at uniform alphas: every (edge, op) pair of a node equally likely, so
        # the expected cost is exactly the mean over all genotypes (costs add up over nodes).
        mean = sum(getattr(K.genotype_cost(g, space), metric) for g in genotypes) / len(genotypes)
        assert K.expected_cost(zeros, space, metric=metric).item() == pytest.approx(mean, rel=1e-12)
    # supernet estimator: every edge's ops averaged with weight 1 / K (none costs 0)
    network = K.genotype_cost(_every_node("max_pool_3x1", space), space)
    fixed = sum(p for part, (p, _) in network.parts.items() if ".n" not in part)  # stem, pre, head
    edges, T = 0.0, space.input_shape[0]
    for reduction, _, c in cell_plan(space):
        T_nodes = -(-T // 2) if reduction else T
        for i, _ in space.edges():
            stride = 2 if reduction and i == 0 else 1
            for op in space.primitives:
                op_cost = K.primitive_cost(op, c, stride, T if i == 0 else T_nodes, kx1=True)
                edges += op_cost.params / len(space.primitives)
        T = T_nodes
    value = K.expected_cost(zeros, space, metric="params", estimator="supernet").item()
    assert value == pytest.approx(fixed + edges, rel=1e-12)


LEAN_SPACES = {
    name: SpaceConfig(C=8, in_channels=6, input_shape=(31, 1), layers=layers, nodes=3, multiplier=multiplier,
                      primitives=P.LEAN_KX1, **skeleton(skel, layers))
    for name, skel, layers, multiplier in (("lean", "lean", 5, 2), ("lean-m1", "lean", 5, 1), ("flat", "flat", 3, 1))
}  # fmt: skip


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("name", LEAN_SPACES)
def test_expected_cost_of_lean_skeletons_approaches_the_exact_cost(name: str, seed: int) -> None:
    space = LEAN_SPACES[name]
    genotype = _random_genotype(space, torch.Generator().manual_seed(seed))
    exact = K.genotype_cost(genotype, space)
    alphas = _alphas_for(genotype, space, 30.0)
    for metric in ("params", "macs"):
        want = getattr(exact, metric)
        for estimator in ("genotype", "supernet"):
            value = K.expected_cost(alphas, space, metric=metric, estimator=estimator).item()
            assert value == pytest.approx(want, rel=1e-6)
        assert K.expected_cost(alphas, space, metric=metric, straight_through=True).item() == want
    sharp = K.expected_cost(alphas, space, metric="sram", sram_tau=1e-4).item()
    assert sharp == pytest.approx(exact.peak_sram_bytes_int8, rel=1e-3)
    smooth = K.expected_cost(alphas, space, metric="sram").item()
    peak, steps = exact.peak_sram_bytes_int8, len(exact.schedule)
    assert peak * (1 - 1e-9) <= smooth <= peak * (1 + 0.01 * math.log(steps))


def test_expected_cost_errors() -> None:
    space = SpaceConfig(input_shape=(16, 1), **KX1_SPACE)
    alphas = {k: torch.zeros(space.num_edges, len(space.primitives)) for k in ("normal", "reduce")}
    with pytest.raises(ValueError, match="Unknown metric"):
        K.expected_cost(alphas, space, metric="flops")
    with pytest.raises(ValueError, match="estimator='genotype'"):
        K.expected_cost(alphas, space, metric="sram", estimator="supernet")
    with pytest.raises(ValueError, match="must have shape"):
        K.expected_cost({"normal": alphas["normal"][:, :3], "reduce": alphas["reduce"]}, space, metric="params")


# ----------------------------------------------------------------------- extremes, budgets


@pytest.mark.parametrize(
    ("nodes", "primitives"),
    [
        (2, ("none", "max_pool_3x1", "skip_connect", "conv_bn_relu_3x1", "dil_conv_3x1")),
        (3, ("none", "skip_connect", "sep_conv_3x1")),
    ],
    ids=["2nodes", "3nodes"],
)
@pytest.mark.parametrize("skel", SKELETONS)
def test_min_and_max_cost_are_the_extremes_by_enumeration(nodes: int, primitives: tuple[str, ...], skel: str) -> None:
    space = SpaceConfig(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(11, 1), nodes=nodes, multiplier=2,
                        primitives=primitives, **skeleton(skel, 3))  # fmt: skip
    costs = [K.genotype_cost(g, space) for g in _all_genotypes(space)]
    for metric, field in (("params", "params"), ("macs", "macs"), ("sram", "peak_sram_bytes_int8")):
        values = [getattr(c, field) for c in costs]
        assert (K.min_cost(space, metric), K.max_cost(space, metric)) == (min(values), max(values))


def test_min_cost_bounds_random_genotypes() -> None:
    space = SpaceConfig(C=8, in_channels=6, input_shape=(64, 1), primitives=KX1_OPS)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        cost = K.genotype_cost(_random_genotype(space, gen), space)
        assert K.min_cost(space, "params") <= cost.params <= K.max_cost(space, "params")
        assert K.min_cost(space, "macs") <= cost.macs <= K.max_cost(space, "macs")
        assert K.min_cost(space, "sram") <= cost.peak_sram_bytes_int8 <= K.max_cost(space, "sram")


def test_check_budget() -> None:
    space = SpaceConfig(input_shape=(32, 1), **KX1_SPACE)
    low = {metric: K.min_cost(space, metric) for metric in K.METRICS}
    K.check_budget(space, max_params=low["params"], max_macs=low["macs"], max_sram_bytes=low["sram"])
    for arg, metric in (("max_params", "params"), ("max_macs", "macs"), ("max_sram_bytes", "sram")):
        message = f"{arg}={low[metric] - 1} is below the minimum achievable.*: {low[metric]} "
        with pytest.raises(ValueError, match=message):
            K.check_budget(space, **{arg: low[metric] - 1})
    with pytest.raises(ValueError, match=str(4 * low["sram"])):
        K.check_budget(space, max_sram_bytes=low["sram"], sram_bytes_per_elem=4)
    with pytest.raises(ValueError, match="positive number"):
        K.check_budget(space, max_params=-5)


def test_budget_misses_names_each_missed_budget() -> None:
    space = SpaceConfig(input_shape=(16, 1), **KX1_SPACE)
    cost = K.genotype_cost(MY_CUSTOM_GENOTYPE, space)
    fits = {"params": cost.params, "macs": cost.macs, "sram": cost.peak_sram_bytes_int8}
    assert K.budget_misses(MY_CUSTOM_GENOTYPE, space, fits) == []
    assert K.budget_misses(MY_CUSTOM_GENOTYPE, space) == []  # a space has no budgets of its own
    tight = {"params": cost.params // 2, "macs": None, "sram": cost.peak_sram_bytes_int8}
    assert K.budget_misses(MY_CUSTOM_GENOTYPE, space, tight) == [
        f"params {cost.params:,} > {cost.params // 2:,} (+{100 * (cost.params / (cost.params // 2) - 1):.1f}%)"
    ]
    assert K.budget_misses(MY_CUSTOM_GENOTYPE, space, tight, sram_bytes_per_elem=4)[1].startswith(
        f"sram {4 * cost.peak_sram_bytes_int8:,} > "
    )
    cfg = SearchConfig(space=space, max_macs=cost.macs - 1)  # a search config's own budgets
    assert [m.split()[0] for m in K.budget_misses(MY_CUSTOM_GENOTYPE, cfg)] == ["macs"]


def test_parse_mode() -> None:
    assert K.parse_mode("Memory+Compute") == ["params", "macs"]
    assert K.parse_mode(("SRAM", "memory", "params")) == ["sram", "params"]
    with pytest.raises(ValueError, match="Unknown penalty mode 'flops'"):
        K.parse_mode("flops")


# -------------------------------------------------------------------------------- penalty


def _alphas(space: SpaceConfig, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(space.num_edges, len(space.primitives), generator=gen) for k in ("normal", "reduce")}


def test_penalty_without_budget_is_normalised() -> None:
    space = SpaceConfig(input_shape=(32, 1), **KX1_SPACE)
    alphas = _alphas(space)
    memory = K.penalty(alphas, space, mode="Memory")
    compute = K.penalty(alphas, space, mode="compute")
    torch.testing.assert_close(memory, K.expected_cost(alphas, space, metric="params") / K.max_cost(space, "params"))
    for value, metric in ((memory, "params"), (compute, "macs")):
        assert K.min_cost(space, metric) / K.max_cost(space, metric) <= value.item() <= 1.0
    torch.testing.assert_close(K.penalty(alphas, space, mode="Memory+Compute", weight=2.0), 2 * (memory + compute))
    torch.testing.assert_close(K.penalty(alphas, space, mode=("Memory", "Compute")), memory + compute)
    weight = torch.tensor(0.5)
    sram = K.penalty(alphas, space, mode="sram")
    torch.testing.assert_close(K.penalty(alphas, space, mode="SRAM", weight=weight), 0.5 * sram)


def test_penalty_with_budget_is_a_linear_hinge_on_the_derived_genotype() -> None:
    space = SpaceConfig(input_shape=(32, 1), **KX1_SPACE)
    alphas = _alphas(space)
    derived = K.genotype_cost(derive_genotype(alphas, space), space)
    assert K.penalty(alphas, space, mode="Memory", budget=derived.params / 0.9).item() == 0.0  # at (1 - m) b
    at_budget = K.penalty(alphas, space, mode="Memory", budget=derived.params)
    assert at_budget.item() == pytest.approx(1.0, rel=1e-6)
    over = K.penalty(alphas, space, mode="Memory", budget=derived.params / 2, margin=0.05)
    assert over.item() == pytest.approx((2 - 0.95) / 0.05, rel=1e-6)
    both = K.penalty(alphas, space, mode="Memory+Compute", budget={"Memory": derived.params / 2, "Compute": None},
                     margin=0.05)  # fmt: skip
    torch.testing.assert_close(both, over + K.penalty(alphas, space, mode="Compute"))  # no budget: soft, normalised
    sram = K.expected_cost(alphas, space, metric="sram", straight_through=True).item()
    f32 = K.penalty(alphas, space, mode="SRAM", budget=2 * sram, sram_bytes_per_elem=4)
    assert f32.item() == pytest.approx((2 - 0.9) / 0.1, rel=1e-5)  # 4 bytes per element: twice over a 2x budget
    soft = K.expected_cost(alphas, space, metric="params").item()
    off = K.penalty(alphas, space, mode="Memory", budget=soft, straight_through=False)
    assert off.item() == pytest.approx(1.0, rel=1e-5)  # the soft expected cost, on request


def test_budget_penalty_gradient_is_the_soft_estimators() -> None:
    # straight through: the value is the derived genotype's, the gradient the soft picks' (tau)
    space = SpaceConfig(input_shape=(32, 1), **KX1_SPACE)
    alphas = {k: v.double() for k, v in _alphas(space, seed=1).items()}
    derived = K.genotype_cost(derive_genotype(alphas, space), space).params
    budget, margin, weight, tau = derived / 1.5, 0.1, 2.0, 0.5
    grad = torch.func.grad(
        lambda a: K.penalty(a, space, mode="Memory", budget=budget, margin=margin, weight=weight, tau=tau)
    )(alphas)
    soft = torch.func.grad(lambda a: K.expected_cost(a, space, metric="params", tau=tau))(alphas)
    for kind in alphas:
        torch.testing.assert_close(grad[kind], weight / (margin * budget) * soft[kind], **tol(torch.float64))
    idle = torch.func.grad(lambda a: K.penalty(a, space, mode="Memory", budget=2 * derived))(alphas)
    assert all(not g.any() for g in idle.values())  # within (1 - margin) b: no push at all


@pytest.mark.parametrize("seed", range(3))
def test_straight_through_cost_is_the_derived_genotypes(seed: int) -> None:
    space = SpaceConfig(input_shape=(32, 1), **KX1_SPACE)
    alphas = _alphas(space, seed=seed)
    exact = K.genotype_cost(derive_genotype(alphas, space), space)
    for metric, value in (("params", exact.params), ("macs", exact.macs)):
        assert K.expected_cost(alphas, space, metric=metric, straight_through=True).item() == value
    steps = len(exact.schedule)
    sram = K.expected_cost(alphas, space, metric="sram", straight_through=True).item()
    assert exact.peak_sram_bytes_int8 * (1 - 1e-6) <= sram <= exact.peak_sram_bytes_int8 * (1 + 0.01 * math.log(steps))
    for metric in K.METRICS:
        hard = torch.func.grad(lambda a: K.expected_cost(a, space, metric=metric, straight_through=True))(alphas)
        soft = torch.func.grad(lambda a: K.expected_cost(a, space, metric=metric))(alphas)
        if metric != "sram":  # the SRAM smooth max weighs the steps by the (hard) live sizes
            torch.testing.assert_close(hard, soft)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "Latency"}, "Unknown penalty mode"),
        ({"mode": "Memory+Compute", "budget": 1000}, "ambiguous"),
        ({"mode": "Memory", "budget": -1}, "positive number"),
        ({"mode": "Memory", "budget": {"Compute": 10}}, "not one of the penalty's modes"),
        ({"mode": "SRAM", "estimator": "supernet"}, "estimator='genotype'"),
        ({"mode": "Memory", "budget": 10**6, "margin": 0.0}, r"margin must be in \(0, 1\)"),
        ({"mode": "Memory", "budget": 10**6, "estimator": "supernet", "straight_through": True}, "straight_through"),
    ],
    ids=["mode", "ambiguous", "negative", "budget-key", "sram-supernet", "margin", "st-supernet"],
)
def test_penalty_errors(kwargs, match) -> None:
    space = SpaceConfig(input_shape=(16, 1), **KX1_SPACE)
    with pytest.raises(ValueError, match=match):
        K.penalty(_alphas(space), space, **kwargs)


@pytest.mark.parametrize(("mode", "metric"), [("Memory", "params"), ("Compute", "macs")])
def test_minimising_the_penalty_reaches_the_cheapest_genotype(mode: str, metric: str) -> None:
    space = SpaceConfig(C=8, in_channels=6, input_shape=(32, 1), primitives=KX1_OPS)
    alphas = {k: v.clone().requires_grad_(True) for k, v in _alphas(space).items()}
    opt = torch.optim.Adam(alphas.values(), lr=0.3)
    for _ in range(60):
        opt.zero_grad()
        K.penalty(alphas, space, mode=mode).backward()
        opt.step()
    derived = K.genotype_cost(derive_genotype(alphas, space), space)
    assert getattr(derived, metric) == K.min_cost(space, metric)


# ------------------------------------------------------------------ deriving within budget

# A space whose peak SRAM depends on the genotype (192..256 elements): nodes 3, one concatenated.
DWB_SPACE = SpaceConfig(
    C=4, num_classes=3, layers=3, in_channels=1, input_shape=(16, 1), nodes=3, multiplier=1, stem_multiplier=1,
    primitives=("none", "max_pool_3x1", "sep_conv_3x1"),
)  # fmt: skip
_ARGS = {"params": "max_params", "macs": "max_macs", "sram": "max_sram_bytes"}
DWB_SPACES = {
    "seed": DWB_SPACE,
    "lean": SpaceConfig(**{**DWB_SPACE.__dict__, **skeleton("lean", 3)}),
    "flat": SpaceConfig(**{**DWB_SPACE.__dict__, **skeleton("flat", 3)}),
}


def _score(alphas: dict, genotype: Genotype_CNN, space: SpaceConfig) -> float:
    """Sum over nodes of log softmax(alpha_edge)_op: what derive_within_budget maximises."""
    total = 0.0
    for kind in ("normal", "reduce"):
        logp = torch.log_softmax(alphas[kind].double(), dim=-1)
        for j, (op, i) in enumerate(getattr(genotype, kind), start=1):
            total += float(logp[j * (j - 1) // 2 + i, space.primitives.index(op)])
    return total


@pytest.fixture(scope="module")
def dwb_costs_of():
    """``dwb_costs_of(space)``: genotype key -> (genotype, exact costs), for every genotype of the space."""
    cache: dict = {}

    def costs_of(space: SpaceConfig) -> dict:
        if space not in cache:
            cache[space] = {}
            for g in _all_genotypes(space):
                c = K.genotype_cost(g, space)
                cache[space][_key(g)] = (g, {"params": c.params, "macs": c.macs, "sram": c.peak_sram_bytes_int8})
        return cache[space]

    return costs_of


@pytest.fixture(scope="module")
def dwb_costs(dwb_costs_of):
    return dwb_costs_of(DWB_SPACE)


@pytest.mark.parametrize("name", DWB_SPACES)
def test_dwb_space_has_room_in_every_metric(name: str) -> None:
    for metric in K.METRICS:
        assert K.min_cost(DWB_SPACES[name], metric) < K.max_cost(DWB_SPACES[name], metric)


@pytest.mark.parametrize("name", DWB_SPACES)
@pytest.mark.parametrize("seed", range(12))
def test_derive_within_budget_is_the_best_genotype_within_budget(dwb_costs_of, seed: int, name: str) -> None:
    space = DWB_SPACES[name]
    dwb_costs = dwb_costs_of(space)
    gen = torch.Generator().manual_seed(seed)
    alphas = {k: torch.randn(space.num_edges, 3, generator=gen) for k in ("normal", "reduce")}
    metrics = [("params", "macs", "sram"), ("params",), ("macs",), ("sram",), ("params", "sram"), ("params", "macs")][
        seed % 6
    ]
    budgets = {}
    for metric in metrics:  # somewhere between the cheapest genotype and the argmax's cost
        low = K.min_cost(space, metric)
        budgets[metric] = int(low + float(torch.rand((), generator=gen)) * (K.max_cost(space, metric) - low))
    genotype = K.derive_within_budget(alphas, space, **{_ARGS[m]: b for m, b in budgets.items()})
    assert all(dwb_costs[_key(genotype)][1][m] <= b for m, b in budgets.items())
    feasible = [g for g, c in dwb_costs.values() if all(c[m] <= b for m, b in budgets.items())]
    best = max(_score(alphas, g, space) for g in feasible)
    assert _score(alphas, genotype, space) == pytest.approx(best, abs=1e-9)
    plain = derive_genotype(alphas, space)
    if all(dwb_costs[_key(plain)][1][m] <= b for m, b in budgets.items()):
        assert genotype == plain


@pytest.mark.parametrize("seed", range(4))
def test_derive_within_budget_maximises_given_scores(dwb_costs, seed: int) -> None:
    # scores (e.g. perturbation scores) replace log softmax(alpha) as the knapsack's objective
    gen = torch.Generator().manual_seed(100 + seed)
    alphas = {k: torch.randn(DWB_SPACE.num_edges, 3, generator=gen) for k in ("normal", "reduce")}
    scores = {k: torch.randn(DWB_SPACE.num_edges, 3, generator=gen, dtype=torch.float64) for k in alphas}
    for k in scores:
        scores[k][:, 0] = float("-inf")  # 'none'

    def total(g):
        return sum(float(scores[kind][j * (j - 1) // 2 + i, DWB_SPACE.primitives.index(op)])
                   for kind in ("normal", "reduce") for j, (op, i) in enumerate(getattr(g, kind), start=1))

    low, high = K.min_cost(DWB_SPACE, "params"), K.max_cost(DWB_SPACE, "params")
    budget = int(low + (0.2 + 0.2 * seed) * (high - low))
    genotype = K.derive_within_budget(alphas, DWB_SPACE, max_params=budget, scores=scores)
    assert dwb_costs[_key(genotype)][1]["params"] <= budget
    feasible = [g for g, c in dwb_costs.values() if c["params"] <= budget]
    assert total(genotype) == pytest.approx(max(total(g) for g in feasible), abs=1e-9)
    # no budget: the per-node argmax of the scores
    from fnas.search.selection import select_by_perturbation

    assert K.derive_within_budget(alphas, DWB_SPACE, scores=scores) == select_by_perturbation(scores, DWB_SPACE)


def _key(genotype: Genotype_CNN) -> tuple:
    return tuple(map(tuple, genotype.normal)), tuple(map(tuple, genotype.reduce))


def test_derive_within_budget_reads_the_config_and_keeps_a_fitting_argmax() -> None:
    space = SpaceConfig(C=8, in_channels=6, input_shape=(64, 1))
    alphas = _alphas(space)
    plain = derive_genotype(alphas, space)
    assert K.derive_within_budget(alphas, space) == plain  # no budget
    exact = K.genotype_cost(plain, space)
    cfg = SearchConfig(space=space, max_params=exact.params, max_macs=exact.macs)
    assert K.derive_within_budget(alphas, cfg) == plain  # meets them exactly
    tight = cfg.replace(max_params=(exact.params + K.min_cost(space, "params")) // 2)
    genotype = K.derive_within_budget(alphas, tight)
    cost = K.genotype_cost(genotype, space)
    assert cost.params <= tight.max_params and cost.macs <= tight.max_macs
    # keyword budgets override the config's
    loose = K.derive_within_budget(alphas, tight, max_params=exact.params)
    assert loose == plain


@pytest.mark.parametrize("metric", K.METRICS)
def test_derive_within_budget_at_the_minimum_and_below(metric: str) -> None:
    space = SpaceConfig(input_shape=(32, 1), **KX1_SPACE)
    low = K.min_cost(space, metric)
    genotype = K.derive_within_budget(_alphas(space), space, **{_ARGS[metric]: low})
    cost = K.genotype_cost(genotype, space)
    assert {"params": cost.params, "macs": cost.macs, "sram": cost.peak_sram_bytes_int8}[metric] == low
    with pytest.raises(ValueError, match=f"{_ARGS[metric]}={low - 1} is below the minimum achievable.*: {low} "):
        K.derive_within_budget(_alphas(space), space, **{_ARGS[metric]: low - 1})


def test_tflm_cell_graph_follows_the_converted_model() -> None:
    """The ops and arena of genotype A (C4, L3) as litert-torch + ai-edge-quantizer convert it and TFLM
    plans it (3,584 B measured, docs/tflite.md): ReLU folded into the stem, ReLU copies before the
    preprocessing and factorised reduce, SLICE + PAD, stride-1 pool + slice, one requantising copy."""
    g = Genotype_CNN(normal=[("conv_bn_relu_3x1", 0), ("max_pool_3x1", 1), ("skip_connect", 1)], normal_concat=range(2, 4),
                     reduce=[("skip_connect", 0), ("conv_bn_relu_5x1", 1), ("avg_pool_3x1", 0)], reduce_concat=range(2, 4))
    space = SpaceConfig(C=4, num_classes=7, layers=3, in_channels=6, input_shape=(128, 1), nodes=3, multiplier=2,
                        stem_multiplier=2, with_input_batchnorm=False)
    cost = K.genotype_cost(g, space, runtime="tflm")
    ops = [name for name, _ in cost.schedule]
    assert ops[:5] == ["stem", "cells.0.pre", "cells.0.n1.conv_bn_relu_3x1", "cells.0.n2.max_pool_3x1", "cells.0"]
    assert ops[5:13] == ["cells.1.pre.relu", "cells.1.pre", "cells.1.n1.skip_connect.relu", "cells.1.n1.skip_connect.conv1",
                         "cells.1.n1.skip_connect.slice", "cells.1.n1.skip_connect.pad", "cells.1.n1.skip_connect.conv2",
                         "cells.1.n1.skip_connect"]
    assert ops.count("cells.1.requantize") == 1 and "cells.0.requantize" not in ops  # max pool keeps n1's scale
    assert len(ops) == 33  # the converted model's op count
    assert cost.peak_sram_bytes_int8 == 3584 and max(v for _, v in cost.schedule) == 3328
    fused = K.genotype_cost(g, space)
    assert (cost.params, cost.macs) == (fused.params, fused.macs) and fused.peak_sram_bytes_int8 == 2048

"""fnas.spaces.chain.cost: exact costs == independent counts, expected cost == the exact expectation, extremes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fnas.spaces.chain import (
    IDENTITY,
    ChainGenotype,
    ChainSpaceConfig,
    expected_cost,
    genotype_cost,
    max_cost,
    min_cost,
)

from chain_helpers import all_genotypes, onehot_alphas, tiny
from conftest import make_gen

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
METRICS = ("params", "macs", "sram")


@pytest.fixture(scope="module")
def members():
    """Every member of the tiny space with its exact cost."""
    cfg = tiny()
    return cfg, [(g, genotype_cost(g, cfg)) for g in all_genotypes(cfg)]


def _exact(cost, metric):
    return {"params": cost.params, "macs": cost.macs, "sram": cost.peak_sram_bytes_int8}[metric]


def _measured(net, cfg) -> tuple[int, int]:
    """(MACs, peak elements) counted on the module at batch 1: FlopCounterMode / 2, and hooks on every
    conv and linear (input + output live) plus the pool (last activation + pooled vector)."""
    steps = []

    def hook(module, inputs, output):
        steps.append(inputs[0].numel() + output.numel())

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    net.head.register_forward_pre_hook(lambda m, inputs: steps.append(inputs[0].numel()))  # pooled vector...
    net.blocks.register_forward_hook(lambda m, inputs, out: steps.append(out.numel()))  # ...+ last activation
    x = torch.randn(1, cfg.in_channels, *cfg.input_shape)
    with FlopCounterMode(display=False) as counter:
        net.eval()(x)
    pool = steps.pop(-3) + steps.pop(-2)  # (last activation, pooled vector) precede the linear's step
    return counter.get_total_flops() // 2, max(steps + [pool])


GENOTYPES = [
    pytest.param(tiny(), ChainGenotype((("conv_k5_d2", 4), (IDENTITY, 4), ("sep_k3_d1", 3))), id="tiny-identity-sep"),
    pytest.param(tiny(), ChainGenotype((("sep_k3_d2", 2), ("conv_k3_d1", 4), ("conv_k5_d2", 6))), id="tiny-strided"),
    pytest.param(ChainSpaceConfig(), ChainSpaceConfig().fcn_genotype(16), id="default-fcn16"),
    pytest.param(tiny(with_input_batchnorm=False, num_classes=5),
                 ChainGenotype((("sep_k5_d1", 4), ("sep_k5_d2", 2), ("sep_k3_d1", 6))), id="tiny-no-input-bn"),
]  # fmt: skip


@pytest.mark.parametrize("cfg, genotype", GENOTYPES)
def test_exact_cost_equals_independent_counts(cfg, genotype):
    cost = genotype_cost(genotype, cfg)
    net = cfg.network(genotype, gen=make_gen(0))
    assert cost.params == sum(p.numel() for p in net.parameters())
    macs, peak = _measured(net, cfg)
    assert cost.macs == macs
    assert cost.peak_sram_bytes_int8 == peak and cost.peak_sram_bytes_f32 == 4 * peak
    assert sum(p for p, _ in cost.parts.values()) == cost.params


def test_parts_and_schedule_of_the_fcn():
    cfg = ChainSpaceConfig()  # 6 channels, 7 classes, T = 128
    cost = genotype_cost(cfg.fcn_genotype(32), cfg)
    assert cost.parts == {
        "input_bn": (12, 0),
        "blocks.0.conv_k9_d1": (9 * 6 * 32 + 64, 128 * 32 * 6 * 9),
        "blocks.1.conv_k5_d1": (5 * 32 * 64 + 128, 128 * 64 * 32 * 5),
        "blocks.2.identity": (0, 0),
        "blocks.3.conv_k3_d1": (3 * 64 * 32 + 64, 128 * 32 * 64 * 3),
        "head": (32 * 7 + 7, 32 * 7),
    }
    assert cost.totals()["blocks"] == tuple(map(sum, zip(*list(cost.parts.values())[1:-1])))
    assert (cost.peak_at, cost.peak_sram_bytes_int8) == ("blocks.1.conv_k5_d1", 128 * (32 + 64))


def test_exact_cost_rejects_non_members():
    with pytest.raises(ValueError, match="block 0"):
        genotype_cost(ChainGenotype((("conv_k3_d1", 3), (IDENTITY, 3), ("conv_k3_d1", 3))), tiny())


@pytest.mark.parametrize("metric", METRICS)
def test_min_and_max_cost_are_exact(members, metric):
    cfg, costs = members
    values = [_exact(c, metric) for _, c in costs]
    assert (min_cost(cfg, metric), max_cost(cfg, metric)) == (min(values), max(values))


def _probability(genotype, cfg, alphas) -> float:
    """P(genotype) when block b draws its op from softmax(op) and its width from softmax(width)."""
    prob = 1.0
    for b, (op, width) in enumerate(genotype.blocks):
        prob *= torch.softmax(alphas[f"b{b}_op"], -1)[cfg.candidates[b].index(op)].item()
        if op != IDENTITY:
            prob *= torch.softmax(alphas[f"b{b}_width"], -1)[cfg.width_choices[b].index(width)].item()
    return prob


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_expected_params_and_macs_are_the_exact_expectation(members, metric):
    cfg, costs = members
    gen = make_gen(1)
    alphas = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in cfg.init(make_gen(0), dtype=F64)[1].items()}
    probs = [_probability(g, cfg, alphas) for g, _ in costs]
    assert math.isclose(sum(probs), 1.0, rel_tol=1e-12)
    brute = sum(p * _exact(c, metric) for p, (_, c) in zip(probs, costs))
    assert expected_cost(alphas, cfg, metric=metric).item() == pytest.approx(brute, rel=1e-10)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("index", [0, 1000, 2500, 4351], ids=lambda i: f"member{i}")
def test_expected_cost_at_onehot_alphas_is_the_exact_cost(members, metric, index):
    cfg, costs = members
    genotype, cost = costs[index]
    value = expected_cost(onehot_alphas(cfg, genotype), cfg, metric=metric, sram_tau=1e-4).item()
    exact = _exact(cost, metric)
    if metric == "sram":  # the smooth maximum exceeds the max by at most ref * tau * log(#steps)
        assert exact <= value <= exact * (1 + 1e-4 * math.log(6)) + 1e-9
    else:
        assert value == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_straight_through_value_is_the_derived_genotypes_cost_and_gradient_the_soft_one(metric):
    cfg = tiny()
    alphas = {k: torch.randn(v.shape, generator=make_gen(2), dtype=F64) for k, v in cfg.init(make_gen(0))[1].items()}
    alphas = {k: v.requires_grad_() for k, v in alphas.items()}
    hard = expected_cost(alphas, cfg, metric=metric, straight_through=True, sram_tau=1e-4)
    exact = _exact(genotype_cost(cfg.derive(alphas), cfg), metric)
    assert hard.item() == pytest.approx(exact, rel=1e-3 if metric == "sram" else 1e-12)
    grads = torch.autograd.grad(hard, list(alphas.values()))
    assert all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_expected_cost_is_differentiable_and_lowered_by_its_gradient():
    cfg = ChainSpaceConfig()
    alphas = {k: v.double().requires_grad_() for k, v in cfg.init(make_gen(0))[1].items()}
    cost = expected_cost(alphas, cfg, metric="params")
    grads = torch.autograd.grad(cost, list(alphas.values()))
    stepped = {k: (v - 0.5 * g).detach() for (k, v), g in zip(alphas.items(), grads)}
    assert expected_cost(stepped, cfg, metric="params") < cost


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(dict(metric="flops"), "Unknown metric", id="metric"),
        pytest.param(dict(metric="sram", sram_tau=0.0), "sram_tau", id="tau"),
    ],
)
def test_expected_cost_errors(kwargs, match):
    cfg = tiny()
    with pytest.raises(ValueError, match=match):
        expected_cost(cfg.init(make_gen(0))[1], cfg, **kwargs)
    with pytest.raises(ValueError, match="must have shape"):
        expected_cost({}, cfg, metric="params")


# --- TFLite Micro's arena (runtime="tflm") --------------------------------------------------------


def test_greedy_planner_reuses_gaps_and_breaks_ties_like_tflm() -> None:
    from fnas.spaces.chain.cost import greedy_arena_bytes

    # a (0-1) and c (2-3) never live together: c reuses a's place; b sits above them
    assert greedy_arena_bytes([(100, 0, 1), (50, 1, 2), (100, 2, 3)]) == 112 + 64
    assert greedy_arena_bytes([]) == 0
    # equal sizes: the one given last is placed first (TFLM fills its sort array from the end), which
    # here strands the 32-byte buffer alive over 1-3 above the others
    bufs = [(48, 0, 0), (32, 1, 3), (32, 2, 4), (32, 0, 1)]
    assert greedy_arena_bytes(bufs) == 112 and greedy_arena_bytes(bufs[::-1]) == 80
    # the plan can exceed the live peak (fragmentation), never undercut it
    bufs = [(48, 0, 1), (16, 1, 2), (48, 2, 3), (32, 3, 3)]
    live = max(sum(-(-b // 16) * 16 for b, f, l in bufs if f <= t <= l) for t in range(4))
    assert greedy_arena_bytes(bufs) >= live


def test_tflm_chain_schedule_by_hand() -> None:
    """Input BN is two elementwise ops; a strided block on an even length gets a PAD copy; buffers align to 16."""
    cfg = ChainSpaceConfig(in_channels=3, num_classes=5, input_shape=(32, 1), widths=(8, 8), strides=(2, 1))
    g = ChainGenotype((("conv_k3_d1", 8), ("sep_k5_d1", 6)))
    cost = genotype_cost(g, cfg, runtime="tflm")
    ops = [name for name, _ in cost.schedule]
    assert ops == ["input_bn.sub", "input_bn.mul", "blocks.0.conv_k3_d1[pad]", "blocks.0.conv_k3_d1",
                   "blocks.1.sep_k5_d1[dw]", "blocks.1.sep_k5_d1[pw]", "head.pool", "head.linear"]
    live = dict(cost.schedule)
    assert live["blocks.0.conv_k3_d1[pad]"] == 96 + 112  # 32*3 in, 34*3 = 102 -> 112 padded
    assert live["blocks.0.conv_k3_d1"] == 112 + 128  # 16*8 out
    assert live["head.linear"] == 16 + 16
    assert cost.peak_sram_bytes_int8 >= max(live.values())
    assert (cost.params, cost.macs) == (genotype_cost(g, cfg).params, genotype_cost(g, cfg).macs)
    # odd length: TFLite's SAME padding is symmetric there, so no PAD
    odd = ChainSpaceConfig(in_channels=3, num_classes=5, input_shape=(31, 1), widths=(8, 8), strides=(2, 1))
    assert not any("[pad]" in name for name, _ in genotype_cost(g, odd, runtime="tflm").schedule)


def test_tflm_equals_fused_on_a_plain_chain() -> None:
    """Stride 1, no input BN, sizes multiple of 16: TFLM's plan is the fused schedule's peak."""
    cfg = ChainSpaceConfig(with_input_batchnorm=False)
    g = ChainGenotype((("conv_k5_d1", 16), ("sep_k3_d1", 32), (IDENTITY, 32), ("conv_k9_d2", 16)))
    assert genotype_cost(g, cfg, runtime="tflm").peak_sram_bytes_int8 == genotype_cost(g, cfg).peak_sram_bytes_int8
    with pytest.raises(ValueError, match="Unknown runtime"):
        genotype_cost(g, cfg, runtime="tvm")

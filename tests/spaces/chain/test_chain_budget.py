"""fnas.spaces.chain.budget: the knapsack finds the brute-force optimum; for_budget sizes a space that binds."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fnas.spaces.chain import (
    ChainSpaceConfig,
    derive_within_budget,
    for_budget,
    genotype_cost,
    genotype_score,
    max_cost,
    meets_budgets,
    min_cost,
)

from chain_helpers import all_genotypes, tiny
from conftest import make_gen

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


@pytest.fixture(scope="module")
def members():
    cfg = tiny()
    return cfg, [(g, genotype_cost(g, cfg)) for g in all_genotypes(cfg)]


def _random_alphas(cfg, seed: int) -> dict:
    gen = make_gen(seed)
    return {k: 2.0 * torch.randn(v.shape, generator=gen, dtype=F64) for k, v in cfg.init(make_gen(0))[1].items()}


def _quantile(values: list[int], q: float) -> int:
    return sorted(values)[int(q * (len(values) - 1))]


BUDGETS = [
    pytest.param({"params": 0.05}, id="params-5%"),
    pytest.param({"params": 0.5}, id="params-50%"),
    pytest.param({"macs": 0.2}, id="macs-20%"),
    pytest.param({"sram": 0.3}, id="sram-30%"),
    pytest.param({"params": 0.4, "macs": 0.3}, id="params+macs"),
    pytest.param({"params": 0.6, "sram": 0.2, "macs": 0.8}, id="all-three"),
]


@pytest.mark.parametrize("from_scores", [False, True], ids=["alphas", "scores"])
@pytest.mark.parametrize("quantiles", BUDGETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_knapsack_equals_brute_force(members, quantiles, seed, from_scores):
    cfg, costs = members
    exact = {
        "params": [c.params for _, c in costs],
        "macs": [c.macs for _, c in costs],
        "sram": [c.peak_sram_bytes_int8 for _, c in costs],
    }
    budgets = {m: _quantile(exact[m], q) for m, q in quantiles.items()}
    alphas = _random_alphas(cfg, seed)
    picked = derive_within_budget(alphas, cfg, budgets, from_scores=from_scores)
    assert meets_budgets(picked, cfg, budgets)
    feasible = [g for g, _ in costs if meets_budgets(g, cfg, budgets)]
    best = max(genotype_score(g, alphas, cfg, from_scores=from_scores) for g in feasible)
    assert genotype_score(picked, alphas, cfg, from_scores=from_scores) == pytest.approx(best, abs=1e-9)


def test_the_unconstrained_optimum_is_derive(members):
    cfg, costs = members
    alphas = _random_alphas(cfg, 3)
    derived = cfg.derive(alphas)
    assert derive_within_budget(alphas, cfg) == derived == derive_within_budget(alphas, cfg, {"params": 10**9})
    best = max(costs, key=lambda gc: genotype_score(gc[0], alphas, cfg))[0]
    assert genotype_score(best, alphas, cfg) == pytest.approx(genotype_score(derived, alphas, cfg), abs=1e-12)


def test_sram_budget_in_float32_bytes(members):
    cfg, costs = members
    budget = 4 * _quantile([c.peak_sram_bytes_int8 for _, c in costs], 0.3)
    picked = derive_within_budget(_random_alphas(cfg, 0), cfg, {"sram": budget}, sram_bytes_per_elem=4)
    assert 4 * genotype_cost(picked, cfg).peak_sram_bytes_int8 <= budget


@pytest.mark.parametrize(
    "budgets, match",
    [
        pytest.param({"params": 10}, r"params budget 10 is below the minimum achievable in this space: \d",
                     id="below-min"),
        pytest.param({"flops": 10}, "Unknown budget keys", id="bad-key"),
        pytest.param({"params": -1}, "positive number", id="negative"),
        pytest.param({"params": True}, "positive number", id="bool"),
    ],
)
def test_budget_errors(budgets, match):
    cfg = tiny()
    with pytest.raises(ValueError, match=match):
        derive_within_budget(_random_alphas(cfg, 0), cfg, budgets)


def test_jointly_unreachable_budgets_say_so():
    # 8 -> 2 channels: sep has fewer parameters than conv, conv a smaller activation peak
    cfg = tiny(in_channels=8, widths=(2,), width_fractions=(1.0,), kernels=(3,), dilations=(1,), strides=(1,))
    budgets = {"params": min_cost(cfg, "params"), "sram": min_cost(cfg, "sram")}
    assert not any(meets_budgets(g, cfg, budgets) for g in all_genotypes(cfg))
    with pytest.raises(ValueError, match="together, although each alone is reachable"):
        derive_within_budget(_random_alphas(cfg, 0), cfg, budgets)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(max_params=5_000), id="5k-params"),
        pytest.param(dict(max_params=20_000), id="20k-params"),
        pytest.param(dict(max_params=20_000, max_macs=1_000_000), id="20k-params-1M-macs"),
        pytest.param(dict(max_sram_bytes=8_000), id="8k-sram"),
    ],
)
def test_for_budget_makes_the_budget_bind(kwargs):
    cfg, text = for_budget(**kwargs)
    assert isinstance(cfg, ChainSpaceConfig) and "widths=" in text
    for arg, metric in (("max_params", "params"), ("max_macs", "macs"), ("max_sram_bytes", "sram")):
        if arg in kwargs:
            assert min_cost(cfg, metric) <= kwargs[arg] < max_cost(cfg, metric)
            assert max_cost(cfg, metric) <= 8 * kwargs[arg]
    if "max_params" in kwargs and len(kwargs) == 1:
        assert 2 <= max_cost(cfg, "params") / kwargs["max_params"] <= 4


def test_for_budget_keeps_the_base_data_and_drops_blocks_when_it_must():
    base = tiny(identity=False)  # no identity: every block costs something
    cfg, _ = for_budget(max_params=5_000, base=base)
    assert (cfg.in_channels, cfg.num_classes, cfg.input_shape, cfg.kernels) == (2, 3, (16, 1), (3, 5))
    small = min_cost(tiny(widths=(1,), strides=(1,)), "params")  # one block of width 1
    cfg, text = for_budget(max_params=small + 3, base=base)
    assert cfg.num_blocks < 3 and f"({cfg.num_blocks} blocks)" in text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(dict(), "at least one", id="no-budget"),
        pytest.param(dict(max_params=1), "No scaling", id="too-small"),
        pytest.param(dict(max_params=10**12), "No scaling", id="too-large"),
        pytest.param(dict(max_params=5000, target_ratio=1.0), "target_ratio", id="ratio"),
    ],
)
def test_for_budget_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        for_budget(**kwargs)


# --- the "fill" width policy: ops from the alphas, then the widest widths the budgets allow ------


def test_fill_policy_derives_the_widest_widths_without_a_budget():
    cfg = tiny(width_policy="fill")
    alphas = cfg.init(torch.Generator().manual_seed(3))[1]
    genotype = cfg.derive(alphas)
    alphas_pick = tiny().derive(alphas)
    assert [op for op, _ in genotype.blocks] == [op for op, _ in alphas_pick.blocks]
    c_in = cfg.in_channels
    for b, (op, width) in enumerate(genotype.blocks):
        assert width == (c_in if op == "identity" else max(cfg.width_choices[b]))
        c_in = width


@pytest.mark.parametrize("budget", [150, 250, 400])
def test_fill_policy_within_budget_keeps_the_ops_and_maximises_the_width_product(budget):
    cfg = tiny(width_policy="fill", identity=False)
    alphas = cfg.init(torch.Generator().manual_seed(5))[1]
    ops = [op for op, _ in cfg.derive(alphas).blocks]
    genotype = derive_within_budget(alphas, cfg, {"params": budget})
    members = [g for g in all_genotypes(cfg) if [op for op, _ in g.blocks] == ops
               and genotype_cost(g, cfg).params <= budget]
    if not members:
        pytest.skip("the argmax ops do not fit this budget at any width")
    assert [op for op, _ in genotype.blocks] == ops
    best = max(math.prod(w for _, w in g.blocks) for g in members)  # brute force over the space
    assert math.prod(w for _, w in genotype.blocks) == best
    assert genotype_cost(genotype, cfg).params <= budget


def test_fill_policy_spreads_the_narrowing_instead_of_making_a_bottleneck():
    """Four width choices per block: at 220 params the most width steps, (8, 2, 8), has a 2-wide
    bottleneck; the largest width product, (6, 4, 6), is what the fill policy derives."""
    cfg = tiny(width_policy="fill", identity=False, widths=(8, 8, 8), width_fractions=(0.25, 0.5, 0.75, 1.0),
               kernels=(3,), dilations=(1,))
    alphas = cfg.init(torch.Generator().manual_seed(5))[1]
    genotype = derive_within_budget(alphas, cfg, {"params": 220})
    assert genotype.widths() == (6, 4, 6) and genotype_cost(genotype, cfg).params <= 220
    ops = [op for op, _ in genotype.blocks]
    steps = {g.widths(): sum(cfg.width_choices[b].index(w) for b, (_, w) in enumerate(g.blocks))
             for g in all_genotypes(cfg) if [op for op, _ in g.blocks] == ops and genotype_cost(g, cfg).params <= 220}
    assert max(steps, key=steps.get) == (8, 2, 8) and steps[(8, 2, 8)] > steps[(6, 4, 6)]


# --- hold_fcn: the budget's FCN (Wang et al. 2017) is a member of the sized space ----------------


def _fcn_convs(cfg, w):
    from fnas.spaces.chain import IDENTITY

    return [width for op, width in cfg.fcn_genotype(w).blocks if op != IDENTITY]


def _fcn_params(base, w):
    """The FCN of width w built as a plain module, its parameters counted by torch (not the cost model)."""
    cfg = dataclasses.replace(base, widths=(w, 2 * w, 2 * w, w))
    return sum(p.numel() for p in cfg.network(cfg.fcn_genotype(w)).parameters()), cfg


@pytest.mark.parametrize("budget", [5_000, 20_000])
def test_hold_fcn_makes_the_widest_fcn_within_the_budget_a_member(budget):
    from fnas.spaces.chain import budget_fcn_width

    base = ChainSpaceConfig(in_channels=6, num_classes=7, input_shape=(128, 1))
    plain, _ = for_budget(max_params=budget, base=base)
    cfg, text = for_budget(max_params=budget, base=base, hold_fcn=True)
    w = budget_fcn_width(base, {"params": budget})
    # the widest FCN within the budget, counted independently on the built module
    assert _fcn_params(base, w)[0] <= budget < _fcn_params(base, w + 1)[0]
    assert _fcn_convs(cfg, w) == [w, 2 * w, w] and meets_budgets(cfg.fcn_genotype(w), cfg, {"params": budget})
    assert _fcn_convs(plain, w) != [w, 2 * w, w]  # the ratio-3 sizing alone is too narrow for it
    assert f"widened to hold the budget's FCN (w={w})" in text
    assert min_cost(cfg, "params") <= budget < max_cost(cfg, "params")


def test_hold_fcn_rescales_to_the_nearest_holding_space_or_keeps_one_that_holds_it():
    from fnas.spaces.chain import budget_fcn_width

    base = ChainSpaceConfig(in_channels=6, num_classes=7, input_shape=(128, 1))
    # wider than the FCN but not holding it (15 is no fraction of 29 or 32): the nearest holding scaling
    assert for_budget(max_params=5_000, base=base, target_ratio=12)[0].widths == (29, 59, 59, 29)
    held, text = for_budget(max_params=5_000, base=base, target_ratio=12, hold_fcn=True)
    assert held.widths == (30, 60, 60, 30) and _fcn_convs(held, 15) == [15, 30, 15] and "widened" in text
    held, text = for_budget(max_params=5_000, base=base, target_ratio=14, hold_fcn=True)  # plain: (32, 64, 64, 32)
    assert held.widths == (30, 60, 60, 30) and "rescaled" in text
    # a space that already holds it is kept, and the line says so
    exact = ChainSpaceConfig(in_channels=6, num_classes=7, input_shape=(128, 1), widths=(15, 30, 30, 15))
    ratio = max_cost(exact, "params") / 5_000
    kept, text = for_budget(max_params=5_000, base=exact, target_ratio=ratio, hold_fcn=True)
    assert kept == exact and "holds the budget's FCN (w=15)" in text
    # no plain conv op: there is no FCN to hold, and the sizing is the plain one
    sep_only = ChainSpaceConfig(in_channels=6, num_classes=7, input_shape=(128, 1), op_types=("sep",))
    assert budget_fcn_width(sep_only, {"params": 5_000}) is None
    assert for_budget(max_params=5_000, base=sep_only, hold_fcn=True) == for_budget(max_params=5_000, base=sep_only)
    # a budget below the smallest FCN
    assert budget_fcn_width(base, {"params": 50}) is None

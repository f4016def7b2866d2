"""Budgets on real data: short searches on the bundled watch IMU data derive genotypes within budget.

Setup (about 15 s per search on 1 thread): the search network C=4, 3 cells (1 normal, 2
reduction), 4 nodes, the seed's kx1 primitives; 480 training windows (a fixed random subset of the
train subjects) in batches of 16, one epoch = 30 search steps, the validation subjects for the
alphas; CLI defaults otherwise (arch_lr 3e-3, penalty weight 1, margin 0.1). The alphas start
favouring the most expensive op (``conv_bn_relu_7x1`` leads by 0.01..0.19 per edge, as a longer
search's validation loss tends to make it), so the search begins at the space's most expensive
genotype and every budget binds: a control search without a budget ends over the loosest budget
(asserted), so a met budget is the penalty's work, not the short search's preference for
parameter-free ops.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from fnas import cost as K
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.data import Split, load_watch, make_loader
from fnas.spaces.cell.genotype import derive_genotype
from fnas.search.loop import init_search, run_search

pytestmark = pytest.mark.usefixtures("single_thread")

SPACE = SpaceConfig(C=4, num_classes=7, layers=3, in_channels=6, input_shape=(128, 1))
# params: min 1,451, max 11,083; MACs: min 83,392, max 484,800 (asserted below)
CASES = [
    pytest.param("params", 2_500, id="params-tight"),
    pytest.param("params", 4_500, id="params-medium"),
    pytest.param("params", 7_500, id="params-loose"),
    pytest.param("macs", 150_000, id="macs"),
]
ARG = {"params": "max_params", "macs": "max_macs"}
SEED = 0
BIAS, SPREAD = 0.1, 0.9  # conv_bn_relu_7x1 leads by 0.1 +- 0.09 (uniform per edge)


@pytest.fixture(scope="module")
def watch():
    ds = load_watch()
    idx = torch.randperm(ds.train.num_samples, generator=torch.Generator().manual_seed(SEED))[:480]
    return Split(ds.train.x[idx], ds.train.y[idx]), ds.valid


def _search(watch, **budget):
    train, valid = watch
    gen = torch.Generator().manual_seed(SEED)
    train_loader = make_loader(train, 16, shuffle=True, gen=gen, drop_last=True)
    valid_loader = make_loader(valid, 16, shuffle=True, gen=gen, drop_last=True)
    cfg = SearchConfig(space=SPACE, arch_lr=3e-3, **budget)
    state = init_search(cfg, torch.Generator().manual_seed(SEED + 100))
    conv7 = SPACE.primitives.index("conv_bn_relu_7x1")
    alphas = {kind: a.clone() for kind, a in state.alphas.items()}
    bias = torch.Generator().manual_seed(SEED + 200)
    for a in alphas.values():
        a[:, conv7] += BIAS * (1 + SPREAD * (2 * torch.rand(a.shape[0], generator=bias) - 1))
    start = K.genotype_cost(derive_genotype(alphas, SPACE), SPACE)
    assert (start.params, start.macs) == (K.max_cost(SPACE, "params"), K.max_cost(SPACE, "macs"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # misses are asserted on, not warned about
        result = run_search(  # DARTS' argmax selection (not the default): the tests read the plain argmax
            cfg, train_loader, valid_loader, epochs=1, gen=gen, progress=False, state=state._replace(alphas=alphas),
            selection="alphas",
        )
    return cfg, result


@pytest.fixture(scope="module")
def control(watch):
    """The same search without a budget: what the budgets have to beat."""
    _, result = _search(watch)
    return K.genotype_cost(result.genotype, SPACE)


def test_space_extremes():
    assert (K.min_cost(SPACE, "params"), K.max_cost(SPACE, "params")) == (1_451, 11_083)
    assert (K.min_cost(SPACE, "macs"), K.max_cost(SPACE, "macs")) == (83_392, 484_800)


def test_every_budget_binds(control):
    for metric, budget in ((c.values[0], c.values[1]) for c in CASES):
        assert getattr(control, metric) > budget, f"the control search already meets {metric} <= {budget:,}"


@pytest.mark.parametrize(("metric", "budget"), CASES)
def test_short_search_meets_budget(watch, metric, budget):
    cfg, result = _search(watch, **{ARG[metric]: budget})
    exact = K.genotype_cost(result.genotype, SPACE)
    assert getattr(exact, metric) <= budget, f"{metric} {getattr(exact, metric):,} > {budget:,}"
    assert result.budget_misses == []
    # The penalty alone did it: the plain argmax of the searched alphas meets the budget too, so
    # the budget-aware derivation (the final safeguard) leaves it unchanged.
    plain = derive_genotype(result.state.alphas, SPACE)
    assert getattr(K.genotype_cost(plain, SPACE), metric) <= budget
    assert K.derive_within_budget(result.state.alphas, cfg) == plain


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_infeasible_budget_fails_before_searching_and_names_the_minimum(watch, metric):
    train, valid = watch
    low = K.min_cost(SPACE, metric)
    cfg = SearchConfig(space=SPACE, **{ARG[metric]: low - 1})
    loader = make_loader(train, 16, shuffle=False)
    with pytest.raises(ValueError, match=rf"{ARG[metric]}={low - 1} is below the minimum achievable.*: {low} "):
        run_search(cfg, loader, make_loader(valid, 16, shuffle=False), epochs=1, gen=torch.Generator(), progress=False)

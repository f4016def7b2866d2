"""fnas.selection: perturbation-based architecture selection (Wang et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import make_batch, make_gen, tiny_search
from fnas.spaces.cell.genotype import validate_genotype
from fnas.search.loop import init_search
from fnas.search.selection import perturbation_scores, select_by_perturbation, select_within_budget
from fnas.spaces.cell.supernet import apply_supernet


def _setup():
    cfg = tiny_search()
    state = init_search(cfg, make_gen(0), dtype=torch.float64)
    gen = make_gen(1)
    alphas = {k: torch.randn(a.shape, generator=gen, dtype=a.dtype) for k, a in state.alphas.items()}
    x, y = make_batch(cfg.space, n=12, seed=2, dtype=torch.float64)
    return cfg, state, alphas, [(x[:6], y[:6]), (x[6:], y[6:])]


def test_scores_are_loss_rises_of_masked_ops():
    cfg, state, alphas, batches = _setup()
    scores = perturbation_scores(state.weights, alphas, state.stats, batches, cfg=cfg)
    prims = cfg.space.primitives
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def loss(a):
        logits, _ = apply_supernet(state.weights, a, state.stats, x, cfg=cfg, train=True)
        return float(F.cross_entropy(logits, y))  # BN per batch of 6 in the scores: compare per batch below

    def loss_batched(a):
        return sum(
            float(F.cross_entropy(apply_supernet(state.weights, a, state.stats, bx, cfg=cfg, train=True)[0], by,
                                  reduction="sum"))
            for bx, by in batches
        ) / 12

    for kind in ("normal", "reduce"):
        s = scores[kind]
        assert s.shape == alphas[kind].shape
        none = prims.index("none")
        assert torch.isinf(s[:, none]).all() and (s[:, none] < 0).all()
        e, k = 1, prims.index("skip_connect")
        masked = dict(alphas)
        masked[kind] = alphas[kind].clone()
        masked[kind][e, k] = float("-inf")
        expected = loss_batched(masked) - loss_batched(alphas)
        assert abs(float(s[e, k]) - expected) < 1e-10
        assert torch.isfinite(s[:, [i for i, p in enumerate(prims) if p != "none"]]).all()
    assert loss(alphas) > 0  # the supernet ran on the joined batch too


def test_state_is_not_modified():
    cfg, state, alphas, batches = _setup()
    before = {k: v.clone() for k, v in alphas.items()}
    stats_before = [t.clone() for t in torch.utils._pytree.tree_leaves(state.stats)]
    perturbation_scores(state.weights, alphas, state.stats, batches, cfg=cfg)
    assert all(torch.equal(before[k], alphas[k]) for k in alphas)
    assert all(torch.equal(a, b) for a, b in zip(stats_before, torch.utils._pytree.tree_leaves(state.stats)))


def test_select_picks_the_largest_score_per_node():
    cfg, state, alphas, batches = _setup()
    space = cfg.space
    scores = {k: torch.full(a.shape, -1.0, dtype=torch.float64) for k, a in alphas.items()}
    prims = space.primitives
    edges = space.edges()
    # node 2 of the normal cell: its edge from state 1 with conv 5x1 hurts most when removed
    scores["normal"][edges.index((1, 2)), prims.index("conv_bn_relu_5x1")] = 3.0
    scores["normal"][edges.index((0, 2)), prims.index("max_pool_3x1")] = 2.0
    for kind in scores:
        scores[kind][:, prims.index("none")] = float("-inf")
    g = select_by_perturbation(scores, cfg)
    validate_genotype(g, nodes=space.nodes, multiplier=space.multiplier)
    assert g.normal[1] == ("conv_bn_relu_5x1", 1)
    # all equal elsewhere: the lowest input, then the earliest primitive that is not 'none'
    first = next(p for p in prims if p != "none")
    assert g.reduce == [(first, 0)] * space.nodes


def test_run_search_selects_by_perturbation_within_budget():
    import warnings

    from fnas import cost as K
    from fnas.search.loop import run_search

    cfg = tiny_search()
    x, y = make_batch(cfg.space, n=16, seed=3)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)
    budget = (K.min_cost(cfg, "params") + K.max_cost(cfg, "params")) // 2
    for kw in ({}, {"max_params": budget}):
        c = cfg.replace(**kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the perturbation pick over budget is expected: no warning
            result = run_search(c, loader, loader, epochs=2, gen=make_gen(0), progress=False, selection="perturbation")
        scores = perturbation_scores(result.state.weights, result.state.alphas, result.state.stats,
                                     [(x[:8], y[:8]), (x[8:], y[8:])], cfg=c)
        assert result.genotype == K.derive_within_budget(result.state.alphas, c, scores=scores)
        assert result.budget_misses == []
        assert 0 < result.selection_seconds < result.seconds  # the selection's share of the call's wall time
        again = run_search(c, loader, loader, epochs=2, gen=make_gen(0), progress=False, selection="perturbation")
        assert again.genotype == result.genotype


def test_run_search_rejects_an_unknown_selection():
    import pytest

    from fnas.search.loop import run_search

    with pytest.raises(ValueError, match="selection must be one of"):
        run_search(tiny_search(), [make_batch(tiny_search().space)], [make_batch(tiny_search().space)], epochs=1,
                   gen=make_gen(0), selection="magnitude")


def _searched(seed: int, **changes):
    """A tiny supernet searched for a few epochs on learnable data (sines whose frequency is the class)."""
    from fnas.search.loop import run_search

    cfg = tiny_search(**changes)
    g = make_gen(100 + seed)
    y = torch.arange(48) % cfg.space.num_classes
    t = torch.arange(cfg.space.input_shape[0])
    phase = 6.3 * torch.rand(48, cfg.space.in_channels, 1, generator=g)
    x = torch.sin(2 * torch.pi * (y[:, None, None] + 1) * t / 8 + phase) + 0.3 * torch.randn(48, 2, 8, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[..., None], y), batch_size=8, shuffle=True,
                                         generator=make_gen(seed))
    result = run_search(cfg, loader, loader, epochs=4, gen=make_gen(seed), progress=False, selection="alphas")
    return cfg, result.state, loader


def test_screened_selection_measures_exactly_and_keeps_the_exhaustive_pick_when_it_measured_it():
    from fnas import cost as K
    from fnas.search.loop import select_genotype, selection_batches
    from fnas.search.selection import Perturbation, select_by_perturbation

    budget = (K.min_cost(tiny_search(), "params") + K.max_cost(tiny_search(), "params")) // 2
    for seed, changes in [(0, {}), (1, {}), (3, {"max_params": budget})]:
        cfg, state, loader = _searched(seed, **changes)
        runs = {}
        for exhaustive in (True, False):
            p = Perturbation(state.weights, state.alphas, state.stats, selection_batches(loader, 32, "cpu"), cfg=cfg)
            p.measure([c for group in p.groups for c in group]) if exhaustive else p.settle()
            runs[exhaustive] = p
        full, screened = runs[True], runs[False]
        assert screened.evaluations < full.evaluations / 2  # incl. the screen
        for c, v in screened.exact.items():  # what it measured, it measured exactly
            assert v == full.exact[c]
        want, got = (select_by_perturbation(p.scores(), cfg) for p in (full, screened))
        best = set(screened.candidates_of(want))
        # per node: the pick is the best measured; where the exhaustive best was measured, it is that one
        assert (got == want) == best.issubset(screened.exact)
        picked = select_genotype(state, cfg, loader, "perturbation", 32, "cpu", screened=True)[0]
        assert K.budget_misses(picked, cfg) == []
        if changes:  # the budget's knapsack measured every candidate it picked
            p = Perturbation(state.weights, state.alphas, state.stats, selection_batches(loader, 32, "cpu"), cfg=cfg)
            p.settle()
            g = select_within_budget(p, state.alphas, cfg)
            assert K.budget_misses(g, cfg) == [] and set(p.candidates_of(g)).issubset(p.exact)


def test_screen_estimates_rank_the_masked_ops_and_the_bar_counts_every_evaluation():
    from fnas.search.loop import selection_batches
    from fnas.search.selection import Perturbation

    cfg, state, loader = _searched(0)
    batches = selection_batches(loader, 32, "cpu")
    p = Perturbation(state.weights, state.alphas, state.stats, batches, cfg=cfg, progress=True)
    p.measure([c for group in p.groups for c in group])
    est = p.estimate()
    exact = torch.tensor([p.exact[c] for c in est])
    approx = torch.tensor([est[c] for c in est])
    assert torch.corrcoef(torch.stack([exact, approx]))[0, 1] > 0.3  # a first-order estimate, not noise
    assert p.bar.n == p.bar.total == p.evaluations == 1 + len(est) + 1  # base, every mask, the screen
    p.close()
    q = Perturbation(state.weights, state.alphas, state.stats, batches, cfg=cfg, progress=True)
    q.settle()
    assert q.bar.n == q.bar.total == q.evaluations < p.evaluations
    q.close()

"""fnas.selection: perturbation-based architecture selection (Wang et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import make_batch, make_gen, tiny_search
from fnas.spaces.cell.genotype import validate_genotype
from fnas.search.loop import init_search
from fnas.search.selection import perturbation_scores, select_by_perturbation
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
        again = run_search(c, loader, loader, epochs=2, gen=make_gen(0), progress=False, selection="perturbation")
        assert again.genotype == result.genotype


def test_run_search_rejects_an_unknown_selection():
    import pytest

    from fnas.search.loop import run_search

    with pytest.raises(ValueError, match="selection must be one of"):
        run_search(tiny_search(), [make_batch(tiny_search().space)], [make_batch(tiny_search().space)], epochs=1,
                   gen=make_gen(0), selection="magnitude")

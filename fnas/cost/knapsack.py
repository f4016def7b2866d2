"""The strongest genotype within budget: a multiple-choice knapsack over the nodes, solved exactly."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import torch

from fnas.cost.budget import budget_misses, check_budget, input_maps, node_peak
from fnas.cost.counts import METRICS, last_uses
from fnas.cost.expected import check_alphas
from fnas.cost.tables import Tables, tables
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import Genotype_CNN, derive_from_scores, derive_genotype
from fnas.spaces.cell.topology import concat_range, edge_row, space_of
from fnas.cost.chain import chain_of
from fnas.spaces.chain import derive_within_budget as chain_derive

__all__ = ["Partial", "derive_within_budget", "knapsack", "pareto"]

Tensor = torch.Tensor


class Partial(NamedTuple):
    """A partial choice: one pick per group so far."""

    score: float  # sum of the picked items' scores
    cost: tuple  # per budgeted additive metric, the picked items' cost
    picks: tuple  # the picked items, in group order


def pareto(partials: list[Partial], room: tuple) -> list[Partial]:
    """Drop partials over ``room`` and those another partial beats on score and every cost."""
    kept: list = []
    for p in sorted(partials, key=lambda p: (-p.score, p.cost)):
        if any(c > r for c, r in zip(p.cost, room)):
            continue
        if not any(all(a <= b for a, b in zip(q.cost, p.cost)) for q in kept):
            kept.append(p)
    return kept


def knapsack(groups: list, room: tuple) -> list[Partial]:
    """Multiple-choice knapsack by Pareto dynamic programming: one item per group.

    ``groups[g]`` lists ``(score, cost, pick)``; returns the Pareto set of complete choices
    (exact: a dominated partial choice cannot end better than the partial that dominates it,
    since what the remaining groups add does not depend on it). Costs are non-negative, so a
    partial whose cost plus the remaining groups' cheapest items exceeds ``room`` is dropped.

    References:
        Sinha, Zoltners. The Multiple-Choice Knapsack Problem. Operations Research 27(3), 1979.
    """
    dims = len(room)
    rest = [tuple(0 for _ in range(dims))]  # cheapest completion of groups g.. per metric
    for items in reversed(groups):
        low = tuple(min(c[d] for _, c, _ in items) for d in range(dims)) if items else rest[0]
        rest.insert(0, tuple(a + b for a, b in zip(low, rest[0])))
    partials = [Partial(0.0, tuple(0 for _ in range(dims)), ())]
    for g, items in enumerate(groups):
        grown = [
            Partial(p.score + s, tuple(a + b for a, b in zip(p.cost, c)), p.picks + (pick,))
            for p in partials
            for s, c, pick in items
        ]
        bound = tuple(r - x for r, x in zip(room, rest[g + 1]))
        partials = pareto(grown, bound)
    return partials


def _cell_options(
    kind: str, scores: Tensor, space: SpaceConfig, tabs: Tables, metrics: list, room: tuple, sram: int | None
) -> list[Partial]:
    """The Pareto set of one cell type's choices: one ``(i, k)`` pick per node."""
    tab = tabs.kinds[kind]
    candidates = [k for k, name in enumerate(space.primitives) if name != "none"]
    n = space.nodes
    table = {m: getattr(tab, m) for m in metrics}

    def item(i: int, j: int, k: int):
        r = edge_row(i, j)
        return (float(scores[r, k]), tuple(int(table[m][r, k]) for m in metrics), (i, k))

    if sram is None:
        return knapsack([[item(i, j, k) for i in range(j) for k in candidates] for j in range(1, n + 1)], room)
    # The peak depends on which states are live, i.e. on the input map (a_1..a_n); for a fixed map
    # each node's ops are feasible or not on their own.
    cells = [c for c in tabs.cells if c.kind == kind]
    if max(c.pre_step for c in cells) > sram:
        return []
    concat = concat_range(n, space.multiplier)
    options: list = []
    for inputs in input_maps(n):
        last = last_uses(inputs, concat)
        groups = [
            [item(i, j, k) for k in candidates if node_peak(cells, last, j, i, k) <= sram]
            for j, i in enumerate(inputs, start=1)
        ]
        if all(groups):
            options = pareto(options + knapsack(groups, room), room)
    return options


def derive_within_budget(
    alphas: Mapping[str, Tensor],
    cfg: SpaceConfig | Any,
    *,
    max_params: int | None = None,
    max_macs: int | None = None,
    max_sram_bytes: int | None = None,
    sram_bytes_per_elem: int = 1,
    scores: Mapping[str, Tensor] | None = None,
) -> Genotype_CNN:
    """The strongest genotype whose exact cost meets every budget: the search's hard guarantee.

    :func:`~fnas.spaces.cell.genotype.derive_genotype` keeps, per node, the strongest (edge, op)
    pair; that genotype is returned unchanged when it meets the budgets. Otherwise this picks, per
    node, one pair so that the genotype's *exact* cost meets every budget and the sum over nodes
    of ``log softmax(alpha_edge)_op`` (the log-probability of the genotype when each node draws
    its pair in proportion to ``derive_genotype``'s scores) is largest. Params and MACs add up
    over nodes (summed over the cells of each type), so this is a multiple-choice knapsack, solved
    exactly by Pareto dynamic programming over the nodes of both cell types; a peak-SRAM budget is
    met exactly by enumerating each cell type's input maps (``n!``, as :func:`min_cost` does) and,
    per map, keeping only the ops whose kernel steps fit.

    Args:
        alphas: ``{"normal", "reduce"}`` architecture parameters.
        cfg: the space, or a config holding it as ``.space`` whose ``budgets`` (a SearchConfig's
            ``max_params`` / ``max_macs`` / ``max_sram_bytes``) are the defaults.
        max_params, max_macs, max_sram_bytes: budgets that override the config's (None: the
            config's, if any). SRAM in bytes.
        sram_bytes_per_elem: 1 for int8 inference (the search's convention), 4 for float32.
        scores: optional ``{"normal", "reduce"}`` per-(edge, op) scores to maximise (summed over
            nodes) instead of ``log softmax(alpha_edge)_op``, e.g.
            :func:`fnas.search.selection.perturbation_scores`; the unconstrained pick is then
            :func:`~fnas.spaces.cell.genotype.derive_from_scores`.

    Returns:
        A :class:`Genotype_CNN`; the unconstrained pick itself when no budget is set or it meets them.

    Raises:
        ValueError: a budget below the space's cheapest genotype (naming the minimum, as
            :func:`check_budget`), or alphas of the wrong shape.

    References:
        Sinha, Zoltners. The Multiple-Choice Knapsack Problem. Operations Research 27(3), 1979.
    """
    chain = chain_of(cfg)
    if chain is not None:
        given = {"params": max_params, "macs": max_macs, "sram": max_sram_bytes}
        defaults = getattr(cfg, "budgets", None) or {}
        budgets = {m: given[m] if given[m] is not None else defaults.get(m) for m in given}
        return chain_derive(scores if scores is not None else alphas, chain, budgets,
                            from_scores=scores is not None, sram_bytes_per_elem=sram_bytes_per_elem)
    space = space_of(cfg)
    given = {"params": max_params, "macs": max_macs, "sram": max_sram_bytes}
    budgets = dict(getattr(cfg, "budgets", None) or dict.fromkeys(METRICS))
    budgets.update({m: b for m, b in given.items() if b is not None})
    check_budget(space, budgets["params"], budgets["macs"], budgets["sram"], sram_bytes_per_elem=sram_bytes_per_elem)
    check_alphas(alphas, space)
    if scores is None:
        genotype = derive_genotype(alphas, space)
    else:
        check_alphas(scores, space, "scores")
        genotype = derive_from_scores(scores, space)
    if all(b is None for b in budgets.values()) or not budget_misses(
        genotype, space, budgets, sram_bytes_per_elem=sram_bytes_per_elem
    ):
        return genotype
    tabs = tables(space)
    metrics = [m for m in ("params", "macs") if budgets[m] is not None]
    room = tuple(int(budgets[m]) - tabs.fixed[m] for m in metrics)  # what the cells may spend
    sram = None if budgets["sram"] is None else int(budgets["sram"]) // sram_bytes_per_elem
    best = [Partial(0.0, tuple(0 for _ in metrics), ())]
    kinds = [kind for kind in ("normal", "reduce") if kind in tabs.kinds]
    for kind in kinds:
        if scores is None:
            node_scores = torch.log_softmax(alphas[kind].detach().double().cpu(), dim=-1)
        else:
            node_scores = scores[kind].detach().double().cpu()
        options = _cell_options(kind, node_scores, space, tabs, metrics, room, sram)
        best = pareto(
            [
                Partial(p.score + o.score, tuple(a + b for a, b in zip(p.cost, o.cost)), p.picks + (o.picks,))
                for p in best
                for o in options
            ],
            room,
        )
    if not best:  # unreachable after check_budget; kept as a clear error rather than an IndexError
        raise ValueError(f"No genotype of this space meets the budgets {budgets}")
    picks = dict(zip(kinds, max(best, key=lambda p: p.score).picks))
    cells = {
        kind: [(space.primitives[k], i) for i, k in picks[kind]] if kind in picks else list(getattr(genotype, kind))
        for kind in ("normal", "reduce")
    }
    return genotype._replace(normal=cells["normal"], reduce=cells["reduce"])

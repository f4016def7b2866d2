"""Budgets: the cheapest and dearest genotype of a space, reachability checks, and how a genotype misses."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping

from fnas.cost.counts import METRICS, Metric, check_metric, genotype_cost, last_uses
from fnas.cost.tables import CellTable, per_space, tables
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import Genotype_CNN
from fnas.spaces.cell.topology import concat_range, edge_row, space_of
from fnas.cost.chain import chain_of, check_chain_budget
from fnas.spaces.chain import max_cost as chain_max_cost
from fnas.spaces.chain import min_cost as chain_min_cost

__all__ = ["budget_misses", "check_budget", "input_maps", "max_cost", "min_cost", "node_peak"]


def input_maps(nodes: int) -> itertools.product:
    """Every ``(a_1, .., a_n)`` with ``a_j < j``: which state each node reads (``n!`` of them)."""
    return itertools.product(*(range(j) for j in range(1, nodes + 1)))


def node_peak(cells: list[CellTable], last: list[int], j: int, i: int, k: int) -> int:
    """Peak live elements while node ``j`` runs primitive ``k`` on state ``i``, over cells of one type.

    The states still needed later, the input if this is its last use, and the op's own buffers
    (:func:`fnas.cost.genotype_cost`'s schedule); ``last`` is :func:`~fnas.cost.counts.last_uses`.
    """
    r = edge_row(i, j)
    worst = 0
    for cell in cells:
        held = sum(cell.sizes[m] for m in range(j) if last[m] > j)
        read = cell.sizes[i] if last[i] == j else 0
        buffers = cell.scratch[r][k]
        worst = max(worst, held + read + buffers[0], held + max(buffers))
    return worst


def _candidates(space: SpaceConfig) -> list[int]:
    return [k for k, name in enumerate(space.primitives) if name != "none"]


@per_space
def _extreme(space: SpaceConfig, metric: str, which: str) -> int:
    """``min`` or ``max`` over all genotypes of the space of the exact cost."""
    best: Callable = min if which == "min" else max
    tabs = tables(space)
    candidates = _candidates(space)
    if metric != "sram":  # additive: per node, the extreme (edge, op) pair
        total = tabs.fixed[metric]
        for tab in tabs.kinds.values():
            table = getattr(tab, metric)
            for j in range(1, space.nodes + 1):
                total += int(best(table[edge_row(i, j), k].item() for i in range(j) for k in candidates))
        return int(total)
    # State sizes do not depend on the ops, so for a fixed input map each node's op can be chosen
    # on its own: peak = max(pre, max_j best_k node_peak(k)). Enumerates the n! input maps.
    result = int(max(tabs.fixed_steps.tolist()))
    concat = concat_range(space.nodes, space.multiplier)
    for kind in ("normal", "reduce"):
        cells = [c for c in tabs.cells if c.kind == kind]
        if not cells:
            continue
        pre = max(c.pre_step for c in cells)
        extreme = None
        for inputs in input_maps(space.nodes):
            last = last_uses(inputs, concat)
            peak = pre
            for j, i in enumerate(inputs, start=1):
                peak = max(peak, best(node_peak(cells, last, j, i, k) for k in candidates))
            extreme = peak if extreme is None else best(extreme, peak)
        result = max(result, extreme)
    return int(result)


def min_cost(cfg: SpaceConfig | Any, metric: Metric) -> int:
    """The exact cost of the space's cheapest genotype (``none`` is never kept).

    Params and MACs add up over nodes, so the cheapest genotype takes, per node, the cheapest
    non-``none`` op over its edges (edges leaving a reduction cell's input are strided: a
    factorized-reduce skip is not free there). The SRAM peak is minimised exactly by enumerating
    each cell's input maps (``n!``) and choosing ops per node. In DARTS cells the peak is often a
    reduction cell's preprocessing, which no op choice changes: this says how much room an SRAM
    penalty has.

    Args:
        cfg: the space, or a config holding it as ``.space``.
        metric: ``"params"``, ``"macs"`` or ``"sram"`` (peak elements = int8 bytes).

    Raises:
        ValueError: unknown metric.
    """
    if chain_of(cfg) is not None:
        return chain_min_cost(chain_of(cfg), metric)
    check_metric(metric)
    return _extreme(space_of(cfg), metric, "min")


def max_cost(cfg: SpaceConfig | Any, metric: Metric) -> int:
    """The exact cost of the space's most expensive genotype (see :func:`min_cost`).

    Raises:
        ValueError: unknown metric.
    """
    if chain_of(cfg) is not None:
        return chain_max_cost(chain_of(cfg), metric)
    check_metric(metric)
    return _extreme(space_of(cfg), metric, "max")


def check_budget(
    cfg: SpaceConfig | Any,
    max_params: int | None = None,
    max_macs: int | None = None,
    max_sram_bytes: int | None = None,
    *,
    sram_bytes_per_elem: int = 1,
) -> None:
    """Raise if a budget is below what the space's cheapest genotype needs.

    Args:
        cfg: the space, or a config holding it as ``.space``.
        max_params, max_macs: budgets; None skips the check.
        max_sram_bytes: peak activation budget in bytes; None skips the check.
        sram_bytes_per_elem: 1 for int8 inference, 4 for float32.

    Raises:
        ValueError: naming the minimum achievable and how to fix the budget or the space.
    """
    if chain_of(cfg) is not None:
        budgets = {"params": max_params, "macs": max_macs, "sram": max_sram_bytes}
        return check_chain_budget(chain_of(cfg), budgets, sram_bytes_per_elem)
    space = space_of(cfg)
    if sram_bytes_per_elem not in (1, 2, 4, 8):
        raise ValueError(f"sram_bytes_per_elem must be 1, 2, 4 or 8, got {sram_bytes_per_elem!r}")
    for arg, budget, metric, unit, scale in (
        ("max_params", max_params, "params", "parameters", 1),
        ("max_macs", max_macs, "macs", "MACs", 1),
        ("max_sram_bytes", max_sram_bytes, "sram", "bytes of peak activation memory", sram_bytes_per_elem),
    ):
        if budget is None:
            continue
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
            raise ValueError(f"{arg} must be a positive number, got {budget!r}")
        minimum = min_cost(space, metric) * scale
        if budget < minimum:
            raise ValueError(
                f"{arg}={budget} is below the minimum achievable in this space: {minimum} {unit} (the cheapest "
                f"genotype). Raise {arg} to at least {minimum}, or shrink the space (C={space.C}, "
                f"layers={space.layers}, nodes={space.nodes}, stem_multiplier={space.stem_multiplier})"
            )


def budget_misses(
    genotype: Genotype_CNN,
    cfg: SpaceConfig | Any,
    budgets: Mapping[str, float | None] | None = None,
    *,
    sram_bytes_per_elem: int = 1,
) -> list[str]:
    """How the genotype's exact cost exceeds each budget, e.g. ``"params 5,210 > 5,000 (+4.2%)"``.

    Args:
        genotype: a genotype of the space.
        cfg: the space, or a config holding it as ``.space``.
        budgets: ``{"params", "macs", "sram"}`` -> budget or None (SRAM in bytes); default
            ``cfg.budgets`` (a SearchConfig's), else none.
        sram_bytes_per_elem: 1 for int8 inference (the search's convention), 4 for float32.

    Returns:
        One line per missed budget; empty when the genotype meets every budget.
    """
    if budgets is None:
        budgets = getattr(cfg, "budgets", None) or dict.fromkeys(METRICS)
    exact = genotype_cost(genotype, cfg)
    actual = {"params": exact.params, "macs": exact.macs, "sram": exact.peak_sram_bytes_int8 * sram_bytes_per_elem}
    return [
        f"{metric} {actual[metric]:,} > {int(budget):,} (+{100 * (actual[metric] / budget - 1):.1f}%)"
        for metric, budget in budgets.items()
        if budget is not None and actual[metric] > budget
    ]

"""Costs of architectures: parameters ("Memory"), MACs ("Compute") and peak activation memory (SRAM).

Exact for the NetworkCnn a genotype builds (:mod:`.counts`), differentiable in the alphas for the
search penalty (:mod:`.expected`, :mod:`.penalty`), budgets and the space's extremes
(:mod:`.budget`), and the strongest genotype within budget (:mod:`.knapsack`). Cost tables are
built once per space (:mod:`.tables`): call :func:`penalty` (or :func:`expected_cost`) once eagerly
before ``torch.compile``-ing a step that uses it.

References:
    Tan et al. MnasNet: Platform-Aware Neural Architecture Search for Mobile. CVPR 2019 (budgets).
"""

from fnas.spaces.chain.cost import RUNTIMES, TFLM_ALIGN, OpGraph, aligned, greedy_arena_bytes
from fnas.cost.budget import budget_misses, check_budget, max_cost, min_cost
from fnas.cost.counts import METRICS, Cost, Metric, OpCost, genotype_cost, primitive_cost
from fnas.cost.expected import Estimator, expected_cost
from fnas.cost.knapsack import derive_within_budget
from fnas.cost.penalty import parse_mode, penalty

__all__ = [
    "METRICS",
    "RUNTIMES",
    "OpGraph",
    "Cost",
    "Estimator",
    "Metric",
    "OpCost",
    "budget_misses",
    "check_budget",
    "derive_within_budget",
    "expected_cost",
    "genotype_cost",
    "greedy_arena_bytes",
    "aligned",
    "TFLM_ALIGN",
    "max_cost",
    "min_cost",
    "parse_mode",
    "penalty",
    "primitive_cost",
]

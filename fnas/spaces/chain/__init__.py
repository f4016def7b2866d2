"""The chain search space: a chain of searchable conv blocks (op type, kernel, dilation, width, depth).

``ChainSpaceConfig`` implements :class:`fnas.spaces.base.Space`; costs, budgets and the knapsack
are in :mod:`.cost` and :mod:`.budget`.
"""

from fnas.spaces.chain.budget import (
    budget_fcn_width,
    check_budgets,
    derive_within_budget,
    for_budget,
    genotype_score,
    meets_budgets,
)
from fnas.spaces.chain.config import ChainSpaceConfig
from fnas.spaces.chain.cost import ChainCost, expected_cost, genotype_cost, max_cost, min_cost
from fnas.spaces.chain.genotype import (
    ChainGenotype,
    derive_genotype,
    fcn_genotype,
    genotype_from_dict,
    genotype_to_dict,
    random_genotype,
    validate_genotype,
)
from fnas.spaces.chain.network import ChainNetwork
from fnas.spaces.chain.spec import IDENTITY, ChainSpec
from fnas.spaces.chain.supernet import apply_supernet, init_supernet

__all__ = [
    "IDENTITY",
    "ChainCost",
    "ChainGenotype",
    "ChainNetwork",
    "ChainSpaceConfig",
    "ChainSpec",
    "apply_supernet",
    "budget_fcn_width",
    "check_budgets",
    "derive_genotype",
    "derive_within_budget",
    "expected_cost",
    "fcn_genotype",
    "for_budget",
    "genotype_cost",
    "genotype_from_dict",
    "genotype_score",
    "genotype_to_dict",
    "init_supernet",
    "max_cost",
    "meets_budgets",
    "min_cost",
    "random_genotype",
    "validate_genotype",
]

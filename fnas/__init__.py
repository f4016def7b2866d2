"""fnas: differentiable neural architecture search for TinyML on a pure-functional PyTorch core."""

from fnas.core import hypergrad
from fnas.spaces import primitives
from fnas.core import tree
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.chain import ChainGenotype, ChainSpaceConfig, for_budget
from fnas.cost import check_budget, expected_cost, genotype_cost, min_cost, penalty
from fnas.spaces.cell.genotype import (
    MY_CUSTOM_GENOTYPE,
    PRIMITIVES_CNN,
    Genotype_CNN,
    derive_genotype,
    load_genotype,
    random_genotype,
    save_genotype,
    validate_genotype,
)
from fnas.spaces.cell.network import NetworkCnn
from fnas.search import (
    SearchResult,
    SearchState,
    arch_step,
    compile_search_step,
    init_search,
    load_checkpoint,
    run_search,
    search_step,
    stack_states,
    supernet_loss,
    unstack_state,
    vmapped_search_step,
    weight_step,
)
from fnas.spaces.cell.supernet import apply_supernet, init_supernet
from fnas.app.seed_api import search_and_get_model

__version__ = "0.1.0"

__all__ = [
    "ChainGenotype",
    "ChainSpaceConfig",
    "Genotype_CNN",
    "MY_CUSTOM_GENOTYPE",
    "NetworkCnn",
    "PRIMITIVES_CNN",
    "SearchConfig",
    "SearchResult",
    "SearchState",
    "SpaceConfig",
    "apply_supernet",
    "arch_step",
    "check_budget",
    "compile_search_step",
    "derive_genotype",
    "expected_cost",
    "for_budget",
    "genotype_cost",
    "hypergrad",
    "init_search",
    "init_supernet",
    "load_checkpoint",
    "load_genotype",
    "min_cost",
    "penalty",
    "primitives",
    "random_genotype",
    "run_search",
    "save_genotype",
    "search_and_get_model",
    "search_step",
    "stack_states",
    "supernet_loss",
    "tree",
    "unstack_state",
    "validate_genotype",
    "vmapped_search_step",
    "weight_step",
]

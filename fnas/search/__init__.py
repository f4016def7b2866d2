"""The search: ``SearchConfig``, ``SearchState``, the pure ``search_step``, compile / vmap, checkpoints, the loop."""

from fnas.search.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from fnas.search.compile import compile_search_step, vmapped_search_step
from fnas.search.config import HYPERGRADS, SearchConfig
from fnas.search.defaults import DEFAULTS
from fnas.search.loop import SELECTIONS, SearchResult, check_batch, over_budget, run_search
from fnas.search.state import (
    SearchState,
    arch_optimizer,
    init_search,
    stack_states,
    state_from_dict,
    state_to_dict,
    unstack_state,
    weight_optimizer,
)
from fnas.search.step import (
    arch_step,
    beta_decay,
    beta_decay_grad,
    beta_schedule,
    current_lr,
    resource_penalty,
    search_step,
    supernet_loss,
    weight_step,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULTS",
    "HYPERGRADS",
    "SELECTIONS",
    "SearchConfig",
    "SearchResult",
    "SearchState",
    "arch_optimizer",
    "arch_step",
    "beta_decay",
    "beta_decay_grad",
    "beta_schedule",
    "check_batch",
    "compile_search_step",
    "current_lr",
    "init_search",
    "load_checkpoint",
    "over_budget",
    "resource_penalty",
    "run_search",
    "search_step",
    "stack_states",
    "state_from_dict",
    "state_to_dict",
    "supernet_loss",
    "unstack_state",
    "vmapped_search_step",
    "weight_optimizer",
    "weight_step",
]

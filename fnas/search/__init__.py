"""The search: ``SearchConfig``, ``SearchState``, the pure ``search_step``, compile / vmap, checkpoints, the loop."""

from fnas.search.config import HYPERGRADS, SearchConfig
from fnas.search.loop import (
    CHECKPOINT_FORMAT,
    SELECTIONS,
    SearchResult,
    SearchState,
    arch_step,
    beta_decay,
    beta_decay_grad,
    beta_schedule,
    check_batch,
    compile_search_step,
    current_lr,
    init_search,
    load_checkpoint,
    over_budget,
    resource_penalty,
    run_search,
    search_step,
    stack_states,
    state_from_dict,
    state_to_dict,
    supernet_loss,
    unstack_state,
    vmapped_search_step,
    weight_step,
)

__all__ = ["CHECKPOINT_FORMAT", "HYPERGRADS", "SELECTIONS", "SearchConfig", "SearchResult", "SearchState", "arch_step", "beta_decay", "beta_decay_grad", "beta_schedule", "check_batch", "compile_search_step", "current_lr", "init_search", "load_checkpoint", "over_budget", "resource_penalty", "run_search", "search_step", "stack_states", "state_from_dict", "state_to_dict", "supernet_loss", "unstack_state", "vmapped_search_step", "weight_step"]

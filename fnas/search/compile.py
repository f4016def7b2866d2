"""Running many steps fast: ``compile_search_step`` (``torch.compile``) and ``vmapped_search_step`` (many searches at once)."""

from __future__ import annotations

import functools
from typing import Any

import torch

from fnas.core import tree
from fnas.search.config import SearchConfig
from fnas.search.state import SearchState
from fnas.search.step import Batch, search_step

Tensor = torch.Tensor


def in_layout_of(new: Tensor, old: Tensor) -> Tensor:
    """``new`` laid out with ``old``'s strides: under ``torch.compile`` a fixed output layout, which
    inductor writes straight from the kernel that computes ``new``."""
    return torch.empty_strided(old.shape, old.stride(), dtype=new.dtype, device=new.device).copy_(new)


def unaliased(state: Any) -> Any:
    """``state`` with every tensor that appears at several leaves replaced by copies beyond the first."""
    seen: set[int] = set()

    def own(t: Tensor) -> Tensor:
        if id(t) in seen:
            return t.clone()
        seen.add(id(t))
        return t

    return tree.map(own, state)


def compile_search_step(cfg: SearchConfig, *, backend="inductor", **compile_kwargs):
    """:func:`search_step` for ``cfg`` under ``torch.compile``: ``step(state, train_batch,
    valid_batch) -> (new_state, metrics)``.

    The compiled function contains the ``torch.func`` transforms, so they are traced into the
    graph (a compiled function called *inside* an eager transform would silently run eagerly).
    The new state is handed back so that the next call passes dynamo's guards and reuses the
    first graph instead of compiling the whole step again (as long as the first compile):

    - in the memory layout of the state it was given: inductor may pick other strides for
      equivalent layouts (a ``(C, C', 1, 1)`` kernel's momentum, say); the copy into the old
      layout happens inside the graph, written straight by the kernel that computes the value;
    - without aliases: inductor returns one buffer for outputs it computes identically (the
      pool BatchNorm statistics that every edge leaving a state shares), so such leaves are
      copied apart after the call (a few small vectors).

    Args:
        cfg: the static search config (part of the compiled function, not an argument of it).
        backend, compile_kwargs: passed to ``torch.compile`` (tests use ``backend="aot_eager"``).
    """

    def step(state: SearchState, train_batch: Any, valid_batch: Batch):
        new, metrics = search_step(state, train_batch, valid_batch, cfg=cfg)
        return tree.map(in_layout_of, new, state), metrics

    compiled = torch.compile(step, backend=backend, **compile_kwargs)

    def compiled_step(state: SearchState, train_batch: Any, valid_batch: Batch):
        """:func:`search_step`, compiled (see :func:`compile_search_step`)."""
        new, metrics = compiled(state, train_batch, valid_batch)
        return unaliased(new), metrics

    return compiled_step


def vmapped_search_step(cfg: SearchConfig, *, shared_data: bool = True):
    """``search_step`` over a stacked batch of states in one call, with ``torch.func.vmap``.

    Args:
        cfg: the static config all searches share.
        shared_data: every search sees the same ``(train_batch, valid_batch)``; False: the batches
            are stacked too (leading axis = search).

    Returns:
        ``step(stacked_state, train_batch, valid_batch) -> (stacked_state, stacked_metrics)``,
        equal to running the searches one by one (tested). Useful for seed studies and for
        filling a GPU with tiny networks. Stack states with :func:`fnas.search.state.stack_states`.
    """
    data_dims = None if shared_data else 0
    return torch.func.vmap(functools.partial(search_step, cfg=cfg), in_dims=(0, data_dims, data_dims))

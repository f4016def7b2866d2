"""The cost API's chain-space branch: which configs hold a chain space, and their exact budgets check."""

from __future__ import annotations

from typing import Any

from fnas.spaces.chain import ChainSpec, min_cost

__all__ = ["chain_of", "check_chain_budget"]


def chain_of(cfg: Any) -> ChainSpec | None:
    """The chain space ``cfg`` is or holds as ``cfg.space``; ``None`` for any other space."""
    space = getattr(cfg, "space", cfg)
    return space if isinstance(space, ChainSpec) else None


def check_chain_budget(space: ChainSpec, budgets: dict, sram_bytes_per_elem: int) -> None:
    """Raise if a budget is below the chain space's cheapest member, naming the minimum and the fix."""
    units = {"params": "parameters", "macs": "MACs", "sram": "bytes of peak activation memory"}
    for metric, budget in budgets.items():
        if budget is None:
            continue
        minimum = min_cost(space, metric) * (sram_bytes_per_elem if metric == "sram" else 1)
        if budget < minimum:
            raise ValueError(
                f"max_{'sram_bytes' if metric == 'sram' else metric}={budget} is below the minimum achievable in "
                f"this chain space: {minimum} {units[metric]}. Raise it, or shrink the space (widths="
                f"{space.widths}); fnas.spaces.chain.for_budget sizes a space to a budget"
            )

"""Search spaces sized to a budget, so that the budget binds: the cheapest member fits, the largest does not.

Chains scale their maximum widths (:func:`fnas.spaces.chain.for_budget`); cells take the smallest
even ``C`` whose largest member exceeds the budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fnas.cost import max_cost, min_cost
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.chain import ChainSpaceConfig, for_budget

__all__ = ["MAX_C", "size_cell_space", "size_chain_space"]

MAX_C = 512  # the largest C the cell sizing tries


def _given(budgets: Mapping[str, float | None]) -> dict[str, float]:
    given = {m: b for m, b in budgets.items() if b is not None}
    if not given:
        raise ValueError("sizing a space needs at least one budget (params, macs or sram)")
    return given


def size_chain_space(
    base: ChainSpaceConfig, budgets: Mapping[str, float | None], *, hold_fcn: bool = False
) -> tuple[ChainSpaceConfig, str]:
    """``base`` with its widths scaled so the budgets bind; returns ``(space, one line saying what was picked)``.

    Args:
        base: the chain space to scale (its widths, choices, data shapes).
        budgets: ``{"params", "macs", "sram"}`` -> budget or None; SRAM in bytes at int8.
        hold_fcn: widen the space, if needed, so that the widest FCN within the budgets is a member
            (:func:`fnas.spaces.chain.for_budget`).

    Raises:
        ValueError: no scaling lets every budget bind.
    """
    given = _given(budgets)
    space, line = for_budget(given.get("params"), given.get("macs"), given.get("sram"), base=base, hold_fcn=hold_fcn)
    return space, f"sized to the budget: {line}"


def size_cell_space(base: SpaceConfig, budgets: Mapping[str, float | None]) -> tuple[SpaceConfig, str]:
    """``base`` with the smallest even ``C`` whose largest member exceeds every budget.

    Args:
        base: the cell space (its layers, nodes, primitives, data shapes; its ``C`` is replaced).
        budgets: ``{"params", "macs", "sram"}`` -> budget or None; SRAM in bytes at int8.

    Returns:
        ``(space, one line saying what was picked)``.

    Raises:
        ValueError: even the largest ``C`` tried is not enough, or at the picked ``C`` the cheapest
            member is over a budget too (the budget cannot bind at any ``C``); the message names the
            nearest ``C`` and its cost range.
    """
    given = _given(budgets)

    def ranges(space: SpaceConfig) -> dict[str, tuple[int, int]]:
        return {m: (min_cost(space, m), max_cost(space, m)) for m in given}

    def text(r: dict[str, tuple[int, int]]) -> str:
        return "; ".join(f"{m} {lo:,}..{hi:,} for a budget of {given[m]:,}" for m, (lo, hi) in r.items())

    prev = None
    for c in range(2, MAX_C + 1, 2):
        space = dataclasses.replace(base, C=c)
        r = ranges(space)
        if all(hi > given[m] for m, (_, hi) in r.items()):
            break
        prev = (c, r)
    else:
        raise ValueError(
            f"even C={MAX_C} (layers={base.layers}) has every member within the budget ({text(r)}); "
            "the budget does not bind: raise --layers or --nodes, or pass --C"
        )
    over = [m for m, (lo, _) in r.items() if lo > given[m]]
    if over:
        near = f"; at C={prev[0]} every member fits ({text(prev[1])})" if prev else ""
        raise ValueError(
            f"no even C lets the budget bind with layers={base.layers}, nodes={base.nodes}: at C={c} the cheapest "
            f"member needs more ({text(r)}){near}. Lower --layers or --nodes, raise the budget, or pass --C "
            "to search a space of your choice"
        )
    return space, f"sized to the budget: cell space C={c} (layers {base.layers}, nodes {base.nodes}): {text(r)}"

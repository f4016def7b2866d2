"""Per-space cost tables: every (edge, primitive) pair's exact cost, stacked as tensors, built once per space."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, TypeVar

import torch

from fnas.cost.counts import conv_parts, head_parts, primitive_cost, stem_parts
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.topology import cell_plan, concat_range, preprocesses
from fnas.spaces.primitives import out_grid

__all__ = ["CellTable", "KindTable", "Tables", "per_space", "tables"]

Tensor = torch.Tensor
R = TypeVar("R")


def per_space(build: Callable[..., R]) -> Callable[..., R]:
    """Memoise ``build(space, *args)`` in a plain dict keyed by the (frozen, hashable) arguments.

    Not ``functools.lru_cache``: ``torch.compile`` traces through an lru_cache wrapper into the
    builder on every call, whereas it reads a hit in a plain dict as a constant. So call a cached
    function once eagerly before compiling a step that uses it.
    """
    cache: dict = {}

    @functools.wraps(build)
    def cached(*args):
        if args not in cache:
            cache[args] = build(*args)
        return cache[args]

    cached.cache = cache  # type: ignore[attr-defined]
    return cached


class CellTable(NamedTuple):
    """One cell's sizes for the SRAM schedule."""

    kind: str  # "normal" / "reduce"
    pre_step: int  # live elements during preprocessing; 0: the cell has none (state_0 is its input)
    sizes: tuple[int, ...]  # elements of state_0 .. state_n (the same for every op)
    scratch: list  # [edge row][primitive] -> buffer sizes per kernel step


class KindTable(NamedTuple):
    """Tensors of one cell kind, stacked over its cells (I of them)."""

    params: Tensor  # (E, K), summed over the cells
    macs: Tensor  # (E, K)
    sizes: Tensor  # (I, n + 1) elements of state_0 .. state_n
    scratch: Tensor  # (I, E, K, S) primitive buffers per kernel step, zero-padded
    pre: Tensor  # (I',) live elements during preprocessing, of the I' <= I cells that preprocess


class Tables(NamedTuple):
    """Everything the expected cost, the extremes and the knapsack read about a space."""

    fixed: dict  # metric -> int: params / macs of input BN, stem, preprocessing, head
    kinds: dict  # "normal" / "reduce" -> KindTable (absent when the network has no such cell)
    cells: tuple  # of CellTable, in network order
    fixed_steps: Tensor  # live elements of the stem and head steps
    none: Tensor  # (K,) bool: which primitives are `none`
    edge_i: Tensor  # (E,) source state of each alpha row
    edge_j: Tensor  # (E,) target node of each alpha row
    node_rows: Tensor  # (n, E) 1 where row r is an edge into node j
    concat: Tensor  # (n + 1,) bool: states concatenated into the cell output


@per_space
def tables(space: SpaceConfig) -> Tables:
    """The cost tables of ``space`` (built on the first call, then cached; a user op is measured once)."""
    kx1, prims, edges, n = space.is_1d, space.primitives, space.edges(), space.nodes
    fixed = {"params": 0, "macs": 0}
    for p, m in stem_parts(space).values():
        fixed["params"] += p
        fixed["macs"] += m
    shape = space.input_shape
    x_elems = space.stem_multiplier * space.C * shape[0] * shape[1]
    fixed_steps = [space.in_channels * shape[0] * shape[1] + x_elems]
    concat = concat_range(n, space.multiplier)
    cells = []
    for reduction, c_in, c in cell_plan(space):
        node_shape = out_grid(shape, 2 if reduction else 1, kx1)
        sizes = (c * shape[0] * shape[1],) + (c * node_shape[0] * node_shape[1],) * n
        pre_step = 0
        if preprocesses(space.preprocess, c_in, c):
            pre = conv_parts(c_in, c, 1, shape, kx1)
            fixed["params"] += pre[0]
            fixed["macs"] += pre[1]
            pre_step = x_elems + sizes[0]
        costs = [  # [edge row][primitive]; edges leaving a reduction cell's state_0 are strided
            [primitive_cost(op, c, 1 + (reduction and not i), node_shape if i else shape, kx1=kx1) for op in prims]
            for i, _ in edges
        ]
        scratch = [[oc.scratch for oc in row] for row in costs]
        cells.append((CellTable("reduce" if reduction else "normal", pre_step, sizes, scratch), costs))
        x_elems = sum(sizes[k] for k in concat)
        shape = node_shape
    c_last = space.multiplier * cell_plan(space)[-1][2]
    head = head_parts(c_last, space.num_classes)
    fixed["params"] += head[0]
    fixed["macs"] += head[1]
    fixed_steps += [x_elems + c_last, c_last + space.num_classes]
    return Tables(
        fixed=fixed,
        kinds=_kind_tables(cells, len(edges), len(prims)),
        cells=tuple(cell for cell, _ in cells),
        fixed_steps=torch.tensor(fixed_steps, dtype=torch.float64),
        none=torch.tensor([name == "none" for name in prims]),
        edge_i=torch.tensor([i for i, _ in edges]),
        edge_j=torch.tensor([j for _, j in edges]),
        node_rows=_node_rows(edges, n),
        concat=torch.tensor([k in concat for k in range(n + 1)]),
    )


def _kind_tables(cells: list, num_edges: int, num_prims: int) -> dict[str, KindTable]:
    f64 = torch.float64
    steps = max(len(s) for cell, _ in cells for row in cell.scratch for s in row)
    kinds = {}
    for kind in ("normal", "reduce"):
        mine = [(cell, costs) for cell, costs in cells if cell.kind == kind]
        if not mine:
            continue
        scratch = torch.zeros(len(mine), num_edges, num_prims, steps, dtype=f64)
        for c, (cell, _) in enumerate(mine):
            for r, row in enumerate(cell.scratch):
                for k, s in enumerate(row):
                    scratch[c, r, k, : len(s)] = torch.tensor(s, dtype=f64)
        kinds[kind] = KindTable(
            params=torch.tensor([[[oc.params for oc in row] for row in costs] for _, costs in mine], dtype=f64).sum(0),
            macs=torch.tensor([[[oc.macs for oc in row] for row in costs] for _, costs in mine], dtype=f64).sum(0),
            sizes=torch.tensor([cell.sizes for cell, _ in mine], dtype=f64),
            scratch=scratch,
            pre=torch.tensor([cell.pre_step for cell, _ in mine if cell.pre_step], dtype=f64),
        )
    return kinds


def _node_rows(edges: list[tuple[int, int]], nodes: int) -> Tensor:
    rows = torch.zeros(nodes, len(edges), dtype=torch.float64)
    for r, (_, j) in enumerate(edges):
        rows[j - 1, r] = 1.0
    return rows

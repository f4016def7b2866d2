"""The cell's wiring as index arithmetic: alpha rows of edges, concatenated nodes, widths per cell.

Everything that reads alphas, builds cells or counts costs uses these, so the conventions live once.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

Tensor = torch.Tensor

__all__ = ["CellSpace", "cell_plan", "concat_range", "edge_key", "edge_row", "edge_weights", "node_rows", "space_of"]


class CellSpace(Protocol):
    """What the cell functions read of a space; :class:`fnas.spaces.cell.config.SpaceConfig` has it.

    A protocol rather than the class itself because ``SpaceConfig``'s methods call these modules:
    the imports point from config.py to them, never back.
    """

    C: int
    num_classes: int
    layers: int
    in_channels: int
    input_shape: tuple[int, int]
    with_input_batchnorm: bool
    nodes: int
    multiplier: int
    stem_multiplier: int
    primitives: tuple[str, ...]
    pool_bn: bool
    fused: bool
    partial_channels: int

    @property
    def is_1d(self) -> bool: ...

    @property
    def num_edges(self) -> int: ...

    @property
    def reduction_layers(self) -> tuple[int, ...]: ...

    def edges(self) -> list[tuple[int, int]]: ...


_SPACE_FIELDS = ("C", "layers", "nodes", "multiplier", "primitives", "reduction_layers")


def space_of(cfg: Any) -> CellSpace:
    """The cell space of ``cfg``: a :class:`SpaceConfig`, or any config holding one as ``cfg.space``.

    Raises:
        ValueError: ``cfg`` is neither.
    """
    space = getattr(cfg, "space", cfg)
    if not all(hasattr(space, name) for name in _SPACE_FIELDS):
        raise ValueError(
            f"cfg must be a SpaceConfig or hold one as cfg.space (e.g. a SearchConfig), got {type(cfg).__name__}"
        )
    return space


def edge_row(i: int, j: int) -> int:
    """Row of edge ``state_i -> node_j`` in an alpha table (edges of node j start at j(j-1)/2)."""
    return j * (j - 1) // 2 + i


def node_rows(j: int) -> slice:
    """The alpha rows of node ``j``'s incoming edges ``0..j-1 -> j``."""
    return slice(edge_row(0, j), edge_row(j, j))


def edge_key(i: int, j: int) -> str:
    """Pytree key of the edge ``state_i -> node_j``."""
    return f"e{i}_{j}"


def concat_range(nodes: int, multiplier: int) -> range:
    """The nodes concatenated into the cell output: the last ``multiplier`` of ``1..nodes``."""
    return range(nodes - multiplier + 1, nodes + 1)


def cell_plan(cfg: CellSpace) -> list[tuple[bool, int, int]]:
    """``(reduction, C_in, C)`` per cell: its input channels and its node width."""
    plan = []
    c_prev, c = cfg.stem_multiplier * cfg.C, cfg.C
    for layer in range(cfg.layers):
        reduction = layer in cfg.reduction_layers
        if reduction:
            c *= 2
        plan.append((reduction, c_prev, c))
        c_prev = cfg.multiplier * c
    return plan


def edge_weights(betas: Tensor, nodes: int) -> Tensor:
    """Softmax of the PC-DARTS edge betas over each node's incoming edges, in edge-row order."""
    return torch.cat([torch.softmax(betas[node_rows(j)], dim=0) for j in range(1, nodes + 1)])

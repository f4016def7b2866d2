"""The cell's wiring as index arithmetic: alpha rows of edges, concatenated nodes, widths per cell,
which cells reduce and which preprocess their input.

Everything that reads alphas, builds cells or counts costs uses these, so the conventions live once.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

Tensor = torch.Tensor

__all__ = [
    "PREPROCESS",
    "CellSpace",
    "cell_plan",
    "check_preprocess",
    "check_reductions",
    "concat_range",
    "edge_key",
    "edge_row",
    "edge_weights",
    "node_rows",
    "plan_cells",
    "preprocesses",
    "seed_reductions",
    "space_of",
]

# "always": the seed's ReLU -> 1x1 conv -> BN on every cell input; "when_needed": only where the
# input's channel count differs from the cell's C (elsewhere state_0 is the input itself).
PREPROCESS = ("always", "when_needed")


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
    preprocess: str
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


def seed_reductions(layers: int) -> tuple[int, ...]:
    """The seed's reduction cells: ``layers // 3`` and ``2 * layers // 3`` (one cell when they coincide)."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


def check_reductions(reductions: Any, layers: int, where: str) -> tuple[int, ...]:
    """The sorted reduction-cell indices ``reductions`` names (None: :func:`seed_reductions`).

    Raises:
        ValueError: not a sequence of distinct ints in ``[0, layers)``.
    """
    if reductions is None:
        return seed_reductions(layers)
    try:
        cells = tuple(reductions)
    except TypeError:
        cells = None
    if cells is None or not all(isinstance(r, int) and not isinstance(r, bool) for r in cells):
        raise ValueError(
            f"{where}: reductions must be None (the seed's layers//3, 2*layers//3) or a tuple of cell indices, "
            f"e.g. () for no reduction or ({layers - 1},) for one late reduction; got {reductions!r}"
        )
    if len(set(cells)) != len(cells) or any(not 0 <= r < layers for r in cells):
        raise ValueError(
            f"{where}: reductions must be distinct cell indices in [0, {layers}) (layers={layers}), got {reductions!r}"
        )
    return tuple(sorted(cells))


def check_preprocess(preprocess: Any, where: str) -> str:
    """``preprocess`` if it is one of :data:`PREPROCESS`; raises ``ValueError`` otherwise."""
    if preprocess not in PREPROCESS:
        raise ValueError(f"{where}: preprocess must be one of {list(PREPROCESS)}, got {preprocess!r}")
    return preprocess


def preprocesses(preprocess: str, c_in: int, c: int) -> bool:
    """Whether a cell with ``c_in`` input channels and width ``c`` has its ReLU -> 1x1 conv -> BN."""
    return preprocess == "always" or c_in != c


def plan_cells(
    C: int, layers: int, stem_multiplier: int, multiplier: int, reductions: tuple[int, ...]
) -> list[tuple[bool, int, int]]:
    """``(reduction, C_in, C)`` per cell: a reduction cell doubles the width, a cell outputs ``multiplier`` nodes."""
    plan = []
    c_prev, c = stem_multiplier * C, C
    for layer in range(layers):
        reduction = layer in reductions
        if reduction:
            c *= 2
        plan.append((reduction, c_prev, c))
        c_prev = multiplier * c
    return plan


def cell_plan(cfg: CellSpace) -> list[tuple[bool, int, int]]:
    """``(reduction, C_in, C)`` per cell of the space: its input channels and its node width."""
    return plan_cells(cfg.C, cfg.layers, cfg.stem_multiplier, cfg.multiplier, cfg.reduction_layers)


def edge_weights(betas: Tensor, nodes: int) -> Tensor:
    """Softmax of the PC-DARTS edge betas over each node's incoming edges, in edge-row order."""
    return torch.cat([torch.softmax(betas[node_rows(j)], dim=0) for j in range(1, nodes + 1)])

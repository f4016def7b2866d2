"""Genotypes: the seed's ``Genotype_CNN`` format, pure derivation from alphas, validation, JSON.

A genotype lists, per node ``j = 1..n``, one ``(op_name, input_idx)`` with ``input_idx < j``;
``*_concat`` names the nodes concatenated into the cell output.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path
from typing import Sequence

import torch

from fnas.spaces import primitives as P

__all__ = ["Genotype_CNN", "MY_CUSTOM_GENOTYPE", "PRIMITIVES_CNN", "derive_genotype", "genotype_from_dict", "genotype_to_dict", "load_genotype", "random_genotype", "save_genotype", "validate_genotype"]


Genotype_CNN = namedtuple("Genotype_CNN", "normal normal_concat reduce reduce_concat")

# The seed's search space.
PRIMITIVES_CNN = list(P.SEED_KX1)

# The seed's example genotype; it must build and run unchanged.
MY_CUSTOM_GENOTYPE = Genotype_CNN(
    normal=[("conv_bn_relu_3x1", 0), ("skip_connect", 1), ("max_pool_3x1", 0), ("conv_bn_relu_5x1", 1)],
    normal_concat=range(1, 5),
    reduce=[("max_pool_3x1", 0), ("conv_bn_relu_7x1", 1), ("skip_connect", 2), ("conv_bn_relu_5x1", 0)],
    reduce_concat=range(1, 5),
)


def derive_genotype(
    alphas: dict[str, torch.Tensor], cfg, *, betas: dict[str, torch.Tensor] | None = None
) -> Genotype_CNN:
    """The discrete cell of each type: per node, the strongest non-``none`` op over its edges.

    Pure: reads ``alphas`` only. Ties go to the lower input index, then to the earlier primitive.

    Args:
        alphas: ``{"normal", "reduce"}``, each ``(num_edges, len(primitives))``.
        cfg: a SpaceConfig or SearchConfig.
        betas: optional PC-DARTS edge weights ``{"normal", "reduce"}`` of shape ``(num_edges,)``;
            each edge's op strengths are scaled by its edge weight (softmax over a node's edges).

    Returns:
        A :class:`Genotype_CNN` with ``*_concat = range(n - multiplier + 1, n + 1)``.

    Raises:
        ValueError: alphas of the wrong shape, or a space whose only primitive is ``none``.
    """
    from fnas.spaces.cell.supernet import edge_weights, space_of

    space = space_of(cfg)
    if betas is None and "edge_normal" in alphas:  # PC-DARTS: fold the edge weights in
        betas = {"normal": alphas["edge_normal"], "reduce": alphas["edge_reduce"]}
    expected = (space.num_edges, len(space.primitives))
    cells = {}
    for kind in ("normal", "reduce"):
        if kind not in alphas or tuple(alphas[kind].shape) != expected:
            got = tuple(alphas[kind].shape) if kind in alphas else "missing"
            raise ValueError(f"alphas[{kind!r}] must have shape {expected} for this space, got {got}")
        probs = torch.softmax(alphas[kind].detach().double(), dim=-1)
        if betas is not None:
            probs = probs * edge_weights(betas[kind].detach().double(), space.nodes)[:, None]
        cells[kind] = _cell(probs, space.primitives, space.nodes)
    concat = range(space.nodes - space.multiplier + 1, space.nodes + 1)
    return Genotype_CNN(cells["normal"], concat, cells["reduce"], concat)


def _cell(probs: torch.Tensor, primitives: Sequence[str], nodes: int) -> list[tuple[str, int]]:
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    if not candidates:
        raise ValueError("Cannot derive a genotype from a space whose only primitive is 'none'")
    cell, row = [], 0
    for j in range(1, nodes + 1):
        block = probs[row : row + j][:, candidates]  # (j incoming edges, non-none ops)
        flat = int(torch.argmax(block.reshape(-1)))  # first maximum: lowest input, earliest op
        i, k = divmod(flat, len(candidates))
        cell.append((primitives[candidates[k]], i))
        row += j
    return cell


def random_genotype(cfg, gen: torch.Generator) -> Genotype_CNN:
    """A genotype drawn uniformly from the space: the random-search baseline's sampler.

    Each node of each cell type independently draws its input uniformly from the states before
    it and its op uniformly from the space's non-``none`` primitives; the concat is the one
    :func:`derive_genotype` uses. Every genotype :func:`derive_genotype` can return has the same
    probability. Random search with the same space and training recipe is the baseline that
    weight-sharing NAS has to beat (Li and Talwalkar, Random Search and Reproducibility for
    Neural Architecture Search, UAI 2019).

    Args:
        cfg: a SpaceConfig or SearchConfig.
        gen: the only source of randomness (the same seed gives the same genotype).
    """
    from fnas.spaces.cell.supernet import space_of

    space = space_of(cfg)
    ops = [name for name in space.primitives if name != "none"]  # SpaceConfig guarantees one
    cells = {}
    for kind in ("normal", "reduce"):
        cell = []
        for j in range(1, space.nodes + 1):
            i = int(torch.randint(j, (), generator=gen))
            k = int(torch.randint(len(ops), (), generator=gen))
            cell.append((ops[k], i))
        cells[kind] = cell
    concat = range(space.nodes - space.multiplier + 1, space.nodes + 1)
    return Genotype_CNN(cells["normal"], concat, cells["reduce"], concat)


def validate_genotype(genotype: Genotype_CNN, *, nodes: int | None = None, multiplier: int | None = None) -> None:
    """Check that ``genotype`` describes buildable cells.

    Raises:
        ValueError: unknown op, input index out of range, a concat naming missing nodes or not
            matching ``multiplier``, or a node count that differs from ``nodes``.
    """
    if not isinstance(genotype, tuple) or not hasattr(genotype, "normal"):
        raise ValueError(f"Expected a Genotype_CNN, got {type(genotype).__name__}")
    for kind in ("normal", "reduce"):
        cell = list(getattr(genotype, kind))
        concat = list(getattr(genotype, f"{kind}_concat"))
        if nodes is not None and len(cell) != nodes:
            raise ValueError(
                f"genotype.{kind} has {len(cell)} nodes but the network has nodes_per_layer={nodes}; "
                "pass the matching nodes_per_layer or fix the genotype"
            )
        known = P.names()
        for j, entry in enumerate(cell, start=1):
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
                raise ValueError(f"genotype.{kind}[{j - 1}] must be (op_name, input_idx), got {entry!r}")
            op, idx = entry
            if op not in known:
                raise ValueError(f"Unknown primitive {op!r} in genotype.{kind}; expected one of {known}")
            if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < j:
                raise ValueError(
                    f"genotype.{kind}[{j - 1}] = {entry!r}: node {j} may only read states 0..{j - 1} "
                    "(0 is the cell input, k > 0 is node k)"
                )
        if not concat:
            raise ValueError(f"genotype.{kind}_concat is empty; list the nodes whose outputs form the cell output")
        bad = [c for c in concat if not (isinstance(c, int) and 1 <= c <= len(cell))]
        if bad:
            raise ValueError(
                f"genotype.{kind}_concat names nodes {bad} that do not exist; valid nodes are 1..{len(cell)}"
            )
        if multiplier is not None and len(concat) != multiplier:
            raise ValueError(
                f"genotype.{kind}_concat has {len(concat)} nodes but multiplier={multiplier}; "
                "they must match (the cell output width is multiplier * C)"
            )


def genotype_to_dict(genotype: Genotype_CNN | dict) -> dict:
    """A JSON-ready dict (ranges become lists); a dict in this form is returned normalised."""
    if isinstance(genotype, dict):
        genotype = genotype_from_dict(genotype)
    return {
        "normal": [[op, int(i)] for op, i in genotype.normal],
        "normal_concat": [int(c) for c in genotype.normal_concat],
        "reduce": [[op, int(i)] for op, i in genotype.reduce],
        "reduce_concat": [int(c) for c in genotype.reduce_concat],
    }


def genotype_from_dict(data: dict) -> Genotype_CNN:
    """Inverse of :func:`genotype_to_dict`; validates the result.

    Raises:
        ValueError: missing keys or an invalid genotype.
    """
    missing = [k for k in Genotype_CNN._fields if k not in data]
    if missing:
        raise ValueError(f"Genotype JSON is missing keys {missing}; expected {list(Genotype_CNN._fields)}")
    try:
        genotype = Genotype_CNN(
            normal=[(str(op), int(i)) for op, i in data["normal"]],
            normal_concat=_as_range(list(data["normal_concat"])),
            reduce=[(str(op), int(i)) for op, i in data["reduce"]],
            reduce_concat=_as_range(list(data["reduce_concat"])),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"Malformed genotype JSON ({err}); cells are lists of [op_name, input_idx]") from err
    validate_genotype(genotype)
    return genotype


def _as_range(nodes: list[int]) -> range | list[int]:
    nodes = [int(n) for n in nodes]
    if nodes and nodes == list(range(nodes[0], nodes[-1] + 1)):
        return range(nodes[0], nodes[-1] + 1)
    return nodes


def save_genotype(genotype: Genotype_CNN, path: str | os.PathLike) -> None:
    """Write ``genotype`` as JSON (atomically: temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(genotype_to_dict(genotype), indent=2) + "\n")
    os.replace(tmp, path)


def load_genotype(path: str | os.PathLike) -> Genotype_CNN:
    """Read a genotype JSON file (or a run's JSON holding a ``"genotype"`` entry).

    Raises:
        ValueError: the file is missing, not JSON, or not a valid genotype.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Genotype file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from err
    if isinstance(data, dict) and "genotype" in data:
        data = data["genotype"]
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} does not hold a genotype object")
    return genotype_from_dict(data)

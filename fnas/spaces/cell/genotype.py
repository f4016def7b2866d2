"""Genotypes: the seed's ``Genotype_CNN`` format, pure derivation from alphas, validation, JSON.

A genotype lists, per node ``j = 1..n``, one ``(op_name, input_idx)`` with ``input_idx < j``;
``*_concat`` names the nodes concatenated into the cell output.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path
from typing import Any, Sequence

import torch

from fnas.core.io import atomic_write_json
from fnas.spaces import primitives as P
from fnas.spaces.cell.topology import concat_range, edge_weights, node_rows, space_of

__all__ = [
    "Genotype_CNN",
    "MY_CUSTOM_GENOTYPE",
    "PRIMITIVES_CNN",
    "concat_range",
    "derive_from_scores",
    "derive_genotype",
    "genotype_from_dict",
    "genotype_to_dict",
    "load_genotype",
    "pick_mask",
    "pick_nodes",
    "random_genotype",
    "save_genotype",
    "validate_genotype",
]


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


def pick_mask(strengths: torch.Tensor, none: torch.Tensor, nodes: int) -> torch.Tensor:
    """The genotype's picks as a one-hot ``(num_edges, K)`` mask: per node, its strongest pair.

    Node ``j`` keeps the (edge ``i -> j``, op ``k``) with the largest strength over its incoming
    edges, ``none`` excluded; ties go to the lower input index, then to the earlier primitive (the
    first maximum of the node's row-major block). Tensor ops only, so compiled code can call it.

    Args:
        strengths: ``(num_edges, K)`` in alpha-row order: softmax probabilities, or selection scores.
        none: ``(K,)`` bool, True for the ``none`` primitive.
        nodes: nodes per cell.
    """
    masked = strengths.masked_fill(none.to(strengths.device), float("-inf"))
    blocks = []
    for j in range(1, nodes + 1):
        block = masked[node_rows(j)].reshape(-1)  # (j * K,)
        blocks.append(torch.nn.functional.one_hot(block.argmax(), block.numel()).reshape(j, -1))
    return torch.cat(blocks)


def pick_nodes(strengths: torch.Tensor, primitives: Sequence[str], nodes: int) -> list[tuple[str, int]]:
    """One cell of a genotype: per node, ``(op_name, input_idx)`` of :func:`pick_mask`.

    Raises:
        ValueError: the only primitive is ``none``.
    """
    if all(name == "none" for name in primitives):
        raise ValueError("Cannot derive a genotype from a space whose only primitive is 'none'")
    none = torch.tensor([name == "none" for name in primitives])
    mask = pick_mask(strengths, none, nodes)
    cell = []
    for j in range(1, nodes + 1):
        i, k = divmod(int(mask[node_rows(j)].reshape(-1).argmax()), len(primitives))
        cell.append((primitives[k], i))
    return cell


def _check_strengths(strengths: dict, space: Any, what: str) -> None:
    expected = (space.num_edges, len(space.primitives))
    for kind in ("normal", "reduce"):
        got = tuple(strengths[kind].shape) if kind in strengths else "missing"
        if got != expected:
            raise ValueError(f"{what}[{kind!r}] must have shape {expected} for this space, got {got}")


def _genotype(strengths: dict, space: Any) -> Genotype_CNN:
    cells = {kind: pick_nodes(strengths[kind], space.primitives, space.nodes) for kind in ("normal", "reduce")}
    concat = concat_range(space.nodes, space.multiplier)
    return Genotype_CNN(cells["normal"], concat, cells["reduce"], concat)


def derive_genotype(
    alphas: dict[str, torch.Tensor], cfg: Any, *, betas: dict[str, torch.Tensor] | None = None
) -> Genotype_CNN:
    """The discrete cell of each type: per node, the strongest non-``none`` op over its edges.

    Pure: reads ``alphas`` only. Strength is the float64 softmax over each edge's ops
    (:func:`pick_mask` has the tie rule).

    Args:
        alphas: ``{"normal", "reduce"}``, each ``(num_edges, len(primitives))``.
        cfg: a SpaceConfig, or a config holding one as ``.space`` (a SearchConfig).
        betas: optional PC-DARTS edge weights ``{"normal", "reduce"}`` of shape ``(num_edges,)``;
            each edge's op strengths are scaled by its edge weight (softmax over a node's edges).

    Returns:
        A :class:`Genotype_CNN` with ``*_concat = concat_range(n, multiplier)``.

    Raises:
        ValueError: alphas of the wrong shape, or a space whose only primitive is ``none``.
    """
    space = space_of(cfg)
    if betas is None and "edge_normal" in alphas:  # PC-DARTS: fold the edge weights in
        betas = {"normal": alphas["edge_normal"], "reduce": alphas["edge_reduce"]}
    _check_strengths(alphas, space, "alphas")
    probs = {}
    for kind in ("normal", "reduce"):
        probs[kind] = torch.softmax(alphas[kind].detach().double(), dim=-1)
        if betas is not None:
            probs[kind] = probs[kind] * edge_weights(betas[kind].detach().double(), space.nodes)[:, None]
    return _genotype(probs, space)


def derive_from_scores(scores: dict[str, torch.Tensor], cfg: Any) -> Genotype_CNN:
    """Per node, the (edge, op) pair with the largest score, e.g. perturbation-based selection's.

    Args:
        scores: ``{"normal", "reduce"}``, each ``(num_edges, len(primitives))``; ``none`` is never kept.
        cfg: a SpaceConfig, or a config holding one as ``.space``.

    Raises:
        ValueError: scores of the wrong shape.
    """
    space = space_of(cfg)
    _check_strengths(scores, space, "scores")
    return _genotype({kind: scores[kind].detach() for kind in ("normal", "reduce")}, space)


def random_genotype(cfg: Any, gen: torch.Generator) -> Genotype_CNN:
    """A genotype drawn uniformly from the space: the random-search baseline's sampler.

    Each node of each cell type independently draws its input uniformly from the states before
    it and its op uniformly from the space's non-``none`` primitives; the concat is the one
    :func:`derive_genotype` uses. Every genotype :func:`derive_genotype` can return has the same
    probability. Random search with the same space and training recipe is the baseline that
    weight-sharing NAS has to beat (Li and Talwalkar, Random Search and Reproducibility for
    Neural Architecture Search, UAI 2019).

    Args:
        cfg: a SpaceConfig, or a config holding one as ``.space``.
        gen: the only source of randomness (the same seed gives the same genotype).
    """
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
    concat = concat_range(space.nodes, space.multiplier)
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
    if not isinstance(data, dict):
        raise ValueError(f"Genotype JSON must be an object with keys {list(Genotype_CNN._fields)}, got {data!r:.80}")
    missing = [k for k in Genotype_CNN._fields if k not in data]
    if missing:
        raise ValueError(f"Genotype JSON is missing keys {missing}; expected {list(Genotype_CNN._fields)}")
    try:
        genotype = Genotype_CNN(
            normal=[(_json_str(op), _json_int(i)) for op, i in data["normal"]],
            normal_concat=_as_range([_json_int(n) for n in data["normal_concat"]]),
            reduce=[(_json_str(op), _json_int(i)) for op, i in data["reduce"]],
            reduce_concat=_as_range([_json_int(n) for n in data["reduce_concat"]]),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"Malformed genotype JSON ({err}); cells are lists of [op_name, input_idx] with a string op name and an "
            "integer index (e.g. [\"conv_bn_relu_3x1\", 0]), concats lists of integers"
        ) from err
    validate_genotype(genotype)
    return genotype


def _json_int(v: object) -> int:
    """A JSON integer as is: a string ("0"), a float (0.5) or a bool is an error, not an index."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    return v


def _json_str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected an op name (a string), got {v!r}")
    return v


def _as_range(nodes: list[int]) -> range | list[int]:
    nodes = [int(n) for n in nodes]
    if nodes and nodes == list(range(nodes[0], nodes[-1] + 1)):
        return range(nodes[0], nodes[-1] + 1)
    return nodes


def save_genotype(genotype: Genotype_CNN, path: str | os.PathLike) -> None:
    """Write ``genotype`` as JSON (atomically: a crash leaves the old file or the new one)."""
    atomic_write_json(path, genotype_to_dict(genotype))


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

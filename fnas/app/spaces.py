"""Which search space a run or a genotype file holds: spaces to and from JSON, chain genotype files, and the
chain space a genotype needs on a dataset.

``config.json`` stores a space as its dataclass fields plus ``"type"`` (``"chain"`` or ``"cell"``;
configs written before the chain space have none and are cells). A chain ``genotype.json`` carries
its space: ``{"space": "chain", "space_config": {...}, "blocks": [[op, width], ...]}``; cell
genotype files keep the seed's format.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.chain import ChainGenotype, ChainSpaceConfig
from fnas.spaces.chain.spec import IDENTITY, ChainSpec, parse_op

__all__ = [
    "SPACE_TYPES",
    "Space",
    "chain_genotype_from_json",
    "chain_space_for",
    "genotype_json",
    "is_chain",
    "space_from_dict",
    "space_to_dict",
    "space_type",
]

Space = SpaceConfig | ChainSpaceConfig
SPACE_TYPES = {"chain": ChainSpaceConfig, "cell": SpaceConfig}


def is_chain(space: Any) -> bool:
    """Whether ``space`` is a chain space."""
    return isinstance(space, ChainSpec)


def space_type(space: Space) -> str:
    """``"chain"`` or ``"cell"``."""
    return "chain" if is_chain(space) else "cell"


def space_to_dict(space: Space) -> dict:
    """The space's fields as JSON-ready values, with ``"type"`` naming the space."""
    return {"type": space_type(space), **dataclasses.asdict(space)}


def space_from_dict(data: Any, where: str) -> Space:
    """The space saved by :func:`space_to_dict` (lists back to tuples; unknown keys ignored; no type: cells).

    Raises:
        ValueError: no space there, an unknown type, or fields the space rejects; ``where`` names the file.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where} has no search space ('search.space' or 'space'); was it written by fnas?")
    kind = data.get("type", "cell")
    if kind not in SPACE_TYPES:
        raise ValueError(f"{where}: unknown search space type {kind!r}; expected one of {list(SPACE_TYPES)}")
    cls = SPACE_TYPES[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    try:
        return cls(**kw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: the saved {kind} search space is invalid ({err})") from err


def genotype_json(genotype: Any, space: Space) -> dict:
    """What ``genotype.json`` holds: a chain genotype with its space, a cell genotype in the seed's format."""
    data = space.genotype_to_dict(genotype)
    if is_chain(space):
        data = {"space": "chain", "space_config": space_to_dict(space), "blocks": data["blocks"]}
    return data


def chain_genotype_from_json(data: Mapping, where: str) -> tuple[ChainGenotype, ChainSpaceConfig | None]:
    """A chain genotype file's blocks (not yet checked against a space) and its saved space, if any.

    Raises:
        ValueError: ``blocks`` is not a list of ``[op, width]`` with a known op and a positive width.
    """
    raw = data.get("blocks")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: a chain genotype needs 'blocks': a non-empty list of [op, width]")
    blocks = []
    for b, entry in enumerate(raw):
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
        if not ok or not isinstance(entry[1], int) or isinstance(entry[1], bool) or entry[1] < 1:
            raise ValueError(f"{where}: block {b} must be [op_name, positive width], got {entry!r}")
        parse_op(entry[0])  # a clear message for an unknown op
        blocks.append((entry[0], entry[1]))
    space = space_from_dict(data["space_config"], where) if "space_config" in data else None
    if space is not None and not is_chain(space):
        raise ValueError(f"{where}: 'space_config' is a {space_type(space)} space, not a chain")
    return ChainGenotype(tuple(blocks)), space


def chain_space_for(
    genotype: ChainGenotype,
    *,
    in_channels: int,
    num_classes: int,
    input_shape: tuple[int, int],
    base: ChainSpaceConfig | None = None,
) -> ChainSpaceConfig:
    """A chain space for ``genotype`` on data of these shapes, in which ``genotype`` is a member.

    ``base`` (the space it was searched in) keeps its choices, strides and input BatchNorm and takes
    the data's shapes; without one, the space is the genotype's own: its widths as the maximum
    widths, its kernels and dilations beside the defaults, stride 1 everywhere.

    Raises:
        ValueError: the genotype is not a member (e.g. an identity first block on data with
            another channel count), naming the block.
    """
    data = dict(in_channels=in_channels, num_classes=num_classes, input_shape=tuple(input_shape))
    if base is not None:
        space = dataclasses.replace(base, **data)
    else:
        ops = [parse_op(op) for op, _ in genotype.blocks]
        ops = [c for c in ops if c is not None]
        widths, c_in = [], in_channels
        for op, width in genotype.blocks:
            c_in = c_in if op == IDENTITY else width
            widths.append(c_in)
        defaults = ChainSpaceConfig()
        space = ChainSpaceConfig(
            **data, widths=tuple(widths), width_fractions=(1.0,),
            kernels=tuple(sorted(set(defaults.kernels) | {c.kernel for c in ops})),
            dilations=tuple(sorted(set(defaults.dilations) | {c.dilation for c in ops})),
        )
    space.validate(genotype)
    return space

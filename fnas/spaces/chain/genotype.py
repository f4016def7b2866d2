"""Chain genotypes: ``ChainGenotype`` (per block ``(op, width)``), validation, JSON, derivation, samplers.

An identity block carries its input width (the previous block's width, or ``in_channels``), so a
genotype spells out every block's output width and reads without the space at hand.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch

from fnas.spaces.chain.spec import IDENTITY, ChainSpec, op_name

__all__ = [
    "ChainGenotype",
    "check_alphas",
    "derive_genotype",
    "fcn_genotype",
    "genotype_from_dict",
    "genotype_to_dict",
    "random_genotype",
    "validate_genotype",
]

FCN_LAYERS = ((8, 1), (5, 2), (3, 1))  # Wang et al. 2017: (kernel, width multiple of w)


class ChainGenotype(NamedTuple):
    """``blocks[b] = (op_name, width)``: block b's op (``"conv_k5_d2"``, ``"identity"``) and output width."""

    blocks: tuple[tuple[str, int], ...]

    def widths(self) -> tuple[int, ...]:
        """Output width of each block."""
        return tuple(w for _, w in self.blocks)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_genotype(genotype: ChainGenotype, cfg: ChainSpec) -> None:
    """Raise ``ValueError`` naming the block and the allowed values if ``genotype`` is not in the space."""
    if not isinstance(genotype, ChainGenotype):
        raise ValueError(f"Expected a ChainGenotype, got {type(genotype).__name__}; use genotype_from_dict for JSON")
    blocks = genotype.blocks
    if not isinstance(blocks, tuple) or len(blocks) != cfg.num_blocks:
        got = len(blocks) if isinstance(blocks, (tuple, list)) else type(blocks).__name__
        raise ValueError(f"The genotype has {got} blocks but the space has {cfg.num_blocks}; derive it from this space")
    c_in = cfg.in_channels
    for b, entry in enumerate(blocks):
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise ValueError(f"block {b}: expected (op_name, width), got {entry!r}")
        op, width = entry
        if not isinstance(op, str) or op not in cfg.candidates[b]:
            why = " (identity needs stride 1 and equal maximum input and output widths)" if op == IDENTITY else ""
            raise ValueError(f"block {b}: op {op!r} is not allowed{why}; allowed: {list(cfg.candidates[b])}")
        if not _is_int(width):
            raise ValueError(f"block {b}: width must be an int, got {width!r} ({type(width).__name__})")
        if op == IDENTITY and width != c_in:
            raise ValueError(f"block {b}: identity carries its input width {c_in}, got width {width}")
        if op != IDENTITY and width not in cfg.width_choices[b]:
            raise ValueError(f"block {b}: width {width} is not allowed; allowed: {list(cfg.width_choices[b])}")
        c_in = width


def genotype_to_dict(genotype: ChainGenotype) -> dict:
    """``{"space": "chain", "blocks": [[op, width], ...]}`` (JSON-ready)."""
    return {"space": "chain", "blocks": [[str(op), int(w)] for op, w in genotype.blocks]}


def genotype_from_dict(data: Mapping, cfg: ChainSpec) -> ChainGenotype:
    """Inverse of :func:`genotype_to_dict`; validates against ``cfg``.

    Raises:
        ValueError: not a chain genotype dict, malformed entries, or not a member of the space.
    """
    if not isinstance(data, Mapping) or "blocks" not in data:
        raise ValueError(f"A chain genotype is a dict {{'space': 'chain', 'blocks': [[op, width], ...]}}, got {data!r}")
    if data.get("space", "chain") != "chain":
        raise ValueError(f"This genotype is for the {data['space']!r} space, not the chain space")
    raw = data["blocks"]
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"genotype 'blocks' must be a list of [op, width], got {raw!r}")
    blocks = []
    for b, entry in enumerate(raw):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            raise ValueError(f"block {b}: expected [op_name, width], got {entry!r}")
        blocks.append((entry[0], entry[1]))
    genotype = ChainGenotype(tuple(blocks))
    validate_genotype(genotype, cfg)
    return genotype


def check_alphas(alphas: Mapping[str, torch.Tensor], cfg: ChainSpec) -> None:
    """Raise ``ValueError`` unless ``alphas`` (or scores) hold each block's op and width vectors, shaped for ``cfg``."""
    for b in range(cfg.num_blocks):
        for key, n in ((f"b{b}_op", len(cfg.candidates[b])), (f"b{b}_width", len(cfg.width_choices[b]))):
            got = tuple(alphas[key].shape) if key in alphas else "missing"
            if got != (n,):
                raise ValueError(f"alphas[{key!r}] must have shape ({n},) for this space, got {got}")


def derive_genotype(alphas_or_scores: Mapping[str, torch.Tensor], cfg: ChainSpec) -> ChainGenotype:
    """Per block the argmax op and the argmax width (first on ties); identity carries its input width.

    Under ``cfg.width_policy == "fill"`` the width is the block's widest choice (without a budget,
    filling means the widest; :func:`~fnas.spaces.chain.budget.derive_within_budget` narrows it).

    Works on alphas and on per-choice scores of the same shapes (argmax is softmax-invariant).

    Raises:
        ValueError: a missing key or a wrong shape.
    """
    check_alphas(alphas_or_scores, cfg)
    blocks, c_in = [], cfg.in_channels
    for b in range(cfg.num_blocks):
        op = cfg.candidates[b][int(torch.argmax(alphas_or_scores[f"b{b}_op"].detach()))]
        scores = alphas_or_scores[f"b{b}_width"].detach()
        pick = len(cfg.width_choices[b]) - 1 if cfg.width_policy == "fill" else int(torch.argmax(scores))
        width = c_in if op == IDENTITY else cfg.width_choices[b][pick]
        blocks.append((op, width))
        c_in = width
    return ChainGenotype(tuple(blocks))


def random_genotype(cfg: ChainSpec, gen: torch.Generator) -> ChainGenotype:
    """Per block an op uniform over the block's candidates, then a width uniform over its choices.

    The random-search baseline's sampler: each decision uniform, as :func:`derive_genotype` reads
    uniform alphas (Li and Talwalkar, UAI 2019).
    """
    blocks, c_in = [], cfg.in_channels
    for b in range(cfg.num_blocks):
        op = cfg.candidates[b][int(torch.randint(len(cfg.candidates[b]), (), generator=gen))]
        choices = cfg.width_choices[b]
        width = choices[int(torch.randint(len(choices), (), generator=gen))]
        blocks.append((op, c_in if op == IDENTITY else width))
        c_in = blocks[-1][1]
    return ChainGenotype(tuple(blocks))


def _nearest(target: int, allowed: tuple[int, ...]) -> int:
    return min(allowed, key=lambda v: (abs(v - target), -v))  # ties: the larger value


def fcn_genotype(cfg: ChainSpec, w: int) -> ChainGenotype:
    """The member nearest to Wang et al.'s FCN: conv k=8 (w), k=5 (2w), k=3 (w), each conv-BN-ReLU.

    Kernels and widths map to the nearest allowed values (ties: the larger), dilation 1; the three
    layers go to the blocks that need the smallest width change (the earliest such placement), and
    every other block is identity.

    Raises:
        ValueError: no ``conv`` op or dilation 1 in the space, fewer than 3 blocks, or no placement
            whose other blocks may be identity.

    References:
        Wang, Yan, Oates. Time Series Classification from Scratch with Deep Neural Networks: A Strong
        Baseline. IJCNN 2017.
    """
    if not _is_int(w) or w < 1:
        raise ValueError(f"fcn_genotype: w must be a positive int, got {w!r}")
    if "conv" not in cfg.op_types or 1 not in cfg.dilations:
        raise ValueError("The FCN needs op type 'conv' and dilation 1 in the space; add them to op_types / dilations")
    L = cfg.num_blocks
    if L < len(FCN_LAYERS):
        raise ValueError(f"The FCN has {len(FCN_LAYERS)} conv layers but the space has {L} blocks; use at least 3")
    best = None
    placements = [(i, j, k) for i in range(L) for j in range(i + 1, L) for k in range(j + 1, L)]
    for placement in placements:
        if not all(cfg.identity_allowed[b] for b in range(L) if b not in placement):
            continue
        blocks, c_in, miss = [], cfg.in_channels, 0
        layers = iter(FCN_LAYERS)
        for b in range(L):
            if b not in placement:
                blocks.append((IDENTITY, c_in))
                continue
            kernel, mult = next(layers)
            width = _nearest(mult * w, cfg.width_choices[b])
            miss += abs(width - mult * w)
            blocks.append((op_name("conv", _nearest(kernel, cfg.kernels), 1), width))
            c_in = width
        if best is None or miss < best[0]:
            best = (miss, ChainGenotype(tuple(blocks)))
    if best is None:
        raise ValueError(
            f"No placement of the FCN's 3 layers leaves the other {L - 3} blocks as identity (allowed at blocks "
            f"{[b for b in range(L) if cfg.identity_allowed[b]]}); use 3 blocks or equal neighbouring widths"
        )
    return best[1]

"""The DARTS cell space: ``SpaceConfig``, its static configuration, validated in ``__post_init__``.

Anything that fixes shapes or the graph lives here and is passed inside the keyword ``cfg``. Its
methods implement :class:`fnas.spaces.base.Space` by delegating to the cell modules' functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fnas.spaces import primitives as P
from fnas.spaces.cell import genotype as G
from fnas.spaces.cell.network import NetworkCnn
from fnas.spaces.cell.supernet import apply_supernet, init_supernet
from fnas.spaces.cell.topology import check_preprocess, check_reductions, concat_range, seed_reductions


@dataclass(frozen=True)
class SpaceConfig:
    """The search network (supernet) and the space it spans.

    Attributes mirror the seed's arguments; ``input_shape`` is ``(T, 1)`` for kx1 spaces and
    ``(H, W)`` for 2D ones. Two fields go beyond the seed (their defaults are the seed's skeleton):

    - ``reductions``: indices of the reduction cells; None: the seed's ``layers // 3`` and
      ``2 * layers // 3``; ``()``: no reduction; e.g. ``(layers - 1,)``: one late reduction, so the
      other cells run at the full length T.
    - ``preprocess``: ``"always"`` (the seed: ReLU -> 1x1 conv -> BN on every cell input) or
      ``"when_needed"`` (only where the input's channel count differs from the cell's width; with
      ``stem_multiplier=1`` or ``multiplier=1`` most cells then spend nothing on it).
    """

    C: int = 16  # nas_init_channels
    num_classes: int = 7
    layers: int = 8  # nas_layers
    in_channels: int = 6
    input_shape: tuple[int, int] = (128, 1)
    with_input_batchnorm: bool = True
    nodes: int = 4  # nas_nodes_per_layer
    multiplier: int = 4  # nas_multiplier: how many of the last nodes are concatenated
    stem_multiplier: int = 3
    primitives: tuple[str, ...] = P.SEED_KX1
    pool_bn: bool = True  # DARTS puts an affine-free BatchNorm after pools in the search net
    fused: bool = True  # batch the mixed ops of all edges leaving a state (same result, faster)
    partial_channels: int = 1  # PC-DARTS K: mixed ops see C/K channels; K > 1 adds edge betas
    # beyond the seed (last, so positional arguments keep their meaning):
    reductions: tuple[int, ...] | None = None  # None: cells layers//3 and 2*layers//3 reduce
    preprocess: str = "always"  # or "when_needed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "primitives", tuple(self.primitives))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        for name in ("C", "num_classes", "layers", "in_channels", "nodes", "multiplier", "stem_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SpaceConfig.{name} must be a positive int, got {value!r}")
        if self.reductions is not None:
            object.__setattr__(self, "reductions", check_reductions(self.reductions, self.layers, "SpaceConfig"))
        check_preprocess(self.preprocess, "SpaceConfig")
        if self.num_classes < 2:
            raise ValueError(f"SpaceConfig.num_classes must be >= 2, got {self.num_classes}")
        if self.multiplier > self.nodes:
            raise ValueError(
                f"SpaceConfig.multiplier ({self.multiplier}) must be <= nodes ({self.nodes}): the cell "
                "output concatenates the last `multiplier` nodes"
            )
        if len(self.input_shape) != 2 or min(self.input_shape) < 1:
            raise ValueError(f"SpaceConfig.input_shape must be (T, 1) or (H, W), got {self.input_shape}")
        if not self.primitives:
            raise ValueError("SpaceConfig.primitives is empty; use e.g. fnas.spaces.primitives.SEED_KX1")
        if len(set(self.primitives)) != len(self.primitives):
            raise ValueError(f"SpaceConfig.primitives has duplicates: {self.primitives}")
        kinds = {P.get(name).kind for name in self.primitives}  # raises on unknown names
        if "1d" in kinds and "2d" in kinds:
            raise ValueError(
                f"SpaceConfig.primitives mixes kx1 and kxk primitives: {self.primitives}; pick one family"
            )
        if "1d" in kinds and self.input_shape[1] != 1:
            raise ValueError(
                f"kx1 primitives need input_shape (T, 1), got {self.input_shape}; use the 2D set "
                "(fnas.spaces.primitives.DARTS_2D) for images"
            )
        if self.primitives == ("none",):
            raise ValueError("SpaceConfig.primitives needs at least one primitive besides 'none'")
        if "skip_connect" in self.primitives and self.C % 2:
            raise ValueError(f"skip_connect in a reduction cell needs an even C, got C={self.C}")
        K = self.partial_channels
        if not isinstance(K, int) or K < 1 or self.C % K:
            raise ValueError(f"SpaceConfig.partial_channels must be a positive divisor of C={self.C}, got {K!r}")
        if K > 1 and "skip_connect" in self.primitives and (self.C // K) % 2:
            raise ValueError(
                f"partial_channels={K} leaves C/K={self.C // K} channels per mixed op; skip_connect's "
                "factorized reduce needs an even number: pick K so that C/K is even"
            )

    @property
    def is_1d(self) -> bool:
        """True for kx1 spaces: tensors run as (N, C, T) internally."""
        return self.input_shape[1] == 1 and all(P.get(n).kind != "2d" for n in self.primitives)

    @property
    def num_edges(self) -> int:
        """Mixed-op edges per cell: node j has j incoming edges, ``n (n + 1) / 2`` in all."""
        return self.nodes * (self.nodes + 1) // 2

    @property
    def reduction_layers(self) -> tuple[int, ...]:
        """Indices of the reduction cells, sorted: ``reductions``, or the seed's when it is None."""
        return self.reductions if self.reductions is not None else seed_reductions(self.layers)

    def edges(self) -> list[tuple[int, int]]:
        """``(i, j)`` for every edge ``state_i -> node_j``, in alpha-row order (j-major)."""
        return [(i, j) for j in range(1, self.nodes + 1) for i in range(j)]

    # --- the Space protocol (fnas.spaces.base.Space): thin delegates -------------------------------

    def init(self, gen: torch.Generator, *, dtype: torch.dtype = torch.float32) -> tuple[dict, dict, dict]:
        """``(weights, alphas, stats)`` of the supernet: :func:`~fnas.spaces.cell.supernet.init_supernet`."""
        return init_supernet(self, gen, dtype=dtype)

    def apply(
        self, weights: dict, alphas: dict, stats: dict, x: Tensor, *, train: bool, sync: Any = None
    ) -> tuple[Tensor, dict]:
        """``(logits, new_stats)``: :func:`~fnas.spaces.cell.supernet.apply_supernet`."""
        return apply_supernet(weights, alphas, stats, x, cfg=self, train=train, sync=sync)

    def derive(self, alphas_or_scores: dict, *, from_scores: bool = False) -> G.Genotype_CNN:
        """The genotype the alphas pick (:func:`~fnas.spaces.cell.genotype.derive_genotype`), or with
        ``from_scores=True`` the one per-choice selection scores pick
        (:func:`~fnas.spaces.cell.genotype.derive_from_scores`)."""
        if from_scores:
            return G.derive_from_scores(alphas_or_scores, self)
        return G.derive_genotype(alphas_or_scores, self)

    def random_genotype(self, gen: torch.Generator) -> G.Genotype_CNN:
        """A uniform sample of the space: :func:`~fnas.spaces.cell.genotype.random_genotype`."""
        return G.random_genotype(self, gen)

    def validate(self, genotype: G.Genotype_CNN) -> None:
        """Raise ``ValueError`` unless ``genotype`` is a member of this space.

        Members have ``nodes`` nodes reading earlier states, ops from ``primitives`` other than
        ``none``, and concatenate ``concat_range(nodes, multiplier)``.
        """
        G.validate_genotype(genotype, nodes=self.nodes, multiplier=self.multiplier)
        for kind in ("normal", "reduce"):
            for op, _ in getattr(genotype, kind):
                if op == "none" or op not in self.primitives:
                    raise ValueError(
                        f"genotype.{kind} uses {op!r}, which is not an op of this space; expected one of "
                        f"{[p for p in self.primitives if p != 'none']}"
                    )
            concat = list(getattr(genotype, f"{kind}_concat"))
            if concat != list(concat_range(self.nodes, self.multiplier)):
                raise ValueError(
                    f"genotype.{kind}_concat is {concat}; this space concatenates the last multiplier="
                    f"{self.multiplier} nodes, {list(concat_range(self.nodes, self.multiplier))}"
                )

    def network(self, genotype: G.Genotype_CNN, gen: torch.Generator | None = None) -> nn.Module:
        """The :class:`~fnas.spaces.cell.network.NetworkCnn` of ``genotype`` at this space's sizes."""
        return NetworkCnn(
            self.C, self.num_classes, self.layers, genotype, self.in_channels, self.with_input_batchnorm,
            self.nodes, self.multiplier, self.stem_multiplier, gen=gen, kx1=self.is_1d,
            reductions=self.reduction_layers, preprocess=self.preprocess,
        )  # fmt: skip

    def genotype_to_dict(self, genotype: G.Genotype_CNN) -> dict:
        """A JSON-able dict: :func:`~fnas.spaces.cell.genotype.genotype_to_dict`."""
        return G.genotype_to_dict(genotype)

    def genotype_from_dict(self, data: dict) -> G.Genotype_CNN:
        """Parse a dict written by :meth:`genotype_to_dict` and check it is a member of this space."""
        genotype = G.genotype_from_dict(data)
        self.validate(genotype)
        return genotype

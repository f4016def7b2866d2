"""The ``Space`` protocol: what the search, cost, selection and app layers need from a search space.

A space is a frozen dataclass (its static config) whose methods are pure functions of explicit
pytrees: ``init`` builds ``(weights, alphas, stats)``, ``apply`` runs the supernet, ``derive``
reads a genotype off the alphas (or selection scores), and ``network`` builds the fixed
``nn.Module`` of a genotype. Two spaces implement it: the seed's DARTS cells
(:class:`fnas.spaces.cell.config.SpaceConfig`) and a chain of conv blocks
(:class:`fnas.spaces.chain.config.ChainSpaceConfig`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

Genotype = Any  # each space's own genotype type (a NamedTuple), JSON-able through to_dict / from_dict


@runtime_checkable
class Space(Protocol):
    """A search space. Attributes fix the data it takes; methods are pure."""

    num_classes: int
    in_channels: int
    input_shape: tuple[int, int]  # (T, 1) for kx1 spaces, (H, W) for 2D ones

    def init(self, gen: torch.Generator, *, dtype: torch.dtype = torch.float32) -> tuple[dict, dict, dict]:
        """``(weights, alphas, stats)`` of the supernet; ``gen`` is the only randomness."""
        ...

    def apply(
        self, weights: dict, alphas: dict, stats: dict, x: Tensor, *, train: bool, sync: Any = None
    ) -> tuple[Tensor, dict]:
        """``(logits (N, num_classes), new_stats)``; ``stats`` is never modified in place.

        ``sync`` is a :class:`fnas.core.collectives.Sync` (data-parallel BatchNorm) or ``None``.
        """
        ...

    def derive(self, alphas_or_scores: dict) -> Genotype:
        """The genotype the alphas (or per-choice selection scores of the same shapes) pick."""
        ...

    def random_genotype(self, gen: torch.Generator) -> Genotype:
        """A uniform sample of the space (the random-search baseline)."""
        ...

    def validate(self, genotype: Genotype) -> None:
        """Raise ``ValueError`` naming what is wrong if ``genotype`` is not a member of the space."""
        ...

    def network(self, genotype: Genotype, gen: torch.Generator | None = None) -> nn.Module:
        """The fixed network of ``genotype`` as a plain ``nn.Module``."""
        ...

    def genotype_to_dict(self, genotype: Genotype) -> dict:
        """A JSON-able dict; :meth:`genotype_from_dict` inverts it."""
        ...

    def genotype_from_dict(self, data: dict) -> Genotype:
        """Parse and validate a dict written by :meth:`genotype_to_dict`."""
        ...

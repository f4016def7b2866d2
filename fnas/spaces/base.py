"""The ``Space`` protocol: what the search, cost, selection and app layers need from a search space.

A space is a frozen dataclass (its static config) whose methods are pure functions of explicit
pytrees: ``init`` builds ``(weights, alphas, stats)``, ``apply`` runs the supernet, ``derive``
reads a genotype off the alphas (or selection scores), and ``network`` builds the fixed
``nn.Module`` of a genotype. Two spaces implement it: the seed's DARTS cells
(:class:`fnas.spaces.cell.config.SpaceConfig`) and a chain of conv blocks
(:class:`fnas.spaces.chain.config.ChainSpaceConfig`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

class Cost(NamedTuple):
    """Exact cost of a genotype's network at batch 1 (every space's; :func:`fnas.cost.genotype_cost`).

    Attributes:
        params: parameter count.
        macs: multiply-accumulates of one forward pass.
        peak_sram_bytes_int8: peak live activation elements (1 byte each).
        peak_sram_bytes_f32: the same in float32 (4 bytes each).
        peak_at: the kernel step where the peak occurs (the first, on ties).
        parts: ``{part: (params, macs)}``; cells: ``input_bn``, ``stem``, ``cells.{l}.pre`` (cells
            that preprocess their input), ``cells.{l}.n{j}.{op}``, ``head``; chains: ``input_bn``,
            ``blocks.{b}.{op}``, ``head``.
        schedule: ``((step, live_elems), ...)`` in execution order.
    """

    params: int
    macs: int
    peak_sram_bytes_int8: int
    peak_sram_bytes_f32: int
    peak_at: str
    parts: dict[str, tuple[int, int]]
    schedule: tuple[tuple[str, int], ...]

    @classmethod
    def from_parts(cls, parts: dict[str, tuple[int, int]], schedule: list[tuple[str, int]]) -> "Cost":
        """Totals of ``parts`` and the peak of ``schedule`` (the first step of the largest, on ties)."""
        peak_at, peak = max(schedule, key=lambda s: s[1])  # max keeps the first on ties
        return cls(
            params=sum(p for p, _ in parts.values()),
            macs=sum(m for _, m in parts.values()),
            peak_sram_bytes_int8=peak,
            peak_sram_bytes_f32=4 * peak,
            peak_at=peak_at,
            parts=parts,
            schedule=tuple(schedule),
        )


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

"""``ChainSpaceConfig``: the chain search space, a frozen dataclass implementing :class:`fnas.spaces.base.Space`.

Its fields and validation are :class:`~fnas.spaces.chain.spec.ChainSpec`'s; the methods delegate to
the supernet, genotype and network modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from fnas.spaces.chain import genotype as G
from fnas.spaces.chain.network import ChainNetwork
from fnas.spaces.chain.spec import ChainSpec
from fnas.spaces.chain.supernet import apply_supernet, init_supernet

__all__ = ["ChainSpaceConfig"]


@dataclass(frozen=True)
class ChainSpaceConfig(ChainSpec):
    """A chain of searchable conv blocks (kernel, dilation, op type, width, depth); see :class:`ChainSpec`.

    Example:
        >>> cfg = ChainSpaceConfig(in_channels=3, num_classes=5, input_shape=(64, 1), widths=(16, 32, 32, 16))
        >>> weights, alphas, stats = cfg.init(torch.Generator().manual_seed(0))
        >>> logits, stats = cfg.apply(weights, alphas, stats, torch.randn(8, 3, 64, 1), train=True)
    """

    def init(self, gen: torch.Generator, *, dtype: torch.dtype = torch.float32) -> tuple[dict, dict, dict]:
        """``(weights, alphas, stats)``; see :func:`fnas.spaces.chain.supernet.init_supernet`."""
        return init_supernet(self, gen, dtype=dtype)

    def apply(
        self, weights: dict, alphas: dict, stats: dict, x: Tensor, *, train: bool, sync: Any = None
    ) -> tuple[Tensor, dict]:
        """``(logits, new_stats)``; see :func:`fnas.spaces.chain.supernet.apply_supernet`."""
        return apply_supernet(weights, alphas, stats, x, cfg=self, train=train, sync=sync)

    def derive(self, alphas_or_scores: Mapping[str, Tensor]) -> G.ChainGenotype:
        """Per block the argmax op and width; see :func:`fnas.spaces.chain.genotype.derive_genotype`."""
        return G.derive_genotype(alphas_or_scores, self)

    def random_genotype(self, gen: torch.Generator) -> G.ChainGenotype:
        """A random member; see :func:`fnas.spaces.chain.genotype.random_genotype`."""
        return G.random_genotype(self, gen)

    def fcn_genotype(self, w: int) -> G.ChainGenotype:
        """The member nearest to the FCN of widths (w, 2w, w); see :func:`fnas.spaces.chain.genotype.fcn_genotype`."""
        return G.fcn_genotype(self, w)

    def validate(self, genotype: G.ChainGenotype) -> None:
        """Raise ``ValueError`` naming the block and the allowed values if ``genotype`` is not a member."""
        G.validate_genotype(genotype, self)

    def network(self, genotype: G.ChainGenotype, gen: torch.Generator | None = None) -> ChainNetwork:
        """The plain ``nn.Module`` of ``genotype``."""
        return ChainNetwork(self, genotype, gen=gen)

    def genotype_to_dict(self, genotype: G.ChainGenotype) -> dict:
        """``{"space": "chain", "blocks": [[op, width], ...]}`` (validated first)."""
        G.validate_genotype(genotype, self)
        return G.genotype_to_dict(genotype)

    def genotype_from_dict(self, data: Mapping) -> G.ChainGenotype:
        """Parse and validate a dict written by :meth:`genotype_to_dict`."""
        return G.genotype_from_dict(data, self)

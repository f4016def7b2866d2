"""Architecture selection by perturbation: pick the op the trained supernet needs most.

DARTS keeps, per node, the (edge, op) pair with the largest softmax weight. Wang et al. showed
that the weight's size is a poor measure of what an op contributes: parameter-free ops (skip
connections, pools) collect large weights in the supernet while the network depends more on its
convolutions. Their remedy, used here without their fine-tuning between picks: mask one op on one
edge (its weight becomes 0 in every cell of that type) and measure how much the supernet's
validation loss rises; per node keep the pair whose removal hurts most.

References:
    Wang, Cheng, Chen, Tang, Hsieh. Rethinking Architecture Selection in Differentiable NAS.
    ICLR 2021.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from fnas.spaces.cell.genotype import Genotype_CNN, derive_from_scores, validate_genotype
from fnas.spaces.cell.supernet import apply_supernet, space_of

Tensor = torch.Tensor


@torch.no_grad()
def perturbation_scores(weights: dict, alphas: dict, stats: dict, batches: Iterable, *, cfg) -> dict[str, Tensor]:
    """Rise of the supernet's mean validation loss when each op of each edge is masked.

    BatchNorm runs in training mode (batch statistics), as during the search; the running
    statistics are not touched.

    Args:
        weights, alphas, stats: a searched supernet (e.g. ``SearchState`` fields).
        batches: ``(x, y)`` validation batches (a list; it is iterated once per mask).
        cfg: the space (or a search config).

    Returns:
        ``{"normal", "reduce"}``: ``(num_edges, num_primitives)`` float64 tensors; ``-inf`` for
        ``none`` (never picked).
    """
    space = space_of(cfg)
    batches = [(x, y) for x, y in batches]
    if not batches:
        raise ValueError("perturbation_scores needs at least one validation batch")

    def loss(a: dict) -> float:
        total, n = 0.0, 0
        for x, y in batches:
            logits, _ = apply_supernet(weights, a, stats, x, cfg=space, train=True)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            n += y.shape[0]
        return total / n

    base = loss(alphas)
    scores = {}
    for kind in ("normal", "reduce"):
        s = torch.full(tuple(alphas[kind].shape), float("-inf"), dtype=torch.float64)
        for e in range(alphas[kind].shape[0]):
            for k, name in enumerate(space.primitives):
                if name == "none":
                    continue
                masked = dict(alphas)
                a = alphas[kind].clone()
                a[e, k] = float("-inf")  # softmax weight 0 on this edge, in every cell of this type
                masked[kind] = a
                s[e, k] = loss(masked) - base
        scores[kind] = s
    return scores


def select_by_perturbation(scores: dict[str, Tensor], cfg) -> Genotype_CNN:
    """Per node, the (edge, op) pair with the largest score (ties: lower input, then earlier op).

    :func:`fnas.spaces.cell.genotype.derive_from_scores`, validated against the space.
    """
    space = space_of(cfg)
    genotype = derive_from_scores(scores, space)
    validate_genotype(genotype, nodes=space.nodes, multiplier=space.multiplier)
    return genotype

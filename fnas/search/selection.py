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
from tqdm.auto import tqdm

from fnas.spaces.cell.genotype import Genotype_CNN, derive_from_scores, validate_genotype
from fnas.spaces.cell.supernet import apply_supernet, space_of
from fnas.spaces.chain import ChainSpec

CHAIN_TOP = 4  # chain blocks: ops measured per block (the strongest by alpha)

Tensor = torch.Tensor


@torch.no_grad()
def perturbation_scores(
    weights: dict, alphas: dict, stats: dict, batches: Iterable, *, cfg, progress: bool = False
) -> dict[str, Tensor]:
    """Rise of the supernet's mean validation loss when each op of each edge is masked.

    BatchNorm runs in training mode (batch statistics), as during the search; the running
    statistics are not touched.

    Args:
        weights, alphas, stats: a searched supernet (e.g. ``SearchState`` fields).
        batches: ``(x, y)`` validation batches (a list; it is iterated once per mask).
        cfg: the space (or a search config).
        progress: show a bar over the masked supernet evaluations (the selection can take minutes).

    Returns:
        ``{"normal", "reduce"}``: ``(num_edges, num_primitives)`` float64 tensors; ``-inf`` for
        ``none`` (never picked).
    """
    batches = [(x, y) for x, y in batches]
    if not batches:
        raise ValueError("perturbation_scores needs at least one validation batch")
    chain = getattr(cfg, "space", cfg)
    if isinstance(chain, ChainSpec):
        return _chain_scores(weights, alphas, stats, batches, chain, progress)
    space = space_of(cfg)
    total = sum(alphas[kind].shape[0] * sum(n != "none" for n in space.primitives) for kind in ("normal", "reduce"))
    bar = _bar(total + 1, progress)

    def loss(a: dict) -> float:
        bar.update()
        return _mean_loss(lambda x: apply_supernet(weights, a, stats, x, cfg=space, train=True)[0], batches)

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
    bar.close()
    return scores


def _mean_loss(logits_of, batches: list) -> float:
    """Mean cross-entropy of ``logits_of(x)`` over the batches."""
    total, n = 0.0, 0
    for x, y in batches:
        total += float(F.cross_entropy(logits_of(x), y, reduction="sum"))
        n += y.shape[0]
    return total / n


def _bar(total: int, enabled: bool):
    """A tqdm bar over the selection's supernet evaluations (a no-op one when disabled)."""
    return tqdm(total=total, desc="selection (perturbation)", leave=False, dynamic_ncols=True, disable=not enabled)


def _chain_scores(
    weights: dict, alphas: dict, stats: dict, batches: list, space: ChainSpec, progress: bool = False
) -> dict[str, Tensor]:
    """The chain space's scores: per block, the rise of the loss when each op is masked.

    Only the block's ``CHAIN_TOP`` strongest ops by alpha are measured (the others score ``-inf``):
    a chain block has up to 25 candidates, and the weak ones are never the pick. Width scores are
    the width alphas (under the "fill" width policy, widths are set by the budget anyway).
    """

    bar = _bar(1 + sum(min(CHAIN_TOP, alphas[f"b{b}_op"].numel()) for b in range(space.num_blocks)), progress)

    def loss(a: dict) -> float:
        bar.update()
        return _mean_loss(lambda x: space.apply(weights, a, stats, x, train=True)[0], batches)

    base = loss(alphas)
    scores = {}
    for b in range(space.num_blocks):
        key = f"b{b}_op"
        s = torch.full(tuple(alphas[key].shape), float("-inf"), dtype=torch.float64)
        for k in torch.topk(alphas[key].detach(), min(CHAIN_TOP, alphas[key].numel())).indices.tolist():
            a = alphas[key].clone()
            a[k] = float("-inf")
            s[k] = loss({**alphas, key: a}) - base
        scores[key] = s
        scores[f"b{b}_width"] = alphas[f"b{b}_width"].detach().double()
    bar.close()
    return scores


def select_by_perturbation(scores: dict[str, Tensor], cfg) -> Genotype_CNN:
    """Per node, the (edge, op) pair with the largest score (ties: lower input, then earlier op).

    :func:`fnas.spaces.cell.genotype.derive_from_scores`, validated against the space. In the chain
    space: per block the op with the largest score.
    """
    chain = getattr(cfg, "space", cfg)
    if isinstance(chain, ChainSpec):
        return chain.derive(scores)
    space = space_of(cfg)
    genotype = derive_from_scores(scores, space)
    validate_genotype(genotype, nodes=space.nodes, multiplier=space.multiplier)
    return genotype

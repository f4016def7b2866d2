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

import functools
from typing import Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fnas import cost
from fnas.core.collectives import Sync
from fnas.spaces.cell.genotype import Genotype_CNN, derive_from_scores, validate_genotype
from fnas.spaces.cell.supernet import apply_supernet, edge_row, space_of
from fnas.spaces.chain import ChainSpec

CHAIN_TOP = 4  # chain blocks: ops measured per block (the strongest by alpha)
FIRST = 2  # candidates per node (chain block) measured first: the strongest by estimate
PATIENCE = 1  # then the next one while one of the last PATIENCE measured is the node's best so far

Tensor = torch.Tensor
Candidate = tuple  # (alpha key, index into that tensor), e.g. ("normal", (edge, op)) or ("b2_op", (k,))


@torch.no_grad()
def perturbation_scores(
    weights: dict, alphas: dict, stats: dict, batches: Iterable, *, cfg, progress: bool = False,
    exhaustive: bool = True, sync: Sync | None = None,
) -> dict[str, Tensor]:
    """Rise of the supernet's mean validation loss when each op of each edge is masked.

    BatchNorm runs in training mode (batch statistics), as during the search; the running
    statistics are not touched.

    Args:
        weights, alphas, stats: a searched supernet (e.g. ``SearchState`` fields).
        batches: ``(x, y)`` validation batches (a list; it is iterated once per mask).
        cfg: the space (or a search config).
        progress: show a bar over the masked supernet evaluations (the selection can take minutes).
        exhaustive: measure every op (the reference); False: only the ops that can be a node's
            pick (:meth:`Perturbation.settle`), the others score ``-inf``.
        sync: split the masked evaluations over the ranks of a data-parallel job
            (:class:`~fnas.core.collectives.Sync`); every rank returns the same scores, equal to
            one process's.

    Returns:
        ``{"normal", "reduce"}``: ``(num_edges, num_primitives)`` float64 tensors; ``-inf`` for
        ``none`` (never picked). Chains: ``b{b}_op`` scores (``-inf`` beyond the block's
        ``CHAIN_TOP`` strongest ops by alpha) and ``b{b}_width`` (the width alphas).
    """
    p = Perturbation(weights, alphas, stats, batches, cfg=cfg, progress=progress, sync=sync)
    try:
        p.run(exhaustive=exhaustive)
    finally:
        p.close()
    return p.scores()


class Perturbation:
    """Perturbation scores measured on demand: a first-order estimate of every one, exact loss rises where they matter.

    Measuring every (edge, op) costs one supernet evaluation of the validation samples each (2 x
    10 edges x 7 ops for the default cell: about as much as a short search). A node's pick only
    needs the candidates that could beat it, so :meth:`settle` screens them first:

    - one forward and backward pass gives ``g = dL/dalpha``; masking op ``k`` of a row with softmax
      weights ``w`` moves the weights by ``-w_k`` (op ``k``) and ``w_j w_k / (1 - w_k)`` (the
      others), whose first-order effect on the loss is ``-g_k / (1 - w_k)``: the estimate;
    - per node (chain block) the candidates are measured exactly in the order of their estimates:
      the ``FIRST`` strongest, then one more while one of the last ``PATIENCE`` measured is the
      node's best so far (:meth:`settle`).

    This is a heuristic, so it is opt-in (``screened=True`` in
    :func:`fnas.search.loop.select_genotype`, ``exhaustive=False`` here); the default measures
    every candidate. On a searched 5-cell supernet (390 series of length 300, the CLI cell
    settings sized to 20k parameters) it measured 17 of 120 masks and picked the exhaustive
    genotype (the estimate's correlation with the exact scores was 0.5, and each node's exact best
    was its first or second); on tiny supernets searched for 4 epochs the estimate ranked a node's
    exact best as low as 5th of 6 and the pick differed in 5 of 7 (bench/SELECTION.md). A budget
    that the pick misses is met with :func:`select_within_budget`: the knapsack over the exact
    scores and, for unmeasured candidates, their estimate plus the largest excess of an exact
    score over its estimate seen so far, measuring what it picks until its pick is all exact.

    Data parallel (``sync``): the screen's batches and each round's masks are dealt round-robin
    over the ranks and the results shared (exactly: every rank fills its own entries), so every
    rank holds one process's numbers bit for bit and makes the same decisions.
    """

    def __init__(self, weights: dict, alphas: dict, stats: dict, batches: Iterable, *, cfg,
                 progress: bool = False, sync: Sync | None = None):
        self.batches = [(x, y) for x, y in batches]
        if not self.batches:
            raise ValueError("perturbation scores need at least one validation batch")
        self.weights, self.alphas, self.stats, self.sync = weights, alphas, stats, sync
        chain = getattr(cfg, "space", cfg)
        if isinstance(chain, ChainSpec):
            self.space = chain
            self.groups = [
                [(f"b{b}_op", (k,)) for k in torch.topk(alphas[f"b{b}_op"].detach(),
                                                        min(CHAIN_TOP, alphas[f"b{b}_op"].numel())).indices.tolist()]
                for b in range(chain.num_blocks)
            ]
        else:
            self.space = space_of(cfg)
            ops = [k for k, name in enumerate(self.space.primitives) if name != "none"]
            self.groups = [[(kind, (edge_row(i, j), k)) for i in range(j) for k in ops]
                           for kind in ("normal", "reduce") for j in range(1, self.space.nodes + 1)]
        self.exact: dict[Candidate, float] = {}
        self.evaluations = 0  # supernet passes over the samples run by this rank (the screen counts one)
        self._base: float | None = None
        self._estimate: dict[Candidate, float] | None = None
        self.bar = _bar(0, progress)  # its total grows as rounds of evaluations are added

    # --- the two measurements --------------------------------------------------------------------

    def _logits(self, a: dict, x: Tensor) -> Tensor:
        if isinstance(self.space, ChainSpec):
            return self.space.apply(self.weights, a, self.stats, x, train=True)[0]
        return apply_supernet(self.weights, a, self.stats, x, cfg=self.space, train=True)[0]

    def _share(self, n: int) -> range:
        """The indices of ``n`` jobs this rank runs (round-robin over the ranks)."""
        return range(0, n) if self.sync is None else range(self.sync.rank, n, self.sync.world_size)

    def _gather(self, values: Tensor) -> Tensor:
        return values if self.sync is None else self.sync.sum_over_ranks(values)

    def _tick(self, n: int) -> None:
        """Announce ``n`` more evaluations on the bar (its total grows as rounds are added)."""
        self.bar.total += n
        self.bar.refresh()

    def measure(self, candidates: Iterable[Candidate]) -> None:
        """Measure the exact score of every candidate not measured yet (and the unmasked loss, once)."""
        todo = [c for c in dict.fromkeys(candidates) if c not in self.exact]
        jobs = ([None] if self._base is None else []) + todo
        if not jobs:
            return
        mine = self._share(len(jobs))
        self._tick(len(mine))
        values = torch.zeros(len(jobs), dtype=torch.float64)
        with torch.no_grad():
            for i in mine:
                values[i] = _mean_loss(functools.partial(self._logits, self._masked(jobs[i])), self.batches)
                self.evaluations += 1
                self.bar.update()
        values = self._gather(values).tolist()
        if self._base is None:
            self._base = values.pop(0)
        for c, v in zip(todo, values):
            self.exact[c] = v - self._base

    def _masked(self, c: Candidate | None) -> dict:
        """The alphas with the candidate's op masked (softmax weight 0, in every cell of its type)."""
        if c is None:
            return self.alphas
        key, idx = c
        a = self.alphas[key].clone()
        a[idx] = float("-inf")
        return {**self.alphas, key: a}

    def estimate(self) -> dict[Candidate, float]:
        """First-order estimates ``-g_k / (1 - w_k)`` of every candidate's score (one pass, computed once)."""
        if self._estimate is not None:
            return self._estimate
        keys = sorted({key for group in self.groups for key, _ in group})
        sizes = [self.alphas[k].numel() for k in keys]
        grads = torch.zeros(len(self.batches), sum(sizes), dtype=torch.float64)
        mine = self._share(len(self.batches))
        self._tick(1 if len(mine) else 0)
        for b in mine:
            x, y = self.batches[b]

            def loss(a: dict) -> Tensor:
                return F.cross_entropy(self._logits({**self.alphas, **a}, x), y, reduction="sum")

            g = torch.func.grad(loss)({k: self.alphas[k] for k in keys})
            grads[b] = torch.cat([g[k].detach().reshape(-1).double().cpu() for k in keys])
        if len(mine):
            self.evaluations += 1
            self.bar.update()
        total = self._gather(grads).sum(0) / sum(y.shape[0] for _, y in self.batches)  # batch order: same on every rank
        self._estimate = {}
        for k, g in zip(keys, total.split(sizes)):
            w = torch.softmax(self.alphas[k].detach().double().cpu(), -1)
            est = -g.reshape(w.shape) / (1 - w).clamp_min(1e-12)
            for key, idx in (c for group in self.groups for c in group):
                if key == k:
                    self._estimate[(key, idx)] = float(est[idx])
        return self._estimate

    # --- what to measure -------------------------------------------------------------------------

    def margin(self) -> float:
        """How far an exact score exceeded its estimate at most, over the measured candidates (>= 0)."""
        est = self.estimate()
        return max([0.0] + [v - est[c] for c, v in self.exact.items()])

    def settle(self) -> None:
        """Measure each node's (block's) candidates in the order of their estimates until the best stands.

        The ``FIRST`` strongest by estimate first; then, while the last ``PATIENCE`` measured
        candidates include the node's best so far, the next one. All nodes' next candidates are
        measured in one round (split over the ranks in data-parallel mode).
        """
        est = self.estimate()
        orders = [sorted(group, key=lambda c: -est[c]) for group in self.groups]  # stable: ties keep space order
        depth = [min(FIRST, len(order)) for order in orders]
        while True:
            self.measure(c for order, d in zip(orders, depth) for c in order[:d])
            grown = False
            for g, order in enumerate(orders):
                measured = [self.exact[c] for c in order[:depth[g]]]
                at = max(range(len(measured)), key=lambda i: (measured[i], -i))  # first of the best
                if depth[g] - 1 - at < PATIENCE and depth[g] < len(order):
                    depth[g] += 1
                    grown = True
            if not grown:
                return

    def run(self, *, exhaustive: bool = True) -> None:
        """Measure every candidate (``exhaustive``), or only those the screen says can win (:meth:`settle`)."""
        if exhaustive:
            self.measure(c for group in self.groups for c in group)
        else:
            self.settle()

    def scores(self, *, bound: bool = False) -> dict[str, Tensor]:
        """The exact scores; unmeasured candidates ``-inf`` (``bound``: their estimate plus the margin)."""
        fill = {}
        if bound:
            est, margin = self.estimate(), self.margin()
            fill = {c: est[c] + margin for group in self.groups for c in group}
        out = {}
        for key in sorted({key for group in self.groups for key, _ in group}):
            out[key] = torch.full(tuple(self.alphas[key].shape), float("-inf"), dtype=torch.float64)
        for c, v in {**fill, **self.exact}.items():
            out[c[0]][c[1]] = v
        if isinstance(self.space, ChainSpec):
            for b in range(self.space.num_blocks):
                out[f"b{b}_width"] = self.alphas[f"b{b}_width"].detach().double()
        return out

    def candidates_of(self, genotype) -> list[Candidate]:
        """The candidates a genotype picked (one per node, or per chain block)."""
        if isinstance(self.space, ChainSpec):
            return [(f"b{b}_op", (self.space.candidates[b].index(op),)) for b, (op, _) in enumerate(genotype.blocks)]
        prims = self.space.primitives
        return [(kind, (edge_row(i, j), prims.index(op)))
                for kind in ("normal", "reduce") for j, (op, i) in enumerate(getattr(genotype, kind), start=1)]

    def close(self) -> None:
        self.bar.close()


def select_within_budget(p: Perturbation, alphas: dict, cfg):
    """The best-scoring genotype within ``cfg``'s budgets (:func:`fnas.cost.derive_within_budget`), measuring lazily.

    The knapsack runs over the exact scores and, for unmeasured candidates, their estimate plus
    the margin; the candidates it picks that are unmeasured get measured, and it runs again, until
    its pick is all exact. That pick is the exhaustive scores' pick when no unmeasured score
    exceeds its bound.
    """
    while True:
        genotype = cost.derive_within_budget(alphas, cfg, scores=p.scores(bound=True))
        missing = [c for c in p.candidates_of(genotype) if c not in p.exact]
        if not missing:
            return genotype
        p.measure(missing)


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

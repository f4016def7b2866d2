"""The expected cost of the architecture the alphas describe: differentiable in the alphas."""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch

from fnas.cost.counts import Metric, check_metric
from fnas.cost.tables import Tables, tables
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import pick_mask
from fnas.spaces.cell.topology import node_rows, space_of
from fnas.cost.chain import chain_of
from fnas.spaces.chain import expected_cost as chain_expected_cost

__all__ = ["Estimator", "check_alphas", "expected_cost"]

Tensor = torch.Tensor
Estimator = Literal["genotype", "supernet"]


def check_alphas(alphas: Mapping[str, Tensor], space: SpaceConfig, what: str = "alphas") -> None:
    """Raise ``ValueError`` unless ``alphas`` has ``normal``/``reduce`` tables of the space's shape."""
    expected = (space.num_edges, len(space.primitives))
    for kind in ("normal", "reduce"):
        got = tuple(alphas[kind].shape) if kind in alphas else "missing"
        if got != expected:
            raise ValueError(f"{what}[{kind!r}] must have shape {expected} for this space, got {got}")


def _pick_probs(alpha: Tensor, none: Tensor, nodes: int, tau: float) -> Tensor:
    """P_j(i, k): softmax over node j's non-none (edge, op) pairs of log softmax(alpha_ij)_k / tau."""
    scores = torch.log_softmax(alpha, dim=-1).masked_fill(none.to(alpha.device), float("-inf")) / tau
    blocks = []
    for j in range(1, nodes + 1):
        block = scores[node_rows(j)]  # (j incoming edges, K)
        blocks.append(torch.softmax(block.reshape(-1), dim=0).reshape(block.shape))
    return torch.cat(blocks)


def _hard_picks(alpha: Tensor, none: Tensor, nodes: int) -> Tensor:
    """One-hot ``(E, K)``: the pairs :func:`~fnas.spaces.cell.genotype.derive_genotype` keeps (same
    float64 softmax, same :func:`~fnas.spaces.cell.genotype.pick_mask`, so ties agree too)."""
    return pick_mask(torch.softmax(alpha.detach().double(), dim=-1), none, nodes).to(alpha.dtype)


def _probs(
    alphas: Mapping[str, Tensor], space: SpaceConfig, tabs: Tables, estimator: str, tau: float, straight_through: bool
) -> dict:
    if estimator == "supernet":
        return {kind: torch.softmax(alphas[kind], dim=-1) for kind in ("normal", "reduce")}
    probs = {kind: _pick_probs(alphas[kind], tabs.none, space.nodes, tau) for kind in ("normal", "reduce")}
    if straight_through:  # value: the derived genotype's picks; gradient: the soft picks'
        probs = {kind: _hard_picks(alphas[kind], tabs.none, space.nodes) + (p - p.detach()) for kind, p in probs.items()}
    return probs


def _sram_steps(probs: dict, tabs: Tables) -> Tensor:
    """Expected live elements of every kernel step of :func:`~fnas.cost.genotype_cost`'s schedule.

    Nodes pick independently: state ``i`` is held through node ``j`` with probability 1 if it is
    concatenated, else ``1 - prod_{m > j} (1 - P(node m reads i))``; each step's primitive buffers
    are averaged under the node's pick probabilities.
    """
    ref = probs["normal"]
    like = dict(dtype=ref.dtype, device=ref.device)
    n = tabs.node_rows.shape[0]
    steps = [tabs.fixed_steps[:1].to(**like)]
    for kind, tab in tabs.kinds.items():
        p = probs[kind]  # (E, K)
        reads = torch.zeros(n + 1, n + 2, **like)  # reads[i, m] = P(node m reads state i)
        reads = reads.index_put((tabs.edge_i.to(ref.device), tabs.edge_j.to(ref.device)), p.sum(-1))
        # P(state i is still needed after node j) = 1 - prod_{m > j} (1 - reads[i, m]); 1 if concatenated
        unread = torch.flip(torch.cumprod(torch.flip(1.0 - reads, [1]), dim=1), [1])  # prod_{m >= j}
        alive = torch.where(tabs.concat.to(ref.device)[:, None], 1.0, 1.0 - unread[:, 1:])  # (n+1, n+1)
        below = torch.ones(n + 1, n + 1, **like).triu(1)  # i < j
        sizes = tab.sizes.to(**like)  # (I, n + 1)
        held = sizes @ (alive * below)  # (I, n + 1): column j, states held through node j
        read = sizes @ (reads[:, : n + 1] * (1.0 - alive))  # the input, when freed after node j
        buffers = torch.einsum("rk,irks->irs", p, tab.scratch.to(**like))  # (I, E, S)
        buffers = torch.einsum("jr,irs->ijs", tabs.node_rows.to(**like), buffers)  # (I, n, S)
        live = held[:, 1:, None] + buffers
        live = torch.cat([live[..., :1] + read[:, 1:, None], live[..., 1:]], dim=-1)
        steps += [tab.pre.to(**like), live.reshape(-1)]
    steps.append(tabs.fixed_steps[1:].to(**like))
    return torch.cat(steps)


def _smooth_max(v: Tensor, tau: float) -> Tensor:
    """``s * logsumexp(v / s)``, ``s = tau * max(v)`` (detached): in ``[max v, max v + s log len(v)]``."""
    scale = v.detach().max() * tau
    return scale * torch.logsumexp(v / scale, dim=0)


def expected_cost(
    alphas: Mapping[str, Tensor],
    cfg: SpaceConfig | Any,
    *,
    metric: Metric,
    estimator: Estimator = "genotype",
    tau: float = 1.0,
    sram_tau: float = 0.01,
    straight_through: bool = False,
) -> Tensor:
    """The expected cost of the architecture the alphas describe; differentiable in ``alphas``.

    Fixed parts (input BN, stem, preprocessing, head) plus, per cell:

    - ``estimator="genotype"``: per node ``j``, the probability ``P_j(i, k)`` that the derived
      genotype keeps (edge ``i``, op ``k``): a softmax over the node's non-``none`` pairs of
      ``log softmax(alpha_ij)_k / tau``. ``derive_genotype`` takes the argmax of exactly these
      scores, so ``tau -> 0`` gives the derived genotype. Raising ``none`` cannot lower it (the
      genotype never keeps ``none``), only making cheap pairs the likely picks can;
    - ``estimator="supernet"`` (FBNet / ProxylessNAS): every edge's ``sum_k softmax(alpha)_k
      cost_k``, ``none`` costing 0: the supernet's expected mixed ops (a node keeps every edge).

    For ``"sram"`` the schedule's peak is the smooth maximum ``s logsumexp(v / s)``, ``s =
    sram_tau * max(v)`` (detached), over the expected live elements of every kernel step: at most
    ``s log(#steps)`` above the maximum, and exact as alphas become one-hot and ``sram_tau -> 0``.

    Args:
        alphas: ``{"normal", "reduce"}``, each ``(num_edges, len(primitives))``.
        cfg: the space, or a config holding it as ``.space``.
        metric: ``"params"``, ``"macs"`` or ``"sram"`` (peak activation elements = int8 bytes).
        estimator: ``"genotype"`` or ``"supernet"``; ``"sram"`` needs ``"genotype"``.
        tau: temperature of the genotype estimator's pick distribution (``-> 0``: the argmax).
        sram_tau: relative temperature of the smooth maximum over the SRAM schedule.
        straight_through: (genotype estimator) the value is that of the genotype
            :func:`~fnas.spaces.cell.genotype.derive_genotype` returns for these alphas (one-hot
            picks: its exact params / MACs, its SRAM peak up to the smooth maximum's slack), the
            gradient that of the soft picks at ``tau``.

    Returns:
        A 0-d tensor of the alphas' dtype.

    Raises:
        ValueError: unknown metric or estimator, a non-positive temperature, alphas of the wrong
            shape, or ``metric="sram"`` or ``straight_through=True`` with the supernet estimator.

    References:
        Wu et al. FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable NAS. CVPR 2019.
        Cai, Zhu, Han. ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware. ICLR 2019.
    """
    chain = chain_of(cfg)
    if chain is not None:  # one estimator: the chain's widths and ops are independent per block
        return chain_expected_cost(alphas, chain, metric=metric, sram_tau=sram_tau, straight_through=straight_through)
    space = space_of(cfg)
    check_metric(metric)
    if estimator not in ("genotype", "supernet"):
        raise ValueError(f"Unknown estimator {estimator!r}; expected 'genotype' or 'supernet'")
    if metric == "sram" and estimator == "supernet":
        raise ValueError(
            "metric='sram' is the peak of a genotype's schedule (one input per node); use estimator='genotype'"
        )
    if straight_through and estimator != "genotype":
        raise ValueError("straight_through=True needs estimator='genotype' (the derived genotype's picks)")
    if not tau > 0 or not sram_tau > 0:
        raise ValueError(f"tau and sram_tau must be positive, got tau={tau!r}, sram_tau={sram_tau!r}")
    check_alphas(alphas, space)
    tabs = tables(space)
    probs = _probs(alphas, space, tabs, estimator, tau, straight_through)
    if metric == "sram":
        return _smooth_max(_sram_steps(probs, tabs), sram_tau)
    total = torch.zeros((), dtype=probs["normal"].dtype, device=probs["normal"].device) + float(tabs.fixed[metric])
    for kind, tab in tabs.kinds.items():
        p = probs[kind]
        total = total + (p * getattr(tab, metric).to(dtype=p.dtype, device=p.device)).sum()
    return total

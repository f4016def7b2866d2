"""The mixed op: ``sum_k softmax(alpha)_k * op_k(x)`` over an edge's primitives (the hot loop).

``none`` is skipped (it contributes exact zeros). Pools are followed by an affine-free BatchNorm
when the space asks for it (DARTS does this in the search network so pool outputs are on the same
scale as the BN'd conv outputs).
"""

from __future__ import annotations

import torch

from fnas import layers as L
from fnas import primitives as P

Tensor = torch.Tensor


def init_mixed_op(
    gen: torch.Generator, C: int, stride: int, primitives: tuple[str, ...], *, pool_bn: bool, dtype: torch.dtype
) -> tuple[dict, dict]:
    """Params and stats of every primitive of one edge, keyed by primitive name."""
    params, stats = {}, {}
    for name in primitives:
        prim = P.get(name)
        p, s = prim.init(gen, C, stride, affine=False, dtype=dtype)
        if prim.family == "pool" and pool_bn:
            p, s = {}, {"bn": L.init_bn(C, affine=False, dtype=dtype)[1]}
        params[name], stats[name] = p, s
    return params, stats


def apply_mixed_op(
    params: dict,
    stats: dict,
    x: Tensor,
    weights: Tensor,
    *,
    primitives: tuple[str, ...],
    stride: int,
    train: bool,
    pool_bn: bool,
) -> tuple[Tensor | None, dict]:
    """``sum_k weights[k] * op_k(x)``; returns ``(y, new_stats)``.

    Args:
        weights: (len(primitives),) mixing weights, usually ``softmax(alpha_edge)``.

    Returns:
        ``y`` is None when every primitive is ``none`` (the edge contributes nothing).
    """
    out = None
    new_stats = {}
    for k, name in enumerate(primitives):
        prim = P.get(name)
        if prim.family == "none":
            new_stats[name] = stats[name]
            continue
        y, s = prim.apply(params[name], stats[name], x, stride=stride, train=train)
        if prim.family == "pool" and pool_bn:
            y, bn = L.apply_bn({}, stats[name]["bn"], y, train=train)
            s = {"bn": bn}
        new_stats[name] = s
        term = weights[k] * y
        out = term if out is None else out + term
    return out, new_stats

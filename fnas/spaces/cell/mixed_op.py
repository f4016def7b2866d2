"""The mixed op: ``sum_k softmax(alpha)_k * op_k(x)`` over an edge's primitives (the hot loop).

``none`` is skipped (it contributes exact zeros). Pools are followed by an affine-free BatchNorm
when the space asks for it (DARTS does this in the search network so pool outputs are on the same
scale as the BN'd conv outputs).
"""

from __future__ import annotations

from typing import Any

import torch

from fnas.core import layers as L
from fnas.spaces.primitives import get
from fnas.spaces.primitives.fused import ntec

Tensor = torch.Tensor


def init_mixed_op(
    gen: torch.Generator, C: int, stride: int, primitives: tuple[str, ...], *, pool_bn: bool, dtype: torch.dtype
) -> tuple[dict, dict]:
    """Params and stats of every primitive of one edge, keyed by primitive name."""
    params, stats = {}, {}
    for name in primitives:
        prim = get(name)
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
    sync: Any = None,
) -> tuple[Tensor | None, dict]:
    """``sum_k weights[k] * op_k(x)``; returns ``(y, new_stats)``.

    Args:
        weights: (len(primitives),) mixing weights, usually ``softmax(alpha_edge)``.
        sync: data-parallel BatchNorm (:mod:`fnas.core.collectives`) or None.

    Returns:
        ``y`` is None when every primitive is ``none`` (the edge contributes nothing).
    """
    out = None
    new_stats = {}
    for k, name in enumerate(primitives):
        prim = get(name)
        if prim.family == "none":
            new_stats[name] = stats[name]
            continue
        y, s = prim.run(params[name], stats[name], x, stride=stride, train=train, sync=sync)
        if prim.family == "pool" and pool_bn:
            y, bn = L.apply_bn({}, stats[name]["bn"], y, train=train, sync=sync)
            s = {"bn": bn}
        new_stats[name] = s
        term = weights[k] * y
        out = term if out is None else out + term
    return out, new_stats


# --- fused: every edge leaving one state in a few kernel calls ----------------------------------


def apply_edges_fused(
    params: list[dict],
    stats: list[dict],
    x: Tensor,
    weights: Tensor,
    *,
    primitives: tuple[str, ...],
    stride: int,
    train: bool,
    pool_bn: bool,
    sync: Any = None,
) -> tuple[list[Tensor], list[dict]]:
    """All mixed ops on the ``E`` edges that read the same state ``x``, batched by primitive.

    Equal to ``[apply_mixed_op(params[e], stats[e], x, weights[e], ...) for e in range(E)]`` (tested
    in float64). A primitive with a ``fused`` hook runs on all edges at once (convs with the ``E``
    edges' kernels stacked along the outputs, parameter-free ops once, shared); the per-edge mixing
    is a broadcast multiply-add in a ``(N, T, E, C)`` view of the channels_last output. Others run
    once per edge.

    Pools followed by DARTS' affine-free BatchNorm run once: the BatchNorm uses the first edge's
    running statistics and its new statistics are copied to every edge. The edges' statistics are
    identical by construction (same init, same inputs), so this changes nothing but the cost.

    Args:
        params, stats: per edge, the dicts :func:`init_mixed_op` built.
        x: the shared input, (N, C, T, 1) or (N, C, H, W), channels_last.
        weights: (E, len(primitives)) mixing weights.
        sync: data-parallel BatchNorm (:mod:`fnas.core.collectives`) or None.

    Returns:
        ``(outputs, new_stats)``, one entry per edge.
    """
    E = len(params)
    N, C = x.shape[:2]
    grid = L.subsample(x, stride).shape[2:]  # (T', W') of every output
    new_stats = [dict(s) for s in stats]
    acc = None  # (N, T', E, C) view of the mixed outputs
    extra: list[Tensor | None] = [None] * E  # primitives without a fused hook, added per edge

    def add(term: Tensor) -> None:
        nonlocal acc
        acc = term if acc is None else acc + term

    for k, name in enumerate(primitives):
        prim = get(name)
        w_k = weights[:, k]  # (E,)
        if prim.family == "none":
            continue
        if prim.family == "pool" and pool_bn:
            y, _ = prim.run({}, {}, x, stride=stride, train=train, sync=sync)
            y, bn = L.apply_bn({}, stats[0][name]["bn"], y, train=train, sync=sync)
            for e in range(E):  # copies, not aliases: aliased inputs make a compiled step recompile
                new_stats[e][name] = {"bn": bn if e == 0 else {k: v.clone() for k, v in bn.items()}}
            add(ntec(y, 1) * w_k[None, None, :, None])
        elif prim.fused is not None:
            term, edge_stats = prim.fused(
                [p[name] for p in params], [s[name] for s in stats], x, w_k, stride=stride, train=train, sync=sync
            )
            for e, s in enumerate(edge_stats):
                new_stats[e][name] = s
            add(term)
        else:
            for e in range(E):
                y, new_stats[e][name] = prim.run(
                    params[e][name], stats[e][name], x, stride=stride, train=train, sync=sync
                )
                term = w_k[e] * y
                extra[e] = term if extra[e] is None else extra[e] + term

    outs: list[Tensor] = []
    # unbind, not indexing: its backward is one stack instead of E zero-filled full-size buffers
    per_edge = acc.unbind(2) if acc is not None else [None] * E
    for e in range(E):
        out = None
        if per_edge[e] is not None:
            # (N, T'*W', C) slice of edge e -> (N, C, T', W') with channel stride 1 (channels_last-like)
            out = per_edge[e].reshape(N, *grid, C).permute(0, 3, 1, 2)
        if extra[e] is not None:
            out = extra[e] if out is None else out + extra[e]
        outs.append(out)
    return outs, new_stats

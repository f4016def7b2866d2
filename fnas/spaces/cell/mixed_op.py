"""The mixed op: ``sum_k softmax(alpha)_k * op_k(x)`` over an edge's primitives (the hot loop).

``none`` is skipped (it contributes exact zeros). Pools are followed by an affine-free BatchNorm
when the space asks for it (DARTS does this in the search network so pool outputs are on the same
scale as the BN'd conv outputs).
"""

from __future__ import annotations

import torch

from fnas.core import layers as L
from fnas.spaces import primitives as P

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


# --- fused: every edge leaving one state in a few kernel calls ----------------------------------


def _cat_stats(stats: list[dict]) -> tuple[Tensor, Tensor]:
    return torch.cat([s["running_mean"] for s in stats]), torch.cat([s["running_var"] for s in stats])


def _split_stats(mean: Tensor, var: Tensor, n: int) -> list[dict]:
    return [{"running_mean": m, "running_var": v} for m, v in zip(mean.chunk(n), var.chunk(n))]


def _ntec(y: Tensor, edges: int) -> Tensor:
    """(N, E*C, T, 1) channels_last -> its (N, T, E, C) view (no copy)."""
    n, ec, t, w = y.shape
    return y.permute(0, 2, 3, 1).reshape(n, t * w, edges, ec // edges)


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
) -> tuple[list[Tensor], list[dict]]:
    """All mixed ops on the ``E`` edges that read the same state ``x``, batched by primitive.

    Equal to ``[apply_mixed_op(params[e], stats[e], x, weights[e], ...) for e in range(E)]`` (tested
    in float64), but each conv primitive runs once with the ``E`` edges' kernels stacked along the
    output channels, their BatchNorms run as one, the parameter-free ops (pools and their
    affine-free BN, identity) run once and are shared by every edge, and the per-edge mixing is a
    broadcast multiply-add in a ``(N, T, E, C)`` view of the channels_last output.

    The pool BatchNorm is computed once with the first edge's running statistics and its new
    statistics are copied to every edge: the edges' statistics are identical by construction (same
    init, same inputs), so this changes nothing but the cost.

    Args:
        params, stats: per edge, the dicts :func:`init_mixed_op` built.
        x: the shared input, (N, C, T, 1) or (N, C, H, W), channels_last.
        weights: (E, len(primitives)) mixing weights.

    Returns:
        ``(outputs, new_stats)``, one entry per edge.
    """
    E = len(params)
    N, C = x.shape[:2]
    grid = L.subsample(x, stride).shape[2:]  # (T', W') of every output
    new_stats = [dict(s) for s in stats]
    acc = None  # (N, T', E, C) view of the mixed outputs
    extra: list[Tensor | None] = [None] * E  # generic primitives, added per edge

    def add(term: Tensor) -> None:
        nonlocal acc
        acc = term if acc is None else acc + term

    for k, name in enumerate(primitives):
        prim = P.get(name)
        w_k = weights[:, k]  # (E,)
        if prim.family == "none":
            continue
        if prim.fuse == "conv_bn_relu":
            kernel = torch.cat([params[e][name]["conv"]["weight"] for e in range(E)])  # (E*C, C, k, 1)
            y = L.apply_conv({"weight": kernel}, x, stride=stride)
            mean, var = _cat_stats([stats[e][name]["bn"] for e in range(E)])
            # w * relu(bn(y)) = relu(bn_w(y)) for w > 0 (softmax weights are): the mixing weight
            # rides in the BatchNorm's affine scale instead of costing a pass of its own.
            scale = w_k.repeat_interleave(C)
            y, mean, var = L.batch_norm(y, mean, var, scale, None, train=train)
            for e, s in enumerate(_split_stats(mean, var, E)):
                new_stats[e][name] = {"bn": s}
            add(_ntec(torch.relu(y), E))
        elif prim.family == "pool":
            y, _ = prim.apply({}, {}, x, stride=stride, train=train)
            if pool_bn:
                y, bn = L.apply_bn({}, stats[0][name]["bn"], y, train=train)
                for e in range(E):  # copies, not aliases: aliased inputs make a compiled step recompile
                    new_stats[e][name] = {"bn": bn if e == 0 else {k: v.clone() for k, v in bn.items()}}
            add(_ntec(y, 1) * w_k[None, None, :, None])
        elif prim.family == "skip" and stride == 1:
            add(_ntec(x, 1) * w_k[None, None, :, None])
        elif prim.family == "skip":  # factorized reduce, per edge kernels stacked
            r = torch.relu(x)
            w1 = torch.cat([params[e][name]["conv1"]["weight"] for e in range(E)])  # (E*C/2, C, 1, 1)
            w2 = torch.cat([params[e][name]["conv2"]["weight"] for e in range(E)])
            y1 = _ntec(L.apply_conv({"weight": w1}, r, stride=stride), E)
            y2 = _ntec(L.apply_conv({"weight": w2}, P.shifted_grid(r), stride=stride), E)
            y = torch.cat([y1, y2], dim=-1)  # (N, T', E, C): per edge [conv1 | conv2]
            y4 = y.reshape(N, *grid, E * C).permute(0, 3, 1, 2)  # channels_last (N, E*C, T', W')
            mean, var = _cat_stats([stats[e][name]["bn"] for e in range(E)])
            y4, mean, var = L.batch_norm(y4, mean, var, None, None, train=train)
            for e, s in enumerate(_split_stats(mean, var, E)):
                new_stats[e][name] = {"bn": s}
            add(_ntec(y4, E) * w_k[None, None, :, None])
        else:  # generic primitive: one call per edge
            for e in range(E):
                y, new_stats[e][name] = prim.apply(params[e][name], stats[e][name], x, stride=stride, train=train)
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

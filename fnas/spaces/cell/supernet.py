"""The search network as pure functions: ``init_supernet`` and ``apply_supernet`` over pytrees.

Semantics (DESIGN.md): optional input BN; stem conv (3x1 or 3x3) + BN to ``stem_multiplier * C``;
``layers`` single-input cells, the cells ``reduction_layers`` reduce (the seed's ``layers // 3`` and
``2 * layers // 3`` by default; channels double, edges leaving the cell input have stride 2); cell
input -> ReLU, 1x1 conv, BN -> state_0 (with ``preprocess="when_needed"``, only where the input's
channels differ from the cell's; elsewhere state_0 is the input); node ``j = sum_{i<j}
MixedOp_{i->j}(state_i)``; the cell output concatenates the last ``multiplier`` nodes; head: global
average pool, linear.

References:
    Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from fnas.core import layers as L
from fnas.spaces.cell.mixed_op import apply_edges_fused, apply_mixed_op, init_mixed_op
from fnas.spaces.cell.topology import (
    CellSpace,
    cell_plan,
    concat_range,
    edge_key,
    edge_row,
    edge_weights,
    preprocesses,
    space_of,
)

Tensor = torch.Tensor

__all__ = [
    "apply_cell_fused",
    "apply_cell_plain",
    "apply_preprocess",
    "apply_stem",
    "apply_supernet",
    "cell_plan",
    "edge_key",
    "edge_row",
    "edge_weights",
    "init_supernet",
    "partial_merge",
    "partial_split",
    "space_of",
]


def _k(cfg: CellSpace, k: int) -> tuple[int, int]:
    return L.kernel_shape(k, cfg.is_1d)


def init_supernet(
    cfg: CellSpace | Any, gen: torch.Generator, *, dtype: torch.dtype = torch.float32
) -> tuple[dict, dict, dict]:
    """Initialise ``(weights, alphas, stats)`` of the search network.

    Args:
        cfg: the space (or a search config holding it).
        gen: the only source of randomness.
        dtype: floating dtype of every leaf.

    Returns:
        ``weights`` (nested dict of tensors), ``alphas`` (``{"normal", "reduce"}``, each
        ``(num_edges, len(primitives))``, DARTS' ``1e-3 * randn``), and BatchNorm ``stats``.
    """
    cfg = space_of(cfg)
    weights: dict = {}
    stats: dict = {}
    if cfg.with_input_batchnorm:
        weights["input_bn"], stats["input_bn"] = L.init_bn(cfg.in_channels, affine=True, dtype=dtype)
    c_stem = cfg.stem_multiplier * cfg.C
    bn_p, bn_s = L.init_bn(c_stem, affine=True, dtype=dtype)
    weights["stem"] = {"conv": L.init_conv(gen, cfg.in_channels, c_stem, _k(cfg, 3), dtype=dtype), "bn": bn_p}
    stats["stem"] = {"bn": bn_s}
    weights["cells"], stats["cells"] = {}, {}
    for layer, (reduction, c_in, c) in enumerate(cell_plan(cfg)):
        cw: dict = {}
        cs: dict = {}
        if preprocesses(cfg.preprocess, c_in, c):  # else no "pre" entry: state_0 is the cell input
            bn_p, bn_s = L.init_bn(c, affine=False, dtype=dtype)
            cw["pre"] = {"conv": L.init_conv(gen, c_in, c, (1, 1), dtype=dtype), "bn": bn_p}
            cs["pre"] = {"bn": bn_s}
        cw["edges"], cs["edges"] = {}, {}
        for i, j in cfg.edges():
            stride = 2 if reduction and i == 0 else 1
            cw["edges"][edge_key(i, j)], cs["edges"][edge_key(i, j)] = init_mixed_op(
                gen, c // cfg.partial_channels, stride, cfg.primitives, pool_bn=cfg.pool_bn, dtype=dtype
            )
        weights["cells"][f"c{layer}"], stats["cells"][f"c{layer}"] = cw, cs
    c_last = cfg.multiplier * cell_plan(cfg)[-1][2]
    weights["head"] = L.init_linear(gen, c_last, cfg.num_classes, dtype=dtype)
    shape = (cfg.num_edges, len(cfg.primitives))
    alphas = {
        "normal": 1e-3 * torch.randn(shape, generator=gen, dtype=dtype),
        "reduce": 1e-3 * torch.randn(shape, generator=gen, dtype=dtype),
    }
    if cfg.partial_channels > 1:  # PC-DARTS edge normalisation weights
        alphas["edge_normal"] = 1e-3 * torch.randn(cfg.num_edges, generator=gen, dtype=dtype)
        alphas["edge_reduce"] = 1e-3 * torch.randn(cfg.num_edges, generator=gen, dtype=dtype)
    return weights, alphas, stats


def apply_stem(weights: dict, stats: dict, x: Tensor, *, train: bool, sync: Any = None) -> tuple[Tensor, dict]:
    """Input BN (when the weights have one: ``with_input_batchnorm``) and stem. Shared with NetworkCnn."""
    new: dict = {}
    if "input_bn" in weights:
        x, new["input_bn"] = L.apply_bn(weights["input_bn"], stats["input_bn"], x, train=train, sync=sync)
    x = L.apply_conv(weights["stem"]["conv"], x)
    x, bn = L.apply_bn(weights["stem"]["bn"], stats["stem"]["bn"], x, train=train, sync=sync)
    new["stem"] = {"bn": bn}
    return x, new


def apply_preprocess(weights: dict, stats: dict, x: Tensor, *, train: bool, sync: Any = None) -> tuple[Tensor, dict]:
    """ReLU -> 1x1 conv -> BN: a cell's input becomes its state_0."""
    x = L.apply_conv(weights["conv"], torch.relu(x))
    x, bn = L.apply_bn(weights["bn"], stats["bn"], x, train=train, sync=sync)
    return x, {"bn": bn}


def apply_supernet(
    weights: dict,
    alphas: dict,
    stats: dict,
    x: Tensor,
    *,
    cfg: CellSpace | Any,
    train: bool,
    sync: Any = None,
) -> tuple[Tensor, dict]:
    """Logits of the search network; a pure function.

    Args:
        weights, alphas, stats: the pytrees from :func:`init_supernet`.
        x: (N, in_channels, T, 1) or (N, in_channels, H, W).
        cfg: the space.
        train: BatchNorm uses batch statistics and returns updated running statistics.
        sync: data-parallel BatchNorm (a :mod:`fnas.core.collectives` sync object) or None.

    Returns:
        ``(logits (N, num_classes), new_stats)``; ``stats`` itself is never modified.
    """
    cfg = space_of(cfg)
    h, new_stats = apply_stem(weights, stats, L.to_layout(x), train=train, sync=sync)
    mix = {kind: torch.softmax(alphas[kind], dim=-1) for kind in ("normal", "reduce")}
    edge_mix = {kind: edge_weights(alphas[f"edge_{kind}"], cfg.nodes) for kind in ("normal", "reduce")} if (
        cfg.partial_channels > 1) else {"normal": None, "reduce": None}
    new_stats["cells"] = {}
    for layer, (reduction, _, _) in enumerate(cell_plan(cfg)):
        name = f"c{layer}"
        cw, cs = weights["cells"][name], stats["cells"][name]
        new_stats["cells"][name] = {}
        s0 = h
        if "pre" in cw:
            s0, new_stats["cells"][name]["pre"] = apply_preprocess(cw["pre"], cs["pre"], h, train=train, sync=sync)
        kind = "reduce" if reduction else "normal"
        cell = apply_cell_fused if cfg.fused else apply_cell_plain
        states, edge_stats = cell(cw["edges"], cs["edges"], s0, mix[kind], cfg=cfg, reduction=reduction, train=train,
                                  edge_w=edge_mix[kind], sync=sync)
        h = torch.cat([states[k] for k in concat_range(cfg.nodes, cfg.multiplier)], dim=1)
        new_stats["cells"][name]["edges"] = edge_stats
    logits = L.apply_linear(weights["head"], L.global_avg_pool(h))
    return logits, new_stats


def apply_cell_plain(
    params: dict, stats: dict, s0: Tensor, w: Tensor, *, cfg: CellSpace, reduction: bool, train: bool,
    edge_w: Tensor | None = None, sync: Any = None,
) -> tuple[list[Tensor], dict]:
    """A cell's nodes edge by edge, primitive by primitive: the reference implementation.

    Returns:
        ``(states, new_edge_stats)`` with ``states[0] = s0`` and ``states[j]`` node ``j``.
    """
    states = [s0]
    new: dict = {}
    for j in range(1, cfg.nodes + 1):
        node = None
        for i in range(j):
            key = edge_key(i, j)
            stride = 2 if reduction and i == 0 else 1
            xa, xb = partial_split(states[i], cfg.partial_channels, stride)
            y, new[key] = apply_mixed_op(
                params[key],
                stats[key],
                xa,
                w[edge_row(i, j)],
                primitives=cfg.primitives,
                stride=stride,
                train=train,
                pool_bn=cfg.pool_bn,
                sync=sync,
            )
            y = partial_merge(y, xa, xb, stride, None if edge_w is None else edge_w[edge_row(i, j)])
            if y is not None:
                node = y if node is None else node + y
        states.append(_zero_node(node, s0, reduction))
    return states, new


def apply_cell_fused(
    params: dict, stats: dict, s0: Tensor, w: Tensor, *, cfg: CellSpace, reduction: bool, train: bool,
    edge_w: Tensor | None = None, sync: Any = None,
) -> tuple[list[Tensor], dict]:
    """A cell's nodes source by source: when state ``i`` is known, every edge leaving it runs at once
    (:func:`fnas.spaces.cell.mixed_op.apply_edges_fused`) and adds into the partial sums of nodes ``i+1..n``.
    Same result as :func:`apply_cell_plain`.
    """
    n = cfg.nodes
    states = [s0]
    partial: list[Tensor | None] = [None] * (n + 1)
    new: dict = {}
    for i in range(n):
        targets = list(range(i + 1, n + 1))
        keys = [edge_key(i, j) for j in targets]
        stride = 2 if reduction and i == 0 else 1
        xa, xb = partial_split(states[i], cfg.partial_channels, stride)
        outs, edge_stats = apply_edges_fused(
            [params[k] for k in keys],
            [stats[k] for k in keys],
            xa,
            w[[edge_row(i, j) for j in targets]],
            primitives=cfg.primitives,
            stride=stride,
            train=train,
            pool_bn=cfg.pool_bn,
            sync=sync,
        )
        for j, key, out, st in zip(targets, keys, outs, edge_stats):
            new[key] = st
            out = partial_merge(out, xa, xb, stride, None if edge_w is None else edge_w[edge_row(i, j)])
            if out is not None:
                partial[j] = out if partial[j] is None else partial[j] + out
        states.append(_zero_node(partial[i + 1], s0, reduction))
    return states, new


def partial_split(x: Tensor, K: int, stride: int) -> tuple[Tensor, Tensor | None]:
    """PC-DARTS: the first ``C/K`` channels go through the mixed op, the rest bypass it (max-pooled
    2x when the edge is strided; ceil mode, so the grid matches the ops' ``ceil(T / 2)``).

    References:
        Xu et al. PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search. ICLR 2020.
    """
    if K == 1:
        return x, None
    c = x.shape[1] // K
    xa, xb = x[:, :c], x[:, c:]
    if stride > 1:
        window = (2, 1) if x.shape[-1] == 1 else (2, 2)
        xb = torch.nn.functional.max_pool2d(xb, window, window, ceil_mode=True)
    return xa, xb


def partial_merge(y: Tensor | None, xa: Tensor, xb: Tensor | None, stride: int, edge_w: Tensor | None) -> Tensor | None:
    """PC-DARTS: concatenate the mixed op's output with the bypass channels, shuffle the channels
    (groups of K interleave, so the next edge sees a different 1/K), weight by the edge weight."""
    if xb is None:
        return y
    if y is None:
        y = L.subsample(xa, stride) * 0.0
    K = (y.shape[1] + xb.shape[1]) // y.shape[1]
    out = rearrange(torch.cat([y, xb], dim=1), "n (g c) h w -> n (c g) h w", g=K)
    return out * edge_w


def _zero_node(node: Tensor | None, s0: Tensor, reduction: bool) -> Tensor:
    # a node whose every edge is `none` is zero (on the reduced grid in reduction cells)
    return node if node is not None else L.subsample(s0, 2 if reduction else 1) * 0.0

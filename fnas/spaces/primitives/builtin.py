"""The built-in primitives: the seed's kx1 set, wider kx1 ops and the DARTS 2D set, each one ``register`` call.

References:
    Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019 (the 2D set and the
    sep/dil conv, factorized-reduce designs).
"""

from __future__ import annotations

from typing import Callable

import torch

from fnas.core import layers as L
from fnas.spaces.primitives.fused import cat_stats, ntec, split_stats
from fnas.spaces.primitives.registry import Kind, OpCost, Primitive, Shape, out_grid, register

Tensor = torch.Tensor

__all__ = ["DARTS_2D", "KX1_EXTRA", "KX1_WIDE", "LEAN_KX1", "SEED_KX1", "shifted_grid"]

# The seed's PRIMITIVES_CNN (its commented entries are registered too, see KX1_EXTRA).
SEED_KX1 = (
    "none",
    "avg_pool_3x1",
    "max_pool_3x1",
    "skip_connect",
    "conv_bn_relu_3x1",
    "conv_bn_relu_5x1",
    "conv_bn_relu_7x1",
)
KX1_EXTRA = ("sep_conv_3x1", "sep_conv_5x1", "sep_conv_7x1", "dil_conv_3x1", "dil_conv_5x1")
# Wider separable kernels beyond the seed: receptive fields of 13-17 steps for about C^2 weights.
KX1_WIDE = ("sep_conv_9x1", "dil_conv_7x1", "dil_conv_9x1")
# A kx1 set for small budgets. A dense conv_bn_relu_kx1 costs k C^2 weights for a receptive field of
# k; a depthwise-separable op costs about C^2 + k C whatever k (C^2 + 9 C for dil_conv_7x1's field of
# 13), so at T = 128 the wide fields come from the separable and dilated ops. conv_bn_relu_3x1 stays
# as the one dense mixer; skip and max pool are free (skip searches depth); the 5/7 dense convs, the
# avg pool and the small separable kernels are left out: each has a cheaper or wider stand-in here.
LEAN_KX1 = (
    "none",
    "skip_connect",
    "max_pool_3x1",
    "conv_bn_relu_3x1",
    "sep_conv_5x1",  # two stacked depthwise 5s: field 9
    "sep_conv_9x1",  # field 17
    "dil_conv_5x1",  # field 9 for C^2 + 7 C
    "dil_conv_9x1",  # field 17 for C^2 + 11 C
)
DARTS_2D = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


# --- shared pieces ---------------------------------------------------------------------------


def _no_params(gen, C, stride, *, affine, dtype):
    return {}, {}


def _bn_params(C: int, affine: bool) -> int:
    return 2 * C if affine else 0


def _free_cost(C: int, stride: int, shape: Shape, *, kx1: bool, affine: bool) -> OpCost:
    """Parameter-free, MAC-free ops (none, pools): one output buffer."""
    out = out_grid(shape, stride, kx1)
    y = C * out[0] * out[1]
    return OpCost(0, 0, y, out, (y,))


def _shared(apply: Callable) -> Callable:
    """Fused hook of a parameter-free op: run once, shared by every edge, mixed per edge."""

    def fused(params, stats, x, w, *, stride, train, sync=None):
        y, _ = apply({}, {}, x, stride=stride, train=train)
        return ntec(y, 1) * w[None, None, :, None], [dict(s) for s in stats]

    return fused


def _edge_bn_affine(bn_params: list[dict], w: Tensor, C: int) -> tuple[Tensor, Tensor | None]:
    """Per-channel scale and bias that put the mixing weight into E BatchNorms' affine transform.

    ``w * relu(g z + b) = relu(w g z + w b)`` for ``w > 0`` (softmax weights are); without affine
    parameters (the search network) only the scale ``w`` remains.
    """
    scale = w.repeat_interleave(C)
    if not bn_params[0]:
        return scale, None
    return scale * torch.cat([p["weight"] for p in bn_params]), scale * torch.cat([p["bias"] for p in bn_params])


# --- none, pools -----------------------------------------------------------------------------


def _none_apply(params, stats, x, *, stride, train, sync=None):
    return L.subsample(x, stride) * 0.0, stats


def _make_pool(name: str, k: int, kind: Kind, op: Callable) -> Primitive:
    def apply(params, stats, x, *, stride, train, sync=None):
        return op(x, k, stride), stats

    return Primitive(name, _no_params, apply, kind, "pool", k, cost=_free_cost, fused=_shared(apply))


# --- skip_connect: identity, or the factorized reduce when strided ------------------------------


def shifted_grid(x: Tensor) -> Tensor:
    """``x`` moved one step back along T (and W in 2D), zero-filled: the factorized reduce's odd grid."""
    if x.shape[-1] == 1:
        return torch.nn.functional.pad(x[:, :, 1:, :], (0, 0, 0, 1))
    return torch.nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))


def _skip_init(gen, C, stride, *, affine, dtype):
    if stride == 1:
        return {}, {}
    if C % 2:
        raise ValueError(f"skip_connect with stride 2 (factorized reduce) needs an even channel count, got C={C}")
    # Factorized reduce: two 1x1 convs on offset grids, so no input position is dropped.
    bn_p, bn_s = L.init_bn(C, affine=affine, dtype=dtype)
    params = {
        "conv1": L.init_conv(gen, C, C // 2, (1, 1), dtype=dtype),
        "conv2": L.init_conv(gen, C, C // 2, (1, 1), dtype=dtype),
        "bn": bn_p,
    }
    return params, {"bn": bn_s}


def _reduce_convs(w1: Tensor, w2: Tensor, x: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """The factorized reduce's two 1x1 convs (``E`` edges' kernels may be stacked along the outputs)."""
    r = torch.relu(x)
    return L.apply_conv({"weight": w1}, r, stride=stride), L.apply_conv({"weight": w2}, shifted_grid(r), stride=stride)


def _skip_apply(params, stats, x, *, stride, train, sync=None):
    if stride == 1:
        return x, stats
    y1, y2 = _reduce_convs(params["conv1"]["weight"], params["conv2"]["weight"], x, stride)
    y, bn = L.apply_bn(params["bn"], stats["bn"], torch.cat([y1, y2], dim=1), train=train, sync=sync)
    return y, {"bn": bn}


def _skip_fused(params, stats, x, w, *, stride, train, sync=None):
    if stride == 1:
        return ntec(x, 1) * w[None, None, :, None], [dict(s) for s in stats]
    E, (N, C) = len(params), x.shape[:2]
    w1 = torch.cat([p["conv1"]["weight"] for p in params])  # (E*C/2, C, 1, 1)
    w2 = torch.cat([p["conv2"]["weight"] for p in params])
    y1, y2 = _reduce_convs(w1, w2, x, stride)
    y = torch.cat([ntec(y1, E), ntec(y2, E)], dim=-1)  # (N, T'W', E, C): per edge [conv1 | conv2]
    y4 = y.reshape(N, *y1.shape[2:], E * C).permute(0, 3, 1, 2)  # channels_last (N, E*C, T', W')
    mean, var = cat_stats([s["bn"] for s in stats])
    bn_params = [p["bn"] for p in params]
    weight = torch.cat([p["weight"] for p in bn_params]) if bn_params[0] else None
    bias = torch.cat([p["bias"] for p in bn_params]) if bn_params[0] else None
    y4, mean, var = L.batch_norm(y4, mean, var, weight, bias, train=train, sync=sync)
    return ntec(y4, E) * w[None, None, :, None], [{"bn": s} for s in split_stats(mean, var, E)]


def _skip_cost(C: int, stride: int, shape: Shape, *, kx1: bool, affine: bool) -> OpCost:
    out = out_grid(shape, stride, kx1)
    a = out[0] * out[1]
    y = C * a
    if stride == 1:  # identity; copied into the node's buffer
        return OpCost(0, 0, y, out, (y,))
    if C % 2:
        raise ValueError(f"skip_connect with stride 2 (factorized reduce) needs an even C, got C={C}")
    # two 1x1 convs C -> C/2 on offset grids: 2 (C/2) C weights; each C/2 * a * C MACs
    return OpCost(C * C + _bn_params(C, affine), C * C * a, y, out, (y,))


# --- convolutions ----------------------------------------------------------------------------


def _kernel_elems(k: int, kx1: bool) -> int:
    return k if kx1 else k * k


def _make_conv_bn_relu(name: str, k: int, kind: Kind) -> Primitive:
    """conv kx1 -> BN -> ReLU (the seed's ConvBNReLU order)."""

    def init(gen, C, stride, *, affine, dtype):
        bn_p, bn_s = L.init_bn(C, affine=affine, dtype=dtype)
        return {"conv": L.init_conv(gen, C, C, L.kernel_shape(k, kind == "1d"), dtype=dtype), "bn": bn_p}, {"bn": bn_s}

    def apply(params, stats, x, *, stride, train, sync=None):
        y = L.apply_conv(params["conv"], x, stride=stride)
        y, bn = L.apply_bn(params["bn"], stats["bn"], y, train=train, sync=sync)
        return torch.relu(y), {"bn": bn}

    def fused(params, stats, x, w, *, stride, train, sync=None):
        # the E edges' kernels stacked along the outputs: one conv, one BN
        E, C = len(params), x.shape[1]
        kernel = torch.cat([p["conv"]["weight"] for p in params])  # (E*C, C, k, 1)
        y = L.apply_conv({"weight": kernel}, x, stride=stride)
        mean, var = cat_stats([s["bn"] for s in stats])
        # the mixing weight rides in the BatchNorm's affine scale instead of costing a pass of its own
        scale, bias = _edge_bn_affine([p["bn"] for p in params], w, C)
        y, mean, var = L.batch_norm(y, mean, var, scale, bias, train=train, sync=sync)
        return ntec(torch.relu(y), E), [{"bn": s} for s in split_stats(mean, var, E)]

    def cost(C, stride, shape, *, kx1, affine):
        out = out_grid(shape, stride, kx1)
        y, kk = C * out[0] * out[1], _kernel_elems(k, kx1)
        return OpCost(C * C * kk + _bn_params(C, affine), y * C * kk, y, out, (y,))

    return Primitive(name, init, apply, kind, "conv", k, cost=cost, fused=fused)


def _make_sep_conv(name: str, k: int, kind: Kind) -> Primitive:
    """DARTS SepConv: (ReLU, depthwise k, pointwise, BN) twice; the first depthwise is strided."""

    def init(gen, C, stride, *, affine, dtype):
        params, stats = {}, {}
        for i in (1, 2):
            bn_p, bn_s = L.init_bn(C, affine=affine, dtype=dtype)
            params[f"dw{i}"] = L.init_conv(gen, C, C, L.kernel_shape(k, kind == "1d"), groups=C, dtype=dtype)
            params[f"pw{i}"] = L.init_conv(gen, C, C, L.kernel_shape(1, kind == "1d"), dtype=dtype)
            params[f"bn{i}"] = bn_p
            stats[f"bn{i}"] = bn_s
        return params, stats

    def apply(params, stats, x, *, stride, train, sync=None):
        C = x.shape[1]
        new = {}
        for i, s in ((1, stride), (2, 1)):
            x = torch.relu(x)
            x = L.apply_conv(params[f"dw{i}"], x, stride=s, groups=C)
            x = L.apply_conv(params[f"pw{i}"], x)
            x, new[f"bn{i}"] = L.apply_bn(params[f"bn{i}"], stats[f"bn{i}"], x, train=train, sync=sync)
        return x, new

    def cost(C, stride, shape, *, kx1, affine):
        out = out_grid(shape, stride, kx1)
        y, kk = C * out[0] * out[1], _kernel_elems(k, kx1)
        # kernel steps dw, pw, dw, pw: each reads one buffer and writes one
        return OpCost(2 * (C * kk + C * C + _bn_params(C, affine)), 2 * y * (kk + C), y, out, (y, 2 * y, 2 * y, 2 * y))

    return Primitive(name, init, apply, kind, "conv", k, cost=cost)


def _make_dil_conv(name: str, k: int, kind: Kind) -> Primitive:
    """DARTS DilConv: ReLU, depthwise k with dilation 2 (strided), pointwise, BN."""

    def init(gen, C, stride, *, affine, dtype):
        bn_p, bn_s = L.init_bn(C, affine=affine, dtype=dtype)
        params = {
            "dw": L.init_conv(gen, C, C, L.kernel_shape(k, kind == "1d"), groups=C, dtype=dtype),
            "pw": L.init_conv(gen, C, C, L.kernel_shape(1, kind == "1d"), dtype=dtype),
            "bn": bn_p,
        }
        return params, {"bn": bn_s}

    def apply(params, stats, x, *, stride, train, sync=None):
        C = x.shape[1]
        x = torch.relu(x)
        x = L.apply_conv(params["dw"], x, stride=stride, dilation=2, groups=C)
        x = L.apply_conv(params["pw"], x)
        x, bn = L.apply_bn(params["bn"], stats["bn"], x, train=train, sync=sync)
        return x, {"bn": bn}

    def cost(C, stride, shape, *, kx1, affine):
        out = out_grid(shape, stride, kx1)
        y, kk = C * out[0] * out[1], _kernel_elems(k, kx1)
        return OpCost(C * kk + C * C + _bn_params(C, affine), y * (kk + C), y, out, (y, 2 * y))

    return Primitive(name, init, apply, kind, "conv", k, cost=cost)


register(Primitive("none", _no_params, _none_apply, "any", "none", cost=_free_cost))
register(Primitive("skip_connect", _skip_init, _skip_apply, "any", "skip", cost=_skip_cost, fused=_skip_fused))
for _kind, _suffix in (("1d", "x1"), ("2d", "x3")):
    register(_make_pool(f"avg_pool_3{_suffix}", 3, _kind, L.avg_pool))
    register(_make_pool(f"max_pool_3{_suffix}", 3, _kind, L.max_pool))
for _k in (3, 5, 7):
    register(_make_conv_bn_relu(f"conv_bn_relu_{_k}x1", _k, "1d"))
for _k in (3, 5, 7, 9):
    register(_make_sep_conv(f"sep_conv_{_k}x1", _k, "1d"))
    register(_make_dil_conv(f"dil_conv_{_k}x1", _k, "1d"))
for _k in (3, 5):
    register(_make_sep_conv(f"sep_conv_{_k}x{_k}", _k, "2d"))
    register(_make_dil_conv(f"dil_conv_{_k}x{_k}", _k, "2d"))

"""Primitive registry: name -> pure ``init`` / ``apply`` pair; the seed's kx1 set and the DARTS 2D set.

A primitive maps ``C`` channels to ``C`` channels with a given stride. ``init(gen, C, stride, *,
affine, dtype) -> (params, stats)`` and ``apply(params, stats, x, *, stride, train) -> (y, stats)``.
Users add their own with :func:`register`, or the seed's way with an ``OPS`` entry in
:mod:`fnas.operations` (an ``nn.Module`` factory, run through ``torch.func.functional_call``).

References:
    Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019 (the 2D set and the
    sep/dil conv, factorized-reduce designs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from fnas.core import layers as L

Tensor = torch.Tensor
Kind = Literal["1d", "2d", "any"]

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


@dataclass(frozen=True)
class Primitive:
    """One candidate operation of a mixed op.

    Attributes:
        name: registry key.
        init: ``(gen, C, stride, *, affine, dtype) -> (params, stats)``.
        apply: ``(params, stats, x, *, stride, train) -> (y, stats)``.
        kind: ``"1d"`` for kx1 primitives, ``"2d"`` for kxk ones, ``"any"`` for both.
        family: ``"none"``, ``"skip"``, ``"pool"`` or ``"conv"``; the mixed op uses it to skip
            ``none``, to add DARTS' BatchNorm after pools, and to fuse convolutions.
        kernel: spatial kernel length (convs and pools), 0 otherwise.
        module: for primitives adapted from an ``nn.Module`` factory, that factory.
        fuse: ``"conv_bn_relu"`` marks a dense conv -> affine-free BN -> ReLU that the fused
            mixed op may batch across edges; None for primitives run one call per edge.
    """

    name: str
    init: Callable
    apply: Callable
    kind: Kind = "any"
    family: str = "conv"
    kernel: int = 0
    module: Callable | None = None
    fuse: str | None = None


_REGISTRY: dict[str, Primitive] = {}


def register(primitive: Primitive, *, overwrite: bool = False) -> Primitive:
    """Add a primitive to the registry.

    Raises:
        ValueError: the name is taken and ``overwrite`` is False, or ``kind`` is not recognised.
    """
    if primitive.kind not in ("1d", "2d", "any"):
        raise ValueError(f"Primitive kind must be '1d', '2d' or 'any', got {primitive.kind!r}")
    if primitive.name in _REGISTRY and not overwrite:
        raise ValueError(f"Primitive {primitive.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[primitive.name] = primitive
    return primitive


def names() -> list[str]:
    """All names usable in a search space: registered primitives and seed-style ``OPS`` entries."""
    from fnas.spaces.primitives import modules as operations

    return sorted(set(_REGISTRY) | set(operations.OPS))


def get(name: str) -> Primitive:
    """Look a primitive up by name, adapting a seed-style ``OPS`` module factory if needed.

    Raises:
        ValueError: ``name`` is neither registered nor in ``fnas.spaces.primitives.modules.OPS``.
    """
    from fnas.spaces.primitives import modules as operations

    if name in _REGISTRY and operations.is_builtin(name):
        return _REGISTRY[name]
    if name in operations.OPS:  # a user's nn.Module factory (new, or overriding a built-in)
        return operations.adapted(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ValueError(
        f"Unknown primitive {name!r}; expected one of {names()}. Register a new one with "
        "fnas.spaces.primitives.register(...) or add an nn.Module factory to fnas.spaces.primitives.modules.OPS."
    )


# --- built-in primitives ---------------------------------------------------------------------


def _kernel(k: int, kind: Kind) -> tuple[int, int]:
    return L.kernel_shape(k, kind == "1d")


def _none_init(gen, C, stride, *, affine, dtype):
    return {}, {}


def _none_apply(params, stats, x, *, stride, train):
    return L.subsample(x, stride) * 0.0, stats


def _make_pool(name: str, k: int, kind: Kind, op: Callable) -> Primitive:
    def apply(params, stats, x, *, stride, train):
        return op(x, k, stride), stats

    return Primitive(name, _none_init, apply, kind, "pool", k)


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


def shifted_grid(x: Tensor) -> Tensor:
    """``x`` moved one step back along T (and W in 2D), zero-filled: the factorized reduce's odd grid."""
    if x.shape[-1] == 1:
        return torch.nn.functional.pad(x[:, :, 1:, :], (0, 0, 0, 1))
    return torch.nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))


def _skip_apply(params, stats, x, *, stride, train):
    if stride == 1:
        return x, stats
    x = torch.relu(x)
    y1 = L.apply_conv(params["conv1"], x, stride=stride)
    y2 = L.apply_conv(params["conv2"], shifted_grid(x), stride=stride)
    y = torch.cat([y1, y2], dim=1)
    y, bn = L.apply_bn(params["bn"], stats["bn"], y, train=train)
    return y, {"bn": bn}


def _make_conv_bn_relu(name: str, k: int, kind: Kind) -> Primitive:
    """conv kx1 -> BN -> ReLU (the seed's ConvBNReLU order)."""

    def init(gen, C, stride, *, affine, dtype):
        bn_p, bn_s = L.init_bn(C, affine=affine, dtype=dtype)
        return {"conv": L.init_conv(gen, C, C, _kernel(k, kind), dtype=dtype), "bn": bn_p}, {"bn": bn_s}

    def apply(params, stats, x, *, stride, train):
        y = L.apply_conv(params["conv"], x, stride=stride)
        y, bn = L.apply_bn(params["bn"], stats["bn"], y, train=train)
        return torch.relu(y), {"bn": bn}

    return Primitive(name, init, apply, kind, "conv", k, fuse="conv_bn_relu")


def _make_sep_conv(name: str, k: int, kind: Kind) -> Primitive:
    """DARTS SepConv: (ReLU, depthwise k, pointwise, BN) twice; the first depthwise is strided."""

    def init(gen, C, stride, *, affine, dtype):
        params, stats = {}, {}
        for i in (1, 2):
            bn_p, bn_s = L.init_bn(C, affine=affine, dtype=dtype)
            params[f"dw{i}"] = L.init_conv(gen, C, C, _kernel(k, kind), groups=C, dtype=dtype)
            params[f"pw{i}"] = L.init_conv(gen, C, C, _kernel(1, kind), dtype=dtype)
            params[f"bn{i}"] = bn_p
            stats[f"bn{i}"] = bn_s
        return params, stats

    def apply(params, stats, x, *, stride, train):
        C = x.shape[1]
        new = {}
        for i, s in ((1, stride), (2, 1)):
            x = torch.relu(x)
            x = L.apply_conv(params[f"dw{i}"], x, stride=s, groups=C)
            x = L.apply_conv(params[f"pw{i}"], x)
            x, new[f"bn{i}"] = L.apply_bn(params[f"bn{i}"], stats[f"bn{i}"], x, train=train)
        return x, new

    return Primitive(name, init, apply, kind, "conv", k)


def _make_dil_conv(name: str, k: int, kind: Kind) -> Primitive:
    """DARTS DilConv: ReLU, depthwise k with dilation 2 (strided), pointwise, BN."""

    def init(gen, C, stride, *, affine, dtype):
        bn_p, bn_s = L.init_bn(C, affine=affine, dtype=dtype)
        params = {
            "dw": L.init_conv(gen, C, C, _kernel(k, kind), groups=C, dtype=dtype),
            "pw": L.init_conv(gen, C, C, _kernel(1, kind), dtype=dtype),
            "bn": bn_p,
        }
        return params, {"bn": bn_s}

    def apply(params, stats, x, *, stride, train):
        C = x.shape[1]
        x = torch.relu(x)
        x = L.apply_conv(params["dw"], x, stride=stride, dilation=2, groups=C)
        x = L.apply_conv(params["pw"], x)
        x, bn = L.apply_bn(params["bn"], stats["bn"], x, train=train)
        return x, {"bn": bn}

    return Primitive(name, init, apply, kind, "conv", k)


register(Primitive("none", _none_init, _none_apply, "any", "none"))
register(Primitive("skip_connect", _skip_init, _skip_apply, "any", "skip"))
for _kind, _suffix in (("1d", "x1"), ("2d", "x3")):
    register(_make_pool(f"avg_pool_3{_suffix}", 3, _kind, L.avg_pool))
    register(_make_pool(f"max_pool_3{_suffix}", 3, _kind, L.max_pool))
for _k in (3, 5, 7):
    register(_make_conv_bn_relu(f"conv_bn_relu_{_k}x1", _k, "1d"))
    register(_make_sep_conv(f"sep_conv_{_k}x1", _k, "1d"))
for _k in (3, 5):
    register(_make_dil_conv(f"dil_conv_{_k}x1", _k, "1d"))
    register(_make_sep_conv(f"sep_conv_{_k}x{_k}", _k, "2d"))
    register(_make_dil_conv(f"dil_conv_{_k}x{_k}", _k, "2d"))

"""Stateless layers: ``init_*(gen, ...)`` builds a params dict, ``apply_*`` runs it.

Tensors are ``(N, C, T)`` in kx1 (time-series) spaces and ``(N, C, H, W)`` in 2D spaces; the
functions dispatch on ``x.ndim``. 1D kernels are ~2x faster than NCHW ``conv2d`` with a (k, 1)
kernel on CPU and ~40x faster for pooling (see bench/), which is why kx1 spaces drop the unit width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

BN_MOMENTUM = 0.1  # torch.nn.BatchNorm default, as in DARTS
BN_EPS = 1e-5


def _uniform(gen: torch.Generator, shape: tuple[int, ...], bound: float, dtype: torch.dtype) -> Tensor:
    return (torch.rand(shape, generator=gen, dtype=dtype) * 2.0 - 1.0) * bound


def init_conv(
    gen: torch.Generator,
    c_in: int,
    c_out: int,
    kernel: tuple[int, ...],
    *,
    groups: int = 1,
    bias: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Conv weights ``(c_out, c_in // groups, *kernel)`` with torch's default init.

    ``kernel`` has one entry for 1D convolutions and two for 2D ones. Torch's default
    (kaiming-uniform with a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    fan_in = (c_in // groups) * math.prod(kernel)
    bound = 1.0 / math.sqrt(fan_in)
    params = {"weight": _uniform(gen, (c_out, c_in // groups, *kernel), bound, dtype)}
    if bias:
        params["bias"] = _uniform(gen, (c_out,), bound, dtype)
    return params


def apply_conv(
    params: dict[str, Tensor],
    x: Tensor,
    *,
    stride: int = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int = 1,
    groups: int = 1,
) -> Tensor:
    """Convolution of ``x`` (N, C, T) or (N, C, H, W) with ``params["weight"]``."""
    conv = F.conv1d if x.ndim == 3 else F.conv2d
    return conv(x, params["weight"], params.get("bias"), stride, padding, dilation, groups)


def init_bn(
    c: int, *, affine: bool, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """BatchNorm: ``(params, stats)``; params are empty when ``affine`` is False."""
    params = {"weight": torch.ones(c, dtype=dtype), "bias": torch.zeros(c, dtype=dtype)} if affine else {}
    stats = {"running_mean": torch.zeros(c, dtype=dtype), "running_var": torch.ones(c, dtype=dtype)}
    return params, stats


def apply_bn(
    params: dict[str, Tensor], stats: dict[str, Tensor], x: Tensor, *, train: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """BatchNorm over all but the channel axis; returns ``(y, new_stats)``.

    ``F.batch_norm`` updates the running statistics it is handed in place (even under
    ``torch.func`` transforms), so it gets fresh clones and the clones come back as the new stats.
    """
    weight, bias = params.get("weight"), params.get("bias")
    if not train:
        y = F.batch_norm(x, stats["running_mean"], stats["running_var"], weight, bias, False, 0.0, BN_EPS)
        return y, stats
    mean, var = stats["running_mean"].clone(), stats["running_var"].clone()
    y = F.batch_norm(x, mean, var, weight, bias, True, BN_MOMENTUM, BN_EPS)
    return y, {"running_mean": mean, "running_var": var}


def max_pool(x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """Max pooling with a square (2D) or length-``kernel`` (1D) window."""
    pool = F.max_pool1d if x.ndim == 3 else F.max_pool2d
    return pool(x, kernel, stride, padding)


def avg_pool(x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """Average pooling that ignores the zero padding (as DARTS does)."""
    pool = F.avg_pool1d if x.ndim == 3 else F.avg_pool2d
    return pool(x, kernel, stride, padding, count_include_pad=False)


def init_linear(gen: torch.Generator, c_in: int, c_out: int, *, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Linear layer ``(c_out, c_in)`` with torch's default init."""
    bound = 1.0 / math.sqrt(c_in)
    return {"weight": _uniform(gen, (c_out, c_in), bound, dtype), "bias": _uniform(gen, (c_out,), bound, dtype)}


def apply_linear(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``x @ W.T + b``."""
    return F.linear(x, params["weight"], params["bias"])


def global_avg_pool(x: Tensor) -> Tensor:
    """(N, C, *spatial) -> (N, C)."""
    return x.flatten(2).mean(-1)


def subsample(x: Tensor, stride: int) -> Tensor:
    """Every ``stride``-th position along the spatial axes (the output grid of a strided op)."""
    if stride == 1:
        return x
    return x[..., ::stride] if x.ndim == 3 else x[..., ::stride, ::stride]

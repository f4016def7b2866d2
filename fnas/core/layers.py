"""Stateless layers: ``init_*(gen, ...)`` builds a params dict, ``apply_*`` runs it.

Every activation is a 4-D ``(N, C, T, 1)`` (kx1 spaces) or ``(N, C, H, W)`` tensor, kept in
``torch.channels_last`` memory format: on CPU a (k, 1) convolution is ~3.5x faster and a (3, 1)
max-pool ~4x faster (forward + backward) in channels_last than in NCHW, and faster than their
``conv1d``/``max_pool1d`` forms once gradients are needed (measured in bench/). kx1 weights are
``(out, in, k, 1)``, the seed's own layout. A tensor of unit width is treated as kx1: strides and
pooling windows become ``(s, 1)`` and ``(k, 1)``.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class Sync(Protocol):
    """What training-mode BatchNorm needs from a data-parallel context (:class:`fnas.core.collectives.Sync`).

    Declared here so that layers imports nothing of collectives (which imports this module).
    """

    def batch_norm(
        self, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]: ...

BN_MOMENTUM = 0.1  # torch.nn.BatchNorm default, as in DARTS
BN_EPS = 1e-5
CHANNELS_LAST = torch.channels_last


def kernel_shape(k: int, kx1: bool) -> tuple[int, int]:
    """``(k, 1)`` in kx1 spaces, ``(k, k)`` in 2D ones."""
    return (k, 1) if kx1 else (k, k)


def _along(x: Tensor, v: int) -> tuple[int, int]:
    """``(v, 1)`` for unit-width (kx1) tensors, ``(v, v)`` otherwise."""
    return (v, 1) if x.shape[-1] == 1 else (v, v)


def _pad(x: Tensor, p: int) -> tuple[int, int]:
    """``(p, 0)`` for unit-width (kx1) tensors, ``(p, p)`` otherwise."""
    return (p, 0) if x.shape[-1] == 1 else (p, p)


def _uniform(gen: torch.Generator, shape: tuple[int, ...], bound: float, dtype: torch.dtype) -> Tensor:
    return (torch.rand(shape, generator=gen, dtype=dtype) * 2.0 - 1.0) * bound


def init_conv(
    gen: torch.Generator,
    c_in: int,
    c_out: int,
    kernel: tuple[int, int],
    *,
    groups: int = 1,
    bias: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Conv weights ``(c_out, c_in // groups, kh, kw)`` with torch's default init.

    Torch's default (kaiming-uniform with a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    fan_in = (c_in // groups) * math.prod(kernel)
    bound = 1.0 / math.sqrt(fan_in)
    params = {"weight": _uniform(gen, (c_out, c_in // groups, *kernel), bound, dtype)}
    if bias:
        params["bias"] = _uniform(gen, (c_out,), bound, dtype)
    return params


def apply_conv(
    params: dict[str, Tensor], x: Tensor, *, stride: int = 1, dilation: int = 1, groups: int = 1
) -> Tensor:
    """'Same' convolution of ``x`` (stride 1 keeps the size; stride 2 gives ``ceil(T / 2)``)."""
    w = params["weight"]
    kh, kw = w.shape[-2:]
    padding = (dilation * (kh // 2), dilation * (kw // 2))
    dil = (dilation, dilation if kw > 1 else 1)
    return F.conv2d(x, w, params.get("bias"), _along(x, stride), padding, dil, groups)


def init_bn(
    c: int, *, affine: bool, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """BatchNorm: ``(params, stats)``; params are empty when ``affine`` is False."""
    params = {"weight": torch.ones(c, dtype=dtype), "bias": torch.zeros(c, dtype=dtype)} if affine else {}
    stats = {"running_mean": torch.zeros(c, dtype=dtype), "running_var": torch.ones(c, dtype=dtype)}
    return params, stats


def apply_bn(
    params: dict[str, Tensor], stats: dict[str, Tensor], x: Tensor, *, train: bool, sync: Sync | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """BatchNorm over all but the channel axis; returns ``(y, new_stats)``.

    ``F.batch_norm`` updates the running statistics it is handed in place (even under
    ``torch.func`` transforms), so it gets fresh copies and the copies come back as the new stats.
    ``sync``: see :func:`batch_norm`.
    """
    mean, var = stats["running_mean"], stats["running_var"]
    y, new_mean, new_var = batch_norm(x, mean, var, params.get("weight"), params.get("bias"), train=train, sync=sync)
    return y, {"running_mean": new_mean, "running_var": new_var}


def batch_norm(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    train: bool,
    sync: Sync | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pure batch norm on raw tensors: ``(y, new_running_mean, new_running_var)``.

    With a ``sync`` (:class:`fnas.core.collectives.Sync`, data-parallel search), training mode
    normalises with the statistics of the global batch (:meth:`~fnas.core.collectives.Sync.batch_norm`).
    """
    if not train:
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, BN_EPS), mean, var
    if sync is not None:
        return sync.batch_norm(x, mean, var, weight, bias)
    mean, var = mean.clone(), var.clone()
    y = F.batch_norm(x, mean, var, weight, bias, True, BN_MOMENTUM, BN_EPS)
    return y, mean, var


def max_pool(x: Tensor, k: int, stride: int) -> Tensor:
    """'Same' max pooling with a (k, 1) (kx1) or (k, k) window."""
    return F.max_pool2d(x, _along(x, k), _along(x, stride), _pad(x, k // 2))


def avg_pool(x: Tensor, k: int, stride: int) -> Tensor:
    """'Same' average pooling that ignores the zero padding (as DARTS does)."""
    return F.avg_pool2d(x, _along(x, k), _along(x, stride), _pad(x, k // 2), count_include_pad=False)


def init_linear(gen: torch.Generator, c_in: int, c_out: int, *, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Linear layer ``(c_out, c_in)`` with torch's default init."""
    bound = 1.0 / math.sqrt(c_in)
    return {"weight": _uniform(gen, (c_out, c_in), bound, dtype), "bias": _uniform(gen, (c_out,), bound, dtype)}


def apply_linear(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``x @ W.T + b``."""
    return F.linear(x, params["weight"], params["bias"])


def global_avg_pool(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C)."""
    return x.mean(dim=(2, 3))


def subsample(x: Tensor, stride: int) -> Tensor:
    """Every ``stride``-th position (the output grid of a strided 'same' op)."""
    if stride == 1:
        return x
    return x[:, :, ::stride, :] if x.shape[-1] == 1 else x[:, :, ::stride, ::stride]


def to_layout(x: Tensor) -> Tensor:
    """The activation layout used throughout: channels_last."""
    try:
        return x.contiguous(memory_format=CHANNELS_LAST)
    except RuntimeError:
        # vmap over batched inputs cannot query memory formats ("NYI"); the kernels then run on
        # whatever layout the batched tensor has, with the same results.
        return x
